"""`pld`: prompt lookup decoding (Saxena 2023; ALGORITHMS.md A.5) with an incremental n-gram index.

For n = max_ngram .. min_ngram, the last n tokens are looked up among earlier n-grams of the
context (prompt + committed output); the first n that matches proposes the tokens that followed
that occurrence as a chain. The index maps each n-gram to where it ended, and only n-grams that
have a continuation are indexed, so each step costs O(new tokens), not a rescan of the context.
`ngram_lookup_reference` is the slow rescan kept beside it and tested against it.

Values: node i of the chain is of kind (match length, min(depth, 4)); its rate (accepted given its
parent was) is learnt online (rates.NodeRates), so `Draft.values` tells the self-tuner how much of
this step's chain is worth scoring (a 1-token match in chatter is not; a 3-token match in copied
code is, and deeper nodes of an accepted copy are likelier than the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .. import tree
from ..errors import QuickdraftError
from ..types import Draft, Verdict
from . import register
from .base import BaseDrafter
from .rates import NodeRates


class NgramIndex:
    """n-gram -> end position of its most recent (or earliest) occurrence with a continuation."""

    def __init__(self, sizes: Sequence[int], latest: bool = True) -> None:
        self.sizes = tuple(sorted(set(sizes), reverse=True))
        self.latest = latest
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.indexed = 0  # n-grams ending before this position are indexed

    def reset(self) -> None:
        for t in self.tables.values():
            t.clear()
        self.indexed = 0

    def update(self, seq: Sequence[int]) -> None:
        """Index every n-gram ending at j for j < len(seq) - 1 (those have a continuation)."""
        for j in range(self.indexed, len(seq) - 1):
            for n in self.sizes:
                if j + 1 >= n:
                    self._record(self.tables[n], tuple(seq[j + 1 - n: j + 1]), j, seq[j + 1])
        self.indexed = max(self.indexed, len(seq) - 1)

    def _record(self, table: dict, key: tuple[int, ...], j: int, nxt: int) -> None:
        """The n-gram `key` ends at j and is followed by token nxt."""
        if self.latest:
            table[key] = j
        else:
            table.setdefault(key, j)

    def _end(self, entry) -> int:
        """Where the occurrence an entry stands for ends (subclasses storing more override both hooks)."""
        return entry

    def find(self, tail: Sequence[int], min_n: int = 1) -> tuple[int, object] | None:
        """(n, entry) of the longest indexed suffix of tail with at least min_n tokens, else None."""
        for n in self.sizes:
            if n >= min_n and len(tail) >= n:
                e = self.tables[n].get(tuple(tail[len(tail) - n:]))
                if e is not None:
                    return n, e
        return None

    def lookup(self, seq: Sequence[int], num_pred: int) -> list[int]:
        """Tokens following an earlier occurrence of the longest matching suffix of seq."""
        return self.lookup_match(seq, num_pred)[0]

    def lookup_match(self, seq: Sequence[int], num_pred: int) -> tuple[list[int], int]:
        """(lookup's tokens, length of the matched suffix; 0 when nothing matched)."""
        m = self.find(seq)
        if m is None:
            return [], 0
        j = self._end(m[1])
        return list(seq[j + 1: j + 1 + num_pred]), m[0]


def ngram_lookup_reference(seq: Sequence[int], sizes: Sequence[int], num_pred: int, latest: bool = True) -> list[int]:
    """Slow reference: rescan the whole context for the longest matching suffix."""
    for n in sorted(set(sizes), reverse=True):
        if len(seq) < n + 1:
            continue
        suffix = list(seq[len(seq) - n:])
        ends = [j for j in range(n - 1, len(seq) - 1) if list(seq[j + 1 - n: j + 1]) == suffix]
        if ends:
            j = ends[-1] if latest else ends[0]
            return list(seq[j + 1: j + 1 + num_pred])
    return []


@register("pld")
class PromptLookup(BaseDrafter):
    prefix_consistent = True  # a chain / best-first tree: fewer nodes = a prefix
    @dataclass(frozen=True)
    class Config:
        max_ngram: int = 3  # longest suffix looked up
        min_ngram: int = 1  # shortest suffix looked up
        num_pred: int = 10  # most tokens proposed after a match (the self-tuner's cap; the reference value)
        start_pred: int = 6  # the self-tuner's first chain length (best fixed length here, docs/tuning.md)
        latest: bool = True  # use the most recent occurrence (False: the earliest, as the reference code)

        def validate(self) -> None:
            if not 1 <= self.min_ngram <= self.max_ngram:
                raise QuickdraftError("pld needs 1 <= min_ngram <= max_ngram; fix --set min_ngram/max_ngram")
            if self.num_pred < 1:
                raise QuickdraftError("pld needs num_pred >= 1; fix --set num_pred")

    def __init__(self, config: "PromptLookup.Config", **env) -> None:
        self.config = config
        self.index = NgramIndex(range(config.min_ngram, config.max_ngram + 1), config.latest)
        self.rates = NodeRates(self.prior)  # persists across requests, like a learnt table
        self._kinds: list[tuple[int, int]] = []  # kinds of the last proposal's nodes

    @staticmethod
    def prior(kind: tuple[int, int]) -> float:
        """(match length n, depth) -> prior rate: longer matches and deeper nodes of a copy hold more."""
        n, depth = kind
        return min(0.8, 0.25 + 0.12 * min(n, 4) + (0.15 if depth > 1 else 0.0))

    def default_budget(self) -> int:
        return self.config.num_pred

    def start_budget(self) -> int:
        return min(self.config.start_pred, self.config.num_pred)

    def start(self, prompt: Sequence[int]) -> None:
        self.index.reset()

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        self.index.update(seq)
        toks, n = self.index.lookup_match(seq, min(budget, self.config.num_pred))
        draft = tree.chain(toks)
        self._kinds = [(n, min(d, 4)) for d in range(1, len(toks) + 1)]
        draft.values = self.rates.values(self._kinds, draft.parents.tolist())  # [n] float64
        return draft

    def observe(self, root: int, draft: Draft, logits, verdict: Verdict) -> None:
        if self._kinds and draft.size:
            self.rates.observe(self._kinds, draft.parents.tolist(), verdict.path)
        self._kinds = []
