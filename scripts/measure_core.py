"""Measure the core on a real model: ar vs transformers generate(), pld and recycling vs ar.

Spec-Bench prompts (first turn), chat template, greedy, interleaved per prompt: for each prompt
every method runs back to back, then the next prompt; `--repeats` runs the whole set again.
Reports per category and overall: median tokens/s, speedup over ar computed per prompt then
averaged (geometric mean too), mean accepted tokens per step, and the share of outputs equal to ar.
Tokens are counted the same way for every method: generated ids (EOS included when produced).

Run: python scripts/measure_core.py --model smollm2-135m-instruct --per-category 2 --repeats 2
(the full `quickdraft bench` comes with the bench issue).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

from quickdraft.engine import Engine
from quickdraft.types import SamplingParams

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench" / "question.jsonl"


def hf_generate(engine: Engine, ids: list[int], max_new: int, **kw) -> tuple[list[int], float]:
    model = engine.model
    inp = torch.tensor([ids])
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=engine.eos_ids or None, pad_token_id=engine.eos_ids[0] if engine.eos_ids else None,
                             **kw)
    wall = time.perf_counter() - t
    return out[0, len(ids):].tolist(), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--categories", default="")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--methods", default="hf,ar,pld,recycling,hf-pld")
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    engine = Engine.load(args.model, getattr(torch, args.dtype))
    rows = [json.loads(x) for x in DATA.read_text().splitlines()]
    cats = args.categories.split(",") if args.categories else sorted({r["category"] for r in rows})
    picked = []
    for c in cats:
        picked += [r for r in rows if r["category"] == c][: args.per_category]
    methods = args.methods.split(",")
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    engine.generate_ids(engine.encode("Hello"), "ar", SamplingParams(max_new_tokens=8))  # warm-up
    hf_generate(engine, engine.encode("Hello"), 8)
    records = []
    for rep in range(args.repeats):
        for q in picked:
            ids = engine.encode(q["turns"][0])
            for m in methods:
                if m == "hf":
                    toks, wall = hf_generate(engine, ids, args.max_new_tokens)
                    steps = len(toks)
                elif m == "hf-pld":
                    toks, wall = hf_generate(engine, ids, args.max_new_tokens, prompt_lookup_num_tokens=10)
                    steps = None
                else:
                    g = engine.generate_ids(ids, m, params).generation
                    toks, wall, steps = g.tokens, g.stats.wall_s, g.stats.steps
                records.append(dict(rep=rep, qid=q["question_id"], cat=q["category"], method=m,
                                    tokens=toks, n=len(toks), wall=wall, steps=steps))
                print(f"rep {rep} q{q['question_id']:>4} {q['category']:>16} {m:>10}: {len(toks):4d} tok "
                      f"{len(toks) / wall:6.1f} tok/s" + (f" tau {len(toks) / steps:.2f}" if steps else ""), flush=True)
    # aggregate
    by = defaultdict(dict)
    prompts = {q["question_id"]: engine.encode(q["turns"][0]) for q in picked}
    for r in records:
        by[(r["rep"], r["qid"])][r["method"]] = r
    # Where an output differs from ar: the first differing position and ar's top-2 logit margin
    # there (a plain forward over prompt + common prefix), to tell near-ties from real bugs.
    margins = defaultdict(list)
    for d in by.values():
        a = d.get("ar")
        for m, r in d.items():
            if a is None or m == "ar" or r["tokens"] == a["tokens"]:
                continue
            i = next((k for k in range(min(len(r["tokens"]), len(a["tokens"]))) if r["tokens"][k] != a["tokens"][k]), None)
            if i is None:
                continue
            with torch.inference_mode():
                lg = engine.model(input_ids=torch.tensor([prompts[r["qid"]] + a["tokens"][:i]])).logits[0, -1].float()
            top2 = lg.topk(2).values
            margins[m].append(dict(pos=i, of=len(a["tokens"]), margin=round(float(top2[0] - top2[1]), 4)))
    summary = {}
    for m in methods:
        per_cat = defaultdict(list)
        for key, d in by.items():
            if m in d and "ar" in d:
                r, a = d[m], d["ar"]
                per_cat[r["cat"]].append(dict(tps=r["n"] / r["wall"], sp=(r["n"] / r["wall"]) / (a["n"] / a["wall"]),
                                              tau=(r["n"] / r["steps"]) if r["steps"] else None,
                                              same=r["tokens"] == a["tokens"]))
        allr = [x for v in per_cat.values() for x in v]

        def agg(xs):
            taus = [x["tau"] for x in xs if x["tau"]]
            return dict(tokens_per_s=round(statistics.median(x["tps"] for x in xs), 2),
                        speedup=round(statistics.mean(x["sp"] for x in xs), 3),
                        speedup_geo=round(math.exp(statistics.mean(math.log(x["sp"]) for x in xs)), 3),
                        mean_accepted=round(statistics.mean(taus), 2) if taus else None,
                        exact_match=round(sum(x["same"] for x in xs) / len(xs), 3), n=len(xs))
        summary[m] = dict(overall=agg(allr), **{c: agg(v) for c, v in per_cat.items()})
    print("\n| method | category | tok/s (median) | speedup vs ar (mean) | geo | tau | exact match vs ar | n |")
    print("|---|---|---|---|---|---|---|---|")
    for m, s in summary.items():
        for c, a in s.items():
            print(f"| {m} | {c} | {a['tokens_per_s']} | {a['speedup']} | {a['speedup_geo']} | {a['mean_accepted']} | {a['exact_match']} | {a['n']} |")
    print("\nfirst divergence from ar (position / ar length, ar's top-2 logit margin there):")
    for m, xs in margins.items():
        print(f"  {m}: " + ", ".join(f"{x['pos']}/{x['of']} ({x['margin']})" for x in xs))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(args=vars(args), summary=summary, margins=margins, records=records)))
    print(json.dumps({m: s["overall"] for m, s in summary.items()}))


if __name__ == "__main__":
    main()
