"""Tree-pass cost with the folded grouped-query attention (backend/attention.py) vs transformers' SDPA.

Run: python scripts/tree_attention_curve.py [model] [rounds] [contexts]
     (defaults: smollm2-135m-instruct, 3 rounds, contexts 128,512)
Loads the model once and switches its attention implementation between "sdpa" (repeats the
key/value heads, copying the cache of every layer on every tree pass) and quickdraft's, alternating
`quickdraft.tuning.measure` (7 interleaved repeats, medians) between the two, so a machine that
slows down hits both alike. Plain steps run the same code under both (one query: transformers'
own), so the plain-step time is a check that the two halves saw the same machine. Prints pass /
plain-step ratios per round and the median over rounds, per context length.
"""

import statistics
import sys

import torch

from quickdraft.backend import attention
from quickdraft.engine import Engine
from quickdraft.tuning import measure

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
contexts = [int(c) for c in (sys.argv[3] if len(sys.argv) > 3 else "128,512").split(",")]
SIZES = (0, 1, 2, 4, 5, 8, 12)

engine = Engine.load(model, torch.bfloat16)
if not engine.backend.tree_attention:
    sys.exit(f"{model} does not run transformers' SDPA attention: nothing to compare")
impls = {"sdpa": "sdpa", "folded": attention.NAME}
for ctx in contexts:
    context = torch.randint(0, engine.backend.vocab_size, (ctx,), generator=torch.Generator().manual_seed(0)).tolist()
    seen: dict[str, list[dict]] = {k: [] for k in impls}
    for r in range(rounds):
        for name, impl in impls.items():
            engine.model.set_attn_implementation(impl)
            res = measure(engine.backend, context, sizes=SIZES, repeats=7, shapes=("tree",))
            seen[name].append(res)
            print(f"context {ctx} round {r} {name:6s} plain {res['t1_ms']:.1f} ms  "
                  + " ".join(f"{n}:{res['tree'][n]:.2f}" for n in SIZES[1:]), flush=True)
    for name, runs in seen.items():
        med = {n: statistics.median(x["tree"][n] for x in runs) for n in SIZES[1:]}
        print(f"context {ctx} median {name:6s} plain {statistics.median(x['t1_ms'] for x in runs):.1f} ms  "
              + " ".join(f"{n}:{v:.2f}" for n, v in med.items()), flush=True)
engine.model.set_attn_implementation(attention.NAME)
