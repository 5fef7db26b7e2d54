"""Verify-cost curve: the cost of one target pass over root + n draft nodes, against a plain step.

For each n the pass is timed on a fixed context, as a chain (the model's own causal mask) and as a
tree (a best-first Token Recycling template, custom 4-D mask), followed by the commit that drops
the nodes again, so every repeat starts from the same cache. Sizes are interleaved within each
repeat and the median is reported, so a machine that slows down affects all sizes alike.

Run: quickdraft bench --profile-verify [--model NAME] [--context 300] [--repeats 15]
"""

from __future__ import annotations

import statistics
import time

import torch

from .. import tree
from ..backend import HFBackend
from ..drafters.recycling import best_first_template
from ..types import Draft

SIZES = (0, 1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def template_draft(n: int, vocab: int, rng: torch.Generator) -> Draft:
    tmpl = best_first_template(n, (0.5, 0.16, 0.07, 0.04, 0.025, 0.02, 0.015, 0.01), 8)
    tokens = torch.randint(0, vocab, (n,), generator=rng)
    return Draft(tokens, torch.tensor([p for p, _ in tmpl], dtype=torch.long))


def measure(backend: HFBackend, context: list[int], sizes=SIZES, repeats: int = 15, seed: int = 0) -> dict:
    """{"chain": {n: ratio}, "tree": {n: ratio}, "t1_ms": plain step ms} (ratios to n = 0)."""
    rng = torch.Generator().manual_seed(seed)
    vocab = backend.vocab_size
    backend.prefill(context[:-1])
    root = context[-1]
    drafts = {}
    for n in sizes:
        drafts[("chain", n)] = tree.chain(torch.randint(0, vocab, (n,), generator=rng).tolist())
        drafts[("tree", n)] = template_draft(n, vocab, rng) if n else drafts[("chain", 0)]
    times: dict[tuple[str, int], list[float]] = {k: [] for k in drafts}
    for _ in range(2):  # warm-up
        for d in drafts.values():
            backend.score(root, d)
            backend.commit([])
    for _ in range(repeats):
        for key, d in drafts.items():
            t = time.perf_counter()
            backend.score(root, d)
            backend.commit([])
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    t1 = med[("chain", 0)]
    return {
        "t1_ms": round(t1 * 1e3, 2),
        "chain": {n: round(med[("chain", n)] / t1, 3) for n in sizes},
        "tree": {n: round(med[("tree", n)] / t1, 3) for n in sizes},
    }


def table(result: dict) -> str:
    sizes = list(result["chain"])
    lines = ["| shape | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for shape in ("chain", "tree"):
        lines.append(f"| {shape} | " + " | ".join(f"{result[shape][n]:.2f}" for n in sizes) + " |")
    return "\n".join(lines)


def plot(result: dict, path) -> None:
    """Cost ratio against n for chain and tree, with the drafters' default sizes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for shape, style in (("chain", "o-"), ("tree", "s--")):
        xs = [int(n) for n in result[shape]]
        ax.plot(xs, [result[shape][n] for n in result[shape]], style, label=shape, markersize=4)
    for m, n in result.get("default_nodes", {}).items():
        ax.axvline(n, color="grey", linewidth=0.7, linestyle=":")
        ax.annotate(f"{m} ({n})", (n, ax.get_ylim()[1]), rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("draft nodes n verified with the root in one pass")
    ax.set_ylabel("pass time / plain step time")
    ax.set_title(f"{result['model']} ({result['dtype']}), context {result['context']}, T1 = {result['t1_ms']} ms")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
