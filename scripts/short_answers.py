"""Where a drafter loses time on short answers: prefill and per-step cost against `ar`, step by step.

Run: python scripts/short_answers.py MODEL CATEGORY METHOD [WARMUP]
  e.g. python scripts/short_answers.py qwen2.5-coder-0.5b-instruct translation recycling 2
First turn of the 5 bench questions of CATEGORY (the bench's `--per-category 5` choice), 128 new
tokens, greedy, bf16, after WARMUP writing questions (default 2) through both methods, so the
tuner starts from what it learnt on those. Each question runs once per method (a repeat would
let recycling's table remember the answer), `ar` first. Prints per question: wall time, prefill
(time to the first committed tokens), decode time per step, and for METHOD the per-step budget,
nodes scored and tokens committed. One run on a shared machine: single questions are noisy.
"""

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
model, category, method = sys.argv[1:4]
warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 2
engine = Engine.load(model, torch.bfloat16)
questions = select(load_questions(), per_category=5)
chosen = [q for q in questions if q.category == category]
if not chosen:
    sys.exit(f"error: no questions in category {category!r}; pick one of "
             f"{', '.join(sorted({q.category for q in questions}))}")
params = SamplingParams(max_new_tokens=128)


def prompt_of(q) -> list[int]:
    return Conversation(engine).prompt(q.turns[0])  # the bench's first-turn prompt


for q in [q for q in questions if q.category == "writing"][:warmup]:
    for m in ("ar", method):
        engine.generate_ids(prompt_of(q), m, params)
ratios = []
for q in chosen:
    ids = prompt_of(q)
    row = {}
    for m in ("ar", method):
        t = time.perf_counter()
        s = engine.generate_ids(ids, m, params).generation.stats
        row[m] = (time.perf_counter() - t, s)
    (wa, sa), (wm, sm) = row["ar"], row[method]
    ratios.append((sm.new_tokens / wm) / (sa.new_tokens / wa))
    step = lambda s: s.decode_s / max(1, s.steps - 1) * 1e3
    print(f"q{q.question_id}: {method} {ratios[-1]:.2f}x ar; wall {wa * 1e3:.0f} / {wm * 1e3:.0f} ms, "
          f"prefill {sa.prefill_s * 1e3:.0f} / {sm.prefill_s * 1e3:.0f} ms, "
          f"per decode step {step(sa):.1f} / {step(sm):.1f} ms, steps {sa.steps} / {sm.steps}")
    print(f"  {method}: budgets {sm.budgets}\n  scored {sm.drafted}\n  committed {sm.accepted_lengths}")
print(f"{method} over ar on {category}: mean {statistics.mean(ratios):.2f}x, lowest {min(ratios):.2f}x")
