"""bf16 linear kernels (backend/matmul.py): numerics, when they are used, losslessness."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quickdraft.backend import matmul
from quickdraft.backend.matmul import (FusedPart, PrepackedLinear, RowBatchedLinear, batch_linears, choose_kernel, fp16_exact,
                                       kernel_of, reference_forward, same_bits)
from quickdraft.engine import Engine
from quickdraft.errors import QuickdraftError
from quickdraft.types import SamplingParams

from conftest import make_tokenizer, tiny_model
from test_tree_pass import check_tree_pass

needs_fbgemm = pytest.mark.skipif(not matmul.fbgemm_available(), reason="torch has no FBGEMM on this CPU")
needs_onednn = pytest.mark.skipif(not matmul.native_bf16_gemm(), reason="no native bf16 GEMM on this CPU")


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


@needs_fbgemm
@pytest.mark.parametrize("bias", [False, True])
def test_one_row_is_the_stock_kernel_bit_for_bit(bias):
    lin = bf16_linear(96, 160, bias)
    fast = RowBatchedLinear(lin)
    for shape in [(1, 96), (1, 1, 96), (96,)]:
        x = torch.randn(shape).to(torch.bfloat16)
        assert torch.equal(fast(x), F.linear(x, lin.weight, lin.bias))


@needs_fbgemm
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
    assert choose_kernel(tiny_model("llama").to(torch.bfloat16), "auto") == "onednn"
    assert choose_kernel(tiny_model("llama"), "auto") == "torch"
    with pytest.raises(QuickdraftError, match="bfloat16"):
        choose_kernel(tiny_model("llama"), "onednn")
    monkeypatch.setattr(matmul, "native_bf16_gemm", lambda: False)
    with pytest.raises(QuickdraftError, match="native bf16 GEMM"):
        choose_kernel(tiny_model("llama").to(torch.bfloat16), "onednn")
    monkeypatch.setattr(matmul, "fbgemm_available", lambda: False)
    assert choose_kernel(tiny_model("llama").to(torch.bfloat16), "auto") == "torch"
    monkeypatch.undo()
    if not matmul.fbgemm_available():
        return
    monkeypatch.setattr(matmul, "native_bf16_gemm", lambda: False)
    model = bf16_model("llama")
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert batch_linears(model, "auto") == n_linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    with pytest.raises(QuickdraftError, match="bfloat16"):
        batch_linears(tiny_model("llama"), "fbgemm")
    with pytest.raises(QuickdraftError, match="unknown --matmul"):
        batch_linears(tiny_model("llama"), "fast")


@needs_fbgemm
def test_only_large_weights_are_split_and_the_split_changes_no_bit(monkeypatch):
    """batch_linears runs weights below SPLIT_MIN_WEIGHTS as one block on the calling thread and
    splits the others into one block per torch thread; either layout gives the same bits."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    sizes = {m.weight.numel() for m in bf16_model("llama").modules() if type(m) is nn.Linear}
    threshold = sorted(sizes)[len(sizes) // 2]  # some layers below, some at or above
    monkeypatch.setattr(matmul, "SPLIT_MIN_WEIGHTS", threshold)
    model = bf16_model("llama")
    batch_linears(model, "fbgemm")
    layers = [m for m in model.modules() if isinstance(m, RowBatchedLinear)]
    assert {len(m.blocks) for m in layers} == {1, 2}
    for m in layers:
        assert len(m.blocks) == (2 if m.weight.numel() >= threshold else 1)
        whole = RowBatchedLinear(m)  # one block, same weight
        x = torch.randn(7, m.in_features).to(torch.bfloat16)
        assert torch.equal(m(x), whole(x))
    assert matmul.split_layers(model) == sum(len(m.blocks) == 2 for m in layers)


@needs_fbgemm
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


@needs_fbgemm
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_tree_pass_with_batched_linears(kind):
    """Each node's logits from a tree pass match a plain forward over its path on the same
    row-batched bf16 model, within bf16 rounding."""
    model = bf16_model(kind)
    assert batch_linears(model, "fbgemm") == sum(isinstance(m, RowBatchedLinear) for m in model.modules()) > 0
    check_tree_pass(model, prefix_len=9, n=12, seed=3, atol=0.15, rtol=0.05)


def diverges_only_at_a_near_tie(model, prompt: list[int], ref: list[int], out: list[int],
                                margin: float = 0.15) -> bool:
    """True when out == ref, or when they first differ at a step where ref's top-2 logits are
    within `margin` (bf16 rounding of a tree pass and of a plain step differ by less: check_tree_pass
    uses atol 0.15 on these models). A lost or wrong draft token shows up as a divergence where
    the target was sure, which this rejects."""
    if out == ref:
        return True
    i = next((k for k, (a, b) in enumerate(zip(out, ref)) if a != b), min(len(out), len(ref)))
    if i >= len(ref):
        return False  # out is longer than ref with ref as a prefix: ar would have stopped
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + ref[:i]])).logits[0, -1].float()  # [V]: the step that chose ref[i]
    top2 = logits.topk(2).values
    return bool(top2[0] - top2[1] < margin)


@needs_fbgemm
def test_drafters_lossless_on_a_batched_bf16_model():
    """Every drafter's greedy output equals ar's on the same row-batched bf16 engine, or first differs
    from it at a near-tie of ar's logits, with fixed budgets that cross FBGEMM's 6-row blocks. (FBGEMM rounds
    a pass of several rows differently from one row, so a near-tie may flip; on the AVX2 machine
    the whole 40 tokens agreed, on an avx512 one a tie at step 22 flipped for pld.)"""
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
            assert diverges_only_at_a_near_tie(model, prompt, ref, out), f"{name} budget {budget}"


def onednn_same_bits() -> bool:
    """Does oneDNN's prepacked kernel give F.linear's bits on this CPU (Zen 4 with avx512_bf16:
    yes)? Where it does not, the engine keeps torch's kernel and the tests that need it skip."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 96, bias=True).to(torch.bfloat16)
    return same_bits(lin, PrepackedLinear(lin))


needs_same_bits = pytest.mark.skipif(not (matmul.native_bf16_gemm() and onednn_same_bits()),
                                     reason="no oneDNN prepacked kernel with F.linear's bits on this CPU")


SHAPES = [(1, 96), (1, 1, 96), (1, 13, 96), (96,)]  # inputs to a 96 -> 161 layer


def prepacked_layer(bias: bool) -> tuple[nn.Linear, PrepackedLinear]:
    torch.manual_seed(1)
    lin = nn.Linear(96, 161, bias=bias).to(torch.bfloat16)
    return lin, PrepackedLinear(lin)


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_matches_the_reference(bias):
    lin, fast = prepacked_layer(bias)
    for shape in SHAPES:
        x = torch.randn(shape).to(torch.bfloat16)
        y = fast(x)
        assert y.shape == shape[:-1] + (161,) and y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), reference_forward(lin, x).float(), rtol=2 ** -7, atol=1e-6)


@needs_same_bits
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_is_the_stock_kernel_bit_for_bit(bias):
    lin, fast = prepacked_layer(bias)
    assert same_bits(lin, fast, rows=(1, 2, 7, 16, 64))
    for shape in SHAPES:
        x = torch.randn(shape).to(torch.bfloat16)
        assert torch.equal(fast(x), F.linear(x, lin.weight, lin.bias))


@needs_onednn
def test_a_shape_whose_bits_differ_keeps_the_stock_module(monkeypatch):
    model = tiny_model("llama").to(torch.bfloat16)
    lm_head_shape = (model.lm_head.in_features, model.lm_head.out_features)
    monkeypatch.setattr(matmul, "same_bits",
                        lambda stock, new, rows=(1, 5): (stock.in_features, stock.out_features) != lm_head_shape)
    n = batch_linears(model, "onednn")
    assert type(model.lm_head) is nn.Linear
    assert n == sum(isinstance(m, (PrepackedLinear, FusedPart)) for m in model.modules()) > 0


def test_same_bits_rejects_a_different_kernel():
    torch.manual_seed(2)
    lin = nn.Linear(64, 32).to(torch.bfloat16)

    class RowDependent(nn.Module):  # the right numbers, except when a pass has several rows
        def forward(self, x):
            y = F.linear(x, lin.weight, lin.bias)
            return y if x.shape[0] == 1 else y + 2 ** -6

    class Wrong(nn.Module):
        def forward(self, x):
            return F.linear(x, lin.weight * 1.01, lin.bias)

    assert same_bits(lin, RowDependent(), rows=(1,))
    assert not same_bits(lin, RowDependent())
    assert not same_bits(lin, Wrong())


@needs_same_bits
def test_prepacked_swap_keeps_ties_and_the_tree_pass_exact():
    model = tiny_model("qwen2").to(torch.bfloat16)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert batch_linears(model, "auto") == n_linear and kernel_of(model) == "onednn"
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "packed" not in " ".join(model.state_dict())
    check_tree_pass(model, prefix_len=9, n=12, seed=3, atol=0.15, rtol=0.05)


@needs_same_bits
def test_drafters_lossless_on_a_prepacked_bf16_model():
    """Every drafter's greedy output equals ar's on the same prepacked bf16 engine, or first differs
    from it at a near-tie of ar's logits (attention over a tree rounds differently in bf16)."""
    from quickdraft import drafters

    engine = Engine(tiny_model("llama", seed=2).to(torch.bfloat16), make_tokenizer(), "tiny-bf16", matmul="onednn")
    assert engine.matmul_kernel == "onednn" and engine.batched_linears > 0
    prompt = [5, 9, 14, 9, 14, 22, 5, 9, 14, 30, 31, 5, 9]
    params = SamplingParams(max_new_tokens=40)
    ref = engine.generate_ids(prompt, "ar", params).generation.tokens
    stock = Engine(tiny_model("llama", seed=2).to(torch.bfloat16), make_tokenizer(), "tiny-bf16", matmul="torch")
    assert stock.generate_ids(prompt, "ar", params).generation.tokens == ref  # same bits, same tokens
    for name in drafters.names():
        for budget in (3, 9):
            out = engine.generate_ids(prompt, name, params, budget=budget).generation.tokens
            assert diverges_only_at_a_near_tie(engine.model, prompt, ref, out), f"{name} budget {budget}"
    with torch.inference_mode():  # the check itself: a wrong token where ar was sure is caught
        logits = engine.model(torch.tensor([prompt + ref])).logits[0, len(prompt) - 1:-1].float()  # [len(ref), V]
    top2 = logits.topk(2, dim=-1)
    sure = int((top2.values[:, 0] - top2.values[:, 1]).argmax())
    wrong = ref[:sure] + [int(top2.indices[sure, 1])] + ref[sure + 1:]
    assert not diverges_only_at_a_near_tie(engine.model, prompt, ref, wrong)


@needs_same_bits
def test_fused_parts_give_each_layers_bits_in_any_call_order():
    torch.manual_seed(4)
    stocks = [nn.Linear(96, 161, bias=True), nn.Linear(96, 32, bias=False), nn.Linear(96, 40, bias=True)]
    stocks = [s.to(torch.bfloat16) for s in stocks]
    product = matmul.FusedProduct(stocks)
    parts = [FusedPart(s, product, i) for i, s in enumerate(stocks)]
    assert matmul.fused_same_bits(stocks, parts, rows=(1, 2, 7, 16))
    assert not matmul.fused_same_bits(stocks[1:] + stocks[:1], parts)  # parts against the wrong layers
    for shape in SHAPES:
        x, other = torch.randn(shape).to(torch.bfloat16), torch.randn(shape).to(torch.bfloat16)
        for order in ([0, 1, 2], [2, 0, 1], [1, 1, 0, 2]):
            for i in order:
                y = parts[i](x)
                assert y.is_contiguous() and torch.equal(y, F.linear(x, stocks[i].weight, stocks[i].bias))
                # another input between two parts' calls: recomputed, never a stale product
                assert torch.equal(parts[i](other), F.linear(other, stocks[i].weight, stocks[i].bias))
        for p in parts:  # once every part has taken its columns the product is dropped
            p(x)
        assert product._y is None and product._x is None


@needs_same_bits
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
def test_fused_model_is_the_stock_model_bit_for_bit(kind):
    stock = tiny_model(kind, seed=5).to(torch.bfloat16)
    model = tiny_model(kind, seed=5).to(torch.bfloat16)
    layers = model.config.num_hidden_layers
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    keys = set(model.state_dict())
    assert batch_linears(model, "onednn") == n_linear and kernel_of(model) == "onednn"
    assert sum(isinstance(m, FusedPart) for m in model.modules()) == 5 * layers  # q/k/v + gate/up per block
    assert set(model.state_dict()) == keys  # packed copies are not state
    ids = torch.randint(3, model.config.vocab_size, (1, 23))
    with torch.inference_mode():
        for rows in (23, 1, 6):
            assert torch.equal(model(ids[:, :rows]).logits, stock(ids[:, :rows]).logits)
    check_tree_pass(model, prefix_len=9, n=12, seed=3, atol=0.15, rtol=0.05)
