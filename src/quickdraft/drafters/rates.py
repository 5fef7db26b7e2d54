"""Online acceptance rates per node kind, and the node values drafters put in `Draft.values`.

A drafter labels each node of its draft with a *kind*: a small hashable tuple saying where the node
came from (a context match of length n, the rank-r successor in a table, a probability bin) and how
deep it is. The rate of a kind estimates P(node accepted | its parent is the root or was accepted),
from counts decayed by `decay` per update and a prior worth `weight` observations. A node's value is
the product of the rates along its path: the drafter's estimate that it is accepted, which the
self-tuner's per-step cut reads (tuning.BudgetTuner.trim).

Invariants:
  * Counts change only in `observe`, and only for nodes that were scored: a node counts as reached
    when its parent is the root or on the accepted path, as accepted when it is on the path. Nodes
    cut from a draft before the pass are neither.
  * Rates are in (0, 1) (priors must be), so values are in (0, 1] and never grow from a parent to
    its child: a best-first draft's values are non-increasing along every path.
  * Rates never read token ids, so they cannot change what is generated (the verifier decides).
`values_reference` (walk up each node's path) is the slow obvious version of `values`.
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch
from torch import Tensor

Kind = Hashable
SCORE_BINS = (0.1, 0.25, 0.5, 0.8)  # a drafter's own probability for a node -> bin 0..4


def score_bin(p: float) -> int:
    return sum(p >= b for b in SCORE_BINS)


def bin_prior(b: int, scale: float) -> float:
    """Prior rate of a node in score bin b: the bin's middle probability times scale (< 1: drafters'
    own probabilities run high)."""
    lo, hi = ((0.0,) + SCORE_BINS)[b], (SCORE_BINS + (1.0,))[b]
    return (lo + hi) / 2 * scale


class NodeRates:
    """Decayed (reached, accepted) counts per kind, with a prior rate per kind."""

    def __init__(self, prior: Callable[[Kind], float], weight: float = 4.0, decay: float = 0.995) -> None:
        self.prior = prior  # kind -> prior rate in (0, 1)
        self.weight = weight  # pseudo-observations behind each prior
        self.decay = decay  # per update of a kind's counts
        self.counts: dict[Kind, list[float]] = {}  # kind -> [reached, accepted]

    def rate(self, kind: Kind) -> float:
        c = self.counts.get(kind)
        p = self.prior(kind)
        if c is None:
            return p
        return (c[1] + self.weight * p) / (c[0] + self.weight)

    def values(self, kinds: Sequence[Kind], parents: Sequence[int]) -> Tensor:
        """[n] float64: product of the rates along each node's path (parents[i] < i, -1 = root)."""
        out: list[float] = []
        memo: dict[Kind, float] = {}
        for kind, p in zip(kinds, parents):
            r = memo.get(kind)
            if r is None:
                r = memo[kind] = self.rate(kind)
            out.append(r * (out[p] if p >= 0 else 1.0))
        return torch.tensor(out, dtype=torch.float64)

    def observe(self, kinds: Sequence[Kind], parents: Sequence[int], path: Sequence[int]) -> None:
        """After a pass over the first len(parents) nodes of a draft whose nodes had `kinds`."""
        on_path = set(path)
        d = self.decay
        for i, p in enumerate(parents[: len(kinds)]):
            if p < 0 or p in on_path:  # reached: the parent is the root or was accepted
                c = self.counts.setdefault(kinds[i], [0.0, 0.0])
                c[0] = c[0] * d + 1
                c[1] = c[1] * d + (i in on_path)

    def reset(self) -> None:
        self.counts.clear()


def values_reference(rates: NodeRates, kinds: Sequence[Kind], parents: Sequence[int]) -> list[float]:
    """Slow reference for NodeRates.values: for each node, walk to the root multiplying rates."""
    out = []
    for i in range(len(kinds)):
        v, j = 1.0, i
        while j >= 0:
            v *= rates.rate(kinds[j])
            j = parents[j]
        out.append(v)
    return out


def depths(parents: Sequence[int]) -> list[int]:
    """Depth of each node below the root (a child of the root has depth 1)."""
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out
