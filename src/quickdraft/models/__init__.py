"""Models: the registry of bundled models, the local cache, GGUF checks and loading.

Public API: `MODELS`, `DEFAULT_MODEL`, `ModelSpec`, `pull`, `is_installed`, `gguf_path`,
`cache_dir`, `load`, `check_gguf`. See each submodule's docstring for its guarantees.
"""

from quickdraft.models.gguf_file import check_gguf
from quickdraft.models.load import load
from quickdraft.models.registry import DEFAULT_MODEL, MODELS, ModelSpec
from quickdraft.models.store import cache_dir, gguf_path, is_installed, pull

__all__ = [
    "MODELS",
    "DEFAULT_MODEL",
    "ModelSpec",
    "pull",
    "is_installed",
    "gguf_path",
    "cache_dir",
    "load",
    "check_gguf",
]
