"""A/B of the two short-answer ideas in docs/tuning.md, interleaved on one engine, nothing in the
engine changed: each variant is the same drafter under its own settings list (so its own drafter and
tuner), patched here.

Run: python scripts/short_answer_ab.py MODEL CATEGORIES PER_CATEGORY [METHODS [VARIANTS]]
  e.g. python scripts/short_answer_ab.py qwen2.5-coder-0.5b-instruct translation,qa,rag,writing 5 recycling,goose
First turn of the first PER_CATEGORY Spec-Bench questions of each category, 128 new tokens, greedy,
bf16. For each METHOD (default recycling) four specs run on each question, after `ar`:
  M          as shipped;
  M-noharv   `harvest_prompt=false`: no prompt harvest in the prefill (the table starts empty);
  M-gated    the tuner's reach past the budget (`BudgetTuner.reach`) only once this answer has
             accepted a drafted token (a step committed more than one);
  M-both     both.
VARIANTS (comma-separated, default all four): which of shipped,noharv,gated,both to run.
Prints each question's speed over `ar` (wall time of the whole answer, prefill included), then per
spec the mean over questions and the mean per category. "differs": a greedy output not equal to
`ar`'s (bf16 near-ties; docs/tuning.md). The loop is scripts/extend_ab.py's, with other specs.
"""

import collections
import statistics
import sys
import time

import torch

from quickdraft.bench.data import load_questions, select
from quickdraft.bench.run import Conversation
from quickdraft.engine import Engine
from quickdraft.types import SamplingParams

if len(sys.argv) < 4:
    sys.exit(__doc__)
model, cats, per = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
methods = sys.argv[4].split(",") if len(sys.argv) > 4 else ["recycling"]
variants = sys.argv[5].split(",") if len(sys.argv) > 5 else ["shipped", "noharv", "gated", "both"]
if set(variants) - {"shipped", "noharv", "gated", "both"}:
    sys.exit(f"unknown variants {variants}: choose from shipped,noharv,gated,both")
engine = Engine.load(model, torch.bfloat16)
questions = [q for q in select(load_questions(), per_category=per) if q.category in cats]
if not questions:
    sys.exit(f"no questions in categories {cats}")
params = SamplingParams(max_new_tokens=128)
specs = {"ar": ("ar", None, False)}
for m in methods:
    for v, spec in (("shipped", (m, None, False)), ("noharv", (m, ["harvest_prompt=false"], False)),
                    ("gated", (m, ["budget=auto"], True)), ("both", (m, ["harvest_prompt=false", "budget=auto"], True))):
        if v in variants:
            specs[m if v == "shipped" else f"{m}-{v}"] = spec


def gate(tuner) -> dict:
    """Patch one tuner: reach(b) is b until this answer has committed more than one token in a step."""
    state = {"accepted": False}
    reach, update = tuner.reach, tuner.update

    def gated_reach(b):
        return reach(b) if state["accepted"] else b

    def gated_update(budget, drafted, committed, *a, **k):
        if committed > 1:
            state["accepted"] = True
        return update(budget, drafted, committed, *a, **k)

    tuner.reach, tuner.update = gated_reach, gated_update
    return state


def prompt_of(q) -> list[int]:
    return Conversation(engine).prompt(q.turns[0])  # the bench's first-turn prompt


gates = {}
for label, (method, settings, gated) in specs.items():  # warm-up, then patch the gated tuners
    engine.generate_ids(prompt_of(questions[0]), method, params, settings=settings)
    if gated:
        gates[label] = gate(engine.tuner(method, settings))
speedups = collections.defaultdict(list)
per_cat = collections.defaultdict(lambda: collections.defaultdict(list))
for q in questions:
    ids = prompt_of(q)
    speed, notes = {}, []
    for label, (method, settings, gated) in specs.items():
        if gated:
            gates[label]["accepted"] = False  # a new answer
        t = time.perf_counter()
        gen = engine.generate_ids(ids, method, params, settings=settings).generation
        speed[label] = gen.stats.new_tokens / (time.perf_counter() - t)
        if label == "ar":
            ref, n = gen.tokens, gen.stats.new_tokens
        elif gen.tokens != ref:
            notes.append(f"differs:{label}")
    for label in specs:
        speedups[label].append(speed[label] / speed["ar"])
        per_cat[label][q.category].append(speed[label] / speed["ar"])
    print(f"q{q.question_id} {q.category} ({n} tok)", " ".join(f"{label} {speed[label] / speed['ar']:.2f}"
                                                          for label in specs if label != "ar"), *notes, flush=True)
print()
print("spec", "mean", *cats, sep=" | ")
for label in specs:
    print(label, f"{statistics.mean(speedups[label]):.3f}",
          *(f"{statistics.mean(per_cat[label][c]):.2f}" if per_cat[label][c] else "-" for c in cats), sep=" | ")
