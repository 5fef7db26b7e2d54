"""Turning logits into distributions and tokens: the one place temperature, top-k and top-p live.

Glossary (see types.py): p is the target's distribution, q the draft's.

Invariants:
  * `probs` is the ONLY logits processor. Drafters build q with it and the verifier builds p with it,
    using the same SamplingParams, so p and q always get identical processing (ALGORITHMS.md A.0:
    otherwise sampling is no longer lossless).
  * Processing order: temperature, then top-k, then top-p (nucleus) on the top-k-filtered
    distribution, then renormalise. This is the order Hugging Face `generate` uses.
  * top-k keeps every token whose logit is >= the k-th largest. top-p keeps the smallest prefix of
    the tokens sorted by probability whose mass is >= top_p (the most likely token is always kept).
    Both keep every token tied with the last one kept, so results never depend on sort tie-breaking.
  * temperature 0 means greedy: `probs` returns a point mass on the argmax (first index on ties).
  * Randomness comes only from the torch.Generator the caller passes in.

Each fast path has a slow, obviously-correct reference beside it and tested against it:
`probs_reference` (plain Python over float64) and `sample_reference` (torch.multinomial).
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
    if params.seed is not None and not 0 <= params.seed < 2**63:
        raise QuickdraftError(f"seed must be an integer in [0, 2^63) (got {params.seed}); e.g. 42")
    if any(not s for s in params.stop):
        raise QuickdraftError("a stop string is empty; give non-empty --stop strings")


def probs(logits: Tensor, params: SamplingParams) -> Tensor:
    """Probabilities [.., V] float32 after temperature, top-k and top-p, from logits [.., V]."""
    x = logits.float()  # [.., V]
    if params.temperature == 0.0:
        out = torch.zeros_like(x)  # [.., V]
        return out.scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    if params.temperature != 1.0:  # shift first: a tiny temperature must not overflow to inf/NaN
        x = (x - x.amax(-1, keepdim=True)) / params.temperature
    V = x.shape[-1]
    if 0 < params.top_k < V:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]  # [.., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    out = torch.softmax(x, dim=-1)  # [.., V]
    if params.top_p < 1.0:
        out = _nucleus(out, params.top_p)
    return out


_NUCLEUS_K = 256  # the nucleus is looked for among the top 256 tokens first; a full sort otherwise


def _nucleus(prob: Tensor, top_p: float) -> Tensor:
    """prob [.., V] with everything below the top-p cut zeroed, renormalised."""
    V = prob.shape[-1]
    # Sorting V ~ 150k floats costs ~15 ms on CPU; the nucleus almost always sits in the top few
    # hundred tokens, where topk is ~30x cheaper. Both give the same sorted prefix, hence the same cut.
    vals = torch.topk(prob, min(V, _NUCLEUS_K), dim=-1).values  # [.., k] descending
    csum = torch.cumsum(vals, dim=-1)  # [.., k]
    if vals.shape[-1] < V and bool((csum[..., -1] < top_p).any()):
        vals = torch.sort(prob, dim=-1, descending=True).values  # [.., V]
        csum = torch.cumsum(vals, dim=-1)
    before = torch.cat([torch.zeros_like(csum[..., :1]), csum[..., :-1]], dim=-1)  # [.., k] mass before
    keep = (before < top_p).sum(-1, keepdim=True)  # [.., 1] >= 1: the top token has before == 0
    tau = vals.gather(-1, keep - 1)  # [.., 1] probability of the last kept token
    out = prob.masked_fill(prob < tau, 0.0)  # ties with the last kept token are kept too
    return out / out.sum(-1, keepdim=True)


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
            mass, tau = 0.0, 0.0
            for v in sorted(pr, reverse=True):  # walk down until the kept mass reaches top_p
                if mass >= params.top_p:
                    break
                tau = v
                mass += v
            pr = [v if v >= tau else 0.0 for v in pr]
            s = sum(pr)
            pr = [v / s for v in pr]
        rows.append(pr)
    return torch.tensor(rows, dtype=torch.float64).reshape(logits.shape)


_BLOCK = 1024  # sample() picks a block of this many tokens, then a token inside it


def sample(prob: Tensor, rng: torch.Generator | None) -> int:
    """One token drawn from prob [V] (non-negative, need not be normalised) with the caller's generator.

    Inverse CDF in float64 over two levels (block, then token in the block): one uniform, ~0.1 ms at
    V = 150k, where torch.multinomial draws V exponentials (~4 ms). `sample_reference` is the
    multinomial version; they agree in distribution, not draw for draw. A token of probability 0 is
    never returned: the chosen token is the first whose running sum exceeds the uniform point, so
    its own mass is > 0.
    """
    device = rng.device if rng is not None else prob.device
    w = prob.detach().to(device=device, dtype=torch.float64).flatten()  # [V]
    V = w.numel()
    pad = (-V) % _BLOCK
    if pad:
        w = torch.cat([w, w.new_zeros(pad)])
    blocks = w.view(-1, _BLOCK)  # [nb, B]
    cum_blocks = blocks.sum(1).cumsum(0)  # [nb]
    x = torch.rand((), generator=rng, dtype=torch.float64, device=device) * cum_blocks[-1]
    b = int(torch.searchsorted(cum_blocks, x, right=True))
    if b >= blocks.shape[0]:  # x rounded up to the total: take the last block with mass
        b = int(torch.nonzero(blocks.sum(1) > 0)[-1])
    if b > 0:
        x = x - cum_blocks[b - 1]
    cum = blocks[b].cumsum(0)  # [B]
    i = int(torch.searchsorted(cum, x, right=True))
    if i >= _BLOCK:  # block sum and cumsum round differently: take the block's last token with mass
        i = int(torch.nonzero(blocks[b] > 0)[-1])
    return b * _BLOCK + i


def sample_reference(prob: Tensor, rng: torch.Generator | None) -> int:
    """Slow reference for `sample`: torch.multinomial with the caller's generator."""
    if rng is not None and prob.device != rng.device:
        prob = prob.to(rng.device)
    return int(torch.multinomial(prob.double(), 1, generator=rng).item())


def greedy(logits: Tensor) -> int:
    """The argmax token of logits [V] (first index on ties, as torch.argmax)."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        # torch's CPU argmax runs at ~2 ns/element (~0.3 ms at V = 150k); numpy's is ~30x faster,
        # also after an exact upcast of bf16/fp16 (same values, same first-index tie-breaking).
        x = logits.detach()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return int(x.numpy().argmax())
    return int(torch.argmax(logits, dim=-1).item())


class GumbelNoise:
    """Gumbel(0, 1) noise [V] for each output position of one request, drawn lazily in position
    order from the request's generator.

    The token committed at output position t is argmax(log p_t + G_t) (Gumbel-max: exactly a
    sample from p_t). Because G_t depends only on the seed and t, never on what was drafted, every
    drafter commits the same tokens as plain sampling with the same seed (up to fp near-ties).
    """

    def __init__(self, rng: torch.Generator) -> None:
        self.rng = rng
        self._noise: dict[int, Tensor] = {}
        self._next = 0  # positions below this were drawn

    def at(self, pos: int, vocab: int) -> Tensor:
        """Noise [vocab] (float64) of output position `pos`."""
        while self._next <= pos:
            u = torch.rand(vocab, generator=self.rng, dtype=torch.float64, device=self.rng.device)  # [V]
            self._noise[self._next] = -torch.log(-torch.log(u))  # u = 0 gives -inf: never chosen
            self._next += 1
        return self._noise[pos]

    def forget_before(self, pos: int) -> None:
        for k in [k for k in self._noise if k < pos]:
            del self._noise[k]


def gumbel_pick(prob: Tensor, noise: Tensor) -> int:
    """argmax(log prob + noise): a sample from prob [V] given Gumbel noise [V]."""
    return int(torch.argmax(torch.log(prob.to(noise.dtype)) + noise))
