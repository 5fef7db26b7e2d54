"""The tree pass equals sequential runs: each node's logits match a plain forward over its path."""

from __future__ import annotations

import random

import pytest
import torch

from quickdraft import tree
from quickdraft.backend import HFBackend
from quickdraft.types import Draft

from conftest import VOCAB, tiny_model


def random_tree(rng: random.Random, n: int) -> Draft:
    parents = [-1] + [rng.randrange(-1, i) for i in range(1, n)]
    tokens = [rng.randrange(VOCAB) for _ in range(n)]
    return Draft(torch.tensor(tokens), torch.tensor(parents))


@torch.inference_mode()
def full_logits(model, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0]  # [L, V]


def check_tree_pass(model, prefix_len: int, n: int, seed: int, fused: bool = False,
                    atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """fused: the prompt goes through the same pass as the tree (the decoder's first step)."""
    tol = dict(atol=atol, rtol=rtol)
    rng = random.Random(seed)
    prompt = [rng.randrange(VOCAB) for _ in range(prefix_len)]
    draft = random_tree(rng, n)
    backend = HFBackend(model)
    if fused:
        logits, prefix_logits = backend.first_pass(prompt[:-1], prompt[-1], draft, prefix_logits=len(prompt))
        torch.testing.assert_close(prefix_logits.float(), full_logits(model, prompt[:-1]).float(), **tol)
    else:
        backend.prefill(prompt[:-1])
        logits = backend.score(prompt[-1], draft)  # [n+1, V]
    ref_root = full_logits(model, prompt)[-1]
    torch.testing.assert_close(logits[0].float(), ref_root.float(), **tol)
    for i in range(n):
        path = tree.path_to(draft.parents, i)
        ids = prompt + [int(draft.tokens[j]) for j in path]
        torch.testing.assert_close(logits[i + 1].float(), full_logits(model, ids)[-1].float(), **tol)


def test_tree_pass_matches_sequential(any_model):
    for seed in range(4):
        check_tree_pass(any_model, prefix_len=5 + 3 * seed, n=1 + 4 * seed, seed=seed)
        check_tree_pass(any_model, prefix_len=5 + 3 * seed, n=1 + 4 * seed, seed=seed, fused=True)


@pytest.mark.parametrize("kind", ["gemma3", "mistral"])
def test_tree_pass_exact_past_sliding_window(kind):
    # window 6, prefix 20 + tree depth up to 10: every sliding layer must hide far positions.
    model = tiny_model(kind, sliding_window=6)
    for seed in range(3):
        check_tree_pass(model, prefix_len=20, n=10, seed=100 + seed)
        check_tree_pass(model, prefix_len=20, n=10, seed=100 + seed, fused=True)


def test_commit_keeps_only_the_accepted_path(any_model):
    """After committing a non-prefix path, the next pass matches a fresh forward over the sequence."""
    rng = random.Random(7)
    prompt = [rng.randrange(VOCAB) for _ in range(9)]
    draft = Draft(torch.tensor([5, 6, 7, 8, 9]), torch.tensor([-1, -1, 1, 1, 3]))  # path 1 -> 3 -> 4
    backend = HFBackend(any_model)
    backend.prefill(prompt[:-1])
    backend.score(prompt[-1], draft)
    backend.commit([1, 3, 4])
    assert backend.cached == len(prompt) + 3
    seq = prompt + [6, 8, 9, 11]  # accepted 6, 8, 9 (in the cache) + bonus 11 (the next root)
    nxt = backend.score(seq[-1], tree.chain([12]))
    ref = full_logits(any_model, seq + [12])
    torch.testing.assert_close(nxt, ref[-2:], atol=1e-4, rtol=1e-4)


def test_tree_helpers():
    d = tree.from_paths([[1, 2, 3], [1, 2, 4], [5]])
    assert d.tokens.tolist() == [1, 5, 2, 3, 4]
    assert d.parents.tolist() == [-1, -1, 0, 2, 2]
    assert tree.depths(d.parents).tolist() == [1, 1, 2, 3, 3]
    assert tree.is_chain(tree.chain([4, 5, 6]).parents)
    assert not tree.is_chain(d.parents)
    m = tree.ancestor_mask(d.parents)
    assert m[5].tolist() == [True, True, False, True, False, True]  # node 4: root, node 0, node 2, itself
    assert tree.path_to(d.parents, 4) == [0, 2, 4]
    t = tree.truncate(d, 2)
    assert t.tokens.tolist() == [1, 5]


def test_first_pass_returns_only_the_prompt_rows_asked_for(any_model):
    """Drafters that harvest the prompt ask for its last few rows only (the LM head over a long
    prompt costs seconds on some CPUs); 0 rows means none."""
    rng = random.Random(5)
    prompt = [rng.randrange(VOCAB) for _ in range(12)]
    full = full_logits(any_model, prompt[:-1])  # [11, V]
    backend = HFBackend(any_model)
    _, rows = backend.first_pass(prompt[:-1], prompt[-1], Draft.empty(), prefix_logits=3)
    torch.testing.assert_close(rows.float(), full[-3:].float(), atol=1e-4, rtol=1e-4)
    assert backend.first_pass(prompt[:-1], prompt[-1], Draft.empty(), prefix_logits=0)[1] is None
    assert backend.first_pass(prompt[:-1], prompt[-1], Draft.empty(), prefix_logits=99)[1].shape[0] == 11
