"""Cheap GGUF integrity checks and atomic assembly of split files.

Guarantees:
- `check_gguf` reads only the header (metadata and tensor table, not the weights), so it costs
  well under a second even for large files. It returns `general.name` or raises `QuickdraftError`
  with one line naming the file, the reason, and the fix. A file passes only if it starts with
  `GGUF`, has version 2 or 3, its header parses, every tensor's data lies inside the file, and,
  given a spec, its size and `general.name` match the spec.
- `assemble` concatenates parts in order into a temporary file next to the output and renames it
  into place, so the output path never holds a partial file.
- `sha256_file` hashes a file in chunks.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from quickdraft.errors import QuickdraftError
from quickdraft.models.registry import ModelSpec

_MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    """Scalar and string values; arrays are replaced by their length."""
    tensor_count: int
    data_end: int
    """Byte offset just past the last tensor's data (the minimum valid file size)."""


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        end = self.pos + n
        if end > len(self.buf):
            raise ValueError("file ends inside the header")
        raw = self.buf[self.pos:end]
        self.pos = end
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self.pos += n
        if self.pos > len(self.buf):
            raise ValueError("file ends inside the header")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALARS:
                self.pos += struct.calcsize(_SCALARS[etype]) * count
            elif etype == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(etype)
            if self.pos > len(self.buf):
                raise ValueError("file ends inside the header")
            return count
        raise ValueError(f"unknown metadata value type {vtype}")


def _tensor_nbytes(ggml_type: int, dims: Sequence[int]) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown tensor type {ggml_type}") from None
    n = 1
    for d in dims:
        n *= d
    return n // block * type_size


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse a GGUF header; raises ValueError (bad content) or OSError (unreadable)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ValueError("file is too short to be GGUF")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != _MAGIC:
                raise ValueError(f"does not start with the bytes GGUF (found {bytes(buf[:4])!r})")
            cur = _Cursor(buf)
            cur.pos = 4
            try:
                version = cur.unpack("<I")
                if version not in (2, 3):
                    raise ValueError(f"unsupported GGUF version {version}")
                n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
                metadata: dict[str, Any] = {}
                for _ in range(n_kv):
                    key = cur.string()
                    metadata[key] = cur.value(cur.unpack("<I"))
                last = 0
                for _ in range(n_tensors):
                    cur.skip_string()
                    n_dims = cur.unpack("<I")
                    dims = [cur.unpack("<Q") for _ in range(n_dims)]
                    ggml_type, offset = cur.unpack("<I"), cur.unpack("<Q")
                    last = max(last, offset + _tensor_nbytes(ggml_type, dims))
            except struct.error:
                raise ValueError("file ends inside the header") from None
            align = int(metadata.get("general.alignment", 32)) or 32
            data_start = (cur.pos + align - 1) // align * align
            return GGUFHeader(version, metadata, n_tensors, data_start + last)


def _corrupt(path: Path, reason: str, spec: ModelSpec | None) -> QuickdraftError:
    fix = f"delete it and run `quickdraft pull {spec.name}`" if spec else "replace it with a complete copy"
    return QuickdraftError(f"corrupt GGUF file {path}: {reason}; {fix}")


def check_gguf(path: str | os.PathLike[str], spec: ModelSpec | None = None) -> str:
    """Check a GGUF file cheaply; return its `general.name` ("" if absent)."""
    p = Path(path)
    if not p.is_file():
        raise QuickdraftError(f"GGUF file {p} does not exist; check the path" + (
            f" or run `quickdraft pull {spec.name}`" if spec else ""))
    size = p.stat().st_size
    try:
        header = read_header(p)
    except (ValueError, OSError) as exc:
        raise _corrupt(p, str(exc), spec) from None
    if size < header.data_end:
        raise _corrupt(p, f"truncated: {size} bytes, the tensors need {header.data_end}", spec)
    if spec is not None and size != spec.size_bytes:
        raise _corrupt(p, f"size is {size} bytes, expected {spec.size_bytes}", spec)
    name = str(header.metadata.get("general.name", ""))
    if spec is not None and spec.general_name_contains.lower() not in name.lower():
        raise _corrupt(p, f"general.name is {name!r}, expected it to contain "
                          f"{spec.general_name_contains!r}", spec)
    return name


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def assemble(parts: Sequence[str | os.PathLike[str]], out_path: str | os.PathLike[str]) -> Path:
    """Concatenate `parts` in order into `out_path`, atomically (temp file + rename)."""
    out = Path(out_path)
    if not parts:
        raise ValueError("assemble needs at least one part")
    for part in parts:
        if not Path(part).is_file():
            raise QuickdraftError(f"missing model part {part}; delete {out.parent} and pull the model again")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as dst:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is an ordinary shared file
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
