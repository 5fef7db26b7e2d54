"""Verify-cost curve: the cost of one target pass over root + n draft nodes, against a plain step.

For each n the pass is timed on a fixed context, as a chain (the model's own causal mask) and as a
tree (a best-first Token Recycling template, custom 4-D mask), followed by the commit that drops
the nodes again, so every repeat starts from the same cache. Sizes are interleaved within each
repeat and the median is reported, so a machine that slows down affects all sizes alike.

Run: quickdraft bench --profile-verify [--model NAME] [--context 300] [--repeats 15]
"""

from __future__ import annotations

from ..tuning import SIZES, measure  # noqa: F401  (the measurement itself lives with the tuner)


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
