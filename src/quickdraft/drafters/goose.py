"""`goose`: anisotropic spine trees (Jin, Nguyen, Inoue 2026; ALGORITHMS.md item 2), built by value.

Two draft sources, as in the paper:
  spine     the continuation of the longest earlier occurrence of the context's last n tokens
            (n in `ngram_sizes`, most recent occurrence), extended by matching again at its own
            end; `ContextMatcher` also reports *consensus*: at least two earlier occurrences, all
            followed by the same token.
  branches  a Token Recycling style table: unigram rows (the target's top-k after token v, with
            softmax scores over those k logits) and a bigram tier keyed by (previous token, v),
            consulted first. Harvested from the prompt's logits and from every position of every
            pass (root and all nodes, rejected ones too); it persists across requests.
Tree build (`build`): best-first by node value = the product, along the node's path, of the
conditional acceptance rate of each node's kind. Kinds: spine nodes by match class (n-gram length,
consensus), table successors by (tier, score bin). The `budget` most valuable nodes form the tree,
parents before children (so any prefix is a tree). The spine's share of the budget therefore follows
its measured acceptance, like the paper's EMA-driven split, but chosen to maximise expected accepted
tokens; the budget itself comes from the engine's self-tuner (tuning.py).
Rates: `rates.NodeRates`, decayed counts per kind of (reached, accepted), with a prior; a node is
reached when its parent is the root or on the accepted path, accepted when it is on the path.
Greedy or sampled, the drafts are deterministic, so the verifier's point-mass rule keeps the output
exact.
`build_reference` (every candidate to the depth limits, then the top values) is the slow obvious
tree kept beside the heap version and tested against it.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..errors import QuickdraftError
from ..types import Draft, Verdict
from . import register
from .base import BaseDrafter
from .pld import NgramIndex
from .rates import NodeRates, bin_prior, score_bin  # table successors' softmax score -> bin 0..4
from .topk import topk_rows


class ContextMatcher(NgramIndex):
    """pld's incremental index, each n-gram -> [last end, occurrences, next token, all followed by it]."""

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__(sizes, latest=True)

    def _record(self, table: dict, key: tuple[int, ...], j: int, nxt: int) -> None:
        e = table.get(key)
        if e is None:
            table[key] = [j, 1, nxt, True]
        else:
            e[0] = j
            e[1] += 1
            e[3] = e[3] and e[2] == nxt

    def _end(self, entry: list) -> int:
        return entry[0]

    def match(self, tail: Sequence[int], min_n: int = 1) -> tuple[int, int, bool] | None:
        """(n, end of the most recent occurrence, consensus) of the longest indexed suffix of tail."""
        m = self.find(tail, min_n)
        if m is None:
            return None
        n, e = m
        return n, e[0], e[1] >= 2 and e[3]

    def chain(self, seq: Sequence[int], length: int, extend_min_n: int) -> tuple[list[int], tuple | None]:
        """Up to `length` continuation tokens and the match class (n, consensus) of the first match.

        When the continuation runs out (it reached the end of the context), match again at the end
        of seq + chain, with suffixes of at least extend_min_n tokens.
        """
        m = self.match(seq)
        if m is None:
            return [], None
        n, end, consensus = m
        out = list(seq[end + 1: end + 1 + length])
        while 0 < len(out) < length:
            tail = list(seq[-8:]) + out
            m2 = self.match(tail, extend_min_n)
            if m2 is None:
                break
            more = list(seq[m2[1] + 1: m2[1] + 1 + length - len(out)])
            if not more:
                break
            out += more
        return out, (min(n, 4), consensus)


def ngram_match_reference(seq: Sequence[int], sizes: Sequence[int]) -> tuple[int, int, bool] | None:
    """Slow reference of ContextMatcher.match(seq): rescan the context."""
    for n in sorted(set(sizes), reverse=True):
        if len(seq) < n + 1:
            continue
        suffix = list(seq[len(seq) - n:])
        ends = [j for j in range(n - 1, len(seq) - 1) if list(seq[j + 1 - n: j + 1]) == suffix]
        if ends:
            nexts = {seq[j + 1] for j in ends}
            return n, ends[-1], len(ends) >= 2 and len(nexts) == 1
    return None


# successors(token, previous token) -> [(token, kind)] best first, distinct tokens
Successors = Callable[[int, int], list[tuple[int, tuple]]]


def build(root: int, prev: int, spine: list[int], spine_kind: tuple | None, successors: Successors,
          rate: Callable[[tuple], float], budget: int, max_depth: int, width: Callable[[int], int]
          ) -> tuple[list[int], list[int], list[tuple], list[float]]:
    """Best-first tree: (tokens, parents, kinds, values) of the `budget` most valuable nodes.

    Spine node i (depth i + 1) hangs under spine node i - 1 (the root for i = 0). Every emitted node
    offers its table successors (all but the next spine token) up to width(depth) of them and
    depth max_depth; spine nodes go as deep as the spine.
    """
    counter = itertools.count()
    heap: list = []  # (-value, tiebreak, parent, token, kind, depth, spine index or -1, parent token)
    tokens: list[int] = []
    parents: list[int] = []
    kinds: list[tuple] = []
    values: list[float] = []

    def offer(node: int, tok: int, before: int, depth: int, value: float, skip: int) -> None:
        if depth >= max_depth:
            return
        taken = 0
        for t, kind in successors(tok, before):
            if t == skip:
                continue
            if taken >= width(depth + 1):
                break
            taken += 1
            heapq.heappush(heap, (-value * rate(kind), next(counter), node, t, kind, depth + 1, -1, tok))

    if spine:
        heapq.heappush(heap, (-rate(spine_kind), next(counter), -1, spine[0], spine_kind, 1, 0, root))
    offer(-1, root, prev, 0, 1.0, spine[0] if spine else -1)
    while heap and len(tokens) < budget:
        negv, _, parent, tok, kind, depth, si, before = heapq.heappop(heap)
        me = len(tokens)
        tokens.append(tok)
        parents.append(parent)
        kinds.append(kind)
        values.append(-negv)
        nxt = spine[si + 1] if 0 <= si < len(spine) - 1 else -1
        if nxt >= 0:
            heapq.heappush(heap, (negv * rate(spine_kind), next(counter), me, nxt, spine_kind, depth + 1, si + 1, tok))
        offer(me, tok, before, depth, -negv, nxt)
    return tokens, parents, kinds, values


def build_reference(root: int, prev: int, spine: list[int], spine_kind: tuple | None, successors: Successors,
                    rate: Callable[[tuple], float], budget: int, max_depth: int, width: Callable[[int], int]
                    ) -> set[tuple[tuple[int, ...], float]]:
    """Slow reference: every candidate node as (token path, value), then the `budget` best.

    Returns the set of (path, rounded value) of the chosen nodes, for comparison with build().
    """
    cands: list[tuple[float, tuple[int, ...]]] = []

    def grow(path: tuple[int, ...], tok: int, before: int, depth: int, value: float, skip: int) -> None:
        if depth >= max_depth:
            return
        succ = [(t, k) for t, k in successors(tok, before) if t != skip][: width(depth + 1)]
        for t, kind in succ:
            v = value * rate(kind)
            cands.append((v, path + (t,)))
            grow(path + (t,), t, tok, depth + 1, v, -1)

    v = 1.0
    path: tuple[int, ...] = ()
    for i, t in enumerate(spine):
        v *= rate(spine_kind)
        nxt = spine[i + 1] if i + 1 < len(spine) else -1
        cands.append((v, path + (t,)))
        grow(path + (t,), t, path[-1] if path else root, i + 1, v, nxt)
        path = path + (t,)
    grow((), root, prev, 0, 1.0, spine[0] if spine else -1)
    cands.sort(key=lambda c: -c[0])
    return {(p, round(v, 9)) for v, p in cands[:budget]}


@register("goose")
class Goose(BaseDrafter):
    prefix_consistent = True  # a chain / best-first tree: fewer nodes = a prefix

    @dataclass(frozen=True)
    class Config:
        nodes: int = 64  # largest tree (the self-tuner's cap; --set budget=N fixes the size)
        start_nodes: int = 24  # the self-tuner's first size
        ngram_sizes: tuple[int, ...] = (4, 3, 2, 1)  # context match lengths, longest tried first
        extend_min_ngram: int = 2  # shortest suffix used to extend the spine past its match
        k: int = 8  # successors stored per table row
        max_depth: int = 6  # deepest branch node (spine nodes go as deep as the spine)
        bigram: bool = True  # keep the (previous token, token) tier
        bigram_rows: int = 200_000  # the bigram tier is cleared when it grows past this many keys
        rate_decay: float = 0.995  # per update of a kind's acceptance counts
        harvest_prompt: bool = True  # learn the table from the prompt's logits too
        harvest_rows: int = 256  # ... of at most this many last prompt positions (see recycling)
        harvest_cost: float = 0.25  # ... cut to the rows whose LM head and top-k take at most this many
        # plain steps here (the engine measures a row's cost at start; docs/tuning.md); inf: no cut

        def validate(self) -> None:
            if not (1 <= self.nodes <= 1024 and 0 <= self.start_nodes):
                raise QuickdraftError("goose needs 1 <= nodes <= 1024 and start_nodes >= 0; fix --set nodes/start_nodes")
            if not self.ngram_sizes or min(self.ngram_sizes) < 1:
                raise QuickdraftError("goose ngram_sizes must be positive lengths, e.g. --set ngram_sizes=4,3,2,1")
            if not 0 <= self.harvest_rows <= 1024:
                raise QuickdraftError("goose needs 0 <= harvest_rows <= 1024; fix --set harvest_rows")
            if not self.harvest_cost >= 0:
                raise QuickdraftError("goose needs harvest_cost >= 0 (plain steps; inf for no cut); fix --set harvest_cost")
            if not (1 <= self.k <= 64 and 1 <= self.max_depth <= 64 and self.extend_min_ngram >= 1):
                raise QuickdraftError("goose needs 1 <= k <= 64, 1 <= max_depth <= 64, extend_min_ngram >= 1; fix --set")
            if not 0 < self.rate_decay <= 1:
                raise QuickdraftError("goose rate_decay must be in (0, 1]; fix --set rate_decay")

    PRIOR_WEIGHT = 4.0  # pseudo-observations behind each prior rate

    def __init__(self, config: "Goose.Config", vocab_size: int = 0, **env) -> None:
        if vocab_size <= 0:
            raise ValueError("Goose needs the vocab size")
        if config.k > vocab_size:
            raise QuickdraftError(f"goose k={config.k} exceeds the vocabulary ({vocab_size}); lower --set k")
        self.config = config
        self.prefill_logits = config.harvest_rows if config.harvest_prompt else 0
        self.prefill_cost = config.harvest_cost
        self.k = config.k
        self.uni_tok = torch.full((vocab_size, self.k), -1, dtype=torch.long)  # [V, k]
        self.uni_p = torch.zeros(vocab_size, self.k)  # [V, k] softmax over the stored top-k logits
        self.bi: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        self.matcher = ContextMatcher(config.ngram_sizes)
        self.rates = NodeRates(self.prior, self.PRIOR_WEIGHT, config.rate_decay)  # per kind (rates.py)
        self.hist: list[int] = []  # committed tokens of this request
        self._kinds: list[tuple] = []  # kinds of the last proposal's nodes
        self._rows: dict[int, tuple[list[int], list[float]]] = {}  # unigram rows as lists, until the next harvest

    def default_budget(self) -> int:
        return self.config.nodes

    def start_budget(self) -> int:
        return min(self.config.start_nodes, self.config.nodes)

    # --- acceptance rates ------------------------------------------------------------------
    @staticmethod
    def prior(kind: tuple) -> float:
        if kind[0] == "s":  # spine: ("s", n, consensus)
            base = {1: 0.3, 2: 0.45, 3: 0.6}.get(kind[1], 0.7)
            return min(0.9, base + (0.15 if kind[2] else 0.0))
        return bin_prior(kind[1], 0.8 if kind[0] == "u" else 0.9)

    def rate(self, kind: tuple) -> float:
        return self.rates.rate(kind)

    # --- the table -------------------------------------------------------------------------
    def successors(self, tok: int, before: int) -> list[tuple[int, tuple]]:
        out: list[tuple[int, tuple]] = []
        seen: set[int] = set()
        if self.config.bigram and before >= 0:
            row = self.bi.get((before, tok))
            if row is not None:
                for t, p in zip(*row):
                    out.append((t, ("b", score_bin(p))))
                    seen.add(t)
        if tok >= 0:
            toks, ps = self._uni_row(tok)
            for t, p in zip(toks, ps):
                if t >= 0 and t not in seen:
                    out.append((t, ("u", score_bin(p))))
                    seen.add(t)
        return out

    def _uni_row(self, tok: int) -> tuple[list[int], list[float]]:
        row = self._rows.get(tok)
        if row is None:
            row = (self.uni_tok[tok].tolist(), self.uni_p[tok].tolist())
            self._rows[tok] = row
        return row

    def _harvest(self, tokens: Tensor, before: list[int], logits: Tensor) -> None:
        """Rows for tokens [m] (previous tokens `before`, -1 unknown) from logits [m, V]."""
        if tokens.numel() == 0:
            return
        values, indices = topk_rows(logits, self.k)  # [m, k] each, on the logits' own dtype: no [m, V] float copy
        probs = torch.softmax(values.float(), dim=-1)  # [m, k]
        self.uni_tok[tokens] = indices
        self.uni_p[tokens] = probs
        self._rows = {}
        if self.config.bigram:
            if len(self.bi) > self.config.bigram_rows:
                self.bi.clear()
            idx, ps = indices.tolist(), probs.tolist()
            for t, b, i_row, p_row in zip(tokens.tolist(), before, idx, ps):
                if b >= 0:
                    self.bi[(b, t)] = (i_row, p_row)

    # --- protocol --------------------------------------------------------------------------
    def start(self, prompt: Sequence[int]) -> None:
        self.matcher.reset()
        self.hist = list(prompt)
        self._kinds = []

    def observe_prefill(self, tokens: Tensor, logits: Tensor | None) -> None:
        if logits is None or tokens.numel() == 0:
            return
        # tokens are the last positions of the prompt before the root; their predecessors
        start = len(self.hist) - 1 - tokens.numel()
        before = [self.hist[start + i - 1] if start + i >= 1 else -1 for i in range(tokens.numel())]
        for s in range(0, tokens.numel(), 256):  # chunks bound the top-k's scratch memory
            self._harvest(tokens[s:s + 256], before[s:s + 256], logits[s:s + 256])

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        n = min(budget, self.config.nodes)
        self._kinds = []
        if n <= 0:
            return Draft.empty()
        self.matcher.update(seq)
        spine, kind = self.matcher.chain(seq, n, self.config.extend_min_ngram)
        prev = int(seq[-2]) if len(seq) >= 2 else -1
        k = self.k
        tokens, parents, kinds, values = build(int(seq[-1]), prev, spine, ("s",) + kind if kind else None,
                                               self.successors, self.rate, n, self.config.max_depth,
                                               lambda d: max(1, k // d))
        self._kinds = kinds
        return Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long),
                     values=torch.tensor(values, dtype=torch.float64))  # [n] path products of rates

    def observe(self, root: int, draft: Draft, logits: Tensor, verdict: Verdict) -> None:
        before_root = self.hist[-2] if len(self.hist) >= 2 else -1
        par = draft.parents.tolist()
        toks = draft.tokens.tolist()
        before = [before_root] + [root if p < 0 else toks[p] for p in par]
        self._harvest(torch.cat([torch.tensor([root], dtype=torch.long), draft.tokens]), before, logits)
        if self._kinds and draft.size:
            self.rates.observe(self._kinds, par, verdict.path)
        self._kinds = []
        self.hist.extend(verdict.tokens)
