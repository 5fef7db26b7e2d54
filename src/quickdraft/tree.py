"""Pure helpers for draft trees (no model, no state).

A tree hangs off the root (the last committed token). Nodes are numbered 0..n-1 in topological
order: parents[i] < i, and parents[i] == -1 means node i is a child of the root. Depth counts from
the root: children of the root have depth 1. A chain is the tree with parents[i] == i - 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .types import Draft


def chain(tokens: Sequence[int]) -> Draft:
    """A chain draft: each token is the child of the previous one."""
    n = len(tokens)
    return Draft(torch.tensor(list(tokens), dtype=torch.long), torch.arange(-1, n - 1, dtype=torch.long))


def from_paths(paths: Sequence[Sequence[int]]) -> Draft:
    """Merge token sequences (each starting after the root) into a prefix trie, BFS order."""
    children: list[dict[int, int]] = [{}]  # trie node 0 = root
    trie_tok: list[int] = [-1]
    trie_par: list[int] = [-1]
    for path in paths:
        cur = 0
        for tok in path:
            nxt = children[cur].get(int(tok))
            if nxt is None:
                nxt = len(trie_tok)
                children[cur][int(tok)] = nxt
                children.append({})
                trie_tok.append(int(tok))
                trie_par.append(cur)
            cur = nxt
    # BFS renumbering, root excluded; parents map to the new numbering (root -> -1).
    order: list[int] = []
    frontier = [0]
    while frontier:
        nxt_frontier = []
        for t in frontier:
            for c in children[t].values():
                order.append(c)
                nxt_frontier.append(c)
        frontier = nxt_frontier
    new_index = {0: -1}
    for i, t in enumerate(order):
        new_index[t] = i
    tokens = [trie_tok[t] for t in order]
    parents = [new_index[trie_par[t]] for t in order]
    return Draft(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long))


def is_chain(parents: Tensor) -> bool:
    """True if node i is the child of node i - 1 for every i (the empty tree is a chain)."""
    n = parents.numel()
    return n == 0 or bool(torch.equal(parents, torch.arange(-1, n - 1, dtype=parents.dtype)))


def depths(parents: Tensor) -> Tensor:
    """[n] int64 depth of each node; children of the root have depth 1."""
    par = parents.tolist()
    out = [0] * len(par)
    for i, p in enumerate(par):
        out[i] = 1 if p < 0 else out[p] + 1
    return torch.tensor(out, dtype=torch.long)


def ancestor_mask(parents: Tensor) -> Tensor:
    """[n+1, n+1] bool: row r may attend to column c. Row/col 0 is the root, row i+1 is node i.

    Each row sees itself, its ancestors and the root, nothing else.
    """
    n = parents.numel()
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[:, 0] = True
    mask[0, 0] = True
    par = parents.tolist()
    for i, p in enumerate(par):
        row = i + 1
        if p >= 0:
            mask[row] = mask[p + 1]
        mask[row, row] = True
    return mask


def path_to(parents: Tensor, node: int) -> list[int]:
    """Node indices from the first node below the root down to `node` (inclusive)."""
    out = []
    par = parents.tolist()
    while node >= 0:
        out.append(node)
        node = par[node]
    return out[::-1]


def truncate(draft: Draft, budget: int) -> Draft:
    """Keep the first `budget` nodes (a topological prefix is again a valid tree)."""
    if draft.size <= budget:
        return draft
    q = None if draft.q is None else draft.q[:budget]
    values = None if draft.values is None else draft.values[:budget]
    return Draft(draft.tokens[:budget], draft.parents[:budget], q, draft.replacement, values)
