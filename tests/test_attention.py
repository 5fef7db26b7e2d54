"""Tree attention folds grouped-query heads into rows: same values as repeating the heads, and
plain steps and prefills still run transformers' own code."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from quickdraft.backend import HFBackend, attention
from quickdraft.types import Draft

from conftest import tiny_model


class Grouped:  # what transformers' SDPA reads from an attention module
    def __init__(self, groups: int) -> None:
        self.num_key_value_groups = groups


def tree_case(heads: int, kv_heads: int, q: int, past: int, dtype, mask_kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(1, heads, q, 16, generator=g).to(dtype)  # [1, H, q, D]
    key = torch.randn(1, kv_heads, past + q, 16, generator=g).to(dtype)  # [1, Hkv, K, D]
    value = torch.randn(1, kv_heads, past + q, 16, generator=g).to(dtype)  # [1, Hkv, K, D]
    parents = [-1] + [int(torch.randint(-1, i, (1,), generator=g)) for i in range(1, q)]
    allowed = torch.ones(q, past + q, dtype=torch.bool)  # [q, K]
    allowed[:, past:] = torch.eye(q, dtype=torch.bool)
    for i, p in enumerate(parents):  # each node sees its ancestors
        while p >= 0:
            allowed[i, past + p] = True
            p = parents[p]
    if mask_kind == "bool":
        return query, key, value, allowed[None, None], allowed
    additive = torch.zeros(q, past + q, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return query, key, value, additive[None, None], allowed


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (9, 3), (14, 2), (4, 1)])
@pytest.mark.parametrize("mask_kind", ["additive", "bool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_heads_match_the_reference(heads, kv_heads, mask_kind, dtype):
    query, key, value, mask, allowed = tree_case(heads, kv_heads, q=6, past=11, dtype=dtype, mask_kind=mask_kind)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    fast, _ = attention.tree_sdpa(Grouped(heads // kv_heads), query, key, value, mask, scaling=0.25)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[None, None]
    ref = attention.reference_attention(query, key, value, additive, 0.25)  # [1, q, H, D]
    assert fast.shape == ref.shape == (1, 6, heads, 16)
    torch.testing.assert_close(fast, ref, **tol)
    stock, _ = sdpa_attention_forward(Grouped(heads // kv_heads), query, key, value, mask, scaling=0.25)
    torch.testing.assert_close(fast, stock, **tol)


def test_one_query_and_prefill_run_the_stock_code_bit_for_bit():
    for q, past in ((1, 9), (7, 0)):
        query, key, value, mask, _ = tree_case(8, 2, q=q, past=past, dtype=torch.bfloat16, mask_kind="additive")
        ours, _ = attention.tree_sdpa(Grouped(4), query, key, value, mask, scaling=0.25)
        stock, _ = sdpa_attention_forward(Grouped(4), query, key, value, mask, scaling=0.25)
        assert torch.equal(ours, stock)


def test_tree_passes_fold_and_plain_steps_delegate(monkeypatch):
    model = tiny_model("qwen2")  # 4 heads over 2 key/value heads, 3 layers
    backend = HFBackend(model)
    assert backend.tree_attention and model.config._attn_implementation == attention.NAME
    calls = []

    def counting(*args, **kwargs):
        calls.append(args[1].shape[2])  # query rows
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", counting)
    backend.prefill([5, 6, 7, 8, 9])
    assert calls == [5, 5, 5]  # the prefill: stock code in each layer
    calls.clear()
    backend.score(10, Draft.empty())
    backend.commit([])
    assert calls == [1, 1, 1]  # a plain step: stock code
    calls.clear()
    backend.score(11, Draft(torch.tensor([12, 13, 14]), torch.tensor([-1, -1, 0])))
    assert calls == []  # a tree pass: folded heads, no repeated cache


def test_models_without_sdpa_or_groups_and_opted_out_backends_keep_their_attention():
    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    assert not HFBackend(model).tree_attention
    assert model.config._attn_implementation == "eager"
    model = tiny_model("llama")
    assert not HFBackend(model, tree_attention=False).tree_attention
    assert model.config._attn_implementation == "sdpa"
    model = tiny_model("llama")
    model.config.num_key_value_heads = model.config.num_attention_heads  # config read only: no groups
    assert not HFBackend(model).tree_attention and model.config._attn_implementation == "sdpa"
