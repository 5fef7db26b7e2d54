"""The command line: output formats and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json

import pytest

from quickdraft.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json_on_a_local_folder(capsys, tiny_folder):
    args = ["generate", "w7 w8 w9 w7 w8", "--model", str(tiny_folder), "--dtype", "float32",
            "--max-new-tokens", "12", "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    ar = json.loads(out.strip().splitlines()[-1])
    assert set(ar) >= {"model", "method", "text", "token_ids", "new_tokens", "steps", "mean_accepted",
                       "tokens_per_s", "wall_s", "prefill_s"}
    assert ar["new_tokens"] == len(ar["token_ids"]) <= 12
    for method in ("pld", "recycling"):
        code, out, err = run_cli(capsys, *args, "--method", method)
        assert code == 0, err
        got = json.loads(out.strip().splitlines()[-1])
        assert got["token_ids"] == ar["token_ids"] and got["method"] == method


def test_generate_streams_text(capsys, tiny_folder):
    code, out, err = run_cli(capsys, "generate", "w7 w8", "--model", str(tiny_folder), "--max-new-tokens", "5",
                             "--raw", "--dtype", "float32")
    assert code == 0, err
    assert out.strip() and "tok/s" in err


@pytest.mark.parametrize("argv,needle", [
    (["generate", "hi", "--method", "nope"], "unknown method 'nope'"),
    (["generate", "hi", "--method", "pld", "--set", "depth=3"], "unknown setting 'depth'"),
    (["generate", "hi", "--method", "pld", "--set", "num_pred=x"], "expected int"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--top-p", "0"], "top-p"),
    (["generate", "hi", "--top-p", "1.5"], "top-p"),
    (["generate", "hi", "--max-new-tokens", "0"], "max-new-tokens"),
    (["generate", "   "], "empty"),
    (["generate"], "no prompt"),
    (["generate", "hi", "--dtype", "int8"], "--dtype"),
    (["generate", "hi", "--model", "no-such-model"], "no-such-model"),
    (["generate", "hi", "--bogus"], "unrecognized"),
    (["pull", "no-such-model"], "no-such-model"),
    (["generate", "hi", "--seed", "99999999999999999999999"], "seed"),
    (["generate", "hi", "--stop", ""], "stop string"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quickdraft: error:"), err
    assert needle.lower() in lines[0].lower().replace("_", "-")
    assert "Traceback" not in err


def test_prompt_longer_than_context(capsys, tiny_folder):
    long = " ".join(["w7"] * 80)  # the tiny model's context is 64
    code, out, err = run_cli(capsys, "generate", long, "--model", str(tiny_folder), "--raw", "--dtype", "float32")
    assert code == 2 and "context" in err and len(err.strip().splitlines()) == 1


def test_corrupt_gguf(capsys, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    code, out, err = run_cli(capsys, "generate", "hi", "--model", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_models_lists_the_registry(capsys):
    code, out, err = run_cli(capsys, "models")
    assert code == 0
    for name in ("smollm2-135m-instruct", "gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"):
        assert name in out
    assert "quickdraft pull" in out


def test_invalid_utf8_on_stdin(capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi \xf0\x9f")))
    code, out, err = run_cli(capsys, "generate", "-")
    assert code == 2 and "UTF-8" in err and len(err.strip().splitlines()) == 1


def test_recycling_sizes_are_bounded(capsys):
    for setting in ("k=65", "nodes=100000", "max_depth=0"):
        code, out, err = run_cli(capsys, "generate", "w7", "--method", "recycling", "--set", setting)
        assert code == 2 and "recycling needs" in err and len(err.strip().splitlines()) == 1


def test_matmul_option(capsys, tiny_folder):
    from quickdraft.backend.matmul import MODES
    from quickdraft.cli import build_parser

    gen = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert next(a for a in gen._actions if a.dest == "matmul").choices == MODES
    code, out, err = run_cli(capsys, "generate", "w7 w8", "--model", str(tiny_folder), "--matmul", "fast")
    assert code == 2 and "--matmul" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "generate", "w7 w8", "--model", str(tiny_folder), "--dtype", "float32",
                             "--matmul", "fbgemm", "--max-new-tokens", "3")
    assert code == 2 and "bfloat16" in err and len(err.strip().splitlines()) == 1
    args = ["generate", "w7 w8 w9 w7 w8", "--model", str(tiny_folder), "--max-new-tokens", "8", "--json", "--raw"]
    code, out, err = run_cli(capsys, *args, "--matmul", "fbgemm", "--method", "pld")
    assert code == 0 and not err.strip().startswith("[W"), err  # torch's C++ deprecation notice stays silent
    assert json.loads(out.strip().splitlines()[-1])["new_tokens"] >= 1
