"""Tree-pass cost with FBGEMM's blocks split by size (the default) vs every layer split.

Run: python scripts/split_curve.py [model] [rounds]   (default smollm2-135m-instruct, 3 rounds)
Needs a CPU where --matmul auto picks FBGEMM (no native bf16 GEMM) and the model pulled.
Loads the model twice (SPLIT_MIN_WEIGHTS as shipped, and 0: every weight split into one block per
torch thread), then alternates `quickdraft.tuning.measure` (7 interleaved repeats, medians) between
the two, so a machine that slows down hits both alike. Prints pass / plain-step ratios per round
and the median over rounds.
"""

import statistics
import sys

import torch

from quickdraft.backend import matmul
from quickdraft.engine import Engine
from quickdraft.tuning import measure

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
SIZES = (0, 1, 2, 4, 5, 6, 8, 12)

engines = {"by size": Engine.load(model, torch.bfloat16)}
shipped, matmul.SPLIT_MIN_WEIGHTS = matmul.SPLIT_MIN_WEIGHTS, 0
engines["all split"] = Engine.load(model, torch.bfloat16)
matmul.SPLIT_MIN_WEIGHTS = shipped
if engines["all split"].matmul_kernel != "fbgemm":
    sys.exit(f"this CPU runs {engines['all split'].matmul_kernel}, not FBGEMM: nothing to compare")
context = torch.randint(0, engines["by size"].backend.vocab_size, (128,),
                        generator=torch.Generator().manual_seed(0)).tolist()
seen: dict[str, list[dict]] = {k: [] for k in engines}
for r in range(rounds):
    for name, engine in engines.items():
        res = measure(engine.backend, context, sizes=SIZES, repeats=7, shapes=("tree",))
        seen[name].append(res)
        print(f"round {r} {name:9s} ({engine.split_linears} layers split) plain {res['t1_ms']:.1f} ms  "
              + " ".join(f"{n}:{res['tree'][n]:.2f}" for n in SIZES[1:]), flush=True)
for name, runs in seen.items():
    med = {n: statistics.median(x["tree"][n] for x in runs) for n in SIZES[1:]}
    print(f"median {name:9s} plain {statistics.median(x['t1_ms'] for x in runs):.1f} ms  "
          + " ".join(f"{n}:{v:.2f}" for n, v in med.items()))
