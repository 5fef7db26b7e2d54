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
    assert draft.tokens.tolist()[:3] == [7, 2, 8]  # 2 hangs under 7 now (value 0.6*0.6 > 0.3)
    assert draft.parents.tolist()[:3] == [-1, 0, -1]


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


def test_goose_context_matcher_equals_rescan():
    from quickdraft.drafters.goose import ContextMatcher, ngram_match_reference

    rng = random.Random(5)
    for _ in range(20):
        m = ContextMatcher((4, 3, 2, 1))
        seq: list[int] = []
        for _ in range(60):
            seq.append(rng.randrange(6))
            m.update(seq)
            assert m.match(seq) == ngram_match_reference(seq, (4, 3, 2, 1))
            # the lookup it inherits from pld's index reads its richer entries right
            assert m.lookup(seq, 3) == ngram_lookup_reference(seq, (4, 3, 2, 1), 3, latest=True)


def test_goose_chain_extends_past_the_context_end():
    from quickdraft.drafters.goose import ContextMatcher

    m = ContextMatcher((3, 2, 1))
    seq = [1, 2, 3, 4, 5, 1, 2, 3]
    m.update(seq)
    chain, kind = m.chain(seq, 8, 2)
    assert chain[:2] == [4, 5] and kind == (3, False)
    assert chain[2:5] == [1, 2, 3], "extended by matching [4, 5] again"


def test_goose_tree_equals_reference_best_first():
    from quickdraft.drafters.goose import build, build_reference

    rng = random.Random(7)
    for trial in range(30):
        table = {t: [(rng.randrange(12), ("u", rng.randrange(5))) for _ in range(rng.randrange(0, 5))] for t in range(12)}
        table = {t: list({x: k for x, k in v}.items()) for t, v in table.items()}  # distinct successors
        rates = {("u", i): rng.uniform(0.05, 0.9) for i in range(5)}
        rates[("s", 3, False)] = rng.uniform(0.2, 0.95)
        spine = [rng.randrange(12) for _ in range(rng.randrange(0, 8))]
        kind = ("s", 3, False) if spine else None
        succ = lambda t, b: table.get(t, [])  # noqa: E731
        budget, depth = rng.randrange(1, 30), rng.randrange(1, 5)
        width = lambda d: max(1, 4 // d)  # noqa: E731
        toks, pars, kinds, built_values = build(0, -1, spine, kind, succ, rates.get, budget, depth, width)
        assert len(toks) <= budget and all(p < i for i, p in enumerate(pars))
        values, paths = [], []
        for i, (t, p, k) in enumerate(zip(toks, pars, kinds)):
            paths.append((paths[p] if p >= 0 else ()) + (t,))
            values.append((values[p] if p >= 0 else 1.0) * rates[k])
        assert built_values == pytest.approx(values), "a node's value: the product of its path's rates"
        assert len(set(paths)) == len(paths), "no path proposed twice"
        ref = build_reference(0, -1, spine, kind, succ, rates.get, budget, depth, width)
        assert sorted(round(v, 9) for v in values) == sorted(v for _, v in ref), f"trial {trial}"
        every = dict(build_reference(0, -1, spine, kind, succ, rates.get, 10**6, depth, width))  # path -> value (9 decimals)
        assert set(paths) <= set(every), "every drafted path is a candidate of the slow enumeration"
        assert [every[p] for p in paths] == pytest.approx(values, abs=1e-9), "each path has its own value, not a sibling's"


def test_goose_learns_rates_and_table():
    d = drafters.create("goose", ["bigram=true"], vocab_size=16)
    prompt = [1, 2, 3, 1, 2]
    d.start(prompt)
    draft = d.propose(prompt, 6)
    assert draft.tokens.tolist()[:3] == [3, 1, 2] and draft.parents.tolist()[:3] == [-1, 0, 1], "the spine"
    spine_kind = d._kinds[0]
    assert spine_kind == ("s", 2, False)
    logits = torch.zeros(draft.size + 1, 16)
    logits[:, 9] = 5.0  # everywhere (also at the root: 2 after 1) the target prefers 9
    d.observe(2, draft, logits, Verdict([0, 1], [3, 1, 7]))
    assert d.rates.counts[spine_kind] == pytest.approx([3.0, 2.0], abs=0.05), "three spine nodes reached, two accepted"
    assert d.successors(2, 1)[0] == (9, ("b", 4)), "bigram tier first"
    assert d.successors(2, 5)[0] == (9, ("u", 4)), "unigram row for an unseen previous token"
    c = d.rates.counts[spine_kind]
    assert d.rate(spine_kind) == pytest.approx((c[1] + 4 * d.prior(spine_kind)) / (c[0] + 4))
