"""Turning logits into distributions and tokens: the one place temperature, top-k and top-p live.

Glossary (see types.py): p is the target's distribution, q the draft's.

Invariants:
  * `probs` is the ONLY logits processor. Drafters build q with it and the verifier builds p with it,
    using the same SamplingParams, so p and q always get identical processing (ALGORITHMS.md A.0:
    otherwise sampling is no longer lossless).
  * Processing order: temperature, then top-k, then top-p (nucleus) on the top-k-filtered
    distribution, then renormalise. This is the order Hugging Face `generate` uses.
  * top-k keeps every token whose logit is >= the k-th largest (ties at the boundary are all kept, so
    the result never depends on sort tie-breaking). top-p keeps the smallest prefix of the tokens
    sorted by probability whose mass is >= top_p; the most likely token is always kept.
  * temperature 0 means greedy: `probs` returns a point mass on the argmax (first index on ties).
  * Randomness comes only from the torch.Generator the caller passes in.

Each fast path has a slow, obviously-correct reference beside it (`probs_reference`), written in
plain Python over float64 and tested against it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import QuickdraftError
from .types import SamplingParams


def check_params(params: SamplingParams) -> None:
    """Raise QuickdraftError with a one-line fix if `params` is unusable."""
    t = params.temperature
    if not isinstance(t, (int, float)) or math.isnan(t) or t < 0 or math.isinf(t):
        raise QuickdraftError(
            f"temperature must be a finite number >= 0 (got {t}); use 0 for greedy or e.g. 0.7 to sample")
    if not isinstance(params.top_k, int) or params.top_k < 0:
        raise QuickdraftError(
            f"top_k must be an integer >= 0 (got {params.top_k}); use 0 to turn it off or e.g. 50")
    p = params.top_p
    if not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 < p <= 1.0:
        raise QuickdraftError(
            f"top_p must be in (0, 1] (got {p}); use 1.0 to turn it off or e.g. 0.9")
    if not isinstance(params.max_new_tokens, int) or params.max_new_tokens < 1:
        raise QuickdraftError(
            f"max_new_tokens must be an integer >= 1 (got {params.max_new_tokens}); e.g. 128")


def probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """Probabilities [.., V] float32 after temperature, top-k and top-p, from logits [.., V]."""
    x = logits.float()  # [.., V]
    if params.temperature == 0.0:
        out = torch.zeros_like(x)  # [.., V]
        return out.scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    if params.temperature != 1.0:
        x = x / params.temperature
    V = x.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]  # [.., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    out = torch.softmax(x, dim=-1)  # [.., V]
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(out, dim=-1, descending=True, stable=True)  # [.., V] each
        csum = torch.cumsum(sorted_p, dim=-1)  # [.., V]
        before = torch.cat([torch.zeros_like(csum[..., :1]), csum[..., :-1]], dim=-1)  # [.., V] mass before
        drop_sorted = before >= params.top_p  # [.., V]; the top token has before == 0, always kept
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # [.., V]
        out = out.masked_fill(drop, 0.0)
        out = out / out.sum(-1, keepdim=True)
    return out


def probs_reference(logits: Tensor, params: SamplingParams) -> Tensor:
    """Slow reference for `probs`: plain Python loops in float64, one row at a time."""
    flat = logits.detach().double().reshape(-1, logits.shape[-1]).tolist()
    rows = []
    for row in flat:
        V = len(row)
        if params.temperature == 0.0:
            best = max(range(V), key=lambda i: (row[i], -i))  # first index on ties
            rows.append([1.0 if i == best else 0.0 for i in range(V)])
            continue
        z = [v / params.temperature for v in row]
        keep = [True] * V
        if 0 < params.top_k < V:
            kth = sorted(z, reverse=True)[params.top_k - 1]
            keep = [v >= kth for v in z]
        m = max(v for v, k in zip(z, keep) if k)
        e = [math.exp(v - m) if k else 0.0 for v, k in zip(z, keep)]
        s = sum(e)
        pr = [v / s for v in e]
        if params.top_p < 1.0:
            order = sorted(range(V), key=lambda i: -pr[i])  # stable: ties keep index order
            mass = 0.0
            kept = set()
            for i in order:
                if mass >= params.top_p:
                    break
                kept.add(i)
                mass += pr[i]
            pr = [pr[i] if i in kept else 0.0 for i in range(V)]
            s = sum(pr)
            pr = [v / s for v in pr]
        rows.append(pr)
    return torch.tensor(rows, dtype=torch.float64).reshape(logits.shape)


def sample(prob: Tensor, rng: torch.Generator | None) -> int:
    """One token drawn from prob [V] (need not be normalised) with the caller's generator."""
    if rng is not None and prob.device != rng.device:
        prob = prob.to(rng.device)
    return int(torch.multinomial(prob, 1, generator=rng).item())


def greedy(logits: Tensor) -> int:
    """The argmax token of logits [V] (first index on ties)."""
    return int(torch.argmax(logits, dim=-1).item())
