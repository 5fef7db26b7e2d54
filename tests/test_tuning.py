"""The self-tuning budget: cost curve, the tuner's choice against its slow reference, fallback to
plain steps, the cached start-up measurement, and the engine's budget settings."""

from __future__ import annotations

import random

import pytest
import torch

from quickdraft import drafters, tuning
from quickdraft.backend import HFBackend
from quickdraft.engine import Engine
from quickdraft.errors import QuickdraftError
from quickdraft.models import load
from quickdraft.tuning import BudgetTuner, CostCurve, best_budget_reference
from quickdraft.types import SamplingParams

from conftest import tiny_model

CURVE = CostCurve((0, 1, 4, 8, 16, 32, 64), (1.0, 1.12, 1.15, 1.18, 1.26, 1.48, 1.82), 0.04)


def test_cost_curve_interpolates_and_extrapolates():
    assert CURVE.cost(0) == 1.0 and CURVE.cost(8) == 1.18
    assert CURVE.cost(12) == pytest.approx((1.18 + 1.26) / 2)
    assert CURVE.cost(96) == pytest.approx(1.82 + (1.82 - 1.48) * 32 / 32)  # last segment continued
    c = CostCurve.from_measure({"t1_ms": 40.0, "tree": {0: 1.02, 4: 1.2, 8: 1.1, 16: 1.3}})
    assert c.ratios[0] == 1.0 and list(c.ratios) == sorted(c.ratios), "normalised to c(0)=1 and never decreasing"
    assert c.t1_s == 0.04


def simulate(tuner: BudgetTuner, gain, steps: int, draft_s: float = 0.0, seed: int = 0) -> list[int]:
    """Committed tokens per step ~ 1 + Binomial-ish(gain(b)); returns the budgets chosen."""
    rng = random.Random(seed)
    chosen = []
    for _ in range(steps):
        b = tuner.choose()
        chosen.append(b)
        extra = sum(rng.random() < p for p in gain(b))
        tuner.clock.observe(b, tuner.curve.cost(b) * tuner.curve.t1_s)  # passes take what the curve says
        tuner.update(b, b, 1 + extra, draft_s if b else 0.0)  # not prefix-consistent: no counterfactuals
        assert tuner.best() == best_budget_reference(tuner)
    return chosen


def test_tuner_finds_the_best_budget_and_matches_the_reference():
    # per-node acceptance falls with rank: expected tokens/cost peaks at a middle budget
    def gain(b):
        return [0.5 * 0.8 ** i for i in range(b)]

    values = {b: (1 + sum(gain(b))) / CURVE.cost(b) for b in tuning.CANDIDATES}
    best = max(values, key=values.get)
    for seed in range(3):
        t = BudgetTuner(CURVE, cap=64, start=4)
        late = simulate(t, gain, 600, seed=seed)[300:]
        # what the choices are worth (exploring included) against always choosing the best budget
        assert sum(values[b] for b in late) / len(late) > 0.93 * values[best], f"seed {seed}"
        assert max(set(late), key=late.count) in {b for b in values if values[b] > 0.9 * values[best]}
        assert t.best() != 0


def test_tuner_falls_back_to_plain_steps_when_drafting_does_not_pay():
    t = BudgetTuner(CURVE, cap=32, start=16)
    chosen = simulate(t, lambda b: [0.01] * b, 500, draft_s=0.004)
    late = chosen[250:]  # every budget's optimistic prior has to be measured away first
    assert late.count(0) / len(late) > 0.8, "drafting that never pays must become plain steps"
    assert any(late), "it keeps probing so drafting can come back"
    # ... and comes back when drafting pays again
    chosen = simulate(t, lambda b: [0.9] * min(b, 6), 300, seed=1)
    assert chosen[-100:].count(0) < 30


def test_engine_curve_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    backend = HFBackend(tiny_model("llama"))
    curve = tuning.engine_curve(backend, "tiny-llama")
    assert curve.sizes[0] == 0 and curve.ratios[0] == 1.0 and curve.t1_s > 0
    files = list((tmp_path / "verify_cost").glob("*.json"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(tuning, "measure", boom)
    assert tuning.engine_curve(backend, "tiny-llama") == curve
    with pytest.raises(AssertionError):
        tuning.engine_curve(backend, "another-model")  # another key: measured


@pytest.fixture(scope="module")
def engine(tiny_folder):
    model, tok, name = load(str(tiny_folder), torch.float32)
    return Engine(model, tok, name)


def test_engine_budget_settings(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    prompt = "w7 w8 w9 w7 w8 w9 w7 w8"
    params = SamplingParams(max_new_tokens=30)
    ar = engine.generate(prompt, "ar", params).generation
    assert set(ar.stats.budgets) == {0}
    for method in drafters.names():
        if method == "ar":
            continue
        fixed = engine.generate(prompt, method, params, settings=["budget=3"]).generation
        assert fixed.tokens == ar.tokens and set(fixed.stats.budgets) == {3}
        assert max(fixed.stats.drafted) <= 3
        tuned = engine.generate(prompt, method, params).generation
        assert tuned.tokens == ar.tokens, f"{method} with the self-tuner changed the output"
        assert len(tuned.stats.budgets) == tuned.stats.steps
        tuner = engine.tuner(method)
        reach = max(tuner.extend, 0) if tuner.prefix_consistent else 0  # a sure spine may pass the budget
        assert all(d <= (max(b, min(reach, tuner.cap)) if b else 0) for d, b in zip(tuned.stats.drafted, tuned.stats.budgets))
        assert engine.tuner(method) is engine.tuner(method), "one tuner per drafter, kept"
        assert engine.drafter(method) is not engine.drafter(method, ["budget=3"]), "configurations never share state"
    assert engine.generate(prompt, "pld", params, settings=["budget=0"]).generation.stats.steps == ar.stats.steps


def test_budget_setting_errors():
    assert drafters.split_budget(["budget=5", "k=2"]) == (5, ["k=2"])
    assert drafters.split_budget(["budget=auto"]) == (None, [])
    assert drafters.make_config("recycling", ["budget=8"]) == drafters.make_config("recycling", [])
    for bad in ("budget=-1", "budget=lots"):
        with pytest.raises(QuickdraftError, match="budget"):
            drafters.make_config("pld", [bad])


def test_counterfactual_updates_for_prefix_consistent_drafters():
    t = BudgetTuner(CURVE, cap=16, start=16, prefix_consistent=True)
    prior = {b: (a.tokens, a.cost) for b, a in BudgetTuner(CURVE, cap=16).arms.items()}
    t.update(16, 16, 4, 0.0, path=[0, 3, 9])  # nodes 0, 3, 9 accepted
    assert t.arms[16].tokens == pytest.approx(prior[16][0] * t.decay + 4)
    assert [t.arms[b].tokens - prior[b][0] * t.decay for b in (12, 8, 6, 4, 2)] == pytest.approx([4, 3, 3, 3, 2])
    assert t.arms[8].cost == pytest.approx(prior[8][1] * t.decay + CURVE.cost(8))
    assert t._neighbour(8, up=True) == 12, "exploring upwards measures the smaller budgets too"


@pytest.mark.parametrize("method", [m for m in drafters.names() if m != "ar"])
def test_prefix_consistent_drafters_really_are(engine, method, tmp_path, monkeypatch):
    """A drafter that says so: its draft for budget b' is the first b' nodes of its draft for b."""
    import copy

    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    d = engine.drafter(method)
    if not d.prefix_consistent:
        pytest.skip(f"{method} does not claim it")
    ids = engine.encode("w7 w8 w9 w7 w8 w9 w7 w8 w10 w7 w8 w9")
    engine.generate_ids(ids, method, SamplingParams(max_new_tokens=20))  # warm the drafter's state
    seq = ids + [7, 8]
    big = copy.deepcopy(d).propose(seq, 64)
    assert big.size > 2, "the test needs a real tree"
    for b in (1, 2, 5, big.size // 2, big.size):
        small = copy.deepcopy(d).propose(seq, b)
        assert small.tokens.tolist() == big.tokens[:b].tolist() and small.parents.tolist() == big.parents[:b].tolist()


STAIRS = CostCurve((0, 1, 2, 3, 4, 5, 6, 8, 12, 16), (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.1, 2.6, 3.5, 4.0), 0.1)


def test_exploration_is_paid_from_a_small_share_of_the_time():
    """On a staircase curve (6 nodes cost 2.1 where 5 cost 1.5) the tuner explores the expensive
    neighbour only as often as 5% of the time pays for, and starts at an affordable budget."""
    t = BudgetTuner(STAIRS, cap=16, start=16, prefix_consistent=True)
    assert t.current == 5, "the start is cut to the largest budget costing at most 1.5 plain steps"
    rng = random.Random(0)
    extra = allowed = 0.0
    for _ in range(400):
        b0 = t.best()
        b = t.choose()
        extra += STAIRS.cost(b) - STAIRS.cost(b0)
        allowed += 0.05 * STAIRS.cost(b0)
        path = [i for i in range(b) if rng.random() < 0.9 ** (i + 1)]
        path = path[:next((j for j, node in enumerate(path) if node != j), len(path))]  # a chain's prefix
        t.clock.observe(b, STAIRS.cost(b) * STAIRS.t1_s)
        t.update(b, b, len(path) + 1, 0.0, path=path)
        assert t.best() == best_budget_reference(t), "with the counterfactual updates of smaller budgets"
    assert 0 < extra <= allowed + 1e-9, "exploration overhead bounded by its share of the time"
    assert extra > 0.5 * allowed, "and it does explore"


def test_plain_steps_probe_rarely_when_passes_are_expensive():
    steep = CostCurve((0, 1, 2, 4, 8), (1.0, 1.6, 2.2, 3.3, 5.4), 0.1)
    t = BudgetTuner(steep, cap=8, start=8)
    chosen = simulate(t, lambda b: [0.05] * b, 400)
    late = chosen[100:]
    assert 0 < sum(1 for b in late if b) <= 0.05 * len(late) / 0.6 + 2, "probes cost at most ~5% of the time"


def test_trim_keeps_the_prefix_that_pays_and_matches_the_reference():
    t = BudgetTuner(CURVE, cap=64, start=8)
    learnt = BudgetTuner(CURVE, cap=64, start=8)
    for n, ratio in ((0, 1.0), (2, 1.4), (6, 1.3), (12, 2.5), (30, 2.0)):  # a clock that learnt other costs
        for _ in range(5):
            learnt.clock.observe(n, ratio * CURVE.t1_s)
    rng = random.Random(3)
    for tuner, costs in ((t, CURVE), (learnt, learnt.clock)):  # the start-up curve, then the learnt costs
        for _ in range(300):
            n = rng.randrange(1, 40)
            v = sorted((rng.random() ** rng.choice([1, 3, 8]) for _ in range(n)), reverse=rng.random() < 0.7)
            assert tuner.trim(torch.tensor(v)) == tuning.trim_reference(costs, v)
    assert t.trim(torch.tensor([0.02] * 8)) == 0, "unlikely nodes: a plain step pays more"
    assert t.trim(torch.tensor([0.95 ** i for i in range(1, 33)])) == 32, "a confident spine is kept whole"
    # (1 + 0.3) / 1.12 beats 1.0; each further node adds less than its share of the cost
    assert t.trim(torch.tensor([0.3, 0.01, 0.01, 0.01, 0.01, 0.01])) == 1


def test_pass_clock_starts_at_the_curve_and_learns_the_real_costs():
    clock = tuning.PassClock(CURVE)
    assert [clock.cost(n) for n in (0, 1, 8, 64)] == pytest.approx([1.0, 1.12, 1.18, 1.82])
    assert clock.t1() == pytest.approx(CURVE.t1_s)
    # the start-up measurement was off: plain steps take 30 ms, not 40, and 4 nodes 45 ms
    for _ in range(60):
        clock.observe(0, 0.030)
        clock.observe(4, 0.045)
    assert clock.t1() == pytest.approx(0.030, rel=0.05), "the prior is worth 2 passes, the decayed evidence ~19"
    assert clock.cost(4) == pytest.approx(1.5, rel=0.05)
    f4 = clock.seconds(4) / (CURVE.cost(4) * clock.t1())
    assert clock.cost(2) == pytest.approx(CURVE.cost(2) * (1 + (f4 - 1) / 2)), "unobserved sizes: the correction interpolated"
    assert clock.cost(64) == pytest.approx(CURVE.cost(64) * f4), "and held flat past the largest observed size"
    costs = clock.costs(64).tolist()
    assert costs == sorted(costs) and costs[0] == 1.0, "never cheaper than a smaller pass"
    assert clock.cost(5) >= clock.cost(4), "the curve's 1.155 at 5 nodes lies under the observed 1.5 at 4"
    # a reference: the clock's formula written out for n = 4
    w, d = clock.weight, clock.decay
    s = sum(0.045 * d ** i for i in range(60))
    c = sum(d ** i for i in range(60))
    t1 = (w * CURVE.t1_s + sum(0.030 * d ** i for i in range(60))) / (w + c)
    assert clock.seconds(4) == pytest.approx((w * CURVE.cost(4) * t1 + s) / (w + c))
    rng = random.Random(1)
    for _ in range(30):
        clock.observe(rng.choice([0, 1, 3, 7, 12, 40]), rng.uniform(0.02, 0.08))
        m = rng.randrange(1, 70)
        assert clock.costs(m)[:m].tolist() == pytest.approx(tuning.clock_costs_reference(clock, m))


def test_a_wrong_start_curve_is_corrected_by_the_passes():
    """The curve says 4 nodes are free; they really cost 1.5 plain steps. A draft worth 0.3 tokens
    is kept at first and cut once the clock has seen real passes."""
    free = CostCurve((0, 4, 8, 64), (1.0, 1.0, 1.3, 3.0), 0.04)
    t = BudgetTuner(free, cap=8, start=4, prefix_consistent=True)
    values = torch.tensor([0.1, 0.05, 0.03, 0.02])
    assert t.trim(values) == 4
    for _ in range(40):
        t.clock.observe(0, 0.04)
        t.clock.observe(4, 0.06)
    assert t.trim(values) == 0
    assert t.step_cost(4, 0.004) == pytest.approx(t.clock.cost(4) + 0.1, rel=0.02)


def test_the_tuner_times_plain_steps_until_its_clock_knows_t1():
    t = BudgetTuner(CURVE, cap=8, start=8, prefix_consistent=True)
    chosen = []
    for _ in range(200):
        b = t.choose()
        chosen.append(b)
        t.clock.observe(b, CURVE.cost(b) * CURVE.t1_s)
        t.update(b, b, 1 + b, 0.0, path=list(range(b)))  # every node accepted: drafting pays
    probes = [i for i, b in enumerate(chosen) if b == 0]
    assert probes and all((i + 1) % t.time_every == 0 for i in probes), "plain probes on the timing ticks only"
    assert t.clock.plain_count() >= t.time_plain and len(probes) <= 6, "and only until T1 is measured"


def test_the_engine_shares_one_clock_fed_by_every_pass(engine, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    engine.reset_drafters()
    params = SamplingParams(max_new_tokens=12)
    engine.generate("w7 w8 w9 w7 w8", "ar", params)
    assert engine._clock is None, "plain decoding alone measures no curve"
    g = engine.generate("w7 w8 w9 w7 w8", "goose", params).generation
    clock = engine._clock
    assert clock is engine.tuner("goose").clock is engine.tuner("pld").clock
    timed = sum(c for _, c in clock.sums.values())
    assert 0 < timed <= g.stats.steps - 1, "every pass but the prefill"
    before = clock.plain_count()
    engine.generate("w7 w8 w9 w7 w8", "ar", params)
    assert clock.plain_count() > before, "ar's plain steps time T1 for the tuners"


def test_harvest_rows_fit_the_cost_allowed():
    assert tuning.harvest_rows(256, 1.0, 0.0014, 0.055) == 39  # Qwen-0.5B without AMX: 1.4 ms a row
    assert tuning.harvest_rows(256, 1.0, 0.0002, 0.055) == 256  # ... cheaper rows: all that were asked for
    assert tuning.harvest_rows(256, 0.5, 0.0014, 0.055) == 19
    assert tuning.harvest_rows(256, float("inf"), 0.0014, 0.055) == 256
    assert tuning.harvest_rows(256, 1.0, 0.0, 0.055) == 256  # a row that costs nothing measurable
    assert tuning.harvest_rows(256, 0.0, 0.0014, 0.055) == 0
    assert tuning.harvest_rows(0, 1.0, 0.0014, 0.055) == 0


def test_engine_cuts_the_prompt_harvest_to_what_fits(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    model, tok, name = load(str(tiny_folder), torch.float32)
    eng = Engine(model, tok, name)
    t1 = eng.cost_curve().t1_s
    monkeypatch.setattr(eng, "harvest_row_s", lambda: t1 / 40)  # a row costs a 40th of a plain step
    for method in ("goose", "recycling"):
        assert eng.drafter(method).prefill_logits == 10  # the default: a quarter of a plain step
        assert eng.drafter(method, ["harvest_cost=2.5"]).prefill_logits == 100
        assert eng.drafter(method, ["harvest_cost=inf"]).prefill_logits == 256
        assert eng.drafter(method, ["harvest_rows=4"]).prefill_logits == 4
        assert eng.drafter(method, ["harvest_prompt=false"]).prefill_logits == 0
        with pytest.raises(QuickdraftError, match="harvest_cost"):
            eng.drafter(method, ["harvest_cost=-1"])
    assert eng.drafter("pld").prefill_logits == 0


def test_harvest_row_cost_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path))
    backend = HFBackend(tiny_model("llama"))
    row_s = tuning.engine_harvest_row_s(backend, "tiny-llama")
    assert 0 <= row_s < 1

    def boom(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(tuning, "harvest_row_seconds", boom)
    assert tuning.engine_harvest_row_s(backend, "tiny-llama") == row_s
    with pytest.raises(AssertionError):
        tuning.engine_harvest_row_s(backend, "tiny-llama", variant="other")  # another key: measured


def trim_extended_reference(costs, values, b: int) -> int:
    """Slow reference for BudgetTuner.trim_extended: the best prefix within b; only if that is all of
    b, the first best prefix of at least b nodes among all of them."""
    k = tuning.trim_reference(costs, values[:b])
    if k < b or len(values) <= b:
        return k
    gains = [(1 + sum(values[:j])) / costs.cost(j) for j in range(b, len(values) + 1)]
    return b + gains.index(max(gains))


def test_reach_asks_for_more_only_where_the_cut_may_use_it():
    t = BudgetTuner(STAIRS, cap=16, start=5, prefix_consistent=True)
    assert t.extend == 16
    assert [t.reach(b) for b in (0, 1, 5, 16)] == [0, 16, 16, 16]
    t.extend = 12
    assert t.reach(5) == 12 and t.reach(16) == 16, "never less than the budget"
    t.exploring = True
    assert t.reach(5) == 5, "an exploring step measures its budget as it is"
    other = BudgetTuner(STAIRS, cap=16, start=5)  # not prefix-consistent: a bigger draft is another draft
    assert other.reach(5) == 5
    off = BudgetTuner(STAIRS, cap=16, start=5, prefix_consistent=True, extend=0)
    assert off.reach(5) == 5


def test_trim_extended_keeps_a_sure_spine_past_the_budget_and_matches_the_reference():
    """On Qwen-0.5B's curve on a Xeon without AMX (5 nodes 1.26 plain steps, 6 nodes 1.59, 16 nodes
    2.52) a spine accepted with probability 0.97 a node pays to 16 nodes, ones at 0.9 and 0.8 stop
    at the budget; one that falls off within the budget is cut as `trim` cuts it."""
    noamx = CostCurve((0, 1, 2, 4, 5, 6, 8, 12, 16), (1.0, 1.10, 1.15, 1.22, 1.26, 1.59, 1.67, 2.13, 2.52), 0.055)
    q = BudgetTuner(noamx, cap=16, start=5, prefix_consistent=True)
    chain = lambda r: torch.tensor([r ** i for i in range(1, 17)])  # noqa: E731
    assert [q.trim_extended(chain(r), 5) for r in (0.97, 0.9, 0.8)] == [16, 5, 5]
    t = BudgetTuner(STAIRS, cap=16, start=5, prefix_consistent=True)
    sure = [0.97 ** i for i in range(1, 17)]
    falls = [0.5, 0.1, 0.05, 0.02, 0.01] + [0.01] * 11
    assert t.trim_extended(torch.tensor(falls), 5) == t.trim(torch.tensor(falls[:5])) < 5
    assert t.trim_extended(torch.tensor(sure[:5]), 5) == 5, "a draft no longer than the budget"
    rng = random.Random(5)
    for _ in range(300):
        n, b = rng.randrange(1, 20), rng.randrange(1, 17)
        v = sorted((rng.random() ** rng.choice([0.05, 0.3, 1, 3]) for _ in range(n)), reverse=True)
        assert t.trim_extended(torch.tensor(v), b) == trim_extended_reference(STAIRS, v, b)


def test_machine_key_names_kernel_caps(monkeypatch):
    """A cap on oneDNN's ISA changes every timing, so cached curves must not be shared across it."""
    from quickdraft.tuning import machine_key

    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)
    plain = machine_key()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    capped = machine_key()
    assert capped != plain and "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in capped
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")  # empty: no cap
    assert machine_key() == plain
