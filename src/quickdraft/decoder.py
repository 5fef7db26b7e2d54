"""The decoder loop: steps of draft -> one target pass -> verify -> commit -> observe.

The first step's pass also carries the prompt (prefill and first step in one forward).

Knows nothing about model architectures, tokenizers or method names. Invariants:
  * Every new token is committed by the verifier from target logits, so output is lossless
    whatever the drafter proposes (greedy: token for token equal to plain decoding).
  * The drafter only ever sees committed tokens and the verdict; it cannot change the output.
  * Randomness comes only from the per-request generator built from params.seed. Sampling with
    deterministic drafts uses per-position Gumbel noise (verify.py, coupled rule), so the same seed
    gives the same tokens whatever the drafter and whatever state it carries.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import tree
from .errors import QuickdraftError
from .sampling import GumbelNoise, check_params
from .tuning import BudgetTuner, PassClock
from .types import Draft, Drafter, SamplingParams, Stats
from .verify import Verifier


@dataclass
class Generation:
    tokens: list[int]  # generated token ids (prompt excluded)
    stats: Stats
    finish_reason: str  # "eos", "length", "stop" (a callback asked to stop) or "context"


# on_tokens(new_tokens) -> True to stop; sees every committed token once, in order.
TokenCallback = Callable[[list[int]], bool]


class Decoder:
    def __init__(self, backend, drafter: Drafter, verifier: Verifier | None = None,
                 eos_ids: Sequence[int] = ()) -> None:
        self.backend = backend
        self.drafter = drafter
        self.verifier = verifier or Verifier()
        self.eos_ids = set(int(e) for e in eos_ids)

    def generate(self, prompt: Sequence[int], params: SamplingParams, budget: int,
                 on_tokens: TokenCallback | None = None, tuner: BudgetTuner | None = None,
                 clock: PassClock | None = None) -> Generation:
        """Generate after `prompt` (token ids, non-empty).

        budget: max draft nodes per step; with a tuner, the tuner chooses each step's budget instead
        (a budget of 0 is a plain step: the drafter is not asked to draft, only to observe), and a
        draft the cut finds sure to its end may go past it, up to `tuner.reach(budget)` nodes.
        clock: learns the time of every pass but the prefill (default: the tuner's, if any).
        """
        check_params(params)
        prompt = [int(t) for t in prompt]
        if not prompt:
            raise QuickdraftError("the prompt is empty; give some text to continue")
        ctx = self.backend.max_context
        if len(prompt) >= ctx:
            raise QuickdraftError(
                f"the prompt has {len(prompt)} tokens but the model's context is {ctx}; shorten the prompt")
        rng = torch.Generator()
        rng.manual_seed(params.seed if params.seed is not None else secrets.randbits(62))  # never global RNG
        noise = None if params.greedy else GumbelNoise(rng)  # sampled tokens independent of drafts
        stats = Stats(prompt_tokens=len(prompt))
        drafter = self.drafter
        if clock is None and tuner is not None:
            clock = tuner.clock

        t0 = time.perf_counter()
        t1 = t0
        drafter.start(prompt)
        seq = list(prompt)
        out: list[int] = []
        reason = "length"
        while True:
            room = min(params.max_new_tokens - len(out), ctx - len(seq))
            if room <= 0:
                reason = "length" if len(out) >= params.max_new_tokens else "context"
                break
            b = tuner.choose() if tuner is not None else budget
            td = time.perf_counter()
            # The pass adds root + n nodes to the cache; keep it inside the context.
            ask = tuner.reach(b) if tuner is not None else b  # more than b: the cut may keep a sure spine past b
            draft = drafter.propose(seq, ask) if b else Draft.empty()
            fits = max(0, ctx - len(seq) - 1)
            keep = min(b, fits)
            if tuner is not None and draft.values is not None and draft.size and not tuner.exploring:
                # the prefix that pays this step (probes are not cut)
                keep = tuner.trim_extended(draft.values[:min(ask, fits)], keep)
            draft = tree.truncate(draft, keep)
            draft_s = time.perf_counter() - td
            if stats.steps == 0:  # the prompt goes through the model with the first draft
                logits, prefix_logits = self.backend.first_pass(
                    prompt[:-1], seq[-1], draft, prefix_logits=drafter.prefill_logits)
                seen = prompt[:-1] if prefix_logits is None else prompt[len(prompt) - 1 - prefix_logits.shape[0]:-1]
                drafter.observe_prefill(torch.tensor(seen, dtype=torch.long), prefix_logits)  # aligned rows
            else:
                tp = time.perf_counter()
                logits = self.backend.score(seq[-1], draft)  # [n+1, V]
                if clock is not None:
                    clock.observe(draft.size, time.perf_counter() - tp)  # the tuner's costs are real pass times
            td = time.perf_counter()  # verifying, committing and observing count as drafting's cost
            verdict = self.verifier.verify(draft, logits, params, rng, noise, pos=len(out))
            self.backend.commit(verdict.path)
            drafter.observe(seq[-1], draft, logits, verdict)
            # not counted: the prefill step (its drafting indexes the whole prompt) and empty drafts
            # (the drafter had nothing to offer: the step says nothing about the budget)
            if tuner is not None and stats.steps > 0 and draft.size:
                tuner.update(b, draft.size, len(verdict.tokens), draft_s + time.perf_counter() - td, verdict.path)
            new = verdict.tokens[:room]
            for i, t in enumerate(new):
                if t in self.eos_ids:
                    new = new[: i + 1]
                    reason = "eos"
                    break
            seq.extend(new)
            out.extend(new)
            if noise is not None:
                noise.forget_before(len(out))
            stats.steps += 1
            stats.drafted.append(draft.size)
            stats.budgets.append(b)
            stats.accepted_lengths.append(len(new))
            if stats.steps == 1:
                t1 = time.perf_counter()
                stats.prefill_s = t1 - t0  # time to the first committed tokens
            stop = on_tokens(new) if on_tokens is not None else False
            if reason == "eos":
                break
            if stop:
                reason = "stop"
                break
        stats.decode_s = time.perf_counter() - t1
        stats.new_tokens = len(out)
        return Generation(out, stats, reason)
