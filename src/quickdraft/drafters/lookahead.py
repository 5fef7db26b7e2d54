"""`lookahead`: lookahead decoding (Fu et al., ICML 2024; ALGORITHMS.md A.6) as one draft tree.

The engine scores a single tree per step, so the paper's three packed segments become one tree:

  * Verification branch (nodes first): up to G pooled (N-1)-token continuations whose key is the
    root, most recent first, merged into a trie under the root.
  * Lookahead window (nodes after it): N-1 Jacobi levels x W diagonals. `levels[l][m]` is the
    level-l guess on diagonal m; it sits at column l+1+m (= its depth below the root). Level 0,
    the oldest trajectory, is a chain from the root (columns 1..W); diagonal m hangs off the
    level-0 node at column m+1, each level the child of the one below. So the node at (level l,
    column i) attends to the root, level 0 at columns 1..i-l and the diagonal (1, i-l+1) .. (l, i):
    exactly the lookahead attention pattern. Window nodes share trie nodes where the tokens along
    their path coincide (same path, same context, same logits).

After the pass (`observe`):
  * N-gram collection: the target's argmax at the top node of diagonal m guesses the next column;
    the diagonal plus that guess is an N-gram, stored in the pool under its first token (at most
    G per key, most recent kept). With `from_context` the pool also holds every N-gram of the
    committed context (prompt and output), which is exact text and costs nothing.
  * Window update, after k committed tokens: drop the oldest level, level l <- level l+1 moved
    by k-1 diagonals, the top level <- the new guesses moved the same way; columns that fall off
    the tail are refilled with random context tokens. Warm-up: the window starts with level 0
    only (random context tokens) and gains one level per step (the new guesses) until it has N-1;
    no N-grams are collected before that.

Budget: `propose(seq, budget)` never returns more than `budget` nodes. With `n_lev` levels filled,
the window first reserves W0 = min(window, budget // 2 // n_lev) diagonals; the verification trie
takes up to `guesses` n-grams within the rest; the window then takes W = min(window,
(budget - trie nodes) // n_lev) diagonals, so budget left over by an empty pool goes to the window.

Invariants:
  * Node order is topological with the verification trie first, so a truncated draft keeps it;
    `observe` uses only the nodes it received (a truncated or foreign draft is handled).
  * The drafter reads only committed tokens and the logits of scored nodes; any tree is lossless.
  * State is plain Python lists and dicts; per step O(budget) work plus one argmax over <= W rows.
  * Fill tokens come from a `random.Random` reset by `start`, so a request's drafts are
    reproducible; they cannot affect the output anyway.

`build_tree_reference` (the set of token paths a draft must contain) and
`window_attention_reference` (the lookahead attention pattern, in the paper's coordinates) are the
slow obvious versions of the tree construction, kept beside it and tested against it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import QuickdraftError
from ..types import Draft, Verdict
from . import register
from .base import BaseDrafter


class NgramPool:
    """first token -> up to `cap` continuations ((N-1)-tuples), oldest first."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.table: dict[int, list[tuple[int, ...]]] = {}

    def clear(self) -> None:
        self.table.clear()

    def add(self, key: int, cont: tuple[int, ...]) -> None:
        if self.cap <= 0:
            return
        lst = self.table.setdefault(key, [])
        if cont in lst:  # refresh: it becomes the most recent
            lst.remove(cont)
        lst.append(cont)
        if len(lst) > self.cap:
            del lst[0]

    def get(self, key: int) -> list[tuple[int, ...]]:
        """Continuations for `key`, most recent first."""
        return self.table.get(key, [])[::-1]


def build_tree(paths: Sequence[Sequence[int]], levels: Sequence[Sequence[int]], max_width: int,
               trie_budget: int, budget: int) -> tuple[Draft, list[list[int]]]:
    """One draft of at most `budget` nodes: the trie of `paths` (within `trie_budget` nodes), then
    width = min(max_width, (budget - trie nodes) // n_lev) window diagonals.

    levels: [n_lev][>= max_width] window tokens (level l, diagonal m). Returns the draft and
    layout[l][m] = node index of window node (l, m), m < width. A window node reuses an existing
    node with the same parent and token.
    """
    trie_budget = min(trie_budget, budget)
    tokens: list[int] = []
    parents: list[int] = []
    child: dict[tuple[int, int], int] = {}  # (parent, token) -> node

    def add(parent: int, tok: int) -> int:
        node = child.get((parent, tok))
        if node is None:
            node = len(tokens)
            child[(parent, tok)] = node
            tokens.append(tok)
            parents.append(parent)
        return node

    for path in paths:  # greedy fill: whole paths while they fit, then the prefix that fits
        cur = -1
        for tok in path:
            nxt = child.get((cur, tok))
            if nxt is None:
                if len(tokens) >= trie_budget:
                    break
                nxt = add(cur, tok)
            cur = nxt
    width = min(max_width, (budget - len(tokens)) // len(levels)) if levels else 0
    layout: list[list[int]] = []
    for lev, row in enumerate(levels):  # level-major: parents before children
        nodes = []
        for m in range(width):
            parent = (nodes[m - 1] if m > 0 else -1) if lev == 0 else layout[lev - 1][m]
            nodes.append(add(parent, int(row[m])))
        layout.append(nodes)
    draft = Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long))  # [n], [n]
    return draft, layout


def window_paths(levels: Sequence[Sequence[int]], width: int) -> dict[tuple[int, int], list[int]]:
    """Slow reference: token path (root excluded) of window node (level l, column i), paper's
    coordinates: level 0 at columns 1..i-l, then the diagonal (1, i-l+1) .. (l, i)."""
    out = {}
    for lev in range(len(levels)):
        for i in range(lev + 1, lev + width + 1):
            diag = i - lev - 1  # diagonal index m of (lev, i)
            path = [levels[0][c - 1] for c in range(1, i - lev + 1)]
            path += [levels[l2][diag] for l2 in range(1, lev + 1)]
            out[(lev, i)] = path
    return out


def build_tree_reference(paths: Sequence[Sequence[int]], levels: Sequence[Sequence[int]],
                         width: int) -> set[tuple[int, ...]]:
    """Slow reference: every root-to-node token path the draft must contain (no budget cut)."""
    out: set[tuple[int, ...]] = set()
    for p in list(paths) + list(window_paths(levels, width).values()):
        for d in range(1, len(p) + 1):
            out.add(tuple(p[:d]))
    return out


def window_attention_reference(levels: Sequence[Sequence[int]], width: int) -> dict[tuple[int, int], set]:
    """Slow reference: what window node (level l, column i) attends to, as a set of window
    coordinates plus "root": the root, level 0 at columns 1..i-l, the diagonal (1, i-l+1)..(l, i)."""
    out = {}
    for lev in range(len(levels)):
        for i in range(lev + 1, lev + width + 1):
            seen: set = {"root"}
            seen |= {(0, c) for c in range(1, i - lev + 1)}
            seen |= {(l2, i - lev + l2) for l2 in range(1, lev + 1)}
            out[(lev, i)] = seen
    return out


def collect_ngrams(levels: Sequence[Sequence[int]], guesses: dict[int, int]) -> list[tuple[int, ...]]:
    """N-grams of the finished diagonals: [levels[0][m], .., levels[-1][m], guesses[m]] for each m
    with a guess (guesses: diagonal -> the target's argmax at its top node)."""
    return [tuple(int(lv[m]) for lv in levels) + (int(g),) for m, g in sorted(guesses.items())]


def shift_window(levels: list[list[int | None]], guesses: dict[int, int], k: int, full: bool) -> list[list[int | None]]:
    """The window after k committed tokens (None = refill). full: N-1 levels (drop the oldest);
    else warm-up (keep every level, add the guesses as a new top level if there are any)."""
    width = len(levels[0])

    def at(row, m):
        return row[m] if 0 <= m < width else None

    if full:
        # new level l, diagonal m, sits at old column l+1+m+k = old level l+1's diagonal m+k-1.
        new = [[at(row, m + k - 1) for m in range(width)] for row in levels[1:]]
        top = levels[-1]
        # a top-level guess at old diagonal m+k-1 lands on new top diagonal m; without one, keep
        # the old top-level token at the same column (old diagonal m+k).
        new.append([guesses[m + k - 1] if m + k - 1 in guesses else at(top, m + k) for m in range(width)])
    else:
        new = [[at(row, m + k) for m in range(width)] for row in levels]
        if guesses:  # guess at old diagonal m+k of the top level lands on the new level's diagonal m
            new.append([guesses.get(m + k) for m in range(width)])
    return new


@register("lookahead")
class Lookahead(BaseDrafter):

    @dataclass(frozen=True)
    class Config:
        level: int = 4  # N: n-gram length; the window holds N-1 Jacobi levels
        window: int = 5  # W: most lookahead diagonals fed per step
        guesses: int = 5  # G: most pooled n-grams verified per step, also the pool's cap per key
        max_nodes: int = 32  # largest tree (the self-tuner's cap; --set budget=N fixes the size)
        from_context: bool = True  # pool also holds the N-grams of the prompt and committed output

        def validate(self) -> None:
            if not 2 <= self.level <= 16:
                raise QuickdraftError("lookahead needs 2 <= level <= 16; fix --set level")
            if not (0 <= self.window <= 256 and 0 <= self.guesses <= 256):
                raise QuickdraftError("lookahead needs 0 <= window <= 256 and 0 <= guesses <= 256; fix --set window/guesses")
            if self.window + self.guesses == 0:
                raise QuickdraftError("lookahead with window=0 and guesses=0 drafts nothing; raise --set window or guesses")
            if not 0 <= self.max_nodes <= 4096:
                raise QuickdraftError("lookahead needs 0 <= max_nodes <= 4096; fix --set max_nodes")

    def __init__(self, config: "Lookahead.Config", **env) -> None:
        self.config = config
        self.n = config.level
        self.pool = NgramPool(config.guesses)
        self.rng = random.Random(0)
        self.levels: list[list[int | None]] = [[None] * config.window]  # [n_lev][window]
        self.indexed = 0  # context n-grams starting before this position are in the pool
        self._proposed: tuple[list[int], list[list[int]]] | None = None  # (tokens, layout) of the last draft

    def default_budget(self) -> int:
        return self.config.max_nodes

    def start_budget(self) -> int:
        return min(16, self.config.max_nodes)  # the self-tuner's first size: the flat part of the cost curve

    def start(self, prompt: Sequence[int]) -> None:
        self.pool.clear()
        self.rng = random.Random(0)
        self.levels = [[None] * self.config.window]
        self.indexed = 0
        self._proposed = None

    def _index_context(self, seq: Sequence[int]) -> None:
        """Pool every committed N-gram starting at or after self.indexed."""
        n = self.n
        for p in range(self.indexed, len(seq) - n + 1):
            self.pool.add(int(seq[p]), tuple(int(t) for t in seq[p + 1:p + n]))
        self.indexed = max(self.indexed, len(seq) - n + 1)

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        self._proposed = None
        if self.config.from_context:
            self._index_context(seq)
        for row in self.levels:  # refill from the context
            for m, t in enumerate(row):
                if t is None:
                    row[m] = int(seq[self.rng.randrange(len(seq))])
        if budget <= 0:
            return Draft.empty()
        n_lev = len(self.levels)
        wmax = self.config.window
        reserve = min(wmax, budget // 2 // n_lev) * n_lev
        paths = self.pool.get(int(seq[-1]))[: self.config.guesses]
        draft, layout = build_tree(paths, self.levels, wmax, budget - reserve, budget)
        self._proposed = (draft.tokens.tolist(), layout)
        return draft

    def observe(self, root: int, draft: Draft, logits: Tensor, verdict: Verdict) -> None:
        k = len(verdict.tokens)
        guesses: dict[int, int] = {}
        full = len(self.levels) == self.n - 1
        if self._proposed is not None:
            tokens, layout = self._proposed
            n = min(draft.size, logits.shape[0] - 1)
            if layout and draft.tokens[:n].tolist() == tokens[:n]:  # scored nodes are the ones we drafted
                top = [(m, node) for m, node in enumerate(layout[-1]) if node < n]  # whole diagonal scored
                if top:
                    rows = torch.tensor([node + 1 for _, node in top], dtype=torch.long)  # [w]
                    best = logits.index_select(0, rows).argmax(dim=-1).tolist()  # [w]
                    guesses = {m: int(t) for (m, _), t in zip(top, best)}
        self._proposed = None
        if full:
            for gram in collect_ngrams(self.levels, guesses):
                self.pool.add(gram[0], gram[1:])
        self.levels = shift_window(self.levels, guesses, k, full)
