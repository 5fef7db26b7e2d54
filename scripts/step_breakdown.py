"""Where a decoding step's time goes, per method: the target pass, the prefill, drafting, the tuner.

Run: python scripts/step_breakdown.py MODEL SPECS PER_CATEGORY
  SPECS: semicolon-separated LABEL:METHOD[:SETTING,SETTING...], e.g.
  python scripts/step_breakdown.py qwen2.5-coder-0.5b-instruct "ar:ar;goose:goose;goose5:goose:budget=5" 1
First turn of the first PER_CATEGORY Spec-Bench questions of each category, 128 new tokens, greedy,
bf16; the specs run in turn on each question (one engine, drafters learning across questions as in
the bench). Wraps the backend's and drafters' methods with timers (this script only) and prints,
per spec: tokens/s, tokens per step, and milliseconds per step spent in each wrapped call
(`score` = the target's tree or plain pass, `first_pass` = the prompt's pass with the first draft).
"""

import collections
import sys
import time

import torch

from quickdraft.bench.data import load_questions, select
from quickdraft.bench.run import Conversation
from quickdraft.drafters import split_budget
from quickdraft.engine import Engine
from quickdraft.types import SamplingParams

if len(sys.argv) < 4:
    sys.exit(__doc__)
model, per = sys.argv[1], int(sys.argv[3])
specs = {}
for item in sys.argv[2].split(";"):
    label, method, *rest = item.split(":")
    specs[label] = (method, rest[0].split(",") if rest and rest[0] else None)
engine = Engine.load(model, torch.bfloat16)
questions = select(load_questions(), per_category=per)
params = SamplingParams(max_new_tokens=128)
spent: dict[str, float] = collections.defaultdict(float)  # seconds per wrapped call, this generation


def prompt_of(q) -> list[int]:
    return Conversation(engine).prompt(q.turns[0])  # the bench's first-turn prompt (chat template or raw)


def timed(obj, name: str) -> None:
    """Replace obj.name by a wrapper adding its time to spent[name] (once per object)."""
    if getattr(obj, f"_timed_{name}", False):
        return
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t

    setattr(obj, name, wrapper)
    setattr(obj, f"_timed_{name}", True)


for name in ("first_pass", "score", "commit"):
    timed(engine.backend, name)


for label, (method, settings) in specs.items():  # warm-up, and the wrappers on each drafter/tuner
    engine.generate_ids(prompt_of(questions[0]), method, params, settings=settings)
    timed(engine.drafter(method, settings), "propose")
    timed(engine.drafter(method, settings), "observe")
    if split_budget(settings)[0] is None and (tuner := engine.tuner(method, settings)) is not None:
        timed(tuner, "choose")
        timed(tuner, "update")
totals = {label: collections.defaultdict(float) for label in specs}
for q in questions:
    ids = prompt_of(q)
    for label, (method, settings) in specs.items():
        spent.clear()
        t = time.perf_counter()
        gen = engine.generate_ids(ids, method, params, settings=settings).generation
        tot = totals[label]
        tot["wall"] += time.perf_counter() - t
        tot["tokens"] += gen.stats.new_tokens
        tot["steps"] += gen.stats.steps
        for k, v in spent.items():
            tot[k] += v
    print(q.category, " ".join(f"{label} {totals[label]['tokens'] / totals[label]['wall']:.2f}" for label in specs),
          "tok/s so far", flush=True)
base = next(iter(specs))
for label, tot in totals.items():
    steps = tot["steps"]
    parts = " ".join(f"{k} {1e3 * v / steps:.1f}" for k, v in sorted(tot.items()) if k not in ("tokens", "steps"))
    speed = tot["tokens"] / tot["wall"]
    print(f"{label}: {speed:.2f} tok/s ({speed / (totals[base]['tokens'] / totals[base]['wall']):.2f}x {base}), "
          f"{tot['tokens'] / steps:.2f} tokens/step, {int(steps)} steps; ms per step: {parts}")
