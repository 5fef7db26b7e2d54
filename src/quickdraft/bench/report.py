"""Benchmark arithmetic and presentation: records in, report.json / report.md / speedup.png out.

A record is one generation: one question, turn, method and repeat. A *unit* is one question in
one repeat; its speed for a method is the method's new tokens over its wall time, summed over the
question's turns (Spec-Bench's per-question speed). Invariants of `aggregate`:
  * A record with an error is never timed: a unit in which any turn of a method or of the baseline
    failed is left out of that method's figures, so every figure of a method is over the same
    units as its speedup. `errors` counts failed generations (not the later turns skipped after one).
  * speedup = mean over units of speed(method) / speed(baseline), on the units both completed;
    `speedup_of_means` = mean speed(method) / mean speed(baseline) on the same units (Spec-Bench's
    speed.py reports this second form).
  * tokens_per_s is the mean of the unit speeds; mean_accepted = new tokens / target passes, over
    units whose passes are all known; exact_match = share of paired units whose every turn has
    exactly the baseline's token ids.
  * roofline = tokens_per_s / (bandwidth / bytes of weights read per token).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

OVERALL = "overall"
SKIPPED = "skipped:"  # error prefix of turns not run because an earlier turn of the conversation failed


def units(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """{(question_id, repeat): {method: [records by turn]}}."""
    out: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        out[(r["question_id"], r["repeat"])][r["method"]].append(r)
    for d in out.values():
        for rs in d.values():
            rs.sort(key=lambda r: r["turn"])
    return out


def failed(r: dict) -> bool:
    """A generation that raised (not one skipped because an earlier turn had failed)."""
    return bool(r.get("error")) and not r["error"].startswith(SKIPPED)


def error_samples(records: list[dict]) -> dict[str, tuple[int, str]]:
    """{method: (failed generations, the first error message)}."""
    out: dict[str, tuple[int, str]] = {}
    for r in records:
        if failed(r):
            n, msg = out.get(r["method"], (0, r["error"]))
            out[r["method"]] = (n + 1, msg)
    return out


def _ok(rs: list[dict] | None) -> bool:
    """Every turn ran without error and took measurable time."""
    return bool(rs) and all(not r.get("error") for r in rs) and sum(r["wall_s"] for r in rs) > 0


def _speed(rs: list[dict]) -> float:
    return sum(r["new_tokens"] for r in rs) / sum(r["wall_s"] for r in rs)


def _stats(method: str, baseline: str, units: list[dict[str, list[dict]]], limit: float | None) -> dict:
    paired = [(d[method], d[baseline]) for d in units if _ok(d.get(method)) and _ok(d.get(baseline))]
    mine = [a for a, _ in paired]  # every figure is over the questions this method and the baseline completed
    errors = sum(1 for d in units for r in d.get(method, []) if failed(r))
    speeds = [_speed(rs) for rs in mine]
    out: dict = {"n": len(mine), "errors": errors}
    out["tokens_per_s"] = round(statistics.mean(speeds), 3) if speeds else None
    out["tokens_per_s_median"] = round(statistics.median(speeds), 3) if speeds else None
    ratios = [_speed(a) / _speed(b) for a, b in paired]
    out["speedup"] = round(statistics.mean(ratios), 4) if ratios else None
    out["speedup_geomean"] = round(math.exp(statistics.mean(math.log(x) for x in ratios)), 4) if ratios and min(ratios) > 0 else None
    mb = statistics.mean(_speed(b) for _, b in paired) if paired else 0
    out["speedup_of_means"] = round(statistics.mean(speeds) / mb, 4) if mb > 0 else None
    known = [rs for rs in mine if all(r.get("steps") for r in rs)]
    steps = sum(r["steps"] for rs in known for r in rs)
    out["mean_accepted"] = round(sum(r["new_tokens"] for rs in known for r in rs) / steps, 4) if steps else None
    out["exact_match"] = (round(sum(all(x["token_ids"] == y["token_ids"] for x, y in zip(a, b)) and len(a) == len(b)
                                    for a, b in paired) / len(paired), 4) if paired else None)
    out["roofline"] = round(out["tokens_per_s"] / limit, 4) if limit and out["tokens_per_s"] else None
    budgets = [b for rs in mine for r in rs for b in (r.get("budgets") or [])]
    out["budget_median"] = statistics.median(budgets) if budgets else None  # per step, self-tuned or fixed
    out["plain_share"] = round(sum(b == 0 for b in budgets) / len(budgets), 4) if budgets else None
    drafted = [d for rs in mine for r in rs for d in (r.get("drafted") or [])]  # records before drafted: none
    out["drafted_median"] = statistics.median(drafted) if drafted else None  # nodes scored per step
    out["plain_step_share"] = round(sum(d == 0 for d in drafted) / len(drafted), 4) if drafted else None
    return out


def aggregate(records: list[dict], methods: list[str], baseline: str = "ar",
              bandwidth_gbps: float | None = None, weight_bytes: dict[str, int] | None = None,
              others: list[str] = ()) -> dict:
    """{"methods": {method: {"overall": stats, category: stats, ...}}, "categories": [...],
    "against": {other baseline: {method: comparison}}} (others: the baselines besides `baseline`)."""
    grouped = units(records)
    cats = list(dict.fromkeys(r["category"] for r in records))
    by_cat = defaultdict(list)
    for d in grouped.values():
        cat = next(iter(d.values()))[0]["category"]
        by_cat[cat].append(d)
    out: dict = {"categories": cats, "methods": {}, "limits_tokens_per_s": {}}
    for m in methods:
        wb = (weight_bytes or {}).get(m)
        limit = bandwidth_gbps * 1e9 / wb if bandwidth_gbps and wb else None
        out["limits_tokens_per_s"][m] = round(limit, 2) if limit else None
        per = {OVERALL: _stats(m, baseline, list(grouped.values()), limit)}
        for c in cats:
            per[c] = _stats(m, baseline, by_cat[c], limit)
        out["methods"][m] = per
    mine = [m for m in methods if m not in others]
    out["against"] = {b: {m: _against(m, b, grouped, by_cat, cats) for m in mine} for b in others if b in methods}
    return out


def _against(method: str, other: str, grouped: dict, by_cat: dict, cats: list[str]) -> dict:
    """method over another baseline: {"speedup", "speedup_of_means", "lowest": [category, speedup]}."""
    s = _stats(method, other, list(grouped.values()), None)
    per = [(c, _stats(method, other, by_cat[c], None)["speedup"]) for c in cats]
    per = [(c, x) for c, x in per if x is not None]
    return {"speedup": s["speedup"], "speedup_of_means": s["speedup_of_means"], "n": s["n"],
            "lowest": list(min(per, key=lambda cx: cx[1])) if per else None}


def _f(x, fmt: str = "{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _kernels(mm: dict | None) -> str:
    if not mm or not mm.get("batched_linears"):
        return "torch's own kernels for every method"
    if mm.get("kernel") == "onednn":
        fused = f", {mm['fused_linears']} of them fused in q/k/v and gate/up products" if mm.get("fused_linears") else ""
        return (f"the engine's methods run {mm['batched_linears']} linear layers on oneDNN prepacked bf16 weights{fused} "
                f"(same output bits as torch's; --matmul {mm.get('mode')}); baselines run stock transformers")
    return (f"the engine's methods run {mm['batched_linears']} linear layers through FBGEMM's fp16-weight GEMM "
            f"when a pass has several rows (--matmul {mm.get('mode')}); baselines run stock transformers")


def _harvest_line(h: dict | None) -> list[str]:
    if not h or not h.get("rows"):
        return []
    rows = ", ".join(f"{m} {n}" for m, n in h["rows"].items())
    return [f"- Prompt harvest (the LM head's top-k over the prompt's last rows, cut to what each drafter's "
            f"harvest_cost allows at {h['row_ms']} ms a row, measured at start): {rows} rows"]


def markdown(report: dict) -> str:
    """The tables a person reads."""
    meth = report["methods"]
    names = list(meth)
    base = report["baseline"]
    mc = report["machine"]
    bw = mc.get("memory_bandwidth", {})
    lines = [
        f"# quickdraft bench: {report['model']} ({report['dtype']})",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['started']}; duration {report['duration_s'] / 60:.1f} min",
        f"- Data: {report['data']} — {report['questions']} questions, categories: {', '.join(report['categories'])}; "
        f"{report['max_new_tokens']} new tokens max, greedy, {report['repeats']} repeat(s)",
        f"- Machine: {mc.get('cpu')}, {mc.get('cores')} cores ({mc.get('torch_threads')} torch threads), "
        f"{mc.get('memory_gb')} GB; torch {mc.get('torch')}, transformers {mc.get('transformers')}, "
        f"Python {mc.get('python')}; native bf16 GEMM: {_f(mc.get('native_bf16_gemm'), '{}')}",
        f"- Matrix products: {_kernels(report.get('matmul'))}",
        *_harvest_line(report.get("harvest")),
        f"- Memory bandwidth (measured): read {bw.get('read_gbps')} GB/s, copy {bw.get('copy_gbps')} GB/s; "
        f"weights read per token: {report['weight_bytes'] / 1e6:.0f} MB, so plain decoding is bounded by "
        f"{_f(report.get('limit_tokens_per_s'), '{:.1f}')} tok/s",
        "",
        "Speedup is against `" + base + "` (plain decoding in this engine), computed per question then averaged "
        "(a question's speed = its new tokens / wall time summed over its turns); *ratio of means* is "
        "mean speed / mean baseline speed, the form Spec-Bench's speed.py prints. Tokens are the new token ids "
        "(an end-of-sequence token counts); wall time includes the prompt's prefill. *Passes*: new tokens per "
        "target forward pass. *Exact*: share of questions whose every turn has exactly the baseline's token ids. "
        "*Roofline*: tok/s over memory bandwidth / bytes of weights per token.",
        "",
        "## Overall",
        "",
        "| method | tok/s (mean) | tok/s (median) | speedup | ratio of means | tokens/pass | exact | roofline | questions | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in names:
        s = meth[m][OVERALL]
        lines.append(f"| {m} | {_f(s['tokens_per_s'], '{:.1f}')} | {_f(s['tokens_per_s_median'], '{:.1f}')} | "
                     f"{_f(s['speedup'], '{:.2f}x')} | {_f(s['speedup_of_means'], '{:.2f}x')} | "
                     f"{_f(s['mean_accepted'])} | {_f(s['exact_match'], '{:.0%}')} | {_f(s['roofline'])} | "
                     f"{s['n']} | {s['errors']} |")
    for title, key, fmt in (("Speedup per category", "speedup", "{:.2f}x"), ("Tokens/s per category", "tokens_per_s", "{:.1f}"),
                            ("Tokens per target pass per category", "mean_accepted", "{:.2f}"),
                            ("Exact match with the baseline per category", "exact_match", "{:.0%}")):
        lines += ["", f"## {title}", "", "| category | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for c in report["categories"]:
            lines.append(f"| {c} | " + " | ".join(_f(meth[m][c][key], fmt) for m in names) + " |")
    for b, rows in (report.get("against") or {}).items():
        lines += ["", f"## Against {b}", "",
                  f"Each engine method over `{b}` by the same rule (per question, then averaged, on the questions "
                  "both completed); the lowest category in brackets.", "",
                  "| method | speedup | ratio of means | lowest category | questions |", "|---|---|---|---|---|"]
        for m, a in rows.items():
            low = f"{_f(a['lowest'][1], '{:.2f}x')} ({a['lowest'][0]})" if a.get("lowest") else "–"
            lines.append(f"| {m} | {_f(a['speedup'], '{:.2f}x')} | {_f(a['speedup_of_means'], '{:.2f}x')} | {low} | {a['n']} |")
    tuned = [m for m in names if meth[m][OVERALL].get("budget_median") is not None
             and any(meth[m][g].get("budget_median") for g in [OVERALL, *report["categories"]])]
    if tuned:
        lines += ["", "## Draft budget per step", "",
                  "Median tree budget per step (nodes) chosen by the self-tuner (or fixed with `--set budget=N`), "
                  "and in brackets the share of steps it made plain (budget 0). Where records say how many nodes "
                  "were scored (after the per-step cut of drafts with acceptance estimates, and for drafters that "
                  "had less to offer), *budget / scored* and the share of steps that scored none.", "",
                  "| category | " + " | ".join(tuned) + " |", "|---" * (len(tuned) + 1) + "|"]

        def cell(st: dict) -> str:
            if st.get("drafted_median") is None:
                return f"{_f(st.get('budget_median'), '{:g}')} ({_f(st.get('plain_share'), '{:.0%}')})"
            return (f"{_f(st.get('budget_median'), '{:g}')} / {_f(st.get('drafted_median'), '{:g}')} "
                    f"({_f(st.get('plain_step_share'), '{:.0%}')})")

        for g in [*report["categories"], OVERALL]:
            lines.append(f"| {g} | " + " | ".join(cell(meth[m][g]) for m in tuned) + " |")
    pc = report.get("pass_costs")
    if pc:
        lines += ["", "## Cost of a pass", "",
                  "Cost of one target pass over root + n draft nodes, in plain steps: the curve measured when the "
                  f"engine started (plain step {pc['start_t1_ms']} ms) and what the self-tuner's clock learnt from "
                  f"the run's own passes (plain step {pc['learnt_t1_ms']} ms), with the decayed number of passes "
                  "timed at each size at the end (sizes never timed move with their timed neighbours).", "",
                  "| nodes | " + " | ".join(str(n) for n in pc["sizes"]) + " |", "|---" * (len(pc["sizes"]) + 1) + "|",
                  "| start-up curve | " + " | ".join(f"{c:.2f}" for c in pc["start"]) + " |",
                  "| learnt in the run | " + " | ".join(f"{c:.2f}" for c in pc["learnt"]) + " |",
                  "| passes timed | " + " | ".join(f"{c:g}" for c in pc["timed"]) + " |"]
    if report.get("divergence"):
        lines += ["", f"## Where greedy outputs differ from {base}", "",
                  f"For each question whose output differs: the first differing turn whose prompt is still {base}'s, "
                  f"the first differing token, and {base}'s top-2 logit margin there (one plain forward). Scoring "
                  "several tokens per pass uses other matrix shapes, which round differently in low precision; a "
                  "margin within a few rounding steps of the logits is a near-tie, a large margin would be a bug.",
                  "", "| method | questions differing | first differing token (median) | margin median | margin max |",
                  "|---|---|---|---|---|"]
        for m, ds in report["divergence"].items():
            if ds:
                ms = sorted(d["margin"] for d in ds)
                lines.append(f"| {m} | {len(ds)} | {statistics.median(d['pos'] for d in ds):.0f} | "
                             f"{statistics.median(ms):.3f} | {ms[-1]:.3f} |")
            else:
                lines.append(f"| {m} | 0 | – | – | – |")
    if report.get("skipped"):
        lines += ["", "## Skipped methods", ""] + [f"- `{m}`: {why}" for m, why in report["skipped"].items()]
    if report.get("error_samples"):
        lines += ["", "## Errors (first of each kind)", ""]
        lines += [f"- `{m}` ({n} generation{'s' if n != 1 else ''}): {msg}" for m, (n, msg) in report["error_samples"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot_speedup(report: dict, path) -> None:
    """Grouped bars: speedup over the baseline per category (and overall), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in report["methods"] if m != report["baseline"]]
    groups = report["categories"] + [OVERALL]
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.16 * len(groups) * max(1, len(methods)) + 2)), 5))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = [report["methods"][m][g]["speedup"] or 0 for g in groups]
        ax.bar([k + (i - (len(methods) - 1) / 2) * width for k in range(len(groups))], ys, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(f"speedup over {report['baseline']}")
    ax.set_title(f"{report['model']} ({report['dtype']}), {report['max_new_tokens']} new tokens, greedy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, max(1, len(methods))), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
