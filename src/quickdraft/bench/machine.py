"""Facts about the machine a benchmark ran on, and its measured memory bandwidth.

`memory_bandwidth` times torch reading (a sum) and copying a buffer much larger than the CPU
caches, with torch's own threads, and keeps the best of several tries: the read figure is the
ceiling a decoding step that streams every weight once can reach. The roofline of a method is
its tokens/s divided by bandwidth / (bytes of weights read per token).
"""

from __future__ import annotations

import os
import platform
import time

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return None


def memory_bandwidth(mbytes: int = 512, tries: int = 5) -> dict:
    """{"read_gbps", "copy_gbps"}: best of `tries`, on a float32 buffer of `mbytes` MB."""
    n = mbytes * 1_000_000 // 4
    a = torch.ones(n, dtype=torch.float32)
    b = torch.empty_like(a)
    read, copy = [], []
    for _ in range(tries):
        t = time.perf_counter()
        a.sum()
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        b.copy_(a)
        copy.append(time.perf_counter() - t)
    nbytes = n * 4
    return {"read_gbps": round(nbytes / min(read) / 1e9, 2), "copy_gbps": round(2 * nbytes / min(copy) / 1e9, 2),
            "buffer_mb": mbytes}


def facts(bandwidth: bool = True) -> dict:
    import transformers

    from ..backend.matmul import native_bf16_gemm

    out = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(memory_gb() or 0, 1) or None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "native_bf16_gemm": native_bf16_gemm(),  # oneDNN bf16 (avx512_bf16 / AMX); else slow multi-row bf16
    }
    if bandwidth:
        out["memory_bandwidth"] = memory_bandwidth()
    return out


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once (tied embeddings are one
    tensor), except an untied input embedding, of which a step reads one row."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and (head is None or head.weight is not emb):
        total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    return total
