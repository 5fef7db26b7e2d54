"""Lookahead decoding as a draft tree: the window's attention pattern, the n-gram pool and window
update on hand-made examples, the budget, and losslessness (greedy and sampled) on tiny models."""

from __future__ import annotations

import random

import pytest
import torch

import quickdraft.drafters.lookahead  # noqa: F401  (registers "lookahead")
from quickdraft import drafters, tree
from quickdraft.backend import HFBackend
from quickdraft.decoder import Decoder
from quickdraft.drafters.lookahead import (NgramPool, build_tree, build_tree_reference, collect_ngrams,
                                           shift_window, window_attention_reference)
from quickdraft.errors import QuickdraftError
from quickdraft.types import Draft, SamplingParams, Verdict

from conftest import VOCAB, tiny_model
from test_lossless import MAX_NEW, prompts, reference_greedy, run


def node_paths(draft: Draft) -> set[tuple[int, ...]]:
    toks = draft.tokens.tolist()
    return {tuple(toks[j] for j in tree.path_to(draft.parents, i)) for i in range(draft.size)}


def distinct_window(n_lev: int, width: int, base: int = 10) -> list[list[int]]:
    return [[base + 10 * lev + m for m in range(width)] for lev in range(n_lev)]


@pytest.mark.parametrize("n_lev,width", [(1, 4), (2, 3), (3, 5), (4, 2)])
def test_window_tree_has_the_lookahead_attention_pattern(n_lev, width):
    levels = distinct_window(n_lev, width)
    draft, layout = build_tree([], levels, width, 0, 1000)
    assert draft.size == n_lev * width
    where = {}  # paper coordinates (level, column) -> node
    for lev in range(n_lev):
        for m in range(width):
            where[(lev, lev + 1 + m)] = layout[lev][m]
    mask = tree.ancestor_mask(draft.parents)  # [n+1, n+1]
    depth = tree.depths(draft.parents)
    for (lev, col), seen in window_attention_reference(levels, width).items():
        node = where[(lev, col)]
        expected = {0} | {where[c] + 1 for c in seen if c != "root"} | {node + 1}
        assert set(mask[node + 1].nonzero().flatten().tolist()) == expected, (lev, col)
        assert int(depth[node]) == col  # position = root position + column
        assert draft.tokens[node] == levels[lev][col - lev - 1]


def test_tree_matches_reference_paths_and_keeps_the_trie_first():
    rng = random.Random(3)
    for _ in range(200):
        n_lev, width = rng.randrange(1, 4), rng.randrange(0, 5)
        levels = [[rng.randrange(4) for _ in range(width)] for _ in range(n_lev)]  # many collisions
        paths = [[rng.randrange(4) for _ in range(rng.randrange(1, 4))] for _ in range(rng.randrange(0, 5))]
        full, layout = build_tree(paths, levels, width, 1000, 1000)
        assert node_paths(full) == build_tree_reference(paths, levels, width)  # merged, no duplicates
        assert len(node_paths(full)) == full.size
        trie = tree.from_paths(paths)
        assert node_paths(Draft(full.tokens[:trie.size], full.parents[:trie.size])) == node_paths(trie)
        for budget in range(0, 14):
            d, lay = build_tree(paths, levels, width, budget // 2, budget)
            assert d.size <= budget
            assert all(p < i for i, p in enumerate(d.parents.tolist()))
            toks = d.tokens.tolist()
            for lev, row in enumerate(lay):
                for m, node in enumerate(row):
                    assert toks[node] == levels[lev][m]
            # the split: window tokens that collide with nothing -> trie nodes first, the rest in diagonals
            d, lay = build_tree(paths, distinct_window(n_lev, width), width, budget // 2, budget)
            t = d.size - n_lev * len(lay[0])
            assert t == min(trie.size, budget // 2), "the trie fills its share of the budget"
            assert len(lay[0]) == min(width, (budget - t) // n_lev), "the window takes what is left"
            assert node_paths(Draft(d.tokens[:t], d.parents[:t])) <= node_paths(trie), "trie nodes come first"


def test_pool_collects_diagonals_and_window_shifts():
    # N = 4: three levels, window 4. Diagonal m = (levels[0][m], levels[1][m], levels[2][m]).
    levels = [[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]]
    guesses = {0: 40, 1: 41, 3: 43}  # diagonal 2 was not scored
    assert collect_ngrams(levels, guesses) == [(10, 20, 30, 40), (11, 21, 31, 41), (13, 23, 33, 43)]
    # one committed token: levels move down, the guesses become the top level (aligned by column)
    assert shift_window(levels, guesses, 1, True) == [[20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 33, 43]]
    # three committed tokens: two more diagonals consumed, the tail refilled (None); the missing
    # guess of diagonal 2 falls back to the old top-level token at the same column (33)
    assert shift_window(levels, guesses, 3, True) == [[22, 23, None, None], [32, 33, None, None], [33, 43, None, None]]
    # warm-up: no level dropped, the guesses become a new level
    assert shift_window(levels[:1], {0: 5, 1: 6, 2: 7}, 1, False) == [[11, 12, 13, None], [6, 7, None, None]]

    pool = NgramPool(cap=2)
    for gram in [(1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7), (2, 9, 9)]:
        pool.add(gram[0], gram[1:])
    assert pool.get(1) == [(6, 7), (2, 3)]  # most recent first, capped, refreshed on re-insert
    assert pool.get(2) == [(9, 9)] and pool.get(3) == []


def test_drafter_end_to_end_on_hand_made_logits():
    """propose -> observe with chosen argmaxes: the pool gets the diagonals, the budget holds."""
    d = drafters.create("lookahead", ["level=3", "window=3", "guesses=2", "from_context=false"])
    d.start([7, 8, 9])
    seq = [7, 8, 9]
    V = 50
    for step in range(3):
        draft = d.propose(seq, 6)
        assert draft.size <= 6
        _, layout = d._proposed
        levels = [row[:] for row in d.levels]
        logits = torch.zeros(draft.size + 1, V)  # [n+1, V]
        for m, node in enumerate(layout[-1]):
            logits[node + 1, 40 + 3 * step + m] = 1.0  # the guess at diagonal m
        logits[0, 49 - step] = 1.0  # the bonus token: never a pooled key, so the trie stays empty
        verdict = Verdict([], [49 - step])
        d.observe(seq[-1], draft, logits, verdict)
        seq.append(verdict.tokens[0])
        if step == 0:  # warm-up: budget 6 with one level feeds 3 diagonals; no n-grams yet
            assert len(layout) == 1 and len(layout[0]) == 3 and d.pool.table == {}
            assert d.levels[1] == [41, 42, None]
        if step >= 1:  # full window (2 levels x 3 diagonals = 6 nodes)
            assert len(layout) == 2 and len(layout[0]) == 3
            for m in range(3):
                assert (levels[1][m], 40 + 3 * step + m) in d.pool.get(levels[0][m])
    for budget in (0, 1, 2, 3, 4, 5, 8, 13):
        assert d.propose(seq, budget).size <= budget
    assert d.propose(seq, 0).size == 0


MODELS = ["llama", "qwen2", "gemma3"]
SETTINGS = [[], ["level=3", "window=4", "guesses=3"], ["level=2"], ["from_context=false"]]


@pytest.mark.parametrize("kind", MODELS)
def test_lookahead_equals_plain_greedy(kind):
    model = tiny_model(kind, seed=1)
    accepted = []
    for prompt in prompts(1):
        ref = reference_greedy(model, prompt, MAX_NEW)
        for settings in SETTINGS:
            d = drafters.create("lookahead", settings, vocab_size=VOCAB)
            budgets = (0, 3, 12, d.default_budget()) if settings == [] else (d.default_budget(),)
            for budget in budgets:
                g = run(model, d, prompt, budget=budget)
                assert g.tokens == ref, f"lookahead {settings} budget {budget} differs from plain greedy"
                assert max(g.stats.drafted) <= budget
                if budget > 0:
                    accepted.append(g.stats.mean_accepted)
    assert max(accepted) > 1.2, "lookahead never got drafts accepted: the test would not exercise trees"


def test_sampled_output_equals_ar_for_the_same_seed():
    model = tiny_model("gemma3", seed=1)
    for prompt in prompts(2)[:2]:
        for seed in (0, 5):
            params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=seed)
            ar = Decoder(HFBackend(model), drafters.create("ar"), eos_ids=[]).generate(prompt, params, 0).tokens
            d = drafters.create("lookahead", [], vocab_size=VOCAB)
            for budget in (4, d.default_budget()):
                g = Decoder(HFBackend(model), d, eos_ids=[]).generate(prompt, params, budget)
                assert g.tokens == ar, f"seed {seed} budget {budget}"


@pytest.mark.parametrize("settings", [["level=1"], ["level=0"], ["window=-1"], ["guesses=-2"],
                                      ["max_nodes=-1"], ["window=0", "guesses=0"], ["level=x"]])
def test_bad_config_is_a_quickdraft_error(settings):
    with pytest.raises(QuickdraftError):
        drafters.make_config("lookahead", settings)
