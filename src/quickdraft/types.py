"""The contract between drafters, verifier, backend and decoder: dataclasses and Protocols only.

Glossary (used everywhere in quickdraft):
  root      the last committed token; it has no KV entry yet, the tree hangs off it.
  node      a drafted token; nodes are numbered 0..n-1 in topological order (parents[i] < i).
  path      root -> node chain; the accepted path is the longest one the target agrees with.
  accepted  drafted tokens on the accepted path.
  correction/bonus  the one token the target adds after the accepted path (a correction if some
            draft was rejected there, a bonus if the walk ran off the tree).
  commit    append accepted + correction/bonus to the sequence and keep only their KV entries.

p is always the target's distribution, q the draft's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """How to turn target logits into the next token. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    max_new_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings, checked on decoded text by the caller's detokenizer

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Draft:
    """A tree of proposed tokens hanging off the root.

    tokens:  [n] int64, the proposed tokens.
    parents: [n] int64, parents[i] < i; -1 means a child of the root.
    q:       [n, V] float, the draft distribution node i was drawn from (the same row for siblings
             drawn from one distribution; for RSD the original row, before any sibling was removed:
             the verifier conditions it itself); None = deterministic proposals.
    replacement: siblings were drawn i.i.d. (True, SpecInfer rule) or without replacement
             (False, RSD rule). Ignored when q is None.
    values:  [n] float, the drafter's estimate of the probability that node i is accepted (its
             whole path is), from acceptance rates it measured online; None = no estimate. With
             values, the self-tuner may cut the draft to the prefix that pays best this step.
    """

    tokens: Tensor
    parents: Tensor
    q: Tensor | None = None
    replacement: bool = True
    values: Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    @staticmethod
    def empty() -> "Draft":
        return Draft(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


@dataclass
class Verdict:
    """What the verifier decided for one step.

    path:   node indices of the accepted drafted tokens, root excluded, in order (may be empty).
    tokens: the committed tokens: accepted drafted tokens followed by one correction/bonus token.
    """

    path: list[int]
    tokens: list[int]

    @property
    def accepted(self) -> int:
        return len(self.path)


class Drafter(Protocol):
    """Proposes draft trees. One instance serves one engine (one model); it may keep state across
    requests (Token Recycling's adjacency matrix) but never across models."""

    prefill_logits: int  # observe_prefill wants the logits of the last this many prompt positions (0: none)
    # ... whose LM head and top-k may take at most this many plain steps of time on this machine: the
    # engine cuts prefill_logits to the rows that fit (measured at start; inf: no cut)
    prefill_cost: float

    def start(self, prompt: Sequence[int]) -> None:
        """A new request begins with this prompt (token ids, root included)."""

    def observe_prefill(self, tokens: Tensor, logits: Tensor | None) -> None:
        """The last L prompt tokens [L] before the root and, if prefill_logits > 0, their logits [L, V]
        (L <= prefill_logits); without logits, every prompt token before the root."""

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        """Draft a tree of at most `budget` nodes after seq[-1] (the root). Empty = plain step."""

    def observe(self, root: int, draft: Draft, logits: Tensor, verdict: Verdict) -> None:
        """After verification: logits [n+1, V] at root then each node, and the verdict."""


@dataclass
class Stats:
    """Statistics of one generation. mean_accepted counts the bonus token, so it is >= 1."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    prefill_s: float = 0.0  # time to the first committed tokens (the pass that carries the prompt)
    decode_s: float = 0.0  # the remaining steps
    accepted_lengths: list[int] = field(default_factory=list)  # committed tokens per step
    drafted: list[int] = field(default_factory=list)  # draft nodes scored per step (a self-tuned sure spine may pass the budget)
    budgets: list[int] = field(default_factory=list)  # the budget each step was given (chosen or fixed)

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def wall_s(self) -> float:
        return self.prefill_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        """End-to-end throughput: new tokens over wall time, prefill included (as generate() is timed)."""
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0
