"""Where one tree pass's extra cost goes: Qwen-0.5B bf16, 300-token random context, root + n nodes.

Run: python scripts/profile_tree_pass.py (needs the model: quickdraft pull qwen2.5-coder-0.5b-instruct).
Prints the pass-time ratios of `quickdraft.tuning.measure` (n = 0, 8, 32; 7 interleaved repeats,
medians) and torch-profiler totals per op over 5 passes at n = 0 and n = 32.
"""

import torch
from torch.profiler import ProfilerActivity, profile

from quickdraft.engine import Engine
from quickdraft.tuning import measure, template_draft

OPS = ("aten::linear", "aten::scaled_dot_product_attention", "aten::mul", "aten::add", "aten::silu",
       "aten::copy_", "aten::cat")

engine = Engine.load("qwen2.5-coder-0.5b-instruct", torch.bfloat16)
backend = engine.backend
rng = torch.Generator().manual_seed(0)
context = torch.randint(0, backend.vocab_size, (300,), generator=rng).tolist()
res = measure(backend, context, sizes=(0, 8, 32), repeats=7, shapes=("tree",))
print(f"plain step {res['t1_ms']:.1f} ms; pass / plain step: {res['tree']}")
for n in (0, 32):
    backend.prefill(context[:-1])
    draft = template_draft(n, backend.vocab_size, rng)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            with torch.profiler.record_function("pass"):
                backend.score(context[-1], draft)
            backend.commit([])  # drop the nodes: every pass sees the same cache
    totals = {e.key: e.cpu_time_total / 5 / 1e3 for e in prof.key_averages()}
    print(f"n={n}: " + ", ".join(f"{k} {totals.get(k, 0.0):.1f} ms" for k in ("pass",) + OPS))
