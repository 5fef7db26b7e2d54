"""The verifier: walks a draft tree with the target's logits and decides what to commit.

Glossary (see types.py):
  accepted     drafted tokens on the accepted path, root excluded (Verdict.path / Verdict.tokens[:-1]).
  correction   the token the target adds where it rejected every child of a node.
  bonus        the token the target adds when the walk runs off the tree (a leaf was accepted, or the
               draft is empty); sampled from p at that node.
  p            the target distribution at a node: sampling.probs(logits row, params).
  q            the draft distribution a child was drawn from: draft.q[child], already processed with
               the same params by the drafter (it is what the drafter sampled from).
  residual     the target distribution left after rejections at a node; the correction is drawn from it.

Rules (ALGORITHMS.md A.2, A.4, item 7), each starting at the root with row 0 of the logits; row i+1
belongs to draft node i. Children of a node are visited in node order.
  greedy (temperature 0)   t* = argmax p(node); move to the first child carrying t*, else emit t*.
  coupled (q is None, with GumbelNoise; what the decoder uses)  t* = argmax(log p(node) + G[pos+depth]),
                           then the greedy walk on t*. G depends only on seed and output position,
                           so the committed tokens do not depend on the draft at all; a child is
                           accepted with probability p(c), as under the point-mass rule.
  point mass (q is None, no noise given)  accept child c with probability p(c); else p(c) <- 0 and renormalise.
  SpecInfer (replacement)  accept c with probability min(1, p(c)/q(c)); else p <- norm(max(0, p - q)).
                           A chain (Leviathan et al. / Chen et al.) is the one-child case.
  RSD (no replacement)     as SpecInfer, and after rejecting c also q(c) <- 0 and renormalise q.
  Accepting descends to the child; rejecting every child samples the correction from the residual;
  reaching a node without children samples the bonus from its p.

Invariants:
  * Output is lossless: greedy commits exactly what plain greedy decoding would (up to fp near-ties
    in the logits); sampled tokens have exactly the distribution of sampling from p step by step.
  * Verdict.tokens == [tokens[i] for i in Verdict.path] + [correction or bonus]; len >= 1.
  * Randomness comes only from the torch.Generator passed in (greedy needs none).
  * Residual all-zero: in exact arithmetic a rejection that empties the residual has probability 0
    (SpecInfer/RSD: max(0, p - q) = 0 everywhere means p == q, so p(c)/q(c) = 1 and c is accepted;
    point mass: an empty residual means p(c) = 1, and u < 1 always accepts). Rounding can still
    produce it with probability ~1e-7; the residual is then left unchanged (the last p), which is a
    valid distribution over tokens the target allows, so nothing breaks and the bias is below fp
    noise.
  * A child with q(c) == 0 cannot have been drawn from q; it is skipped (as if absent), which keeps
    the rule lossless for the remaining children.

`verify_reference` is the slow, obviously-correct version (plain Python loops over float64), kept
beside the fast path and tested against it: identical verdicts for greedy, identical output
distributions for sampling (it consumes the generator differently, so not identical draws).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sampling import GumbelNoise, greedy, gumbel_pick, probs, probs_reference, sample
from .types import Draft, SamplingParams, Verdict


def _check_inputs(draft: Draft, logits: Tensor) -> tuple[list[int], list[int]]:
    """tokens and parents as lists, after checking shapes and topological order."""
    n = draft.size
    if logits.dim() != 2 or logits.shape[0] != n + 1:
        raise ValueError(f"logits must be [n+1, V] = [{n + 1}, V] for a draft of {n} nodes, "
                         f"got {tuple(logits.shape)}")
    tokens = draft.tokens.tolist()
    parents = draft.parents.tolist()
    if len(parents) != n:
        raise ValueError(f"draft has {n} tokens but {len(parents)} parents")
    for i, par in enumerate(parents):
        if not -1 <= par < i:
            raise ValueError(f"draft node {i} has parent {par}; parents must satisfy -1 <= parents[i] < i")
    if draft.q is not None and tuple(draft.q.shape) != (n, logits.shape[1]):
        raise ValueError(f"draft.q must be [n, V] = [{n}, {logits.shape[1]}], got {tuple(draft.q.shape)}")
    return tokens, parents


class Verifier:
    """Stateless; one instance may serve every request."""

    def verify(self, draft: Draft, logits: Tensor, params: SamplingParams,
               rng: torch.Generator | None, noise: GumbelNoise | None = None, pos: int = 0) -> Verdict:
        """Verdict for `draft` given target logits [n+1, V] (row 0 at the root, row i+1 at node i).

        noise/pos: the request's Gumbel noise and the output position of the root's next token;
        given, deterministic drafts (q None) use the coupled rule.
        """
        tokens, parents = _check_inputs(draft, logits)
        if params.greedy:
            return self._greedy(tokens, parents, logits)
        if noise is not None and draft.q is None:
            V = logits.shape[1]
            pick = lambda row, depth: gumbel_pick(probs(logits[row], params), noise.at(pos + depth, V))  # noqa: E731
            return self._walk(tokens, parents, pick)
        if rng is None:
            raise ValueError("sampling (temperature > 0) needs the request's torch.Generator")
        return self._sample(draft, tokens, parents, logits, params, rng)

    @staticmethod
    def _greedy(tokens: list[int], parents: list[int], logits: Tensor, lazy: bool | None = None) -> Verdict:
        if lazy is None:
            lazy = logits.device.type == "cpu"
        if lazy:  # CPU: argmax only the rows the walk visits (~10 us each at V = 150k, via numpy)
            return Verifier._walk(tokens, parents, lambda row, depth: greedy(logits[row]))
        best = logits.argmax(dim=-1).tolist()  # [n+1] accelerators: all rows in one kernel and one sync
        return Verifier._walk(tokens, parents, lambda row, depth: best[row])

    @staticmethod
    def _walk(tokens: list[int], parents: list[int], pick) -> Verdict:
        """Walk down the children that carry t* = pick(row, depth); emit the first t* not drafted."""
        # One forward scan suffices: children of a node come after it (parents[i] < i), and after
        # moving to node i only nodes > i can be its children.
        path: list[int] = []
        out: list[int] = []
        cur, want = -1, pick(0, 0)  # t* at the root
        for i, (tok, par) in enumerate(zip(tokens, parents)):
            if par == cur and tok == want:
                path.append(i)
                out.append(tok)
                cur, want = i, pick(i + 1, len(path))
        out.append(want)
        return Verdict(path, out)

    @staticmethod
    def _sample(draft: Draft, tokens: list[int], parents: list[int], logits: Tensor,
                params: SamplingParams, rng: torch.Generator) -> Verdict:
        n = len(tokens)
        children: list[list[int]] = [[] for _ in range(n + 1)]  # children[node + 1], root = -1
        for i, par in enumerate(parents):
            children[par + 1].append(i)
        # One uniform per node, drawn up front in one call; node c's acceptance test uses u[c].
        u = torch.rand(n, generator=rng, dtype=torch.float64, device=rng.device).tolist() if n else []
        q_all = draft.q
        rsd = q_all is not None and not draft.replacement

        path: list[int] = []
        cur = -1
        while True:
            p = probs(logits[cur + 1], params)  # [V] target distribution at cur, the residual
            kids = children[cur + 1]
            accepted = -1
            removed: list[int] = []  # RSD: sibling tokens already rejected at this node
            for c in kids:
                t = tokens[c]
                if q_all is None:  # point mass
                    pt = float(p[t])
                    if u[c] < pt:
                        accepted = c
                        break
                    if pt > 0.0:
                        rest = p.clone()
                        rest[t] = 0.0
                        s = rest.sum()
                        if float(s) > 0.0:  # else: see "Residual all-zero" above
                            p = rest / s
                    continue
                q = q_all[c].to(device=p.device, dtype=torch.float32)  # [V]
                if removed:  # RSD: q conditioned on the siblings already drawn and rejected
                    q = q.clone()
                    q[removed] = 0.0
                    q = q / q.sum()
                qt = float(q[t])
                if not qt > 0.0:  # c cannot have come from q: skip it (also catches NaN)
                    continue
                if u[c] < min(1.0, float(p[t]) / qt):
                    accepted = c
                    break
                rest = (p - q).clamp_(min=0.0)  # [V]
                s = rest.sum()
                if float(s) > 0.0:  # else: see "Residual all-zero" above
                    p = rest / s
                if rsd:
                    removed.append(t)
            if accepted < 0:  # every child rejected (correction), or a leaf (bonus)
                return Verdict(path, [tokens[i] for i in path] + [sample(p, rng)])
            path.append(accepted)
            cur = accepted


def verify_reference(draft: Draft, logits: Tensor, params: SamplingParams,
                     rng: torch.Generator | None) -> Verdict:
    """Slow reference for Verifier.verify: the rules written out in plain Python over float64."""
    tokens, parents = _check_inputs(draft, logits)
    n = len(tokens)
    rows = logits.detach().double().tolist()  # [n+1][V]
    V = len(rows[0])

    def kids_of(node: int) -> list[int]:
        return [i for i in range(n) if parents[i] == node]

    def uniform() -> float:
        return float(torch.rand(1, generator=rng, dtype=torch.float64).item())

    def draw(dist: list[float]) -> int:  # inverse CDF, skipping zero-mass tokens
        total = sum(dist)
        x = uniform() * total
        acc = 0.0
        last = max(i for i in range(V) if dist[i] > 0)
        for i in range(V):
            acc += dist[i]
            if dist[i] > 0 and x < acc:
                return i
        return last

    def normalise(dist: list[float]) -> list[float]:
        s = sum(dist)
        return [v / s for v in dist]

    path: list[int] = []
    node = -1
    while True:
        row = rows[node + 1]
        if params.greedy:
            best = max(range(V), key=lambda i: (row[i], -i))
            nxt = next((c for c in kids_of(node) if tokens[c] == best), None)
            if nxt is None:
                return Verdict(path, [tokens[i] for i in path] + [best])
            path.append(nxt)
            node = nxt
            continue
        if rng is None:
            raise ValueError("sampling (temperature > 0) needs the request's torch.Generator")
        p = probs_reference(torch.tensor(row, dtype=torch.float64), params).tolist()
        accepted = None
        removed: list[int] = []
        for c in kids_of(node):
            t = tokens[c]
            if draft.q is None:  # point mass
                if uniform() < p[t]:
                    accepted = c
                    break
                if p[t] < 1.0:
                    p[t] = 0.0
                    p = normalise(p)
                continue
            q = [float(v) for v in draft.q[c].double().tolist()]
            if not draft.replacement:
                for r in removed:
                    q[r] = 0.0
                if sum(q) <= 0.0:  # no mass left to have drawn c from: skip it
                    continue
                q = normalise(q)
            if not q[t] > 0.0:
                continue
            if uniform() < min(1.0, p[t] / q[t]):
                accepted = c
                break
            rest = [max(0.0, a - b) for a, b in zip(p, q)]
            if sum(rest) > 0.0:
                p = normalise(rest)
            if not draft.replacement:
                removed.append(t)
        if accepted is None:
            return Verdict(path, [tokens[i] for i in path] + [draw(p)])
        path.append(accepted)
        node = accepted


__all__ = ["Verifier", "verify_reference"]
