"""Self-tuning draft budget: each step's tree budget is chosen to maximise expected tokens per second.

Cost model. `measure` times one target pass over root + n draft nodes (a best-first tree, custom
mask) against a plain step, on a fixed context, sizes interleaved, medians. `CostCurve` interpolates
those ratios linearly (and extrapolates past the last size). `engine_curve` measures it at every
candidate budget once per (model, dtype, machine, torch, kernel variant), in a few seconds, and
caches it as JSON under `cache_dir()/verify_cost/`. That measurement is only a prior: on a shared
machine a few repeats can be off by a third (a plain step measured at 175 ms that takes 122 ms in
the decoder, so 4 nodes looked free and cost 1.25 plain steps). Each tuner's `PassClock` therefore
learns the pass time per node count from the decoder's own passes (decayed means, the curve as a
prior worth a few passes), and every cost below is the clock's.

Acceptance model. `BudgetTuner` keeps, per candidate budget b (0, 1, 2, 3, ... up to the drafter's
cap), decayed sums of tokens committed per step (bonus included) and of step cost in plain-step units,
cost = c(nodes actually drafted) + (drafting + verifying + committing + observing time) / T1
(the forward's own cost is the clock's c, T1 its plain-step time). The value of b is committed / cost: tokens
per plain-step time. b = 0 (a plain step, no drafting at all) is worth exactly 1. Drafters whose
draft for a budget b' is the first b' nodes of their draft for any larger b (`prefix_consistent`:
best-first trees, chains) update every smaller budget from each step too: the accepted path cut at
the first node numbered >= b' is what b' would have given. The prefill step and steps whose draft
came back empty (nothing to propose, whatever the budget) are not counted.
Choice. The tried budget of highest value; every `explore_every`-th step another one instead: the
next larger candidate (prefix-consistent drafters; it measures all smaller ones too), else
alternately the next larger and smaller; from 0, the most promising positive one. So budgets not
chosen stay measured, and drafting comes back when it starts paying again. Exploring is paid from a
credit of `explore_share` (5%) of each step's cost: a neighbour whose pass costs much more than the
best budget's (a staircase in the curve, or any pass where plain steps are best) is probed only as
often as that credit allows. The first budget is the drafter's start, cut to the largest candidate
whose pass costs at most `start_max_cost` plain steps.
Per-step cut. A drafter that says how likely each node is to be accepted (`Draft.values`: path
products of online-measured rates per node kind, drafters/rates.py; goose, pld, recycling and aded
give them) gets its draft cut to the prefix that maximises expected tokens per time this step
(`trim`): the budget follows the drafter over many steps, the cut follows the text of this one (a
question with nothing to copy goes plain from its first steps, without waiting for decayed averages
to forget the previous question). Exploring steps are not cut, so node kinds the cut would drop
keep being scored and their rates stay measured. lookahead gives no values: its window nodes pay
later, in the n-grams they collect, which a cut by this step's acceptance would starve.
Past the budget. The budget is chosen over many steps, so it stays below an expensive stair of the
curve even when this step's spine is sure. A prefix-consistent drafter is therefore asked for
`reach(b)` = up to `extend` (16) nodes on a cut step; `trim_extended` cuts within b as `trim` does and,
only when that keeps all b nodes, lets the cut go as far as the values pay for (never below b).
The step is credited to budget b with the cost of the nodes actually scored, so b's value is that
of "b, extended where sure". Exploring steps ask for exactly b.

Invariants: the tuner sees only counts, sizes and times, never token ids, so it cannot change
outputs (losslessness is the verifier's). A fixed budget (`--set budget=N`) bypasses it.
`best_budget_reference` (recompute every value from the full history) and `trim_reference` (try
every prefix) are the slow obvious choices kept beside the fast paths and tested against them
(`trim_extended` against a composition of `trim_reference`s in tests/test_tuning.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from . import tree
from .types import Draft

SIZES = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)  # the bench's full curve
# Budgets the tuner chooses from. Every one is measured at start (no interpolation between them):
# on some CPUs the cost is a staircase (FBGEMM streams the weights once per block of 6 rows, so
# root + 5 nodes cost 1.3 plain steps and root + 6 about 1.7; backend/matmul.py).
CANDIDATES = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)
QUICK_SIZES = CANDIDATES  # the engine's start-up curve


def template_draft(n: int, vocab: int, rng: torch.Generator) -> Draft:
    """A best-first tree of n random tokens (the shape tree drafters make)."""
    from .drafters.recycling import best_first_template

    tmpl = best_first_template(n, (0.5, 0.16, 0.07, 0.04, 0.025, 0.02, 0.015, 0.01), 8)
    tokens = torch.randint(0, vocab, (n,), generator=rng)
    return Draft(tokens, torch.tensor([p for p, _ in tmpl], dtype=torch.long))


def measure(backend, context: list[int], sizes=SIZES, repeats: int = 15, seed: int = 0,
            shapes: Sequence[str] = ("chain", "tree"), warmup: int = 2) -> dict:
    """{"chain": {n: ratio}, "tree": {n: ratio}, "t1_ms": plain step ms} (ratios to n = 0).

    Each pass is followed by the commit that drops its nodes, so every repeat starts from the same
    cache; sizes are interleaved within each repeat so a machine that slows down hits all alike.
    """
    rng = torch.Generator().manual_seed(seed)
    vocab = backend.vocab_size
    backend.prefill(context[:-1])
    root = context[-1]
    drafts = {}
    for shape in shapes:
        for n in sizes:
            if shape == "chain" or n == 0:
                drafts[(shape, n)] = tree.chain(torch.randint(0, vocab, (n,), generator=rng).tolist())
            else:
                drafts[(shape, n)] = template_draft(n, vocab, rng)
    times: dict[tuple[str, int], list[float]] = {k: [] for k in drafts}
    for _ in range(warmup):
        for d in drafts.values():
            backend.score(root, d)
            backend.commit([])
    for _ in range(repeats):
        for key, d in drafts.items():
            t = time.perf_counter()
            backend.score(root, d)
            backend.commit([])
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    t1 = med[(shapes[0], 0)]
    out: dict = {"t1_ms": round(t1 * 1e3, 3)}
    for shape in shapes:
        out[shape] = {n: round(med[(shape, n)] / t1, 3) for n in sizes}
    return out


@dataclass(frozen=True)
class CostCurve:
    """c(n): pass time over root + n nodes / plain step time, piecewise linear in n."""

    sizes: tuple[int, ...]  # increasing, starts at 0
    ratios: tuple[float, ...]
    t1_s: float  # plain step seconds (at the measuring context)

    def cost(self, n: float) -> float:
        s, r = self.sizes, self.ratios
        if n <= s[0]:
            return r[0]
        i = min(bisect_right(s, n), len(s) - 1)  # segment s[i-1] .. s[i] (the last one past the end)
        x0, x1, y0, y1 = s[i - 1], s[i], r[i - 1], r[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    @staticmethod
    def from_measure(res: dict, shape: str = "tree") -> "CostCurve":
        pts = sorted((int(n), float(v)) for n, v in res[shape].items())
        ratios = [v / pts[0][1] for _, v in pts]  # normalise so c(0) = 1 exactly
        # a pass never costs less than a smaller one (medians of noisy timings can dip)
        for i in range(1, len(ratios)):
            ratios[i] = max(ratios[i], ratios[i - 1])
        return CostCurve(tuple(n for n, _ in pts), tuple(round(r, 4) for r in ratios), res["t1_ms"] / 1e3)


def machine_key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    # Environment caps on the kernels torch picks change every timing, so they are part of the key.
    caps = "".join(f"|{v}={os.environ[v]}" for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
                   if os.environ.get(v))
    return f"{cpu}|{os.cpu_count()}|threads={torch.get_num_threads()}|torch={torch.__version__}{caps}"


def _cache_path(backend, model_id: str, what: str):
    """Where a start-up measurement of this backend is cached: per model, dtype, machine, config and
    `what` (the measurement and its kernel variant)."""
    from .models.store import cache_dir

    cfg = getattr(backend.model, "config", None)
    cfg_text = cfg.to_json_string() if hasattr(cfg, "to_json_string") else repr(cfg)
    key = hashlib.sha256(f"{model_id}|{backend.dtype}|{machine_key()}|{cfg_text}|{what}".encode()).hexdigest()[:20]
    return cache_dir() / "verify_cost" / f"{key}.json"


def _write_cache(path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only means measuring again next time


def harvest_row_seconds(backend, rows: int = 32, repeats: int = 5, k: int = 8) -> float:
    """Seconds one more prompt row adds to a prompt harvest: the LM head over it and the top-k of
    its logits (what keeping one more prefix row's logits costs the first pass). Timed on 1 and
    1 + rows random hidden states, interleaved, medians of `repeats` after one warm-up."""
    from .drafters.topk import topk_rows

    head = backend.model.get_output_embeddings()
    dim = int(head.weight.shape[1])
    g = torch.Generator().manual_seed(0)
    xs = {m: torch.randn(m, dim, generator=g).to(backend.dtype) for m in (1, 1 + rows)}  # [m, hidden]
    times: dict[int, list[float]] = {m: [] for m in xs}
    with torch.inference_mode():
        for r in range(repeats + 1):
            for m, x in xs.items():
                t = time.perf_counter()
                topk_rows(head(x), k)  # [m, V] logits -> [m, k]
                if r:
                    times[m].append(time.perf_counter() - t)
    return max(0.0, (statistics.median(times[1 + rows]) - statistics.median(times[1])) / rows)


def engine_harvest_row_s(backend, model_id: str, variant: str = "") -> float:
    """`harvest_row_seconds` for this backend, cached like the start-up curve."""
    path = _cache_path(backend, model_id, f"harvest-row|{variant}")
    try:
        return float(json.loads(path.read_text())["row_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    row_s = harvest_row_seconds(backend)
    _write_cache(path, {"model": model_id, "dtype": str(backend.dtype), "machine": machine_key(), "variant": variant,
                        "row_s": row_s})
    return row_s


def harvest_rows(wanted: int, max_cost: float, row_s: float, t1_s: float) -> int:
    """Prompt rows a harvest keeps: at most `wanted`, and only as many as cost at most `max_cost`
    plain steps of t1_s seconds at row_s seconds a row (inf or a free row: `wanted`)."""
    if wanted <= 0 or max_cost == float("inf") or row_s <= 0:
        return max(0, wanted)
    return int(min(wanted, max_cost * t1_s / row_s + 1e-9))  # + 1e-9: an exact fit is not lost to rounding


def engine_curve(backend, model_id: str, context_len: int = 128, repeats: int = 3, variant: str = "") -> CostCurve:
    """The start-up cost curve for this backend: cached per model, dtype, machine and kernel
    variant (e.g. how many linear layers are row-batched), else measured."""
    path = _cache_path(backend, model_id, f"{context_len}|{variant}")
    try:
        data = json.loads(path.read_text())
        return CostCurve(tuple(data["sizes"]), tuple(data["ratios"]), float(data["t1_s"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ctx = min(context_len, max(1, backend.max_context - 1 - QUICK_SIZES[-1]))
    sizes = tuple(n for n in QUICK_SIZES if ctx + 1 + n <= backend.max_context)
    context = torch.randint(0, backend.vocab_size, (ctx,), generator=torch.Generator().manual_seed(0)).tolist()
    curve = CostCurve.from_measure(measure(backend, context, sizes=sizes, repeats=repeats, shapes=("tree",), warmup=1))
    _write_cache(path, {"model": model_id, "dtype": str(backend.dtype), "machine": machine_key(), "variant": variant,
                        "context": ctx, "sizes": curve.sizes, "ratios": curve.ratios, "t1_s": curve.t1_s})
    return curve


class PassClock:
    """Pass time per number of draft nodes, learnt online from the decoder's passes; the start-up
    curve is its prior (see the module docstring, "Cost model").

    T1 = (w * curve.t1_s + S_0) / (w + C_0) and, for an observed n > 0,
    seconds(n) = (w * curve.cost(n) * T1 + S_n) / (w + C_n), where S_n and C_n are the sums of
    observed seconds and counts of passes over root + n nodes, each decayed by `decay` per new
    observation of that n. The correction f(n) = seconds(n) / (curve.cost(n) * T1) (f(0) = 1) is
    interpolated linearly in n between observed sizes (held flat past the largest), so sizes never
    timed move with their neighbours: cost(n) = max over k <= n of curve.cost(k) * f(k) (a pass
    never costs less than a smaller one). The table of costs is rebuilt lazily after observations.
    """

    def __init__(self, curve: CostCurve, weight: float = 2.0, decay: float = 0.95) -> None:
        self.curve = curve
        self.weight = weight  # the prior's worth, in observed passes
        self.decay = decay
        self.sums: dict[int, list[float]] = {}  # n -> [decayed seconds, decayed count]
        self._table: Tensor | None = None  # [m] float64: cost(0..m-1)
        self._prior = np.zeros(0)  # [m] curve.cost(0..m-1)

    def observe(self, n: int, seconds: float) -> None:
        s = self.sums.setdefault(int(n), [0.0, 0.0])
        s[0] = s[0] * self.decay + seconds
        s[1] = s[1] * self.decay + 1.0
        self._table = None

    def plain_count(self) -> float:
        """Decayed number of plain passes observed (the weight of T1's own evidence)."""
        return self.sums.get(0, (0.0, 0.0))[1]

    def t1(self) -> float:
        """Estimated seconds of a plain step (root only)."""
        s = self.sums.get(0, (0.0, 0.0))
        return (self.weight * self.curve.t1_s + s[0]) / (self.weight + s[1])

    def seconds(self, n: int, t1: float | None = None) -> float:
        """Estimated seconds of a pass over root + n nodes (an observed n, or the curve's prior)."""
        t1 = self.t1() if t1 is None else t1
        if n == 0:
            return t1
        prior = self.curve.cost(n) * t1
        s = self.sums.get(n)
        return prior if s is None else (self.weight * prior + s[0]) / (self.weight + s[1])

    def costs(self, n: int) -> Tensor:
        """[>= n+1] float64: cost(0), cost(1), ... (non-decreasing, cost(0) = 1)."""
        if self._table is None or self._table.numel() <= n:
            m = max(n + 1, 0 if self._table is None else self._table.numel())
            if self._prior.size < m:  # curve.cost(0..m-1): the curve never changes, so built once
                self._prior = np.array([self.curve.cost(k) for k in range(m)])
            t1 = self.t1()
            obs = sorted(k for k in self.sums if k > 0)
            fs = [1.0] + [self.seconds(k, t1) / (self.curve.cost(k) * t1) for k in obs]
            corr = np.interp(np.arange(m), [0, *obs], fs)  # linear between timed sizes, flat past the last
            self._table = torch.cummax(torch.from_numpy(self._prior[:m] * corr), 0).values  # [m] float64
        return self._table

    def cost(self, n: int) -> float:
        return float(self.costs(n)[n])


def clock_costs_reference(clock: PassClock, m: int) -> list[float]:
    """Slow reference for PassClock.costs: the correction interpolated size by size, then the
    running maximum."""
    t1 = clock.t1()
    pts = [(0, 1.0)] + [(k, clock.seconds(k, t1) / (clock.curve.cost(k) * t1)) for k in sorted(clock.sums) if k > 0]
    out, run = [], 0.0
    for k in range(m):
        below = [p for p in pts if p[0] <= k][-1]
        above = [p for p in pts if p[0] >= k]
        if not above:
            f = pts[-1][1]
        elif above[0][0] == below[0]:
            f = below[1]
        else:
            (x0, f0), (x1, f1) = below, above[0]
            f = f0 + (f1 - f0) * (k - x0) / (x1 - x0)
        run = max(run, clock.curve.cost(k) * f)
        out.append(run)
    return out


@dataclass
class Arm:
    tokens: float = 0.0  # decayed sum of committed tokens
    cost: float = 0.0  # decayed sum of step cost (plain-step units)
    steps: int = 0

    @property
    def value(self) -> float:
        return self.tokens / self.cost if self.cost > 0 else 0.0


@dataclass
class BudgetTuner:
    """Chooses each step's budget for one drafter; see the module docstring."""

    curve: CostCurve
    cap: int  # the drafter's largest budget
    start: int | None = None  # first budget tried (default: the cap)
    prefix_consistent: bool = False  # the drafter's draft for budget b' < b is the first b' nodes of its draft for b
    decay: float = 0.95  # per update of an arm; about 20 steps of memory
    prior_steps: float = 2.0  # weight of the prior, in steps
    explore_every: int = 4  # at most every 4th step explores
    explore_share: float = 0.05  # exploring costs at most this share of the time (see choose)
    start_max_cost: float = 1.5  # the first budget is the start, cut to one whose pass costs at most this
    clock: PassClock | None = None  # pass costs (shared by an engine's tuners); default: one from the curve
    time_every: int = 16  # while the clock has timed fewer than `time_plain` plain passes, every
    time_plain: float = 4.0  # `time_every`-th step is a plain one, so costs are relative to a measured T1
    extend: int = 16  # prefix-consistent drafters: when the cut keeps the whole budget, it may go on to this many nodes
    candidates: tuple[int, ...] = field(init=False)
    arms: dict[int, Arm] = field(init=False)
    history: list[tuple[int, int, float]] = field(init=False)  # (budget, committed, cost) per arm update

    def __post_init__(self) -> None:
        cands = [c for c in CANDIDATES if c <= self.cap]
        if self.cap not in cands:
            cands.append(self.cap)
        self.candidates = tuple(sorted(cands))
        # A prior worth `prior_steps` steps per budget: node i of a best-first draft accepted with
        # probability 0.5 * 0.7**i (about what trees reach here), so one unlucky draft cannot
        # switch drafting off; real steps outweigh it within a few dozen updates.
        self.arms = {}
        for c in self.candidates:
            tau = 1 + sum(0.5 * 0.7 ** i for i in range(c))
            self.arms[c] = Arm(self.prior_steps * tau, self.prior_steps * self.curve.cost(c), 0)
        self.arms[0] = Arm(1.0, 1.0, 1)  # a plain step: one token for one plain-step time, known exactly
        first = self.cap if self.start is None else self.start
        self.current = max((c for c in self.candidates
                            if c <= first and (c <= 1 or self.curve.cost(c) <= self.start_max_cost)), default=0)
        self._tick = 0
        self._up = False  # the first non-prefix-consistent exploration goes up
        self._credit = 0.0
        self.exploring = False  # the last choose() probed a budget other than the best
        self.history = []
        if self.clock is None:  # pass costs: the start-up curve, corrected by observed passes
            self.clock = PassClock(self.curve)

    def best(self) -> int:
        if not any(a.steps for c, a in self.arms.items() if c):
            return self.current  # nothing drafted yet: the starting budget
        return max(self.arms, key=lambda c: (self.arms[c].value, -c))

    def choose(self) -> int:
        b = best = self.best()
        self._tick += 1
        # exploration is paid from a credit of `explore_share` of each step's cost, so probing a
        # budget that costs much more (a staircase curve, or plain steps vs an expensive pass)
        # happens rarely and never costs more than that share of the time
        cost = self.clock.cost
        self._credit = min(self._credit + self.explore_share * cost(b), cost(self.cap))
        every = self.explore_every * (2 if b == 0 else 1)  # plain steps explore half as often
        if self._tick % every == 0:
            up = not self._up
            nb = self._neighbour(b, up)
            extra = max(0.0, cost(nb) - cost(b))
            if extra <= self._credit:
                self._credit -= extra
                self._up = up
                b = nb
        if b and self._tick % self.time_every == 0 and self.clock.plain_count() < self.time_plain:
            b = 0  # a timing probe: T1 must be measured for any cost ratio to mean anything
        self.exploring = b != best
        return b

    def _neighbour(self, b: int, up: bool) -> int:
        i = self.candidates.index(b)
        if b == 0:  # from plain steps: try the most promising drafting budget again
            return max((c for c in self.candidates if c), key=lambda c: self.arms[c].value, default=0)
        if self.prefix_consistent:  # a larger budget also measures every smaller one
            return self.candidates[min(i + 1, len(self.candidates) - 1)]
        if up and i + 1 < len(self.candidates):
            return self.candidates[i + 1]
        if i > 1:  # never explore down to 0: its value is known
            return self.candidates[i - 1]
        return self.candidates[min(i + 1, len(self.candidates) - 1)]

    def trim(self, values: Tensor) -> int:
        """How many nodes of this step's draft to score, given the drafter's estimate values [n] of
        each node's probability of being accepted (a topological prefix is a tree): the k = 0..n
        maximising expected committed tokens per time, (1 + sum(values[:k])) / cost(k); on a tie
        the smaller k. The budget sets how much is drafted, this how much of it pays this step:
        a draft of unlikely nodes becomes a plain step, a confident spine is kept whole."""
        n = values.numel()
        gain = 1.0 + torch.cat([torch.zeros(1, dtype=torch.float64), values.double().cumsum(0)])  # [n+1]
        return int(torch.argmax(gain / self.clock.costs(n)[: n + 1]))  # the first maximum: the smaller k

    def reach(self, b: int) -> int:
        """How many nodes to ask the drafter for when the budget is b: up to `extend` (within the cap)
        for a prefix-consistent drafter on a step that is cut, so that `trim_extended` can keep a
        confident draft past b; b otherwise (exploring steps, plain steps, other drafters)."""
        if b <= 0 or self.exploring or not self.prefix_consistent:
            return b
        return max(b, min(self.extend, self.cap))

    def trim_extended(self, values: Tensor, b: int) -> int:
        """The cut of a draft asked for with `reach(b)` (values [n], n >= b or the whole draft):
        `trim` within the budget; only if that keeps all b nodes (the draft pays to its end), `trim`
        over every node, never below b. So a draft whose values fall off is cut as before, and a
        spine the drafter is sure of is scored as far as its values pay for the pass
        (the clock's costs, staircases included)."""
        k = self.trim(values[:b])
        if k < b or values.numel() <= b:
            return k
        return max(b, self.trim(values))

    def step_cost(self, drafted: int, draft_s: float) -> float:
        return self.clock.cost(drafted) + draft_s / self.clock.t1()

    def update(self, budget: int, drafted: int, committed: int, draft_s: float,
               path: Sequence[int] | None = None) -> None:
        """After a step: `committed` tokens from a draft of `drafted` nodes; `path` the accepted nodes.

        For a prefix-consistent drafter the step also tells what every smaller budget b' would
        have given: the accepted path cut at its first node numbered >= b', plus one token.
        """
        if budget == 0:
            return  # known exactly
        self._add(budget, committed, self.step_cost(drafted, draft_s))
        if self.prefix_consistent and path is not None:
            for b in self.candidates:
                if 0 < b < budget:
                    k = next((j for j, node in enumerate(path) if node >= b), len(path))
                    self._add(b, k + 1, self.step_cost(min(drafted, b), draft_s))

    def _add(self, b: int, committed: int, cost: float) -> None:
        a = self.arms[b]
        a.tokens = a.tokens * self.decay + committed
        a.cost = a.cost * self.decay + cost
        a.steps += 1
        self.history.append((b, committed, cost))


def trim_reference(curve, values: Sequence[float]) -> int:
    """Slow reference for BudgetTuner.trim: try every prefix, keep the first best (curve: anything
    with cost(n), e.g. the tuner's clock)."""
    best_k, best = 0, 1.0 / curve.cost(0)
    for k in range(1, len(values) + 1):
        rate = (1.0 + sum(values[:k])) / curve.cost(k)
        if rate > best:
            best_k, best = k, rate
    return best_k


def best_budget_reference(tuner: BudgetTuner) -> int:
    """Slow reference for BudgetTuner.best(): recompute each arm's value from the prior and the
    full history of its updates, each weighted by decay ** (updates of that arm since)."""
    if not tuner.history:
        return tuner.current
    values = {0: 1.0}
    for b in tuner.candidates:
        if b == 0:
            continue
        mine = [h for h in tuner.history if h[0] == b]
        k = len(mine)
        tau = 1 + sum(0.5 * 0.7 ** i for i in range(b))
        tok = tuner.prior_steps * tau * tuner.decay ** k + sum(c * tuner.decay ** (k - 1 - i) for i, (_, c, _) in enumerate(mine))
        cost = (tuner.prior_steps * tuner.curve.cost(b) * tuner.decay ** k
                + sum(x * tuner.decay ** (k - 1 - i) for i, (_, _, x) in enumerate(mine)))
        values[b] = tok / cost
    return max(values, key=lambda b: (values[b], -b))
