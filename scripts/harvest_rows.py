"""Prompt harvest: `ar` against a drafter with harvest_rows = 0, 64 and 256, interleaved.

Run: python scripts/harvest_rows.py MODEL CATEGORIES PER_CATEGORY [METHOD]
e.g. python scripts/harvest_rows.py qwen2.5-coder-0.5b-instruct qa,translation,math_reasoning,rag,summarization 2 goose
(the docs/tuning.md "Prompt harvest" second set). First turn of the first PER_CATEGORY Spec-Bench
questions of each category, 128 new tokens, greedy, bf16; the four settings rotate their order per
question; each setting keeps one drafter that learns across the questions, as in the bench. Prints
each question's wall time, prefill time and steps per setting, then the sums and speed vs `ar`.
"""

import sys

import torch

from quickdraft.bench.data import load_questions
from quickdraft.engine import Engine
from quickdraft.types import SamplingParams

if len(sys.argv) < 4:
    sys.exit(__doc__)
model, cats, per = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
method = sys.argv[4] if len(sys.argv) > 4 else "goose"
engine = Engine.load(model, torch.bfloat16)
questions = [q for c in cats for q in [q for q in load_questions() if q.category == c][:per]]
settings = {"ar": ("ar", None)} | {f"h{n}": (method, [f"harvest_rows={n}"]) for n in (0, 64, 256)}
params = SamplingParams(max_new_tokens=128)
engine.generate_ids(engine.encode("Hello"), "ar", params)  # warm-up
totals = {k: [0.0, 0.0, 0, 0] for k in settings}  # wall s, prefill s, steps, tokens
for i, q in enumerate(questions):
    ids = engine.encode(q.turns[0])
    keys = list(settings)[i % len(settings):] + list(settings)[:i % len(settings)]
    line = []
    for k in keys:
        m, s = settings[k]
        st = engine.generate_ids(ids, m, params, settings=s).generation.stats
        t = totals[k]
        t[0] += st.wall_s
        t[1] += st.prefill_s
        t[2] += st.steps
        t[3] += st.new_tokens
        line.append(f"{k} {st.wall_s:.2f}s pf {st.prefill_s:.2f} st {st.steps}")
    print(q.category, len(ids), st.new_tokens, " | ".join(line), flush=True)
for k, t in totals.items():
    print(f"{k}: wall {t[0]:.1f} prefill {t[1]:.1f} steps {t[2]} tokens {t[3]} "
          f"speed vs ar {totals['ar'][0] / t[0]:.3f}")
