"""Measurement: `quickdraft bench` (Spec-Bench, every method against plain decoding and the
baselines users would pick instead) and the verify-cost profile (`--profile-verify`).

data.py loads questions, runners.py runs one method, report.py does the arithmetic and the
tables, machine.py measures the machine, run.py orchestrates, verify_cost.py profiles tree passes.
"""
