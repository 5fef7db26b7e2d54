"""Node values: online acceptance rates per node kind (drafters/rates.py), the values every drafter
that gives them puts in its drafts, and the self-tuner's per-step cut serving each of them."""

from __future__ import annotations

import random

import pytest
import torch

from quickdraft import drafters
from quickdraft.errors import QuickdraftError
from quickdraft.drafters.rates import NodeRates, depths, values_reference
from quickdraft.tuning import BudgetTuner, CostCurve, PassClock
from quickdraft.types import SamplingParams, Verdict

VALUED = ("goose", "pld", "recycling", "aded")  # drafters whose drafts carry values


def random_tree(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(-1, i) for i in range(n)]


def test_values_equal_the_path_walk_reference():
    rng = random.Random(0)
    rates = NodeRates(lambda k: 0.1 + 0.1 * k, weight=2.0, decay=0.9)
    for _ in range(50):
        n = rng.randrange(0, 30)
        parents, kinds = random_tree(rng, n), [rng.randrange(8) for _ in range(n)]
        path = []  # a random accepted path: a chain from the root down the tree
        for i in range(n):
            if parents[i] == (path[-1] if path else -1) and rng.random() < 0.5:
                path.append(i)
        rates.observe(kinds, parents, path)
        v = rates.values(kinds, parents)
        assert v.dtype == torch.float64 and v.shape == (n,)
        assert v.tolist() == pytest.approx(values_reference(rates, kinds, parents))
        assert all(0 < x <= 1 for x in v.tolist())
        assert all(p < 0 or v[i] <= v[p] for i, p in enumerate(parents)), "a child is never worth more"


def test_observe_counts_reached_and_accepted_nodes_only():
    rates = NodeRates(lambda k: 0.5, weight=4.0, decay=1.0)
    #        root
    #       /    \
    #      0(a)   1(b)        path = [0, 2]: 0 and 1 reached; 0 accepted
    #     / \      \          2 and 3 reached (parent 0 accepted); 2 accepted
    #   2(a) 3(c)   4(c)      4 not reached (parent 1 rejected)
    kinds, parents = ["a", "b", "a", "c", "c"], [-1, -1, 0, 0, 1]
    rates.observe(kinds, parents, [0, 2])
    assert rates.counts == {"a": [2.0, 2.0], "b": [1.0, 0.0], "c": [1.0, 0.0]}
    assert rates.rate("a") == pytest.approx((2 + 4 * 0.5) / (2 + 4))
    assert rates.rate("z") == 0.5, "an unseen kind has its prior"
    # a draft cut to its first 2 nodes before the pass: only those count
    rates.observe(kinds, parents[:2], [1])
    assert rates.counts["a"] == [3.0, 2.0] and rates.counts["b"] == [2.0, 1.0] and rates.counts["c"] == [1.0, 0.0]
    assert depths(parents) == [1, 1, 2, 2, 2]


def _proposal(name: str):
    """A drafter primed on a repetitive prompt, and its draft there."""
    d = drafters.create(name, [], vocab_size=32)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3]
    d.start(prompt)
    if d.prefill_logits:  # table drafters learn "t -> t + 1" from the prompt's logits
        logits = torch.zeros(len(prompt) - 1, 32)
        logits[torch.arange(len(prompt) - 1), torch.tensor(prompt[:-1]) % 5 + 1] = 5.0
        d.observe_prefill(torch.tensor(prompt[:-1]), logits)
    return d, prompt, d.propose(prompt, 8)


@pytest.mark.parametrize("name", VALUED)
def test_drafts_carry_values_that_follow_the_verdicts(name):
    d, prompt, draft = _proposal(name)
    assert draft.size > 0 and draft.values is not None and draft.values.shape == (draft.size,)
    par = draft.parents.tolist()
    v = draft.values.tolist()
    assert all(0 < x <= 1 for x in v)
    assert all(p < 0 or v[i] <= v[p] + 1e-12 for i, p in enumerate(par))
    # Every first node is rejected, again and again: the values of the same draft fall.
    first = draft.values[0].item()
    for _ in range(30):
        draft = d.propose(prompt, 8)
        d.observe(prompt[-1], draft, torch.zeros(draft.size + 1, 32), Verdict([], [0]))
    low = d.propose(prompt, 8).values[0].item()
    assert low < 0.5 * first, f"{name}: value {first:.2f} -> {low:.2f} after 30 rejections"
    for _ in range(60):  # then accepted every time: they rise again
        draft = d.propose(prompt, 8)
        d.observe(prompt[-1], draft, torch.zeros(draft.size + 1, 32), Verdict([0], [int(draft.tokens[0]), 0]))
    assert d.propose(prompt, 8).values[0].item() > 2 * low


@pytest.mark.parametrize("name", ["goose", "recycling"])
def test_prompt_harvest_rows_are_bounded(name):
    assert drafters.create(name, [], vocab_size=32).prefill_logits == 256  # before the engine cuts it to fit
    assert drafters.create(name, [], vocab_size=32).prefill_cost == 0.25
    assert drafters.create(name, ["harvest_rows=8"], vocab_size=32).prefill_logits == 8
    assert drafters.create(name, ["harvest_prompt=false"], vocab_size=32).prefill_logits == 0
    with pytest.raises(QuickdraftError, match="harvest_rows"):
        drafters.create(name, ["harvest_rows=5000"], vocab_size=32)


def test_lookahead_gives_no_values():
    """Its window nodes pay later, in the n-grams they collect: a cut by this step's acceptance
    would starve them (tuning.py, per-step cut)."""
    d = drafters.create("lookahead", [], vocab_size=32)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    d.start(prompt)
    assert d.propose(prompt, 16).values is None


def test_exploring_steps_are_flagged():
    curve = CostCurve((0, 1, 64), (1.0, 1.1, 2.0), 0.04)
    t = BudgetTuner(curve, cap=16, start=4, prefix_consistent=True, explore_every=2, explore_share=1.0)
    seen = set()
    for _ in range(40):
        best = t.best()
        b = t.choose()
        assert t.exploring == (b != best)
        seen.add(t.exploring)
        t.update(b, b, 2, 0.0, [0])
    assert seen == {True, False}


@pytest.fixture(scope="module")
def engine(tiny_folder):
    from quickdraft.engine import Engine
    from quickdraft.models import load
    model, tok, name = load(str(tiny_folder), torch.float32)
    return Engine(model, tok, name)


@pytest.mark.parametrize("name", VALUED)
def test_every_valued_drafter_is_cut_per_step_and_stays_lossless(engine, tmp_path, monkeypatch, name):
    """On a curve where one node costs 1.6 plain steps, steps keep only the part of a draft
    expected to pay: drafts are cut, and the output is plain decoding's. Two requests: the second
    finds the tables the first one filled (the tiny model's text is not in its prompt)."""
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    prompt = "w7 w8 w9 w7 w8 w9 w7 w8"
    params = SamplingParams(max_new_tokens=30)
    ar = engine.generate(prompt, "ar", params, chat=False).generation  # raw: the prompt's end repeats
    monkeypatch.setattr(engine, "_curve", CostCurve((0, 1, 64), (1.0, 1.6, 4.0), 0.04))
    monkeypatch.setattr(PassClock, "observe", lambda self, n, seconds: None)  # keep this curve: no timing
    engine.reset_drafters()
    cuts = []  # (nodes offered, nodes kept) per trim
    trim = BudgetTuner.trim
    monkeypatch.setattr(BudgetTuner, "trim", lambda self, v: cuts.append((v.numel(), trim(self, v))) or cuts[-1][1])
    for _ in range(2):
        out = engine.generate(prompt, name, params, chat=False).generation
        assert out.tokens == ar.tokens
    assert any(kept < offered for offered, kept in cuts), f"{name}: no draft was cut"
    assert any(0 < kept < offered for offered, kept in cuts), f"{name}: drafts only cut to nothing (plain steps)"
