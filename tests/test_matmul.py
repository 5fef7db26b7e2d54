"""Row-batched bf16 linear layers (backend/matmul.py): numerics, when they are used, losslessness."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quickdraft.backend import matmul
from quickdraft.backend.matmul import RowBatchedLinear, batch_linears, fp16_exact, reference_forward
from quickdraft.engine import Engine
from quickdraft.errors import QuickdraftError
from quickdraft.types import SamplingParams

from conftest import make_tokenizer, tiny_model
from test_tree_pass import check_tree_pass

pytestmark = pytest.mark.skipif(not matmul.fbgemm_available(), reason="torch has no FBGEMM on this CPU")


def bf16_model(kind: str, seed: int = 0) -> nn.Module:
    """A tiny bf16 model whose linear weights are all fp16-exact (as dequantized GGUF weights are)."""
    model = tiny_model(kind, seed).to(torch.bfloat16)
    with torch.no_grad():
        for m in model.modules():
            if type(m) is nn.Linear:
                m.weight.copy_(m.weight.to(torch.float16).to(torch.bfloat16))
    return model


def bf16_linear(n_in: int, n_out: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)
    with torch.no_grad():  # weights like dequantized GGUF blocks: scale * small integers (fp16-exact)
        lin.weight.copy_((torch.randint(-8, 8, (n_out, n_in)) * 0.0078125).to(torch.bfloat16))
    return lin


@pytest.mark.parametrize("bias", [False, True])
def test_one_row_is_the_stock_kernel_bit_for_bit(bias):
    lin = bf16_linear(96, 160, bias)
    fast = RowBatchedLinear(lin)
    for shape in [(1, 96), (1, 1, 96), (96,)]:
        x = torch.randn(shape).to(torch.bfloat16)
        assert torch.equal(fast(x), F.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize("rows", [2, 5, 6, 7, 13, 64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_several_rows_match_the_reference(rows, bias, workers):
    lin = bf16_linear(96, 161, bias, seed=rows)  # 161 outputs: blocks of uneven size with 2 workers
    pool = ThreadPoolExecutor(workers) if workers else None
    fast = RowBatchedLinear(lin, pool, workers + 1)
    assert len(fast.blocks) == workers + 1
    x = torch.randn(1, rows, 96).to(torch.bfloat16)
    y = fast(x)
    assert y.shape == (1, rows, 161) and y.dtype == torch.bfloat16
    ref = reference_forward(lin, x)
    # fp32 sums rounded once to bf16: at most one bf16 step (2**-7 relative) from the fp64 sums
    torch.testing.assert_close(y.float(), ref.float(), rtol=2 ** -7, atol=1e-6)
    stock_err = (F.linear(x, lin.weight, lin.bias).float() - ref.float()).abs().max()
    assert (y.float() - ref.float()).abs().max() <= stock_err + 1e-6  # no worse than torch's own bf16 kernel


def test_fp16_exactness_check():
    w = (torch.randint(-8, 8, (4, 4)) * 0.25).to(torch.bfloat16)
    assert fp16_exact(w)
    assert not fp16_exact(torch.tensor([[1e5]], dtype=torch.bfloat16))  # beyond fp16's range
    assert not fp16_exact(torch.tensor([[3e-9]], dtype=torch.bfloat16))  # below its precision


def test_modes_and_errors(monkeypatch):
    assert batch_linears(tiny_model("llama"), "auto") == 0  # fp32: never
    assert batch_linears(tiny_model("llama").to(torch.bfloat16), "torch") == 0
    monkeypatch.setattr(matmul, "native_bf16_gemm", lambda: True)
    assert batch_linears(tiny_model("llama").to(torch.bfloat16), "auto") == 0  # torch's own kernel is fine there
    monkeypatch.setattr(matmul, "native_bf16_gemm", lambda: False)
    model = bf16_model("llama")
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert batch_linears(model, "auto") == n_linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    with pytest.raises(QuickdraftError, match="bfloat16"):
        batch_linears(tiny_model("llama"), "fbgemm")
    with pytest.raises(QuickdraftError, match="unknown --matmul"):
        batch_linears(tiny_model("llama"), "fast")


def test_inexact_weights_keep_the_stock_module_and_ties_stay():
    model = bf16_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 1e5  # not representable in fp16
    n = batch_linears(model, "fbgemm")
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    assert n == sum(isinstance(m, RowBatchedLinear) for m in model.modules()) > 0
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_tree_pass_with_batched_linears(kind):
    """Each node's logits from a tree pass match a plain forward over its path on the same
    row-batched bf16 model, within bf16 rounding."""
    model = bf16_model(kind)
    assert batch_linears(model, "fbgemm") == sum(isinstance(m, RowBatchedLinear) for m in model.modules()) > 0
    check_tree_pass(model, prefix_len=9, n=12, seed=3, atol=0.15, rtol=0.05)


def test_drafters_lossless_on_a_batched_bf16_model():
    """Every drafter's greedy output equals ar's on the same row-batched bf16 engine (tiny model,
    peaked predictions: no near-ties), with fixed budgets that cross FBGEMM's 6-row blocks."""
    from quickdraft import drafters

    model = bf16_model("llama", seed=2)
    engine = Engine(model, make_tokenizer(), "tiny-bf16", matmul="fbgemm")
    assert engine.batched_linears > 0
    prompt = [5, 9, 14, 9, 14, 22, 5, 9, 14, 30, 31, 5, 9]
    params = SamplingParams(max_new_tokens=40)
    ref = engine.generate_ids(prompt, "ar", params).generation.tokens
    for name in drafters.names():
        for budget in (3, 9):
            out = engine.generate_ids(prompt, name, params, budget=budget).generation.tokens
            assert out == ref, f"{name} budget {budget}"
