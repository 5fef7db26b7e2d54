"""quickdraft bench: report arithmetic on synthetic records, data checks, and end-to-end runs on a
tiny in-test model that write every output file."""

from __future__ import annotations

import json

import pytest

from quickdraft.bench import report as rep
from quickdraft.bench.data import DEFAULT_DATA, load_questions, select
from quickdraft.bench.run import parse_methods
from quickdraft.cli import main
from quickdraft.errors import QuickdraftError


def rec(qid, cat, turn, method, n, wall, tokens=None, steps=None, error=None, repeat=0):
    return dict(question_id=qid, category=cat, turn=turn, repeat=repeat, method=method, prompt_tokens=5,
                token_ids=tokens if tokens is not None else list(range(n)), new_tokens=0 if error else n,
                steps=steps, wall_s=None if error else wall, accepted_lengths=None, error=error)


def synthetic():
    return [
        # q1, category A, two turns: ar 20 tokens / 2 s = 10 tok/s; x 20 / 1 s = 20 -> ratio 2; same tokens
        rec(1, "A", 0, "ar", 10, 1.0, steps=10), rec(1, "A", 1, "ar", 10, 1.0, steps=10),
        rec(1, "A", 0, "x", 10, 0.5, steps=5), rec(1, "A", 1, "x", 10, 0.5, steps=5),
        # q2, category B: ar 20 / 1 s = 20; x 20 / 2 s = 10 -> ratio 0.5; different tokens
        rec(2, "B", 0, "ar", 20, 1.0, steps=20), rec(2, "B", 0, "x", 20, 2.0, tokens=[7] * 20, steps=10),
        # q3, category B: x fails -> left out of x's figures, counted as an error
        rec(3, "B", 0, "ar", 20, 1.0, steps=20), rec(3, "B", 0, "x", 0, 0.0, error="RuntimeError: boom"),
        # q4, category B: ar fails -> x's speed counts, but no speedup or exact match for q4
        rec(4, "B", 0, "ar", 0, 0.0, error="RuntimeError: boom"), rec(4, "B", 0, "x", 30, 1.0, steps=10),
    ]


def test_report_arithmetic_on_synthetic_records():
    agg = rep.aggregate(synthetic(), ["ar", "x"], "ar", bandwidth_gbps=1.0, weight_bytes={"ar": 10**8, "x": 10**8})
    x = agg["methods"]["x"]["overall"]
    # every figure of x is over q1 and q2, the questions both x and ar completed
    assert x["n"] == 2 and x["errors"] == 1
    assert x["tokens_per_s"] == pytest.approx((20 + 10) / 2)  # mean of per-question speeds
    assert x["tokens_per_s_median"] == pytest.approx(15)
    assert x["speedup"] == pytest.approx((2 + 0.5) / 2)  # per question, then averaged
    assert x["speedup_of_means"] == pytest.approx(((20 + 10) / 2) / ((10 + 20) / 2))
    assert x["speedup_geomean"] == pytest.approx(1.0)
    assert x["mean_accepted"] == pytest.approx((20 + 20) / (10 + 10))
    assert x["exact_match"] == pytest.approx(0.5)
    assert agg["limits_tokens_per_s"]["x"] == pytest.approx(10.0)  # 1 GB/s / 100 MB per token
    assert x["roofline"] == pytest.approx(1.5)
    a = agg["methods"]["ar"]["overall"]
    assert a["speedup"] == 1.0 and a["exact_match"] == 1.0 and a["errors"] == 1 and a["n"] == 3
    assert a["tokens_per_s"] == pytest.approx((10 + 20 + 20) / 3, abs=1e-3)  # rounded to 3 places
    assert agg["methods"]["x"]["A"]["speedup"] == pytest.approx(2.0)
    assert agg["methods"]["x"]["B"]["speedup"] == pytest.approx(0.5)
    assert agg["methods"]["x"]["B"]["exact_match"] == 0.0 and agg["methods"]["x"]["A"]["exact_match"] == 1.0
    assert agg["categories"] == ["A", "B"]


def test_report_compares_engine_methods_with_each_other_baseline():
    # h, a baseline like transformers' generate: q1 (A) 40 tok/s, q2 (B) 10 tok/s
    rs = synthetic() + [rec(1, "A", 0, "h", 10, 0.25), rec(1, "A", 1, "h", 10, 0.25), rec(2, "B", 0, "h", 20, 2.0)]
    agg = rep.aggregate(rs, ["ar", "x", "h"], "ar", others=["h"])
    assert set(agg["against"]) == {"h"} and set(agg["against"]["h"]) == {"ar", "x"}  # baselines are not compared
    x = agg["against"]["h"]["x"]
    # x: q1 20 tok/s, q2 10 -> ratios 0.5 and 1.0 over h; q3 failed for x, q4 has no h
    assert x["n"] == 2 and x["speedup"] == pytest.approx((0.5 + 1.0) / 2)
    assert x["speedup_of_means"] == pytest.approx(15 / 25)
    assert x["lowest"] == ["A", pytest.approx(0.5)]
    ar = agg["against"]["h"]["ar"]  # ar: q1 10, q2 20 -> 0.25 and 2.0
    assert ar["speedup"] == pytest.approx(1.125) and ar["lowest"] == ["A", pytest.approx(0.25)]
    assert rep.aggregate(rs, ["ar", "x", "h"], "ar")["against"] == {}  # nothing to compare with


def test_report_counts_a_later_failed_turn_against_the_whole_question():
    rs = [rec(1, "A", 0, "ar", 10, 1.0), rec(1, "A", 1, "ar", 10, 1.0), rec(1, "A", 0, "x", 10, 0.5)]
    rs.append(rec(1, "A", 1, "x", 0, 0, error="skipped: an earlier turn failed (boom)"))
    rs[3]["error"] = "RuntimeError: boom"
    x = rep.aggregate(rs, ["ar", "x"])["methods"]["x"]["overall"]
    # one failed generation (the skipped later turn is not counted again), nothing timed
    assert x["n"] == 0 and x["errors"] == 1 and x["speedup"] is None and x["tokens_per_s"] is None


def test_report_repeats_are_separate_units_and_unknown_steps_give_no_accepted_figure():
    rs = [rec(1, "A", 0, "ar", 10, 1.0, repeat=0), rec(1, "A", 0, "ar", 10, 2.0, repeat=1),
          rec(1, "A", 0, "y", 10, 0.5, repeat=0), rec(1, "A", 0, "y", 10, 0.5, repeat=1)]
    y = rep.aggregate(rs, ["ar", "y"])["methods"]["y"]["overall"]
    assert y["n"] == 2 and y["speedup"] == pytest.approx((2 + 4) / 2) and y["mean_accepted"] is None


def test_markdown_has_every_method_and_category():
    agg = rep.aggregate(synthetic(), ["ar", "x"], "ar", bandwidth_gbps=1.0, weight_bytes={"ar": 10**8, "x": 10**8})
    report = dict(model="m", dtype="float32", baseline="ar", command="quickdraft bench", started="now",
                  duration_s=60, data="d", questions=4, max_new_tokens=8, repeats=1, machine={},
                  weight_bytes=10**8, limit_tokens_per_s=10.0, skipped={"llamacpp": "not installed"},
                  error_samples={"x": [1, "RuntimeError: boom"]}, notes=[], **agg)
    md = rep.markdown(report)
    assert "| x | 15.0 |" in md and "| B |" in md and "1.25x" in md and "llamacpp" in md and "boom" in md


def test_divergence_finds_the_first_differing_token_and_its_margin(tiny_folder):
    import torch

    from quickdraft.bench.data import Question
    from quickdraft.bench.run import Conversation, divergences
    from quickdraft.engine import Engine

    engine = Engine.load(str(tiny_folder), torch.float32)
    q = Question(1, "A", ("w7 w8 w9", "w10 w11"))
    conv = Conversation(engine)
    ids0 = conv.prompt(q.turns[0])
    a0 = engine.generate_ids(ids0, "ar", __import__("quickdraft").types.SamplingParams(max_new_tokens=5)).generation.tokens
    a1 = [5, 6, 7]
    rs = [rec(1, "A", 0, "ar", len(a0), 1.0, tokens=a0), rec(1, "A", 1, "ar", 3, 1.0, tokens=a1),
          rec(1, "A", 0, "x", len(a0), 1.0, tokens=a0), rec(1, "A", 1, "x", 3, 1.0, tokens=[5, 9, 7])]
    d = divergences(engine, [q], rs, ["ar", "x"], progress=False)["x"]
    assert [(e["turn"], e["pos"]) for e in d] == [(1, 1)]
    conv.answer(a0)
    ids1 = conv.prompt(q.turns[1])
    with torch.inference_mode():
        top2 = engine.model(input_ids=torch.tensor([ids1 + [5]])).logits[0, -1].topk(2).values
    assert d[0]["margin"] == pytest.approx(float(top2[0] - top2[1]), abs=1e-3)


def test_bundled_data_is_spec_bench():
    qs = load_questions(DEFAULT_DATA)
    assert len(qs) == 480 and len({q.category for q in qs}) == 13
    assert all(len(q.turns) == 2 for q in qs if q.category == "writing")
    picked = select(qs, ["qa", "writing"], 3)
    assert [q.category for q in picked] == ["qa"] * 3 + ["writing"] * 3
    assert len(select(qs, None, 0)) == 480


@pytest.mark.parametrize("content,needle", [
    ('{"question_id": 1, "category": "a"', "line 1 is not valid JSON"),
    ('{"question_id": 1, "category": "a"}', "lacks turns"),
    ('{"question_id": 1, "category": "a", "turns": []}', "turns must be"),
    ('{"question_id": 1, "category": "a", "turns": ["x"]}\n{"question_id": 1, "category": "a", "turns": ["y"]}', "twice"),
    ("", "no questions"),
])
def test_broken_data_files_give_one_line(tmp_path, content, needle):
    p = tmp_path / "q.jsonl"
    p.write_text(content)
    with pytest.raises(QuickdraftError, match=needle):
        load_questions(p)


def test_selection_and_method_errors():
    qs = load_questions(DEFAULT_DATA)
    with pytest.raises(QuickdraftError, match="unknown category nope"):
        select(qs, ["nope"], 1)
    with pytest.raises(QuickdraftError, match="per-category"):
        select(qs, None, -1)
    with pytest.raises(QuickdraftError, match="unknown method bogus"):
        parse_methods("pld,bogus", None)
    with pytest.raises(QuickdraftError, match="--draft-model"):
        parse_methods("hf-assisted", None)
    assert parse_methods("pld,hf", None) == ["ar", "pld", "hf"]


def write_data(path):
    rows = [
        {"question_id": 1, "category": "multi", "turns": ["w7 w8 w9 w7 w8", "w9 w10 w7 w8"]},
        {"question_id": 2, "category": "single", "turns": ["w11 w12 w13 w11 w12"]},
        # longer than the tiny model's 64-token context: every engine method records an error
        {"question_id": 3, "category": "single", "turns": [" ".join(f"w{6 + i % 80}" for i in range(80))]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_bench_end_to_end_on_a_tiny_model(tmp_path, capsys, tiny_folder, monkeypatch):
    from quickdraft.backend import attention
    from quickdraft.bench import run as bench_run

    seen = []  # (engine, stock, assistant) handed to each runner

    def spy(m, engine, stock, assistant, **kw):
        seen.append((engine, stock, assistant))
        return make_runner(m, engine, stock=stock, assistant=assistant, **kw)

    make_runner = bench_run.make_runner
    monkeypatch.setattr(bench_run, "make_runner", spy)
    data = tmp_path / "q.jsonl"
    write_data(data)
    out = tmp_path / "out"
    argv = ["bench", "--model", str(tiny_folder), "--dtype", "float32", "--data", str(data),
            "--methods", "pld,recycling,hf,hf-pld,hf-assisted,llamacpp", "--draft-model", str(tiny_folder),
            "--max-new-tokens", "6", "--per-category", "0", "--out", str(out)]
    code = main(argv)
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])  # the last stdout line is the JSON summary
    for f in ("records.jsonl", "report.json", "report.md", "speedup.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert "skipping llamacpp" in stderr and "llamacpp" in summary["skipped"]
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    methods = ["ar", "pld", "recycling", "hf", "hf-pld", "hf-assisted"]
    assert len(records) == (2 + 1 + 1) * len(methods)  # every turn of every question, every method
    assert {r["method"] for r in records} == set(methods)
    ok = [r for r in records if not r["error"]]
    assert len(ok) == 3 * len(methods)
    assert all(0 < len(r["token_ids"]) <= 6 and r["wall_s"] > 0 and r["steps"] >= 1 for r in ok)
    # the too-long question fails for every method alike (the engine's context rule) and is not timed
    bad = [r for r in records if r["question_id"] == 3]
    assert len(bad) == len(methods) and all("context" in r["error"] and r["wall_s"] is None for r in bad)
    # turn 2 holds the method's own first answer
    t = {(r["method"], r["turn"]): r for r in records if r["question_id"] == 1}
    assert t[("ar", 1)]["prompt_tokens"] > t[("ar", 0)]["prompt_tokens"] + len(t[("ar", 0)]["token_ids"])
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "ar" and report["machine"]["memory_bandwidth"]["read_gbps"] > 0
    o = report["methods"]
    # fp32, greedy: every lossless method gives ar's tokens on the questions that ran
    for m in methods:
        assert o[m]["overall"]["exact_match"] == 1.0, m
        assert o[m]["overall"]["n"] == 2 and o[m]["overall"]["errors"] == 1, m
    assert o["ar"]["overall"]["mean_accepted"] == 1.0
    assert o["hf"]["overall"]["mean_accepted"] == 1.0  # generate()'s passes, counted by the forward hook
    assert set(o["pld"]) == {"overall", "multi", "single"}
    assert summary["methods"]["pld"]["speedup"] == o["pld"]["overall"]["speedup"]
    # fp32: no method differs from ar, so there is nothing to explain
    assert report["divergence"] == {m: [] for m in methods if m != "ar"}
    md = (out / "report.md").read_text()
    assert "## Speedup per category" in md and "hf-assisted" in md and "context" in md
    # the engine's drafters record each step's budget and the nodes it scored (none on a plain
    # step; past the budget only as far as the tuner's reach, for a sure spine)
    for r in ok:
        if r["method"] in ("ar", "pld", "recycling"):
            assert len(r["budgets"]) == len(r["drafted"]) == r["steps"]
            assert all(0 <= d <= (max(b, 16) if b else 0) for d, b in zip(r["drafted"], r["budgets"]))
        else:
            assert r["budgets"] is None and r["drafted"] is None
    assert o["ar"]["overall"]["drafted_median"] == 0 and o["ar"]["overall"]["plain_step_share"] == 1.0
    assert "## Draft budget per step" in md and " / " in md.split("## Draft budget per step")[1]
    # the start-up cost curve beside what the tuners' clock learnt from the run's passes
    pc = report["pass_costs"]
    assert pc["sizes"][0] == 0 and pc["start"][0] == pc["learnt"][0] == 1.0
    assert pc["learnt"] == sorted(pc["learnt"]) and sum(pc["timed"]) > 0 and pc["learnt_t1_ms"] > 0
    assert "## Cost of a pass" in md and "learnt in the run" in md
    # the engine's passes fold grouped heads; the baselines' copies stay stock transformers
    engine, stock, assistant = seen[0]
    assert engine.model.config._attn_implementation == attention.NAME
    assert stock is not engine and stock.model.config._attn_implementation == "sdpa"
    assert assistant.model.config._attn_implementation == "sdpa"
    # the prompt rows recycling harvests (cut to its harvest_cost here); pld harvests none
    rows = engine.drafter("recycling").prefill_logits
    assert report["harvest"]["rows"] == {"recycling": rows} and report["harvest"]["row_ms"] >= 0
    assert f"recycling {rows} rows" in md.split("## Overall")[0]
    # each engine method against each other baseline
    assert set(report["against"]) == {"hf", "hf-pld", "hf-assisted"} and set(report["against"]["hf"]) == {"ar", "pld", "recycling"}
    assert "## Against hf-pld" in md
    # --report-from recomputes every figure from the records, measuring nothing
    (out / "report.md").unlink()
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k not in ("methods", "against")}
                                                | {"methods": {m: {} for m in report["methods"]}}))
    assert main(["bench", "--report-from", str(out)]) == 0
    again = json.loads((out / "report.json").read_text())
    for m in methods:
        for k in ("speedup", "tokens_per_s", "mean_accepted", "exact_match", "n", "errors"):
            assert again["methods"][m]["overall"][k] == o[m]["overall"][k], (m, k)
    assert again["against"] == report["against"] and again["pass_costs"] == report["pass_costs"]
    assert (out / "report.md").read_text().split("## Overall")[1] == md.split("## Overall")[1]


def test_profile_verify_on_a_tiny_model(tmp_path, capsys, tiny_folder):
    out = tmp_path / "vc"
    argv = ["bench", "--profile-verify", "--model", str(tiny_folder), "--dtype", "float32", "--repeats", "1",
            "--out", str(out)]
    code = main(argv + ["--context", "63"])  # the tiny model's context is 64: no room for nodes
    stdout, stderr = capsys.readouterr()
    assert code == 2 and "--context" in stderr
    code = main(argv + ["--context", "4"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    res = json.loads(stdout.strip().splitlines()[-1])
    assert "| chain |" in stdout and "| tree |" in stdout
    assert res["chain"]["0"] == 1.0 and "48" in res["tree"] and "64" not in res["tree"]  # 4 + 1 + 64 > 64
    assert "fits up to 48 nodes" in stderr
    assert (out / "verify_cost.png").stat().st_size > 0 and (out / "verify_cost.json").is_file()


@pytest.mark.parametrize("argv,needle", [
    (["bench", "--methods", "bogus"], "unknown method"),
    (["bench", "--methods", "hf-assisted"], "--draft-model"),
    (["bench", "--categories", "nope"], "unknown category"),
    (["bench", "--per-category", "-1"], "per-category"),
    (["bench", "--repeats", "0"], "repeats"),
    (["bench", "--max-new-tokens", "0"], "max-new-tokens"),
    (["bench", "--data", "/no/such/file.jsonl"], "not found"),
    (["bench", "--dtype", "int8"], "--dtype"),
])
def test_bench_bad_input_is_one_line_exit_2(capsys, argv, needle, tmp_path):
    code = main(argv + ["--out", str(tmp_path / "o")])
    out, err = capsys.readouterr()
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_bench_repeats_and_a_run_where_everything_fails(tmp_path, capsys, tiny_folder):
    data = tmp_path / "q.jsonl"
    write_data(data)
    base = ["bench", "--model", str(tiny_folder), "--dtype", "float32", "--data", str(data), "--max-new-tokens", "4"]
    code = main(base + ["--methods", "recycling,hf", "--categories", "multi", "--repeats", "2", "--out", str(tmp_path / "r")])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    records = [json.loads(x) for x in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 3 and {r["repeat"] for r in records} == {0, 1}
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["methods"]["recycling"]["overall"]["n"] == 2  # one question, two repeats: two units
    # every generation fails (prompt longer than the context): a report of empty figures, no crash
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[-1] + "\n")
    code = main(base + ["--data", str(bad), "--methods", "pld", "--out", str(tmp_path / "f")])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    ar = report["methods"]["ar"]["overall"]
    assert ar["errors"] == 1 and ar["tokens_per_s"] is None and ar["speedup"] is None
    assert (tmp_path / "f" / "speedup.png").is_file() and "–" in (tmp_path / "f" / "report.md").read_text()


def test_conversation_without_a_chat_template_joins_turns_as_text(tiny_folder):
    import torch

    from quickdraft.bench.run import Conversation
    from quickdraft.engine import Engine

    engine = Engine.load(str(tiny_folder), torch.float32)
    engine.tokenizer.chat_template = None
    conv = Conversation(engine)
    assert conv.prompt("w7 w8") == engine.encode("w7 w8", chat=False)
    answer = engine.tokenizer("w9")["input_ids"]
    conv.answer(answer)
    text = "w7 w8" + engine.tokenizer.decode(answer, skip_special_tokens=True)  # the model's own continuation
    assert conv.prompt("w10") == engine.encode(text + "\n\nw10", chat=False)
    assert conv.messages == []


def test_weight_bytes_reads_one_row_of_an_untied_input_embedding(llama):
    from quickdraft.bench.machine import weight_bytes

    total = sum(p.numel() * 4 for p in llama.parameters())
    emb = llama.get_input_embeddings().weight
    assert weight_bytes(llama) == total - (emb.shape[0] - 1) * emb.shape[1] * 4


def test_report_from_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    code = main(["bench", "--report-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "report.json not found" in err and len(err.strip().splitlines()) == 1, err
    (tmp_path / "report.json").write_text("{broken")
    (tmp_path / "records.jsonl").write_text("")
    code = main(["bench", "--report-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "readable bench run" in err and len(err.strip().splitlines()) == 1, err
    # a readable report.json beside records that lack their fields
    (tmp_path / "report.json").write_text(json.dumps({"methods": {"ar": {}}, "weight_bytes": 1,
                                                      "machine": {"memory_bandwidth": {"read_gbps": 1.0}}}))
    (tmp_path / "records.jsonl").write_text('{"method": "ar"}\n')
    code = main(["bench", "--report-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "readable bench run" in err and len(err.strip().splitlines()) == 1, err


def test_bench_bad_model_and_out_are_one_line(tmp_path, capsys, tiny_folder):
    (tmp_path / "file").write_text("x")
    for argv, needle in ((["--model", "no-such-model"], "no-such-model"),
                         (["--methods", "hf-assisted", "--draft-model", "no-such-draft"], "no-such-draft"),
                         (["--out", str(tmp_path / "file" / "o")], "--out")):
        out = [] if "--out" in argv else ["--out", str(tmp_path / "o")]
        code = main(["bench", "--categories", "qa", "--per-category", "1"] + argv + out)
        _, err = capsys.readouterr()
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
