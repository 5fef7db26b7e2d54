"""How oneDNN's prepacked bf16 product grows with the rows of a pass, for Qwen-0.5B's weight shapes.

Run: python scripts/gemm_rows.py
For each shape (gate/up fused, down, q/k/v fused, o, the LM head) it packs random bf16 weights as
the engine does (`torch.ops.mkldnn._reorder_linear_weight`: 24 copies of a layer so that they
stream from memory as in a real pass, one LM head), then times the product for 1..32 rows: median
of 5 rounds, ms per weight. This is what sets the shape of the verify-cost curve: a pass over
root + n nodes multiplies every weight by n + 1 rows. Needs a CPU with a native bf16 GEMM.
"""

import time

import torch

SHAPES = {"gate+up": (9728, 896), "down": (896, 4864), "q+k+v": (1152, 896), "o": (896, 896), "lm head": (151936, 896)}
ROWS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 13, 16, 24, 32)

torch.manual_seed(0)
print("| weight (out x in) | " + " | ".join(str(m) for m in ROWS) + " |")
print("|---|" + "---|" * len(ROWS))
for name, (out_f, in_f) in SHAPES.items():
    copies = 1 if name == "lm head" else 24
    packed = [torch.ops.mkldnn._reorder_linear_weight(torch.randn(out_f, in_f).bfloat16()) for _ in range(copies)]
    cells = []
    for m in ROWS:
        x = torch.randn(m, in_f).bfloat16()  # [m, in]
        for p in packed:  # warm-up
            torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for p in packed:
                torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")
            times.append(time.perf_counter() - t)
        cells.append(f"{sorted(times)[2] * 1e3 / copies:.3f}")
    print(f"| {name} ({out_f} x {in_f}) | " + " | ".join(cells) + " |", flush=True)
