"""Where one tree pass's extra cost goes: Qwen-0.5B bf16, 300-token random context, root + 0/8/32 nodes.

Run: python scripts/profile_tree_pass.py (needs the model: quickdraft pull qwen2.5-coder-0.5b-instruct).
Prints median pass times (7 interleaved repeats) and torch-profiler totals per op over 5 passes.
"""
import torch, time, statistics
from torch.profiler import profile, ProfilerActivity
from quickdraft.engine import Engine
from quickdraft.tuning import template_draft
e = Engine.load('qwen2.5-coder-0.5b-instruct', torch.bfloat16)
b = e.backend
g = torch.Generator().manual_seed(0)
ctx = torch.randint(0, b.vocab_size, (300,), generator=g).tolist()
def once(n):
    b.first_pass(ctx[:-1], ctx[-1], template_draft(0, b.vocab_size, g))
    b.commit([])
    d = template_draft(n, b.vocab_size, g)
    t = time.perf_counter(); b.score(ctx[-1], d); dt = time.perf_counter() - t
    b.commit([]); return dt
for n in (0, 8, 32): once(n)
T = {n: [] for n in (0, 8, 32)}
for r in range(7):
    for n in T: T[n].append(once(n))
print({n: round(statistics.median(v) * 1e3, 1) for n, v in T.items()})
for n in (0, 32):
    b.first_pass(ctx[:-1], ctx[-1], template_draft(0, b.vocab_size, g)); b.commit([])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for r in range(5):
            with torch.profiler.record_function("SCORE"):
                b.score(ctx[-1], template_draft(n, b.vocab_size, g))
            b.commit([])
    ev = [x for x in prof.key_averages() if x.key in ("SCORE", "aten::mm", "aten::linear", "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::matmul", "aten::cat", "aten::mul", "aten::add", "aten::masked_fill_", "aten::copy_", "aten::silu")]
    print("n=", n)
    for x in sorted(ev, key=lambda x: -x.cpu_time_total): print(f"  {x.key:50s} {x.cpu_time_total/5/1e3:8.1f} ms/pass-ish  calls {x.count}")
