"""Backend over a Hugging Face causal LM: one forward pass over root + draft tree.

Invariants:
  * The KV cache holds every committed token except the last one (the root). `cached` is its
    length. `score` appends the root and all draft nodes; `commit` keeps the KV of the root and the
    accepted path only, moved to consecutive positions, so the invariant holds again.
  * Tree pass: node i sees the cached prefix, the root, its ancestors and itself (a 4-D additive
    mask [1, 1, n+1, past+n+1]) at position past + depth(i). A chain needs no custom mask: the
    model's own causal mask is exactly the tree mask then (fast path).
  * Models with sliding-window layers (Gemma 3) get one mask per layer type, so tree masks stay
    exact past the window; the cache keeps every position (no window trimming) so that
    positions can be gathered on commit.
  * No monkeypatching: only the public forward(input_ids, attention_mask, position_ids, cache).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from .. import tree
from ..types import Draft


class HFBackend:
    def __init__(self, model) -> None:
        self.model = model
        cfg = model.config
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        layer_types = getattr(cfg, "layer_types", None) or []
        self.sliding_window = getattr(cfg, "sliding_window", None) if "sliding_attention" in layer_types else None
        self.cache: DynamicCache | None = None
        self.cached = 0  # tokens in the KV cache
        self._scored = 0  # nodes (root included) appended by the last score()

    # --- lifecycle -------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int], want_logits: bool = False) -> Tensor | None:
        """Start a fresh cache holding `tokens` (the prompt without its last token).

        Returns logits [L, V] for every position if want_logits, else None.
        """
        self.cache = DynamicCache()  # plain full layers on purpose: see the module docstring
        self.cached = 0
        self._scored = 0
        if len(tokens) == 0:
            return torch.zeros(0, self.vocab_size) if want_logits else None
        ids = torch.tensor([list(tokens)], dtype=torch.long)  # [1, L]
        kwargs = {}
        if self.sliding_window is not None:
            kwargs["attention_mask"] = self._masks(0, torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril())
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True,
                         logits_to_keep=0 if want_logits else 1, **kwargs)
        self.cached = len(tokens)
        return out.logits[0] if want_logits else None

    @torch.inference_mode()
    def score(self, root: int, draft: Draft) -> Tensor:
        """Append root + draft nodes to the cache; return logits [n+1, V] (row 0 = root)."""
        assert self.cache is not None, "prefill first"
        past = self.cached
        n = draft.size
        ids = torch.cat([torch.tensor([root], dtype=torch.long), draft.tokens]).unsqueeze(0)  # [1, n+1]
        kwargs = {}
        if not tree.is_chain(draft.parents) or self.sliding_window is not None:
            allowed = tree.ancestor_mask(draft.parents)  # [n+1, n+1]
            depth = torch.cat([torch.zeros(1, dtype=torch.long), tree.depths(draft.parents)])  # [n+1]
            kwargs["position_ids"] = (past + depth).unsqueeze(0)  # [1, n+1]
            kwargs["attention_mask"] = self._masks(past, allowed, depth)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True, **kwargs)
        self.cached = past + n + 1
        self._scored = n + 1
        return out.logits[0]  # [n+1, V]

    @torch.inference_mode()
    def commit(self, path: Sequence[int]) -> None:
        """Keep the KV of the root and of the accepted nodes `path` (node indices, in order)."""
        assert self.cache is not None
        past = self.cached - self._scored
        m = len(path)
        keep = past + 1 + m
        if list(path) != list(range(m)):  # not a prefix of the node order: move entries down
            src = torch.tensor([past + 1 + i for i in path], dtype=torch.long)
            for layer in self.cache.layers:
                layer.keys[:, :, past + 1:keep] = layer.keys.index_select(2, src)
                layer.values[:, :, past + 1:keep] = layer.values.index_select(2, src)
        if keep < self.cached:
            self.cache.crop(keep - self.cached)  # negative: tokens to remove
        self.cached = keep
        self._scored = 0

    # --- masks -----------------------------------------------------------------------------
    def _masks(self, past: int, allowed: Tensor, depth: Tensor | None = None):
        """Additive mask(s) [1, 1, n, past+n] from `allowed` [n, n] over the new tokens.

        For sliding-window models returns {layer_type: mask}: sliding layers also hide cached
        positions further than the window from the query's position.
        """
        n = allowed.shape[0]
        neg = torch.finfo(self.dtype).min
        full = torch.zeros(n, past + n, dtype=self.dtype)
        full[:, past:].masked_fill_(~allowed, neg)
        if self.sliding_window is None:
            return full[None, None]
        if depth is None:
            depth = torch.arange(n)
        q_pos = past + depth  # [n] position of each query
        k_pos = torch.cat([torch.arange(past), past + depth])  # [past+n] position of each key
        too_far = (q_pos[:, None] - k_pos[None, :]) >= self.sliding_window  # [n, past+n]
        sliding = full.masked_fill(too_far, neg)
        return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}
