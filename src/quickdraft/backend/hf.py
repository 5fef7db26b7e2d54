"""Backend over a Hugging Face causal LM: one forward pass over root + draft tree.

Invariants:
  * The KV cache holds every committed token except the last one (the root). `cached` is its
    length. A pass appends [prefix +] root + all draft nodes; `commit` keeps the KV of the root and
    the accepted path only, moved to consecutive positions, so the invariant holds again.
  * Tree pass: node i sees the cached prefix, the root, its ancestors and itself (a 4-D additive
    mask [1, 1, m, past+m]) at position past + depth(i). A chain needs no custom mask: the
    model's own causal mask is exactly the tree mask then (fast path).
  * The first pass of a request carries the prompt (`first_pass`): prompt and first draft go
    through the model together, so plain decoding makes exactly the passes generate() makes
    (one over the prompt, then one per token) with the same shapes.
  * Models with sliding-window layers (Gemma 3) get one mask per layer type, and models with one
    window on every layer (Mistral-style configs) get the windowed mask, so tree masks stay exact
    past the window; the cache keeps every position (no window trimming) so that positions can be
    gathered on commit. Other attention layer types are refused with a clear error.
  * No monkeypatching: only the public forward(input_ids, attention_mask, position_ids, cache), and
    transformers' AttentionInterface to register the tree attention of `attention.py` (grouped-query
    heads without copying the cache; passes of one query and prefills keep the stock code).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from .. import tree
from . import attention
from ..errors import QuickdraftError
from ..types import Draft

MAX_PREFIX_LOGITS = 1024  # first_pass returns logits for at most this many last prompt positions


class HFBackend:
    def __init__(self, model, tree_attention: bool = True) -> None:
        """tree_attention: use backend/attention.py's attention for tree passes (modifies `model`'s
        attention implementation; False keeps the model's own, e.g. for a stock baseline copy)."""
        self.model = model
        cfg = model.config
        self.dtype = next(model.parameters()).dtype
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(cfg, "max_position_embeddings", 0) or 1 << 30)
        layer_types = set(getattr(cfg, "layer_types", None) or [])
        unknown = layer_types - {"full_attention", "sliding_attention"}
        if unknown:
            raise QuickdraftError(f"attention layer types {sorted(unknown)} are not supported yet; "
                                  "use a model with full or sliding-window attention")
        window = getattr(cfg, "sliding_window", None)
        if layer_types:  # per-layer types (Gemma 3, Qwen2): a window only on sliding layers
            self.sliding_window = window if "sliding_attention" in layer_types else None
            self._window_everywhere = False
        else:  # Mistral-style configs: one window for every layer, if any
            self.sliding_window = window if window and getattr(cfg, "use_sliding_window", True) else None
            self._window_everywhere = True
        self.tree_attention = tree_attention and attention.install(model)  # False: the model's own attention
        self.cache: DynamicCache | None = None
        self.cached = 0  # tokens in the KV cache
        self._scored = 0  # root + nodes appended by the last pass

    # --- passes ----------------------------------------------------------------------------
    def first_pass(self, prefix: Sequence[int], root: int, draft: Draft,
                   prefix_logits: int = 0) -> tuple[Tensor, Tensor | None]:
        """Fresh cache; one pass over prefix + root + draft.

        Returns logits [n+1, V] (root, then each node) and, if prefix_logits > 0, the logits [P', V]
        of the last P' = min(P, prefix_logits, MAX_PREFIX_LOGITS) prefix positions (else None).
        """
        self.cache = DynamicCache()  # plain full layers on purpose: see the module docstring
        self.cached = 0
        keep = min(len(prefix), int(prefix_logits), MAX_PREFIX_LOGITS)
        logits = self._forward(list(prefix), root, draft, keep_prefix=keep)  # [keep+n+1, V]
        if prefix_logits <= 0:
            return logits, None
        return logits[keep:], logits[:keep]

    def score(self, root: int, draft: Draft) -> Tensor:
        """Append root + draft nodes to the cache; return logits [n+1, V] (row 0 = root)."""
        assert self.cache is not None, "first_pass or prefill first"
        return self._forward([], root, draft, keep_prefix=0)

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int], want_logits: bool = False) -> Tensor | None:
        """Fresh cache holding `tokens` (no root); their logits [L, V] if want_logits."""
        self.cache = DynamicCache()
        self.cached = 0
        self._scored = 0
        if len(tokens) == 0:
            return torch.zeros(0, self.vocab_size) if want_logits else None
        ids = torch.tensor([list(tokens)], dtype=torch.long)  # [1, L]
        kwargs = {}
        if self.sliding_window is not None:
            causal = torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril()
            kwargs["attention_mask"] = self._masks(0, causal, torch.arange(len(tokens)))
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True,
                         logits_to_keep=0 if want_logits else 1, **kwargs)
        self.cached = len(tokens)
        return out.logits[0] if want_logits else None

    @torch.inference_mode()
    def _forward(self, prefix: list[int], root: int, draft: Draft, keep_prefix: int) -> Tensor:
        """One pass over prefix + root + draft; logits of root + nodes and the last keep_prefix prefix rows."""
        past = self.cached
        p, n = len(prefix), draft.size
        ids = torch.cat([torch.tensor(prefix + [root], dtype=torch.long), draft.tokens]).unsqueeze(0)  # [1, p+n+1]
        kwargs = {}
        if not tree.is_chain(draft.parents) or self.sliding_window is not None:
            m = p + n + 1
            allowed = torch.ones(m, m, dtype=torch.bool).tril()  # [m, m], causal over prefix + root
            allowed[p:, p:] = tree.ancestor_mask(draft.parents)
            pos = torch.cat([torch.arange(p + 1), p + tree.depths(draft.parents)])  # [m]
            kwargs["position_ids"] = (past + pos).unsqueeze(0)  # [1, m]
            kwargs["attention_mask"] = self._masks(past, allowed, pos)
        out = self.model(input_ids=ids, cache=self.cache, use_cache=True,
                         logits_to_keep=keep_prefix + n + 1, **kwargs)
        self.cached = past + p + n + 1
        self._scored = n + 1
        return out.logits[0]  # [keep_prefix+n+1, V]

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
    def _masks(self, past: int, allowed: Tensor, pos: Tensor):
        """Additive mask(s) [1, 1, m, past+m] from `allowed` [m, m] over the new tokens.

        pos [m]: position of each new token relative to `past`. For sliding-window models returns
        {layer_type: mask}: sliding layers also hide keys as far as the window from the query.
        """
        m = allowed.shape[0]
        neg = torch.finfo(self.dtype).min
        full = torch.zeros(m, past + m, dtype=self.dtype)
        full[:, past:].masked_fill_(~allowed, neg)
        if self.sliding_window is None:
            return full[None, None]
        q_pos = past + pos  # [m]
        k_pos = torch.cat([torch.arange(past), past + pos])  # [past+m]
        too_far = k_pos[None, :] <= (q_pos - self.sliding_window)[:, None]  # [m, past+m] bool
        if self._window_everywhere:
            return full.masked_fill_(too_far, neg)[None, None]
        return {"full_attention": full[None, None], "sliding_attention": full.masked_fill(too_far, neg)[None, None]}
