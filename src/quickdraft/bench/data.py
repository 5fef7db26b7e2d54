"""Benchmark questions: loading, checking and selecting.

A data file is JSON Lines; each line an object with `question_id` (int or str), `category` (str)
and `turns` (a non-empty list of non-empty strings). Loading checks every line and raises a
one-line QuickdraftError naming the file and line for the first problem. `select` keeps the
file's order within each category and returns categories in the order they were asked for (or
first seen in the file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import QuickdraftError

DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "spec_bench" / "question.jsonl"


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]


def load_questions(path: str | Path = DEFAULT_DATA) -> list[Question]:
    path = Path(path)
    if not path.is_file():
        raise QuickdraftError(f"data file {path} not found; pass an existing JSON Lines file to --data")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise QuickdraftError(f"cannot read data file {path} ({e}); it must be UTF-8 JSON Lines") from None
    out: list[Question] = []
    seen: set = set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuickdraftError(f"{where} is not valid JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(obj, dict):
            raise QuickdraftError(f"{where} is not a JSON object; each line needs question_id, category, turns")
        missing = [k for k in ("question_id", "category", "turns") if k not in obj]
        if missing:
            raise QuickdraftError(f"{where} lacks {', '.join(missing)}; each line needs question_id, category, turns")
        qid, cat, turns = obj["question_id"], obj["category"], obj["turns"]
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            raise QuickdraftError(f"{where}: question_id must be an integer or a string")
        if not isinstance(cat, str) or not cat:
            raise QuickdraftError(f"{where}: category must be a non-empty string")
        if (not isinstance(turns, list) or not turns
                or not all(isinstance(t, str) and t.strip() for t in turns)):
            raise QuickdraftError(f"{where}: turns must be a non-empty list of non-empty strings")
        if qid in seen:
            raise QuickdraftError(f"{where}: question_id {qid!r} appears twice; ids must be unique")
        seen.add(qid)
        out.append(Question(qid, cat, tuple(turns)))
    if not out:
        raise QuickdraftError(f"data file {path} holds no questions")
    return out


def categories(questions: list[Question]) -> list[str]:
    return list(dict.fromkeys(q.category for q in questions))


def select(questions: list[Question], cats: list[str] | None = None, per_category: int = 0) -> list[Question]:
    """The first per_category questions (0 = all) of each asked-for category."""
    known = categories(questions)
    if cats:
        unknown = [c for c in cats if c not in known]
        if unknown:
            raise QuickdraftError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                                  f"the data has: {', '.join(known)}")
    if per_category < 0:
        raise QuickdraftError("--per-category must be >= 0 (0 = every question)")
    out: list[Question] = []
    for c in cats or known:
        qs = [q for q in questions if q.category == c]
        out += qs[:per_category] if per_category else qs
    return out
