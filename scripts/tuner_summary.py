"""What the self-tuning budget chose in a bench run, per method, from its records.jsonl.

Run: python scripts/tuner_summary.py DIR [DIR ...]   (DIR: a `quickdraft bench --out` folder)
Reads only the records' per-step `budgets` and `drafted` lists (methods without them, such as
`ar` and the transformers baselines, are skipped) and prints, per method: the median budget and
the median number of nodes scored over the drafting steps (budget > 0), the share of drafting
steps whose per-step cut scored no node (a plain pass), how many steps were plain by choice
(budget 0), and how many steps the cut took past the budget (the sure spine) with the mean
number of nodes past it. Measures nothing; pure arithmetic over what the bench recorded.
"""

import collections
import json
import statistics
import sys
from pathlib import Path


def summarise(folder: Path) -> dict[str, dict]:
    agg: dict[str, dict] = collections.defaultdict(
        lambda: {"budgets": [], "drafted": [], "steps": 0, "plain": 0, "none": 0, "past": []})
    with open(folder / "records.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if not rec.get("budgets"):
                continue
            a = agg[rec["method"]]
            for b, d in zip(rec["budgets"], rec["drafted"]):
                a["steps"] += 1
                if b == 0:
                    a["plain"] += 1
                    continue
                a["budgets"].append(b)
                a["drafted"].append(d)
                a["none"] += d == 0
                if d > b:
                    a["past"].append(d - b)
    return agg


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/tuner_summary.py DIR [DIR ...]", file=sys.stderr)
        return 2
    for arg in argv:
        folder = Path(arg)
        if not (folder / "records.jsonl").is_file():
            print(f"error: {folder / 'records.jsonl'} not found; pass a `quickdraft bench --out` folder",
                  file=sys.stderr)
            return 2
        print(f"## {folder}")
        for method, a in summarise(folder).items():
            n = len(a["budgets"])
            if not n:
                print(f"{method}: no drafting steps ({a['plain']} plain)")
                continue
            past = a["past"]
            print(f"{method}: budget median {statistics.median(a['budgets']):g}, "
                  f"scored median {statistics.median(a['drafted']):g}, "
                  f"scored none {a['none'] / n:.0%} of {n} drafting steps, "
                  f"plain by choice {a['plain']} of {a['steps']} steps, "
                  f"past the budget {len(past)}"
                  + (f" (+{statistics.mean(past):.1f} nodes)" if past else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
