"""`aded`: Adaptive Draft-Verification (Liu et al., AAAI 2025; ALGORITHMS.md item 3), cut down for CPU.

Table. For each key (t_{i-2}, t_{i-1}) the successors t_i carry a score from three layers:
  score(c) = corpus_weight * p_corpus(c | key)   corpus prior: frequency in a local text file,
                                                  pruned at load to the top_k successors per key;
                                                  built once per drafter instance (persists)
           + n_context(key, c)                    occurrences in this request's context (prompt +
                                                  committed output), indexed incrementally like
                                                  pld's NgramIndex; reset by start()
           + min(bump_cap, bonus(key, c))         the paper's adaptation: before each draft every
                                                  tri-gram in the last `window` context tokens gets
                                                  bonus += bump (a recency weight; reset by start())
A key's successor distribution is the top_k scores normalised with `unseen` extra mass for tokens the
table has never seen after it: P(c) = score(c) / (sum of scores + unseen). So a key seen once is not
certain (1 / (1 + unseen)) and confidence grows with evidence; this is what shapes the tree between
depth and breadth. When the tri-gram key is unknown the search backs off to a bigram (t_{i-1}) table
built the same way (corpus + context, no bonus); when both are unknown the node has no children.

Search. The paper's 150-iteration PUCT MCTS costs more than a tiny model's step in Python. Here the
draft is instead the deterministic best-first tree: the at most `budget` nodes with the highest path
probability (product of P along the path from the root), depth <= max_depth. A heap pops candidates in
decreasing path probability; popping the rank-r child of a node pushes only its next sibling (rank
r+1) and its own first child, so each node costs two heap pushes, not top_k. Since P < 1 (unseen > 0)
a child never beats its parent, the chosen set is a prefix-closed tree, and the pop order is
topological; nodes are returned in pop order, so any topological prefix (tree.truncate) is the best
tree of that smaller size. `best_first_reference` enumerates every path and is tested against it.

Values: a node's kind is (min(depth, 4), bin of its table probability P given its parent); the
kind's acceptance rate starts at the bin's middle and is learnt online (rates.NodeRates), so
`Draft.values` tells the self-tuner how much of this step's tree pays.

Invariants: the drafter only reads committed tokens; proposals are deterministic (q = None), so the
verifier alone decides the output (greedy equals plain decoding; sampled equals ar for a seed).
Drafted tokens are always ids the model has (corpus ids >= vocab_size are dropped).
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import QuickdraftError
from ..types import Draft, Verdict
from . import register
from .base import BaseDrafter
from .rates import NodeRates, bin_prior, depths, score_bin

Key = tuple[int, ...]  # (t_{i-2}, t_{i-1}) for tri-grams, (t_{i-1},) for bigrams
Successors = list[tuple[float, int]]  # [(P, token)] sorted by P descending, then token ascending
SuccFn = Callable[[int | None, int], Successors]  # (token before, token) -> successors of that context


# --- corpus ---------------------------------------------------------------------------------------

def read_corpus(path: str) -> list[str]:
    """Documents of a corpus file: a .jsonl with a "text" field per line, else UTF-8 text split into
    documents at blank lines (so n-grams never span two documents)."""
    p = Path(path)
    fix = "point --set corpus= at a UTF-8 .txt file or a .jsonl with a \"text\" field per line"
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QuickdraftError(f"aded corpus {path} does not exist; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QuickdraftError(f"aded cannot read corpus {path} ({e.__class__.__name__}); {fix}") from None
    if p.suffix == ".jsonl":
        docs = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise QuickdraftError(f"aded corpus {path} line {lineno} is not JSON with a \"text\" field; {fix}") from None
            if isinstance(text, str) and text.strip():
                docs.append(text)
    else:
        docs = [d for d in raw.split("\n\n") if d.strip()]
    if not docs:
        raise QuickdraftError(f"aded corpus {path} has no text; {fix}")
    return docs


def count_ngrams(docs: Sequence[Sequence[int]], n: int, top_k: int, vocab_size: int = 0) -> dict[Key, dict[int, float]]:
    """{key (n-1 tokens): {successor: count / key's total count}} over the top_k successors of each key
    (ties: lower token first). Vectorised with numpy; `count_ngrams_reference` is the slow twin."""
    lists = [np.asarray(d, dtype=np.int64) for d in docs if len(d) >= n]
    if not lists:
        return {}
    arr = np.concatenate([np.append(d, -1) for d in lists])  # [T] documents separated by -1
    if vocab_size > 0:
        arr[arr >= vocab_size] = -1  # ids the model does not have never enter a key or a draft
    base = int(arr.max()) + 1
    grams = np.stack([arr[i: len(arr) - n + 1 + i] for i in range(n)])  # [n, T-n+1]
    grams = grams[:, (grams >= 0).all(axis=0)]
    if grams.shape[1] == 0:
        return {}
    code = np.zeros(grams.shape[1], dtype=np.int64)  # [G] one int per n-gram, base-`base` digits
    for i in range(n):
        code = code * base + grams[i]
    uniq, counts = np.unique(code, return_counts=True)  # [U], [U]
    key, succ = uniq // base, uniq % base  # [U]
    order = np.lexsort((succ, -counts, key))  # by key, then count descending, then token
    key, succ, counts = key[order], succ[order], counts[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # [K] first row of each key
    group = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1  # [U] key index of each row
    totals = np.add.reduceat(counts, starts)  # [K]
    rank = np.arange(len(key)) - starts[group]  # [U]
    keep = rank < top_k
    out: dict[Key, dict[int, float]] = {}
    for k, c, cnt, g in zip(key[keep].tolist(), succ[keep].tolist(), counts[keep].tolist(), group[keep].tolist()):
        digits = []
        for _ in range(n - 1):
            k, d = divmod(k, base)
            digits.append(d)
        out.setdefault(tuple(reversed(digits)), {})[c] = cnt / int(totals[g])
    return out


def count_ngrams_reference(docs: Sequence[Sequence[int]], n: int, top_k: int, vocab_size: int = 0) -> dict[Key, dict[int, float]]:
    """Slow obvious twin of count_ngrams: a Counter per key, sorted, cut to top_k."""
    per_key: dict[Key, Counter] = {}
    for d in docs:
        for j in range(n - 1, len(d)):
            gram = tuple(d[j - n + 1: j + 1])
            if vocab_size > 0 and any(t >= vocab_size for t in gram):
                continue
            per_key.setdefault(gram[:-1], Counter())[gram[-1]] += 1
    out = {}
    for key, cnt in per_key.items():
        total = sum(cnt.values())
        best = sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        out[key] = {c: v / total for c, v in best}
    return out


# --- the table ------------------------------------------------------------------------------------

class NgramTable:
    """Successor scores of one order n (n = 3: tri-grams), in three layers (module docstring)."""

    def __init__(self, n: int, top_k: int, unseen: float, corpus: dict[Key, dict[int, float]] | None = None,
                 corpus_weight: float = 1.0) -> None:
        self.n, self.top_k, self.unseen = n, top_k, unseen
        self.corpus = corpus or {}  # persists across requests
        self.corpus_weight = corpus_weight
        self.counts: dict[Key, dict[int, int]] = {}  # this request's context
        self.bonus: dict[Key, dict[int, float]] = {}  # this request's adaptation
        self.indexed = 0  # context n-grams ending before this position are counted
        self._cache: dict[Key, Successors] = {}  # merged, normalised, pruned; dropped when a key changes

    def reset(self) -> None:
        self.counts.clear()
        self.bonus.clear()
        self._cache.clear()
        self.indexed = 0

    def update(self, seq: Sequence[int]) -> None:
        """Count every n-gram of seq not counted yet (seq only ever grows within a request)."""
        if len(seq) < self.indexed:  # a different sequence: recount
            self.reset()
        for j in range(max(self.indexed, self.n - 1), len(seq)):
            key = tuple(seq[j - self.n + 1: j])
            succ = self.counts.setdefault(key, {})
            succ[seq[j]] = succ.get(seq[j], 0) + 1
            self._cache.pop(key, None)
        self.indexed = max(self.indexed, len(seq))

    def adapt(self, seq: Sequence[int], window: int, bump: float, cap: float) -> None:
        """bonus += bump (capped) for every n-gram inside the last `window` tokens of seq."""
        if bump <= 0:
            return
        for j in range(max(self.n - 1, len(seq) - window + self.n - 1), len(seq)):
            key = tuple(seq[j - self.n + 1: j])
            b = self.bonus.setdefault(key, {})
            b[seq[j]] = min(cap, b.get(seq[j], 0.0) + bump)
            self._cache.pop(key, None)

    def scores(self, key: Key) -> dict[int, float]:
        """Unnormalised score of every known successor of key (all three layers, unpruned)."""
        out: dict[int, float] = {}
        for c, p in self.corpus.get(key, {}).items():
            out[c] = self.corpus_weight * p
        for c, k in self.counts.get(key, {}).items():
            out[c] = out.get(c, 0.0) + k
        for c, b in self.bonus.get(key, {}).items():
            out[c] = out.get(c, 0.0) + b
        return out

    def successors(self, key: Key) -> Successors:
        """[(P, token)] of the top_k successors, P = score / (sum of all scores + unseen)."""
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        s = self.scores(key)
        total = sum(s.values()) + self.unseen
        best = sorted(s.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        out = [(v / total, c) for c, v in best if v > 0] if total > 0 else []
        self._cache[key] = out
        return out


# --- the search -----------------------------------------------------------------------------------

def best_first(succ: SuccFn, prev: int | None, root: int, budget: int, max_depth: int) -> tuple[list[int], list[int], list[float]]:
    """(tokens, parents, path probabilities) of the <= budget highest-probability nodes below root.

    succ(before, tok) gives the sorted successors of the context ending (before, tok); prev is the
    token before the root (None at the start of the sequence). Nodes come in pop order: path
    probability non-increasing, parents before children.
    """
    tokens: list[int] = []
    parents: list[int] = []
    probs: list[float] = []
    if budget <= 0 or max_depth <= 0:
        return tokens, parents, probs
    tie = itertools.count()
    heap = []  # (-path prob, tie, parent node, rank, parent's path prob, parent's successors, depth, parent token)
    first = succ(prev, root)
    if first:
        heap.append((-first[0][0], next(tie), -1, 0, 1.0, first, 1, root))
    while heap and len(tokens) < budget:
        negp, _, parent, rank, pprob, lst, depth, ptok = heapq.heappop(heap)
        me = len(tokens)
        tok = lst[rank][1]
        tokens.append(tok)
        parents.append(parent)
        probs.append(-negp)
        if rank + 1 < len(lst):  # the next sibling
            heapq.heappush(heap, (-pprob * lst[rank + 1][0], next(tie), parent, rank + 1, pprob, lst, depth, ptok))
        if depth < max_depth:  # the first child
            kids = succ(ptok, tok)
            if kids:
                heapq.heappush(heap, (negp * kids[0][0], next(tie), me, 0, -negp, kids, depth + 1, tok))
    return tokens, parents, probs


def best_first_reference(succ: SuccFn, prev: int | None, root: int, budget: int, max_depth: int) -> list[tuple[float, tuple[int, ...]]]:
    """Slow reference: enumerate every path to max_depth, keep the `budget` most probable.

    Returns [(path probability, token path)] sorted by probability descending (shallower first on ties).
    """
    paths: list[tuple[float, tuple[int, ...]]] = []

    def walk(before: int | None, tok: int, path: tuple[int, ...], p: float) -> None:
        if len(path) == max_depth:
            return
        for q, c in succ(before, tok):
            paths.append((p * q, path + (c,)))
            walk(tok, c, path + (c,), p * q)

    walk(prev, root, (), 1.0)
    paths.sort(key=lambda x: (-x[0], len(x[1])))
    return paths[: max(0, budget)]


# --- the drafter ----------------------------------------------------------------------------------

@register("aded")
class ADED(BaseDrafter):
    prefix_consistent = True  # a chain / best-first tree: fewer nodes = a prefix

    @dataclass(frozen=True)
    class Config:
        corpus: str = ""  # optional local corpus: UTF-8 text (documents split at blank lines) or .jsonl with "text"
        corpus_weight: float = 1.0  # strength of the corpus prior, in units of one context occurrence
        top_k: int = 12  # successors kept per key (the paper prunes to 12)
        window: int = 16  # adaptation: tri-grams in the last `window` context tokens get bumped before each draft
        bump: float = 0.04  # adaptation step (paper: 0.04); 0 turns adaptation off
        bump_cap: float = 3.0  # largest adaptation bonus of one tri-gram (paper: 3.0)
        unseen: float = 0.5  # score mass of successors never seen; > 0 keeps P < 1 so trees also grow wide
        backoff: bool = True  # unknown tri-gram key: use the bigram (t_{i-1}) successors
        max_nodes: int = 32  # cap on tree size: propose never returns more (the self-tuner's largest budget)
        max_depth: int = 8  # deepest level of the tree

        def validate(self) -> None:
            if not (1 <= self.max_nodes <= 1024 and 1 <= self.max_depth <= 64):
                raise QuickdraftError("aded needs 1 <= max_nodes <= 1024 and 1 <= max_depth <= 64; fix --set max_nodes/max_depth")
            if not 1 <= self.top_k <= 256:
                raise QuickdraftError("aded needs 1 <= top_k <= 256; fix --set top_k")
            if self.window < 0 or self.bump < 0 or self.bump_cap < 0:
                raise QuickdraftError("aded needs window, bump and bump_cap >= 0; fix --set window/bump/bump_cap")
            if not (self.unseen > 0 and self.corpus_weight >= 0):
                raise QuickdraftError("aded needs unseen > 0 and corpus_weight >= 0; fix --set unseen/corpus_weight")
            if self.corpus and not Path(self.corpus).is_file():
                raise QuickdraftError(f"aded corpus {self.corpus} is not a file; fix --set corpus=PATH")

    def __init__(self, config: "ADED.Config", vocab_size: int = 0, tokenizer=None, **env) -> None:
        self.config = config
        tri_corpus: dict[Key, dict[int, float]] = {}
        bi_corpus: dict[Key, dict[int, float]] = {}
        if config.corpus:
            if tokenizer is None:
                raise QuickdraftError("aded --set corpus needs the model's tokenizer; use it through the engine/CLI")
            docs = read_corpus(config.corpus)
            ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
            tri_corpus = count_ngrams(ids, 3, config.top_k, vocab_size)
            bi_corpus = count_ngrams(ids, 2, config.top_k, vocab_size)
            if not tri_corpus:
                raise QuickdraftError(f"aded corpus {config.corpus} has no run of 3 tokens; give it more text")
        self.tri = NgramTable(3, config.top_k, config.unseen, tri_corpus, config.corpus_weight)
        self.bi = NgramTable(2, config.top_k, config.unseen, bi_corpus, config.corpus_weight)
        self.rates = NodeRates(lambda kind: bin_prior(kind[1], 0.8))  # kind: (depth <= 4, P bin)
        self._kinds: list[tuple[int, int]] = []  # kinds of the last proposal's nodes

    def default_budget(self) -> int:
        return self.config.max_nodes

    def start_budget(self) -> int:
        # the self-tuner's first size: on SmolLM2-135M trees of 8 and 32 nodes accepted alike (1.42 vs 1.41)
        return min(8, self.config.max_nodes)

    def start(self, prompt: Sequence[int]) -> None:
        self.tri.reset()
        self.bi.reset()

    def successors(self, before: int | None, tok: int) -> Successors:
        """Successors of the context ending (before, tok): tri-gram, else (backoff) bigram."""
        if before is not None:
            hit = self.tri.successors((before, tok))
            if hit:
                return hit
        return self.bi.successors((tok,)) if self.config.backoff else []

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        c = self.config
        self.tri.update(seq)
        self.bi.update(seq)
        self.tri.adapt(seq, c.window, c.bump, c.bump_cap)
        budget = min(budget, c.max_nodes)
        if budget <= 0:
            return Draft.empty()
        prev = int(seq[-2]) if len(seq) >= 2 else None
        tokens, parents, probs = best_first(self.successors, prev, int(seq[-1]), budget, c.max_depth)
        self._kinds = []
        if not tokens:
            return Draft.empty()
        cond = [pr / (probs[p] if p >= 0 else 1.0) for pr, p in zip(probs, parents)]  # P given the parent
        self._kinds = [(min(d, 4), score_bin(q)) for d, q in zip(depths(parents), cond)]
        return Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long),  # [n], [n]
                     values=self.rates.values(self._kinds, parents))  # [n] float64

    def observe(self, root: int, draft: Draft, logits, verdict: Verdict) -> None:
        if self._kinds and draft.size:
            self.rates.observe(self._kinds, draft.parents.tolist(), verdict.path)
        self._kinds = []
