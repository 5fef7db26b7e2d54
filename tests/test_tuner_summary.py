"""scripts/tuner_summary.py: its arithmetic over bench records, and its error on a missing folder."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tuner_summary", ROOT / "scripts" / "tuner_summary.py")
tuner_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tuner_summary)


def write_records(folder: Path) -> None:
    recs = [
        {"method": "ar", "budgets": [], "drafted": []},
        {"method": "goose", "budgets": [4, 0, 8, 6], "drafted": [6, 0, 0, 5]},
        {"method": "goose", "budgets": [10], "drafted": [13]},
    ]
    with open(folder / "records.jsonl", "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def test_summarise_counts(tmp_path):
    write_records(tmp_path)
    agg = tuner_summary.summarise(tmp_path)
    assert "ar" not in agg  # no per-step budgets: skipped
    g = agg["goose"]
    assert g["steps"] == 5 and g["plain"] == 1  # budget 0 is a plain step by choice
    assert g["budgets"] == [4, 8, 6, 10] and g["drafted"] == [6, 0, 5, 13]
    assert g["none"] == 1  # budget 8, nothing scored
    assert g["past"] == [2, 3]  # 6 over 4, 13 over 10


def test_main_prints_and_missing_folder(tmp_path, capsys):
    write_records(tmp_path)
    assert tuner_summary.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "goose: budget median 7, scored median 5.5, scored none 25% of 4 drafting steps" in out
    assert "plain by choice 1 of 5 steps, past the budget 2 (+2.5 nodes)" in out
    assert tuner_summary.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and len(err.strip().splitlines()) == 1
