"""The drafter registry: the one place where a method is looked up by name.

Each drafter module registers a class with a frozen dataclass `Config` (one comment per field).
`create(name, settings)` builds one from `--set key=value` strings, checked against the field types.
The decoder, CLI and bench only ever call `names()`, `create()` and the Drafter protocol.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Callable

from ..errors import QuickdraftError

_REGISTRY: dict[str, type] = {}

# Settings every drafter takes, handled by the engine rather than the drafter's Config:
#   budget=N     fix the tree budget at N nodes per step (0: plain steps); budget=auto (default):
#                the engine's self-tuner chooses each step's budget (tuning.py)
BUDGET_KEY = "budget"


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        assert name not in _REGISTRY, f"drafter {name} registered twice"
        assert dataclasses.is_dataclass(cls.Config), f"{cls.__name__}.Config must be a dataclass"
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def names() -> list[str]:
    return list(_REGISTRY)


def config_fields(name: str) -> dict[str, tuple[type, object]]:
    """{field: (type, default)} of a drafter's Config."""
    cls = _get(name)
    hints = typing.get_type_hints(cls.Config)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls.Config)}


def _get(name: str) -> type:
    if name not in _REGISTRY:
        raise QuickdraftError(f"unknown method '{name}'; choose one of: {', '.join(names())}")
    return _REGISTRY[name]


def _convert(name: str, key: str, typ: type, text: str) -> object:
    try:
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float, str):
            return typ(text)
        if typing.get_origin(typ) is tuple:
            (elem, *_rest) = typing.get_args(typ)
            return tuple(elem(x) for x in text.split(",") if x.strip())
    except ValueError:
        pass
    else:
        raise QuickdraftError(f"--set {key}: unsupported field type {typ} in {name}")
    raise QuickdraftError(f"--set {key}={text}: expected {getattr(typ, '__name__', typ)} for method '{name}'")


def split_budget(settings: list[str] | None) -> tuple[int | None, list[str]]:
    """(fixed budget or None for self-tuning, the other settings). Checks the budget's value."""
    budget: int | None = None
    rest: list[str] = []
    for item in settings or []:
        key, sep, value = item.partition("=")
        if key.strip() != BUDGET_KEY:
            rest.append(item)
            continue
        value = value.strip().lower()
        if value == "auto":
            budget = None
            continue
        try:
            budget = int(value)
        except ValueError:
            budget = -1
        if budget < 0:
            raise QuickdraftError(f"--set budget={value}: expected a number of draft nodes >= 0, or 'auto'")
    return budget, rest


def parse_settings(name: str, settings: list[str]) -> dict[str, object]:
    """['k=v', ...] -> {k: typed v}, checked against the drafter's Config (budget= is left out)."""
    fields = config_fields(name)
    out: dict[str, object] = {}
    for item in split_budget(settings)[1]:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise QuickdraftError(f"--set expects key=value, got '{item}'")
        if key not in fields:
            known = ", ".join([*fields, BUDGET_KEY])
            raise QuickdraftError(f"unknown setting '{key}' for method '{name}'; its settings are: {known}")
        out[key] = _convert(name, key, fields[key][0], value)
    return out


def make_config(name: str, settings: list[str] | dict[str, object] | None = None):
    """The drafter's Config with `settings` applied, validated (no model needed)."""
    cls = _get(name)
    if isinstance(settings, list):
        settings = parse_settings(name, settings)
    config = cls.Config(**(settings or {}))
    if hasattr(config, "validate"):
        config.validate()
    return config


def create(name: str, settings: list[str] | dict[str, object] | None = None, **env):
    """Build drafter `name` with its Config overridden by `settings`.

    env: facts about the engine the drafter may need (vocab_size).
    """
    return _get(name)(make_config(name, settings), **env)


# Import the modules so they register themselves (order = listing order).
from . import ar, pld, recycling, goose, lookahead, aded  # noqa: E402,F401
