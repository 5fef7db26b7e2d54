"""The self-tuner's cut past the budget against the same drafter without it, interleaved on one engine.

Run: python scripts/extend_ab.py MODEL PER_CATEGORY [LABELS]
  e.g. python scripts/extend_ab.py smollm2-135m-instruct 2
First turn of the first PER_CATEGORY Spec-Bench questions of each category, 128 new tokens, greedy,
bf16. On each question every spec runs in turn: ar, goose, goose-noext, pld, pld-noext (LABELS,
comma-separated, picks some). The -noext specs are the same method spelled with `budget=auto`, so
they get their own drafter and tuner (nothing learnt is shared), and that tuner's `extend` is set
to 0 (the cut stops at the budget, as before the change). Prints each question's speed over `ar`,
then per spec the mean over questions, the lowest category, and how many steps scored more than 5
nodes. "differs" lines: a greedy output not equal to `ar`'s (bf16 near-ties; see docs/tuning.md).
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

if len(sys.argv) < 3:
    sys.exit(__doc__)
model, per = sys.argv[1], int(sys.argv[2])
specs = {"ar": ("ar", None), "goose": ("goose", None), "goose-noext": ("goose", ["budget=auto"]),
         "pld": ("pld", None), "pld-noext": ("pld", ["budget=auto"])}
if len(sys.argv) > 3:
    specs = {k: v for k, v in specs.items() if k in sys.argv[3].split(",") or k == "ar"}
engine = Engine.load(model, torch.bfloat16)
questions = select(load_questions(), per_category=per)
params = SamplingParams(max_new_tokens=128)


def prompt_of(q) -> list[int]:
    return Conversation(engine).prompt(q.turns[0])  # the bench's first-turn prompt


for label, (method, settings) in specs.items():  # warm-up; then switch the -noext tuners' extension off
    engine.generate_ids(prompt_of(questions[0]), method, params, settings=settings)
    if label.endswith("noext"):
        engine.tuner(method, settings).extend = 0
speedups = collections.defaultdict(list)
per_cat = collections.defaultdict(lambda: collections.defaultdict(list))
drafted = collections.defaultdict(list)
for q in questions:
    ids = prompt_of(q)
    speed = {}
    for label, (method, settings) in specs.items():
        t = time.perf_counter()
        gen = engine.generate_ids(ids, method, params, settings=settings).generation
        speed[label] = gen.stats.new_tokens / (time.perf_counter() - t)
        drafted[label] += gen.stats.drafted
        if label == "ar":
            ref = gen.tokens
        elif gen.tokens != ref:
            print("  differs", label, q.category)
    for label in specs:
        speedups[label].append(speed[label] / speed["ar"])
        per_cat[label][q.category].append(speed[label] / speed["ar"])
    print(q.category, " ".join(f"{label} {speed[label] / speed['ar']:.2f}" for label in specs), flush=True)
for label in specs:
    low, cat = min((statistics.mean(v), c) for c, v in per_cat[label].items())
    d = drafted[label]
    print(f"{label}: mean {statistics.mean(speedups[label]):.3f}x, lowest {cat} {low:.2f}; "
          f"steps scoring > 5 nodes: {sum(x > 5 for x in d)}/{len(d)}, most {max(d)}")
