"""Default no-op hooks shared by drafters that need only some of the protocol."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..types import Draft, Verdict


class BaseDrafter:
    prefill_logits = 0  # logits of the last this many prompt positions for observe_prefill
    prefill_cost = float("inf")  # plain steps of time those rows may cost (the engine cuts them to fit)
    # propose(seq, b') returns the first b' nodes of propose(seq, b) for b' < b (best-first trees,
    # chains); the self-tuner then learns every smaller budget from each step. False if unsure.
    prefix_consistent = False

    def start(self, prompt: Sequence[int]) -> None:
        pass

    def observe_prefill(self, tokens: Tensor, logits: Tensor | None) -> None:
        pass

    def propose(self, seq: Sequence[int], budget: int) -> Draft:
        return Draft.empty()

    def observe(self, root: int, draft: Draft, logits: Tensor, verdict: Verdict) -> None:
        pass

    def default_budget(self) -> int:
        """The most nodes this drafter proposes with its config: the self-tuner's cap."""
        return 0

    def start_budget(self) -> int:
        """The budget the self-tuner tries first."""
        return self.default_budget()
