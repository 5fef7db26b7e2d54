"""Attention for tree passes of grouped-query models without copying the KV cache.

transformers' SDPA path, given a mask and several queries (every tree pass), repeats each
key/value head for all the query heads of its group (`repeat_kv`): it copies the whole cache of
every layer on every pass, which grows with the context (SmolLM2 at 140 tokens of context: 2 ms
of a 50 ms pass). `tree_sdpa` folds the group into the query rows instead: the query
[B, Hkv*g, q, D] is reshaped to [B, Hkv, g*q, D] (head h uses key/value head h // g; only the
queries are copied), the mask [B|1, 1, q, K] is tiled to [B|1, 1, g*q, K], and SDPA runs on the
key/value heads as they are in the cache. Each output row is the same sum over the same keys as
before.

Invariants:
  * One query row, a pass without a cache before it (a prefill: the same bits as `generate()`'s),
    no mask, no grouping, or anything unusual (a per-head mask, softcapping, a position
    bias, dropout): the call goes to transformers' own `sdpa_attention_forward` unchanged, so a
    plain step is bit for bit what it was (and what `generate()` computes).
  * `reference_attention` is the slow obvious version (repeat the heads, softmax in fp32), kept to
    test the fast path against.
  * Installed only on models whose attention is "sdpa" and whose query heads share key/value heads
    (`install`); the mask functions stay sdpa's. The bench's stock baseline copy does not get it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "quickdraft_tree_sdpa"


def tree_sdpa(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """query [B, H, q, D], key/value [B, Hkv, K, D], mask [B|1, 1, q, K] -> ([B, q, H, D], None)."""
    b, h, q, d = query.shape
    hkv = key.shape[1]
    g = h // hkv
    plain = q == 1 or key.shape[2] == q or g == 1  # one query, a prefill, or no groups
    per_head_mask = attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1
    unusual = dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None \
        or kwargs.get("output_attentions", False)
    if plain or per_head_mask or unusual:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    folded = query.reshape(b, hkv, g * q, d)  # [B, Hkv, g*q, D]: rows of head j*g+i are i*q..i*q+q-1
    mask = attention_mask.repeat(1, 1, g, 1)  # [B|1, 1, g*q, K]
    out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, scale=scaling)  # [B, Hkv, g*q, D]
    return out.reshape(b, h, q, value.shape[-1]).transpose(1, 2).contiguous(), None  # [B, q, H, Dv]


def reference_attention(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor, scaling: float) -> Tensor:
    """Slow reference: heads repeated, scores and softmax in fp32. Returns [B, q, H, D] in query's dtype."""
    g = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(g, dim=1).float()  # [B, H, K, D]
    v = value.repeat_interleave(g, dim=1).float()  # [B, H, K, D]
    scores = query.float() @ k.transpose(-1, -2) * scaling + attention_mask.float()  # [B, H, q, K]
    return (scores.softmax(-1) @ v).transpose(1, 2).to(query.dtype)  # [B, q, H, D]


def install(model) -> bool:
    """Use `tree_sdpa` in `model` if its attention is "sdpa" and it groups query heads; True when installed."""
    cfg = model.config
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    heads, kv_heads = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if not heads or not kv_heads or kv_heads >= heads:
        return False  # no groups: transformers' SDPA copies nothing
    AttentionInterface.register(NAME, tree_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
