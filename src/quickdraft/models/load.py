"""Load a model and its tokenizer for inference.

`load(model, dtype)` accepts a registry name (must be pulled), a path to a `.gguf` file, or a local
Hugging Face model folder (config.json + weights + tokenizer files). It returns the model in eval
mode with sdpa attention, its tokenizer, and a display name.

Guarantees:
- GGUF sources are dequantized once per (source, dtype) and cached as safetensors under
  `<cache>/weights/<key>-<dtype>/` (written to a temporary folder, then renamed, so a cache folder
  is always complete); later loads read that folder only. The key is the registry name, or for an
  arbitrary GGUF file a hash of its absolute path, size and mtime, so an edited file is converted
  again.
- transformers' own progress bars, warnings and log lines are silenced during loading; the only
  output is one short line on stderr before a slow first-time conversion.
- Every failure caused by the input (unknown name, missing or corrupt file, unreadable folder)
  raises `QuickdraftError` with one line; exceptions from transformers are wrapped, never leaked.
- torch's thread settings are not touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from quickdraft.errors import QuickdraftError
from quickdraft.models.gguf_file import check_gguf, read_header
from quickdraft.models.registry import MODELS, known_names
from quickdraft.models.store import cache_dir, gguf_path, is_installed

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_ATTN = "sdpa"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' logging, progress bars and Python warnings; restore them afterwards."""
    from transformers.utils import logging as tf_logging

    level = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    try:
        # The GGUF reader uses tqdm directly, so also swallow Python-level stderr.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        tf_logging.set_verbosity(level)
        if bars:
            tf_logging.enable_progress_bar()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _dtype_tag(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:60]
    return f"{stem}-{digest}"


def weights_dir(key: str, dtype: torch.dtype) -> Path:
    """The safetensors cache folder for a GGUF source key and dtype."""
    return cache_dir() / "weights" / f"{key}-{_dtype_tag(dtype)}"


def _load_folder(folder: Path, dtype: torch.dtype, what: str, fix: str) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=_ATTN)
            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise QuickdraftError(f"could not load {what} from {folder}: {_reason(exc)}; {fix}") from None
    model.eval()
    return model, tokenizer


def _convert(src: Path, out: Path, dtype: torch.dtype, display: str) -> None:
    """Dequantize `src` and write a complete safetensors folder at `out` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eta = max(10, round(10 + src.stat().st_size / 1e6 * 0.1, -1))  # measured: 98 MB 18 s, 253 MB 60 s
    print(f"converting {display} to safetensors (one time, ~{eta:.0f} s)...", file=sys.stderr, flush=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise QuickdraftError(f"cannot write the weights cache at {out.parent} ({e.strerror}); "
                              "set QUICKDRAFT_CACHE to a writable folder") from None
    try:
        try:
            with _quiet():
                gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=dtype)
                tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
                config = gguf_model.config
                if hasattr(config, "quantization_config"):
                    del config.quantization_config
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
                model.load_state_dict(gguf_model.state_dict())
                model.generation_config = gguf_model.generation_config
                del gguf_model
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise QuickdraftError(f"could not convert GGUF file {src}: {_reason(exc)}; "
                                  "replace it with a complete, supported GGUF file") from None
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # another process finished first: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_model_metadata(src: Path) -> None:
    """Refuse GGUF files that do not describe a model's shape: transformers would silently fill in
    7B-sized defaults and exhaust memory instead of failing."""
    meta = read_header(src).metadata
    arch = meta.get("general.architecture")
    needed = [f"{arch}.{key}" for key in ("block_count", "embedding_length")] if arch else ["general.architecture"]
    missing = [key for key in needed if key not in meta]
    if missing:
        raise QuickdraftError(f"GGUF file {src} does not describe a language model (no {', '.join(missing)} "
                              "in its metadata); pass the GGUF file of a model")


def _load_gguf(src: Path, key: str, dtype: torch.dtype, display: str, pull_name: str | None) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    out = weights_dir(key, dtype)
    if not (out / "config.json").is_file():
        check_gguf(src, MODELS[pull_name] if pull_name else None)
        _require_model_metadata(src)
        _convert(src, out, dtype, display)
    return _load_folder(out, dtype, f"cached weights of {display}",
                        f"delete {out} and run again to rebuild it")


def check_source(model: str) -> tuple[str, Path]:
    """Classify a model argument without loading it: ("registry" | "gguf" | "folder", path).
    Raises the same one-line QuickdraftError as `load` for an unknown, missing or wrong source, so
    commands can refuse bad input before a slow load of another model."""
    if model in MODELS:
        if not is_installed(model):
            raise QuickdraftError(f"model {model} is not installed; run `quickdraft pull {model}`")
        return "registry", gguf_path(model)
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return "gguf", path
    if path.is_dir() and (path / "config.json").is_file():
        return "folder", path
    if path.is_dir():
        raise QuickdraftError(f"folder {model} has no config.json; pass a Hugging Face model folder, "
                              "a .gguf file, or one of: " + known_names())
    if path.exists():
        raise QuickdraftError(f"{model} is not a .gguf file; pass a .gguf file, a Hugging Face model "
                              "folder, or one of: " + known_names())
    raise QuickdraftError(f"unknown model {model!r}: not a registry name and no such file or folder; "
                          f"use one of: {known_names()}, or a path to a .gguf file or a model folder")


def load(model: str, dtype: torch.dtype = torch.bfloat16) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase", str]:
    """Return (model in eval mode, tokenizer, display name) for a registry name, .gguf file or HF folder."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise QuickdraftError(f"unsupported dtype {dtype!r}; use torch.bfloat16, torch.float16 or torch.float32")
    kind, path = check_source(model)
    if kind == "registry":
        m, tok = _load_gguf(path, model, dtype, model, model)
        return m, tok, model
    if kind == "gguf":
        m, tok = _load_gguf(path, _gguf_key(path), dtype, path.name, None)
        return m, tok, path.stem
    m, tok = _load_folder(path, dtype, "model",
                          "make sure the folder holds config.json, the weights and the tokenizer files")
    return m, tok, path.resolve().name
