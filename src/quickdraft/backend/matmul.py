"""bf16 matrix products that stream each weight once per pass: oneDNN prepacked, or FBGEMM.

Two kernels replace `nn.Linear` in bf16 models, chosen by `batch_linears(model, mode)`:

`PrepackedLinear` (CPUs with a native bf16 GEMM: avx512_bf16 or AMX; with `FusedPart`s of a
`FusedProduct` for sibling layers that read the same input, q/k/v and gate/up: one call per group).
torch's `F.linear` on a plain bf16 weight makes oneDNN reach the weight in its row-major layout on
every call; measured on an AMD EPYC with avx512_bf16 it streams Qwen-0.5B's 272 MB LM head at
11 GB/s (25 ms). The same
oneDNN kernel on a weight reordered once into its blocked layout (`torch.ops.mkldnn`, what
torch.compile's CPU freezing pass uses) takes 13 ms for one row and 18 ms for 16. Its output is bit
for bit `F.linear`'s, and each row's output does not depend on the other rows of the pass:
`same_bits` checks both once per layer shape at load and keeps the stock module where either
fails, so swapping it changes no token.

`RowBatchedLinear` (CPUs without one). A tree pass multiplies every weight matrix by root + n
rows. With avx512_bf16 or AMX, oneDNN streams each weight once for all rows, so a pass over 8
nodes costs little more than one plain step.
On CPUs without them (AVX2 only, e.g. AMD Zen 3) torch falls back to a kernel whose cost grows
linearly with the rows: measured on Qwen-0.5B, root + 4 nodes cost 3.3 plain steps, so no draft
can pay. FBGEMM (built into torch's CPU wheels) has an AVX2 GEMM for fp16 weights and fp32
activations that streams the weight once per block of up to 6 rows: root + 4 nodes cost 1.3.

`RowBatchedLinear` replaces an `nn.Linear` whose bf16 weight converts to fp16 exactly:
  * one row (a plain step): the original `F.linear` on the original bf16 weight, bit for bit the
    stock module, so plain decoding is unchanged;
  * several rows (prefill, tree passes): FBGEMM on an fp16 copy of the same weight values
    (bf16 -> fp16 is exact for the weights accepted), fp32 accumulation, bf16 output. Only the
    rounding of the sums differs from torch's bf16 kernel, the same kind of difference torch's own
    bf16 kernels show between one row and several.
Weights that do not convert exactly (an entry beyond fp16's range, or too small for its precision)
keep the stock module. `reference_forward` is the slow obvious product (fp64 sums of the same
weights) the fast path is tested against.

`batch_linears(model, mode)` swaps modules in place: mode "auto" takes "onednn" for bf16 models on
CPUs with a native bf16 GEMM and "fbgemm" on the others (when torch has FBGEMM); "onednn" and
"fbgemm" force a kernel, "torch" keeps the stock modules. fp32 models are never swapped by "auto".
The swap keeps the original Parameters (tied embeddings stay tied) and adds one packed copy.

FBGEMM's op is single-threaded, so `RowBatchedLinear` splits a weight into one block of output
features per torch thread, only when the weight has at least SPLIT_MIN_WEIGHTS entries. Measured on
a 2-core AMD EPYC (AVX2), 4 rows, whole vs split in two: 896x896 101 us vs 235 us, 576x1536 127 vs
207, 896x4864 419 vs 334, the LM heads 5.6 ms vs 3.9 ms. With its small layers whole, SmolLM2's
passes over root + 1..5 nodes cost 1.14-1.35 plain steps instead of 1.40-1.49
(scripts/split_curve.py; docs/tuning.md). The split changes no value: each output feature's sum is
the same computation in either layout (tested).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QuickdraftError

MODES = ("auto", "onednn", "fbgemm", "torch")

# Weights with fewer entries than this run FBGEMM as one block on the calling thread: handing a
# block to the pool costs ~70-100 us, more than a small product saves by running on two cores.
SPLIT_MIN_WEIGHTS = 2_000_000


def native_bf16_gemm() -> bool:
    """Does torch have a native bf16 GEMM on this CPU (oneDNN with avx512_bf16, AMX or AVX-NE-CONVERT)?"""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def fp16_exact(weight: Tensor) -> bool:
    """True when every bf16 entry of weight is exactly representable in fp16."""
    return bool(torch.equal(weight.to(torch.float16).to(weight.dtype), weight))


@contextlib.contextmanager
def _silent_stderr() -> Iterator[None]:
    """Silence file descriptor 2: torch prints its one-time deprecation notice for the FBGEMM ops
    (the pinned torch keeps them) from C++, past Python's warning filters."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _quiet_fbgemm(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


class RowBatchedLinear(nn.Module):
    """nn.Linear with the stock kernel for one row and FBGEMM's fp16-weight GEMM for several.

    FBGEMM's op runs on one thread, so the weight is packed as `parts` blocks of output features,
    computed at once: the first on the calling thread, the others on `pool`'s threads (torch
    releases the GIL inside the op). parts > 1 needs a pool.
    """

    def __init__(self, linear: nn.Linear, pool: ThreadPoolExecutor | None = None, parts: int = 1) -> None:
        super().__init__()
        if parts > 1 and pool is None:
            raise ValueError("RowBatchedLinear: parts > 1 needs a thread pool")
        self.weight = linear.weight  # [out, in] bf16, the same Parameter (ties kept)
        self.bias = linear.bias  # [out] or None
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.pool = pool
        w32 = self.weight.detach().float()  # [out, in]
        b32 = torch.zeros(self.out_features) if self.bias is None else self.bias.detach().float()  # [out]
        bounds = [round(i * self.out_features / parts) for i in range(parts + 1)]
        self.blocks = [(_quiet_fbgemm(torch.ops.aten.fbgemm_pack_gemm_matrix_fp16, w32[a:b].contiguous()),
                        b32[a:b].contiguous()) for a, b in zip(bounds, bounds[1:]) if b > a]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= 1:
            return F.linear(x, self.weight, self.bias)
        x2 = x.reshape(rows, x.shape[-1]).float()  # [rows, in]
        op = torch.ops.aten.fbgemm_linear_fp16_weight_fp32_activation  # its deprecation notice: once, at load
        futures = [self.pool.submit(op, x2, w, b) for w, b in self.blocks[1:]]
        first = op(x2, *self.blocks[0])  # [rows, out_0]
        y = torch.cat([first] + [f.result() for f in futures], dim=-1) if futures else first  # [rows, out]
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)  # [..., out]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocks={len(self.blocks)}")


class PrepackedLinear(nn.Module):
    """nn.Linear whose bf16 weight is reordered once into oneDNN's blocked layout.

    Same kernel family and the same output bits as `F.linear` (tested); `weight` and `bias` stay
    the original Parameters, the packed copy is a plain attribute (not in the state dict).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight  # [out, in] bf16, the same Parameter (ties kept)
        self.bias = linear.bias  # [out] or None
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())  # opaque oneDNN tensor
        self._bias = None if self.bias is None else self.bias.detach()  # [out]

    def forward(self, x: Tensor) -> Tensor:
        # x: [..., in] bf16 -> [..., out] bf16
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self._bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# Sibling linears that read the same input in transformers' Llama-family blocks (Llama, Qwen2,
# Gemma 3, Mistral): one oneDNN call for each group instead of one per layer.
FUSE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedProduct:
    """One prepacked product for sibling linears that read the same input; `FusedPart` i returns
    columns bounds[i]:bounds[i+1] of it.

    Each oneDNN call costs tens of microseconds beyond streaming its weight (Qwen-0.5B's 128 x 896
    key projection: 39 us for 0.2 MB, 6 GB/s, in a plain step on an Intel Xeon with AMX), so fusing
    q/k/v and gate/up saves about 2 ms of a 60 ms step there. Copying each part's columns out costs
    the prefill of a 700-token prompt about 13 ms more (docs/tuning.md). Invariants:
      * A part's output is bit for bit its own `F.linear` (`fused_same_bits`, checked once per
        group shape at load; a group that fails keeps one `PrepackedLinear` per layer).
      * The product is computed when a part is called with an input tensor other than the last one
        (compared by identity), so the result never depends on the order the parts are called in;
        it is kept only until every part has taken its columns (no [rows, out] buffer outlives the
        block). A caller must not change the input in place between the calls of its parts
        (transformers' attention and MLP blocks read the same normed hidden states).
    """

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.bounds = [0]
        for lin in linears:
            self.bounds.append(self.bounds[-1] + lin.out_features)
        weight = torch.cat([lin.weight.detach() for lin in linears])  # [sum out, in] bf16
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight)  # opaque oneDNN tensor
        if all(lin.bias is None for lin in linears):
            self.bias = None
        else:  # [sum out]: zeros where a layer has no bias
            self.bias = torch.cat([lin.bias.detach() if lin.bias is not None
                                   else torch.zeros(lin.out_features, dtype=weight.dtype) for lin in linears])
        self._x: Tensor | None = None
        self._y: Tensor | None = None  # [..., sum out]
        self._left = 0  # parts that have not taken their columns of _y yet

    def part(self, i: int, x: Tensor) -> Tensor:
        """x: [..., in] bf16 -> part i's output [..., out_i] bf16 (contiguous)."""
        if self._x is not x:
            self._y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
            self._x, self._left = x, len(self.bounds) - 1
        y = self._y[..., self.bounds[i]:self.bounds[i + 1]].contiguous()
        self._left -= 1
        if self._left <= 0:
            self.drop()
        return y

    def drop(self) -> None:
        """Forget the last input and product (the next call of any part computes it again)."""
        self._x = self._y = None


class FusedPart(nn.Module):
    """Stands in for one nn.Linear of a `FusedProduct` group; keeps the original Parameters."""

    def __init__(self, linear: nn.Linear, product: FusedProduct, index: int) -> None:
        super().__init__()
        self.weight = linear.weight  # [out, in] bf16, the same Parameter
        self.bias = linear.bias  # [out] or None
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.product = product  # shared by the group's parts (a plain attribute: not in the state dict)
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return self.product.part(self.index, x)  # [..., out]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"part {self.index} of {len(self.product.bounds) - 1}")


def fused_same_bits(stocks: list[nn.Linear], parts: list[FusedPart], rows: tuple[int, ...] = (1, 5)) -> bool:
    """`same_bits` for each part of a fused group against its stock layer (each call on a new input
    tensor computes the fused product again); the product is dropped afterwards."""
    ok = all(same_bits(s, p, rows) for s, p in zip(stocks, parts))
    for p in parts:
        p.product.drop()
    return ok


def fuse_groups(model: nn.Module) -> int:
    """Replace each FUSE_GROUPS set of bf16 nn.Linear siblings (same input size, all present) by
    `FusedPart`s sharing one `FusedProduct`, where the bits check passes; returns layers replaced."""
    checked: dict[tuple, bool] = {}
    replaced = 0
    for parent in list(model.modules()):
        for group in FUSE_GROUPS:
            stocks = [getattr(parent, attr, None) for attr in group]
            if not all(type(s) is nn.Linear and s.weight.dtype == torch.bfloat16 for s in stocks):
                continue
            shape = tuple((s.in_features, s.out_features, s.bias is not None) for s in stocks)
            if len({s.in_features for s in stocks}) != 1 or checked.get(shape) is False:
                continue
            product = FusedProduct(stocks)
            parts = [FusedPart(s, product, i) for i, s in enumerate(stocks)]
            if shape not in checked:
                checked[shape] = fused_same_bits(stocks, parts)
            if checked[shape]:
                for attr, part in zip(group, parts):
                    setattr(parent, attr, part)
                replaced += len(parts)
    return replaced


def same_bits(stock: nn.Linear, new: nn.Module, rows: tuple[int, ...] = (1, 5)) -> bool:
    """Does `new` give exactly stock's output, for each row count alone and for the rows of one
    pass separately? Checked once per layer shape when the model loads; a shape that fails keeps
    the stock module, so the swap never changes a token on any CPU."""
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        x = torch.randn(max(rows), stock.in_features, generator=g).to(stock.weight.dtype)  # [rows, in]
        whole = new(x)  # [rows, out]
        if not torch.equal(whole, F.linear(x, stock.weight, stock.bias)):
            return False
        return all(torch.equal(new(x[:r]), whole[:r]) for r in rows)


def kernel_of(model: nn.Module) -> str:
    """Which kernel the model's linear layers run: "onednn", "fbgemm" or "torch" (stock)."""
    for m in model.modules():
        if isinstance(m, (PrepackedLinear, FusedPart)):
            return "onednn"
        if isinstance(m, RowBatchedLinear):
            return "fbgemm"
    return "torch"


def fused_layers(model: nn.Module) -> int:
    """How many of the model's linear layers run as parts of a fused product (`FusedPart`)."""
    return sum(1 for m in model.modules() if isinstance(m, FusedPart))


def split_layers(model: nn.Module) -> int:
    """How many of the model's RowBatchedLinear layers run as more than one block (on the pool)."""
    return sum(1 for m in model.modules() if isinstance(m, RowBatchedLinear) and len(m.blocks) > 1)


def reference_forward(linear: nn.Module, x: Tensor) -> Tensor:
    """Slow reference: the same weights, fp64 sums, rounded once to x's dtype."""
    y = x.double() @ linear.weight.detach().double().t()
    if linear.bias is not None:
        y = y + linear.bias.detach().double()
    return y.to(x.dtype)


def choose_kernel(model: nn.Module, mode: str) -> str:
    """The kernel `batch_linears` would install for `mode`: "onednn", "fbgemm" or "torch"."""
    if mode not in MODES:
        raise QuickdraftError(f"unknown --matmul '{mode}'; use one of {', '.join(MODES)}")
    if mode == "torch":
        return "torch"
    dtype = next(model.parameters()).dtype
    if mode == "auto":
        if dtype != torch.bfloat16:
            return "torch"
        if native_bf16_gemm():
            return "onednn"
        return "fbgemm" if fbgemm_available() else "torch"
    if dtype != torch.bfloat16:
        raise QuickdraftError(f"--matmul {mode} is for bfloat16 models, this one is {dtype}; "
                              "use --dtype bfloat16 or --matmul torch")
    if mode == "onednn" and not native_bf16_gemm():
        raise QuickdraftError("--matmul onednn needs a CPU with a native bf16 GEMM (avx512_bf16 or AMX); "
                              "use --matmul fbgemm or --matmul torch")
    if mode == "fbgemm" and not fbgemm_available():
        raise QuickdraftError("--matmul fbgemm needs torch built with FBGEMM (x86 CPU wheels); use --matmul torch")
    return mode


def batch_linears(model: nn.Module, mode: str = "auto") -> int:
    """Swap the model's bf16 nn.Linear layers for the kernel `choose_kernel` picks; returns how many."""
    kernel = choose_kernel(model, mode)
    if kernel == "torch":
        return 0
    swapped = 0
    if kernel == "onednn":
        swapped = fuse_groups(model)  # q/k/v and gate/up: one product per group
        checked: dict[tuple, bool] = {}
        for name, module in list(model.named_modules()):
            if type(module) is nn.Linear and module.weight.dtype == torch.bfloat16:
                new = PrepackedLinear(module)
                shape = (new.in_features, new.out_features, new.bias is not None)
                if shape not in checked:
                    checked[shape] = same_bits(module, new)
                if checked[shape]:
                    model.set_submodule(name, new)
                    swapped += 1
        return swapped
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="quickdraft-gemm") if threads > 1 else None
    with _silent_stderr():  # packing and a first two-row product print torch's one-time notices
        for name, module in list(model.named_modules()):
            if type(module) is nn.Linear and module.weight.dtype == torch.bfloat16 and fp16_exact(module.weight.detach()):
                parts = threads if module.weight.numel() >= SPLIT_MIN_WEIGHTS else 1
                new = RowBatchedLinear(module, pool, parts)
                model.set_submodule(name, new)
                if not swapped:
                    new(torch.zeros(2, new.in_features, dtype=torch.bfloat16))
                swapped += 1
    return swapped
