"""`ar`: proposes nothing, so every step is one plain autoregressive step through the same loop.

The baseline every speedup is measured against: same backend, verifier and decoder as the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import BaseDrafter


@register("ar")
class AR(BaseDrafter):
    @dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: "AR.Config", **env) -> None:
        self.config = config
