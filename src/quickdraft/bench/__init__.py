"""Measurement tools (the full Spec-Bench runner comes later)."""
