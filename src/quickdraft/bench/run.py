"""`quickdraft bench`: Spec-Bench questions, every method against plain decoding, same process.

Order of work (so that a machine slowing down hurts every method alike): load, measure memory
bandwidth, warm every method up, then for each repeat, question and turn run every method back to
back, rotating which method goes first from one question to the next. Each method keeps its own
conversation: turn k's prompt holds that method's own answers to turns 1..k-1 (as Spec-Bench
does). A generation that raises is recorded with its error and never timed; the later turns of
that conversation are recorded as errors too. `records.jsonl` is written line by line as the run
goes, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from .. import drafters
from ..errors import QuickdraftError
from . import report as rep
from .data import DEFAULT_DATA, load_questions, select
from .machine import facts, weight_bytes
from .runners import BASELINES, EngineRunner, make_runner, needs_draft_model, unavailable

BASELINE = "ar"


def _baselines(methods: list[str]) -> list[str]:
    """The methods that are baselines from BASELINES (what users would run instead), in order."""
    return [m for m in methods if m in BASELINES]


def parse_methods(text: str, draft_model: str | None) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise QuickdraftError("--methods is empty; give a comma-separated list such as ar,pld,hf")
    known = drafters.names() + list(BASELINES)
    unknown = [m for m in methods if m.split(":")[0] not in known or (":" in m and m.split(":")[0] in BASELINES)]
    if unknown:
        raise QuickdraftError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                              f"choose from: {', '.join(known)} (a drafter may take settings: goose:budget=24)")
    for m in methods:
        name, *settings = m.split(":")
        if settings:  # a drafter with settings, e.g. goose:budget=24 (checked now, before loading anything)
            drafters.make_config(name, settings)
        if needs_draft_model(m) and not draft_model:
            raise QuickdraftError(f"{m} needs a draft model; pass --draft-model NAME (or drop {m})")
    methods = list(dict.fromkeys(methods))
    if BASELINE not in methods:  # speedups are against plain decoding in this engine
        methods.insert(0, BASELINE)
    return methods


def gguf_of(model: str) -> Path | None:
    from ..models import MODELS, gguf_path

    if model in MODELS:
        return gguf_path(model)
    p = Path(model).expanduser()
    return p if p.is_file() and p.suffix.lower() == ".gguf" else None


class Conversation:
    """One method's conversation on one question: prompt ids for the next turn."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.messages: list[dict] = []
        self.raw = ""

    def prompt(self, turn: str) -> list[int]:
        eng = self.engine
        if eng.has_chat_template:
            self.messages.append({"role": "user", "content": turn})
            return eng.encode_turns(self.messages)
        self.raw = (self.raw + "\n\n" + turn) if self.raw else turn
        return eng.encode(self.raw, chat=False)

    def answer(self, tokens: list[int]) -> None:
        text = self.engine.tokenizer.decode(tokens, skip_special_tokens=True)
        if self.engine.has_chat_template:
            self.messages.append({"role": "assistant", "content": text})
        else:
            self.raw += text


def divergences(engine, questions, records: list[dict], methods: list[str], baseline: str = BASELINE,
                progress: bool = True) -> dict[str, list[dict]]:
    """Where a method's greedy output differs from the baseline's: the first differing turn whose
    prompt is still the baseline's (all earlier turns equal), the first differing position, and
    the baseline model's top-2 logit margin there (one plain forward over prompt + common prefix).
    A margin near 0 is a near-tie that other matrix shapes may round the other way."""
    import torch
    from tqdm import tqdm

    qmap = {q.question_id: q for q in questions}
    todo = []  # (method, question id, repeat, turn, baseline records by turn, the method's token ids)
    for (qid, repeat), d in rep.units(records).items():
        a = d.get(baseline, [])
        if not a or any(r["error"] for r in a):
            continue
        for m in methods:
            rs = d.get(m, [])
            if m == baseline or not rs or any(r["error"] for r in rs):
                continue
            turn = next((t for t, (x, y) in enumerate(zip(rs, a)) if x["token_ids"] != y["token_ids"]), None)
            if turn is not None:
                todo.append((m, qid, repeat, turn, a, rs[turn]["token_ids"]))
    out: dict[str, list[dict]] = {m: [] for m in methods if m != baseline}
    cache: dict[tuple, float] = {}
    for m, qid, repeat, turn, a, mine in tqdm(todo, desc="divergence", unit="output", file=sys.stderr,
                                               disable=not progress or not todo):
        conv = Conversation(engine)
        for k in range(turn):
            conv.prompt(qmap[qid].turns[k])
            conv.answer(a[k]["token_ids"])
        ids = conv.prompt(qmap[qid].turns[turn])
        ref = a[turn]["token_ids"]
        pos = next((i for i, (u, v) in enumerate(zip(mine, ref)) if u != v), min(len(mine), len(ref)))
        key = (qid, repeat, turn, pos)
        if key not in cache:
            with torch.inference_mode():
                logits = engine.model(input_ids=torch.tensor([ids + ref[:pos]]), logits_to_keep=1).logits[0, -1].float()
            top2 = logits.topk(2).values
            cache[key] = round(float(top2[0] - top2[1]), 4)
        out[m].append(dict(question_id=qid, repeat=repeat, turn=turn, pos=pos, margin=cache[key]))
    return out


def _check_out(out: Path) -> None:
    """Create --out and make sure it is writable, without touching what is in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".quickdraft-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise QuickdraftError(f"cannot write to --out {out} ({e.strerror}); pick a writable folder") from None


def _error_text(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def run_bench(args, command: str | None = None) -> dict:
    """Run the benchmark described by the parsed CLI args; write every output; return the summary."""
    import torch
    from tqdm import tqdm

    from ..engine import Engine
    from ..models import DEFAULT_MODEL
    from ..models.load import check_source

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    max_new = args.max_new_tokens
    if max_new < 1:
        raise QuickdraftError("--max-new-tokens must be at least 1")
    repeats = 1 if args.repeats is None else args.repeats
    if repeats < 1:
        raise QuickdraftError("--repeats must be at least 1")
    methods = parse_methods(args.methods, args.draft_model)
    for m in methods:
        if m in drafters.names():
            drafters.make_config(m, [])
    data = Path(args.data) if args.data else DEFAULT_DATA
    cats = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    questions = select(load_questions(data), cats, args.per_category)
    out = Path(args.out)
    _check_out(out)

    model_name = args.model or DEFAULT_MODEL
    check_source(model_name)  # bad names fail here, before any slow load
    if any(needs_draft_model(m) for m in methods):
        check_source(args.draft_model)
    gguf = gguf_of(model_name)
    skipped = {m: why for m in methods if (why := unavailable(m, gguf))}
    for m, reason in skipped.items():
        print(f"quickdraft: bench: skipping {m}: {reason}", file=sys.stderr)
    methods = [m for m in methods if m not in skipped]

    import transformers

    transformers.logging.set_verbosity_error()  # generate()'s advice would break the progress bar
    dtype = getattr(torch, args.dtype)
    engine = Engine.load(model_name, dtype, args.matmul)
    # Baselines are what users would run instead: stock transformers, so when the engine swapped
    # kernels (backend/matmul.py) or attention (backend/attention.py) they get a second, unmodified
    # copy of the same weights.
    modified = engine.batched_linears or engine.backend.tree_attention
    stock = (Engine.load(model_name, dtype, "torch", tree_attention=False)
             if modified and any(m in BASELINES for m in methods) else engine)
    wants_draft = any(needs_draft_model(m) for m in methods)
    assistant = Engine.load(args.draft_model, dtype, "torch", tree_attention=False) if wants_draft else None
    runners = {}
    for m in methods:
        try:
            runners[m] = make_runner(m, engine, stock=stock, assistant=assistant, gguf=gguf,
                                     n_ctx=min(engine.backend.max_context, 8192))
        except QuickdraftError:
            raise
        except Exception as e:  # e.g. llama.cpp failing to open the file: report, go on without it
            skipped[m] = f"could not start ({_error_text(e)})"
            print(f"quickdraft: bench: skipping {m}: {skipped[m]}", file=sys.stderr)
    methods = [m for m in methods if m in runners]
    if BASELINE not in runners:
        raise QuickdraftError("the baseline ar could not start")

    print(f"quickdraft bench: {engine.name} ({args.dtype}), {len(questions)} questions, methods "
          f"{', '.join(methods)}, {max_new} new tokens, {repeats} repeat(s); measuring memory bandwidth",
          file=sys.stderr)
    machine = facts(bandwidth=True)
    target_bytes = weight_bytes(engine.model)
    wbytes = {m: getattr(r, "weight_bytes", target_bytes) for m, r in runners.items()}
    warm = Conversation(engine).prompt("Say hello.")

    def warm_up() -> None:  # every method once on a short prompt, not recorded
        for r in runners.values():
            try:
                r.generate(warm, min(8, max_new))
            except Exception:
                pass  # a method that fails will fail again in the run and be recorded there

    warm_up()
    ctx = engine.backend.max_context

    total = repeats * sum(len(q.turns) for q in questions) * len(methods)
    records: list[dict] = []
    bar = tqdm(total=total, desc="bench", unit="gen", file=sys.stderr, dynamic_ncols=True)
    with open(out / "records.jsonl", "w", encoding="utf-8") as fh:
        for repeat in range(repeats):
            if repeat:  # drafters that learn across requests start each repeat as fresh as the first
                engine.reset_drafters()
                warm_up()
            for qi, q in enumerate(questions):
                k = (qi + repeat) % len(methods)
                order = methods[k:] + methods[:k]
                convs = {m: Conversation(engine) for m in methods}
                failed: dict[str, str] = {}
                for turn, text in enumerate(q.turns):
                    for m in order:
                        bar.set_postfix_str(f"q{q.question_id} t{turn + 1} {m}", refresh=False)
                        rec = dict(question_id=q.question_id, category=q.category, turn=turn, repeat=repeat,
                                   method=m, prompt_tokens=None, token_ids=[], new_tokens=0, steps=None,
                                   wall_s=None, accepted_lengths=None, budgets=None, drafted=None, error=None)
                        if m in failed:
                            rec["error"] = f"{rep.SKIPPED} an earlier turn failed ({failed[m]})"
                        else:
                            try:
                                ids = convs[m].prompt(text)
                                rec["prompt_tokens"] = len(ids)
                                if len(ids) >= ctx:  # the engine's rule, applied to every method alike
                                    raise QuickdraftError(f"the prompt has {len(ids)} tokens but the model's "
                                                          f"context is {ctx}")
                                res = runners[m].generate(ids, min(max_new, ctx - len(ids)))
                                convs[m].answer(res.tokens)
                                rec.update(token_ids=res.tokens, new_tokens=len(res.tokens), steps=res.steps,
                                           wall_s=round(res.wall_s, 6), accepted_lengths=res.accepted,
                                           budgets=res.budgets, drafted=res.drafted)
                            except KeyboardInterrupt:
                                raise
                            except Exception as e:
                                rec["error"] = _error_text(e)
                                failed[m] = rec["error"]
                        records.append(rec)
                        fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                        bar.update(1)
    bar.close()

    checked = [m for m in methods if runners[m].same_weights]
    try:
        diverged = divergences(engine, questions, records, checked)
    except Exception as e:  # never lose the measured run over the analysis
        diverged = {}
        print(f"quickdraft: bench: divergence analysis failed ({_error_text(e)})", file=sys.stderr)
    bw = machine["memory_bandwidth"]["read_gbps"]
    agg = rep.aggregate(records, methods, BASELINE, bandwidth_gbps=bw, weight_bytes=wbytes, others=_baselines(methods))
    notes = list(dict.fromkeys(BASELINES[m].note for m in _baselines(methods) if BASELINES[m].note))
    if not engine.has_chat_template:
        notes.append(f"{engine.name} has no chat template: turns are joined as raw text.")
    harvest = {m: n for m in methods if isinstance(runners[m], EngineRunner)
               and (n := engine.drafter(runners[m].method, runners[m].settings).prefill_logits) > 0}  # prompt rows
    report = {
        "model": engine.name, "dtype": args.dtype, "baseline": BASELINE,
        "harvest": {"row_ms": round(engine.harvest_row_s() * 1e3, 3), "rows": harvest} if harvest else None,
        "matmul": {"mode": args.matmul, "batched_linears": engine.batched_linears,
                   "kernel": engine.matmul_kernel, "fused_linears": engine.fused_linears},
        "command": command or "quickdraft bench", "started": started,
        "duration_s": round(time.perf_counter() - t_start, 1),
        "data": str(data) if args.data else "Spec-Bench question.jsonl (bundled)",
        "questions": len(questions), "max_new_tokens": max_new, "repeats": repeats,
        "draft_model": args.draft_model if wants_draft else None,
        "machine": machine, "weight_bytes": target_bytes, "limit_tokens_per_s": round(bw * 1e9 / target_bytes, 2),
        "skipped": skipped, "error_samples": rep.error_samples(records), "notes": notes, "divergence": diverged,
        "pass_costs": engine.pass_costs(),
        **agg,
    }
    return write_report(out, report)


def write_report(out: Path, report: dict) -> dict:
    """Write report.json, report.md and speedup.png to out; print the overall table; return the summary."""
    md = rep.markdown(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(md, encoding="utf-8")
    rep.plot_speedup(report, out / "speedup.png")
    methods = list(report["methods"])
    summary = {"model": report["model"], "dtype": report["dtype"], "out": str(out), "questions": report["questions"],
               "duration_s": report["duration_s"],
               "methods": {m: {k: report["methods"][m][rep.OVERALL][k]
                               for k in ("tokens_per_s", "speedup", "mean_accepted", "exact_match", "errors")}
                           for m in methods},
               "skipped": sorted(report.get("skipped") or {})}
    print(md.split("## Speedup per category")[0].rstrip(), file=sys.stderr)
    return summary


def rebuild_report(folder: str) -> dict:
    """Recompute an earlier run's figures from its records.jsonl with this version's report code.

    The run's facts (command, machine, pass costs, divergences) come from its report.json; every
    figure derived from the records is computed again, so a report written before a new section
    existed gains it. Nothing is re-measured.
    """
    out = Path(folder)
    files = {name: out / name for name in ("report.json", "records.jsonl")}
    for f in files.values():
        if not f.is_file():
            raise QuickdraftError(f"{f} not found; --report-from needs a folder written by quickdraft bench")
    try:
        old = json.loads(files["report.json"].read_text(encoding="utf-8"))
        records = [json.loads(x) for x in files["records.jsonl"].read_text(encoding="utf-8").splitlines() if x.strip()]
        methods = list(old["methods"])
        bw = old["machine"]["memory_bandwidth"]["read_gbps"]
        limits = old.get("limits_tokens_per_s") or {}
        wbytes = {m: bw * 1e9 / limits[m] if limits.get(m) else old["weight_bytes"] for m in methods}
        agg = rep.aggregate(records, methods, old.get("baseline", BASELINE), bandwidth_gbps=bw, weight_bytes=wbytes,
                            others=_baselines(methods))
        errors = rep.error_samples(records)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError, ZeroDivisionError) as e:
        raise QuickdraftError(f"{out} does not hold a readable bench run ({type(e).__name__}: {e}); "
                              "rerun quickdraft bench") from None
    return write_report(out, {**old, **agg, "error_samples": errors})


def profile_verify(args) -> dict:
    """Cost of one target pass over n tree nodes / one plain step; table on stdout, verify_cost.png."""
    import torch

    from ..backend import HFBackend
    from ..backend.matmul import batch_linears, kernel_of
    from ..models import DEFAULT_MODEL, load
    from .verify_cost import SIZES, measure, plot, table

    repeats = 15 if args.repeats is None else args.repeats
    if repeats < 1:
        raise QuickdraftError("--repeats must be at least 1")
    if args.context < 1:
        raise QuickdraftError("--context must be at least 1")
    out = Path(args.out)
    _check_out(out)
    model, _, name = load(args.model or DEFAULT_MODEL, getattr(torch, args.dtype))
    batched = batch_linears(model, args.matmul)
    backend = HFBackend(model)
    sizes = tuple(n for n in SIZES if args.context + 1 + n <= backend.max_context)
    if len(sizes) < 2:
        raise QuickdraftError(f"--context {args.context} leaves no room for draft nodes in the model's context "
                              f"of {backend.max_context}; use a smaller --context")
    if sizes != SIZES:
        print(f"quickdraft: bench: note: the model's context ({backend.max_context}) fits up to {sizes[-1]} nodes "
              f"after a context of {args.context}", file=sys.stderr)
    g = torch.Generator().manual_seed(1)
    context = torch.randint(0, backend.vocab_size, (args.context,), generator=g).tolist()
    res = measure(backend, context, sizes=sizes, repeats=repeats)
    defaults = {m: drafters.create(m, [], vocab_size=backend.vocab_size).default_budget() for m in drafters.names()}
    result = {"model": name, "dtype": args.dtype, "context": args.context, "repeats": repeats,
              "matmul": {"mode": args.matmul, "batched_linears": batched, "kernel": kernel_of(model)},
              "default_nodes": {m: n for m, n in defaults.items() if n}, **res}
    print(f"{name} {args.dtype}, context {args.context}, plain step T1 = {res['t1_ms']} ms; "
          f"cost of one pass over root + n nodes / T1 (median of {repeats}):", file=sys.stderr)
    print(table(res))
    (out / "verify_cost.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "verify_cost.png")
    return {**result, "out": str(out)}


def command_line(argv: list[str]) -> str:
    return "quickdraft " + " ".join(shlex.quote(a) for a in argv)
