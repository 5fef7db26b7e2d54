"""`recycling`: Token Recycling (Luo et al., ACL 2025; ALGORITHMS.md item 1).

State: an adjacency matrix M [V, k] (int64, -1 = unknown) whose row v holds the target's top-k
next tokens the last time v was an input. Every scored position updates its row (root, all draft
nodes including rejected ones, and the prompt at prefill), and M persists across the requests of
one engine (hot start). Drafting fills a static tree template layer by layer with one gather per
layer: a node of rank r under a parent with token t gets token M[t, r].

The template is the best-first tree for the per-rank acceptance probabilities `rank_probs`: the
`nodes` nodes with the highest product of probabilities along their path (Sequoia/EAGLE-style).
`template_reference` is the slow obvious enumeration kept beside it and tested against it.

Values: a node's kind is (min(depth, 4), rank); its rate starts at rank_probs[rank] and is learnt
online (rates.NodeRates), so `Draft.values` tells the self-tuner how much of this step's tree pays.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import QuickdraftError
from ..types import Draft, Verdict
from . import register
from .base import BaseDrafter
from .rates import NodeRates, depths
from .topk import topk_rows


def best_first_template(nodes: int, rank_probs: Sequence[float], max_depth: int,
                        value_order: bool = False) -> list[tuple[int, int]]:
    """[(parent, rank)] of the `nodes` highest-value nodes in BFS order; parent -1 = root.

    Value of a node = product of rank_probs[rank] along its path from the root. value_order: keep
    the order nodes were picked in (decreasing value, parents first) instead, so the template for
    fewer nodes is a prefix of this one.
    """
    # heap of (-value, tiebreak, parent_id, rank, depth); ids index `chosen`
    counter = itertools.count()
    heap = [(-rank_probs[r], next(counter), -1, r, 1) for r in range(len(rank_probs))]
    heapq.heapify(heap)
    chosen: list[tuple[int, int, int, float]] = []  # (parent, rank, depth, value)
    while heap and len(chosen) < nodes:
        negv, _, parent, rank, depth = heapq.heappop(heap)
        me = len(chosen)
        chosen.append((parent, rank, depth, -negv))
        if depth < max_depth:
            for r in range(len(rank_probs)):
                heapq.heappush(heap, (negv * rank_probs[r], next(counter), me, r, depth + 1))
    if value_order:
        return [(p, r) for p, r, _, _ in chosen]
    # BFS order: by depth, then by (parent's new index, rank).
    order = sorted(range(len(chosen)), key=lambda i: (chosen[i][2], 0))
    new = {-1: -1}
    out: list[tuple[int, int]] = []
    for depth in sorted({c[2] for c in chosen}):
        layer = [i for i in order if chosen[i][2] == depth]
        layer.sort(key=lambda i: (new[chosen[i][0]], chosen[i][1]))
        for i in layer:
            new[i] = len(out)
            out.append((new[chosen[i][0]], chosen[i][1]))
    return out


def template_reference(nodes: int, rank_probs: Sequence[float], max_depth: int) -> set[tuple[int, ...]]:
    """Slow reference: enumerate every rank path up to max_depth, keep the `nodes` most valuable."""
    paths = []
    for d in range(1, max_depth + 1):
        for path in itertools.product(range(len(rank_probs)), repeat=d):
            v = 1.0
            for r in path:
                v *= rank_probs[r]
            paths.append((v, path))
    paths.sort(key=lambda x: -x[0])
    return {p for _, p in paths[:nodes]}


def template_paths(template: list[tuple[int, int]]) -> set[tuple[int, ...]]:
    """Rank path of every template node (for tests and docs)."""
    paths: list[tuple[int, ...]] = []
    for parent, rank in template:
        paths.append((paths[parent] if parent >= 0 else ()) + (rank,))
    return set(paths)


@register("recycling")
class TokenRecycling(BaseDrafter):
    prefix_consistent = True  # templates are in value order: fewer nodes = a prefix

    @dataclass(frozen=True)
    class Config:
        nodes: int = 64  # largest tree (the self-tuner's cap; --set budget=N fixes the size)
        start_nodes: int = 24  # the self-tuner's first size: best tau/cost on SmolLM2 here (docs/tuning.md)
        k: int = 8  # top-k successors stored per token (columns of M)
        max_depth: int = 8  # deepest level of the template
        # acceptance rate of the rank-r successor given its parent was reached; shapes the template
        # (measured on SmolLM2-135M over 26 Spec-Bench prompts, docs/tuning.md)
        rank_probs: tuple[float, ...] = (0.41, 0.08, 0.06, 0.04, 0.04, 0.04, 0.02, 0.02)
        harvest_prompt: bool = True  # also learn from the prompt's logits (costs the LM head over those rows)
        harvest_rows: int = 256  # ... of at most this many last prompt positions (docs/tuning.md: a long
        # prompt's full harvest cost Qwen-0.5B seconds of prefill on an AVX2 CPU)
        harvest_cost: float = 0.25  # ... cut to the rows whose LM head and top-k take at most this many
        # plain steps here (the engine measures a row's cost at start; docs/tuning.md); inf: no cut

        def validate(self) -> None:
            if not (1 <= self.nodes <= 1024 and 1 <= self.k <= 64 and 1 <= self.max_depth <= 64):
                raise QuickdraftError("recycling needs 1 <= nodes <= 1024, 1 <= k <= 64, 1 <= max_depth <= 64; fix --set")
            if not self.rank_probs or any(not 0 < p <= 1 for p in self.rank_probs):
                raise QuickdraftError("recycling rank_probs must be numbers in (0, 1]; fix --set rank_probs")
            if not 0 <= self.harvest_rows <= 1024:
                raise QuickdraftError("recycling needs 0 <= harvest_rows <= 1024; fix --set harvest_rows")
            if not self.harvest_cost >= 0:
                raise QuickdraftError("recycling needs harvest_cost >= 0 (plain steps; inf for no cut); fix --set harvest_cost")

    def __init__(self, config: "TokenRecycling.Config", vocab_size: int = 0, **env) -> None:
        if vocab_size <= 0:
            raise ValueError("TokenRecycling needs the vocab size")
        if config.k > vocab_size:
            raise QuickdraftError(f"recycling k={config.k} exceeds the vocabulary ({vocab_size}); lower --set k")
        self.config = config
        self.prefill_logits = config.harvest_rows if config.harvest_prompt else 0
        self.prefill_cost = config.harvest_cost
        self.k = config.k
        self.adjacency = torch.full((vocab_size, self.k), -1, dtype=torch.long)  # [V, k]
        self._templates: dict[int, tuple[Tensor, Tensor, list[Tensor], list[tuple[int, int]]]] = {}
        self.rates = NodeRates(lambda kind: config.rank_probs[kind[1]])  # kind: (depth <= 4, rank)
        self._kinds: list[tuple[int, int]] = []  # kinds of the last proposal's nodes

    def template(self, nodes: int) -> tuple[Tensor, Tensor, list[Tensor], list[tuple[int, int]]]:
        """(parents [N], ranks [N], [node indices of depth d, d = 1, 2, ...], node kinds) of the
        best-first N-node tree, nodes in decreasing value (so the template for fewer nodes is a prefix)."""
        if nodes not in self._templates:
            tmpl = best_first_template(nodes, self.config.rank_probs[: self.k], self.config.max_depth, value_order=True)
            parent = torch.tensor([p for p, _ in tmpl], dtype=torch.long)  # [N]
            rank = torch.tensor([r for _, r in tmpl], dtype=torch.long)  # [N]
            depth = depths([p for p, _ in tmpl])
            dep = torch.tensor(depth, dtype=torch.long)
            layers = [(dep == d).nonzero().flatten() for d in range(1, max(depth, default=0) + 1)]  # [n_d] each
            kinds = [(min(d, 4), r) for d, (_, r) in zip(depth, tmpl)]
            self._templates[nodes] = (parent, rank, layers, kinds)
        return self._templates[nodes]

    def default_budget(self) -> int:
        return self.config.nodes

    def start_budget(self) -> int:
        return min(self.config.start_nodes, self.config.nodes)

    def _harvest(self, tokens: Tensor, logits: Tensor) -> None:
        """M[tokens] = top-k of logits; tokens [m], logits [m, V]."""
        if tokens.numel() == 0:
            return
        self.adjacency[tokens] = topk_rows(logits, self.k)[1]  # [m, k]

    def observe_prefill(self, tokens: Tensor, logits: Tensor | None) -> None:
        if logits is not None:
            for s in range(0, tokens.numel(), 256):  # chunks bound the top-k's scratch memory
                self._harvest(tokens[s:s + 256], logits[s:s + 256])

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        """The first min(budget, nodes) known nodes of the best-first template, filled from the matrix.

        The full template is filled and nodes under an unknown successor dropped before cutting to
        the budget, so the draft for a smaller budget is a prefix of this one (prefix_consistent).
        """
        if min(budget, self.config.nodes) <= 0:
            return Draft.empty()
        t_parent, t_rank, layers, kinds = self.template(self.config.nodes)
        n = t_parent.numel()
        tokens = torch.empty(n, dtype=torch.long)  # [N]
        for d, idx in enumerate(layers):  # one gather per depth
            if d == 0:
                parent_tok = torch.full((idx.numel(),), int(seq[-1]), dtype=torch.long)
            else:
                parent_tok = tokens[t_parent[idx]]
            # an unknown parent (-1) stays unknown below it
            tokens[idx] = torch.where(parent_tok >= 0, self.adjacency[parent_tok.clamp(min=0), t_rank[idx]], -1)
        valid = tokens >= 0  # [N]; an invalid node's subtree is invalid too
        parents = t_parent
        if not bool(valid.all()):
            new_index = torch.cumsum(valid.long(), 0) - 1  # [N]
            parents = torch.where(t_parent >= 0, new_index[t_parent.clamp(min=0)], -1)[valid]
            tokens = tokens[valid]
            kinds = [kinds[i] for i in valid.nonzero().flatten().tolist()]
        self._kinds = kinds[:budget]
        parents = parents[:budget]
        return Draft(tokens[:budget], parents, values=self.rates.values(self._kinds, parents.tolist()))  # [n] float64

    def observe(self, root: int, draft: Draft, logits: Tensor, verdict: Verdict) -> None:
        inputs = torch.cat([torch.tensor([root], dtype=torch.long), draft.tokens])  # [n+1]
        self._harvest(inputs, logits)
        if self._kinds and draft.size:
            self.rates.observe(self._kinds, draft.parents.tolist(), verdict.path)
        self._kinds = []
