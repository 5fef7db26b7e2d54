"""Drafter internals against their slow references, the registry and --set parsing."""

from __future__ import annotations

import random

import pytest
import torch

from quickdraft import drafters
from quickdraft.drafters.pld import NgramIndex, ngram_lookup_reference
from quickdraft.drafters.recycling import best_first_template, template_paths, template_reference
from quickdraft.errors import QuickdraftError
from quickdraft.types import Draft, Verdict


@pytest.mark.parametrize("latest", [True, False])
def test_incremental_ngram_index_equals_rescan(latest):
    rng = random.Random(3)
    seq: list[int] = []
    index = NgramIndex([1, 2, 3], latest)
    for _ in range(300):
        seq.extend(rng.randrange(6) for _ in range(rng.randrange(1, 4)))  # small alphabet: many matches
        index.update(seq)
        assert index.lookup(seq, 5) == ngram_lookup_reference(seq, [1, 2, 3], 5, latest)


@pytest.mark.parametrize("seq,expect", [
    ([1, 2, 3, 9, 1, 2], [3, 9, 1]),  # suffix (1, 2) seen before, followed by 3 9 1
    ([1, 2, 3, 4], []),  # no earlier occurrence
    ([7, 8, 7, 8, 7], [8, 7]),  # the most recent occurrence of (8, 7) is followed by 8, 7 ... cut at the end
    ([5], []),
])
def test_ngram_lookup_table(seq, expect):
    index = NgramIndex([1, 2, 3])
    index.update(seq)
    assert index.lookup(seq, 3) == expect


def test_pld_proposes_a_chain_within_budget():
    d = drafters.create("pld", ["num_pred=4"])
    seq = [1, 2, 3, 4, 5, 6, 1, 2]
    d.start(seq)
    draft = d.propose(seq, budget=3)
    assert draft.tokens.tolist() == [3, 4, 5]
    assert draft.parents.tolist() == [-1, 0, 1]


@pytest.mark.parametrize("nodes,probs,depth", [
    (24, (0.5, 0.16, 0.07, 0.04), 6),
    (10, (0.6, 0.3, 0.1), 4),
    (1, (0.5, 0.2), 3),
    (40, (0.45, 0.2, 0.1, 0.05, 0.02), 5),
])
def test_best_first_template_equals_enumeration(nodes, probs, depth):
    tmpl = best_first_template(nodes, probs, depth)
    assert len(tmpl) == nodes
    assert all(p < i for i, (p, _) in enumerate(tmpl))
    assert template_paths(tmpl) == template_reference(nodes, probs, depth)


def test_recycling_fills_template_from_adjacency_and_learns():
    d = drafters.create("recycling", ["nodes=4", "k=2", "max_depth=3", "rank_probs=0.6,0.3"], vocab_size=10)
    assert d.propose([3], 4).size == 0  # nothing known yet: an empty draft (a plain step)
    logits = torch.zeros(1, 10)
    logits[0, 7], logits[0, 8] = 5.0, 4.0  # after 3 the target likes 7, then 8
    d.observe(3, Draft.empty(), logits, Verdict([], [7]))
    draft = d.propose([3], 4)
    assert draft.tokens.tolist() == [7, 8]  # rank 0 and rank 1 children of the root
    assert draft.parents.tolist() == [-1, -1]
    logits2 = torch.zeros(3, 10)
    logits2[0] = logits[0]  # the root's row: same prediction as before
    logits2[1, 2], logits2[1, 1] = 3.0, 2.0  # after 7: 2, then 1
    d.observe(3, draft, logits2, Verdict([0], [7, 2]))
    draft = d.propose([3], 4)
    assert draft.tokens.tolist()[:3] == [7, 8, 2]  # 2 hangs under 7 now
    assert draft.parents.tolist()[:3] == [-1, -1, 0]


def test_registry_and_settings():
    assert {"ar", "pld", "recycling"} <= set(drafters.names())
    assert drafters.parse_settings("pld", ["num_pred=5", "latest=false"]) == {"num_pred": 5, "latest": False}
    assert drafters.parse_settings("recycling", ["rank_probs=0.5,0.25"]) == {"rank_probs": (0.5, 0.25)}
    with pytest.raises(QuickdraftError, match="unknown method"):
        drafters.create("nope")
    with pytest.raises(QuickdraftError, match="unknown setting 'depth'"):
        drafters.parse_settings("pld", ["depth=3"])
    with pytest.raises(QuickdraftError, match="expected int"):
        drafters.parse_settings("pld", ["num_pred=many"])
    with pytest.raises(QuickdraftError, match="expected bool"):
        drafters.parse_settings("pld", ["latest=maybe"])
    with pytest.raises(QuickdraftError, match="key=value"):
        drafters.parse_settings("pld", ["num_pred"])
    with pytest.raises(QuickdraftError, match="min_ngram"):
        drafters.create("pld", ["min_ngram=4", "max_ngram=2"])
