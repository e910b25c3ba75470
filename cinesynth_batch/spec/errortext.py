"""A pydantic validation error as words a user can act on: where, what value, what rule, and a
fix. The spec loader (``spec/load.py``) and the stages (``spec/params.py``) both read errors
through here, so one rule reads the same wherever it is broken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import MAPPING_TAG, PLAIN_TAG


@dataclass(frozen=True)
class Said:
    """One error: ``at`` is the path shown before the message (a missing key is reported at the
    mapping that lacks it)."""

    loc: tuple[Any, ...]
    at: tuple[Any, ...]
    message: str
    hint: str | None


def describe(err: dict[str, Any]) -> Said:
    """An entry of ``ValidationError.errors()`` (``extra_forbidden`` aside: the loader words that
    one itself, knowing the keys allowed in the spec)."""
    loc = tuple(part for part in err["loc"] if part not in (PLAIN_TAG, MAPPING_TAG))
    kind = err["type"]
    if kind == "missing":
        return Said(loc, loc[:-1], f"missing required key '{loc[-1]}'", f"add '{loc[-1]}:'")
    if kind == "extra_forbidden":
        return Said(loc, loc[:-1], f"unknown key '{loc[-1]}'", None)
    msg = err["msg"]
    if kind in ("value_error", "assertion_error"):
        text = msg.split(", ", 1)[1] if msg.startswith(("Value error, ", "Assertion failed, ")) else msg
        main, _, hint = text.partition(" (")
        return Said(loc, loc, main, hint.rstrip(")") if hint else None)
    return Said(loc, loc, f"{show(err.get('input'))}: {_lower(msg)}", _type_hint(kind))


def show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _type_hint(kind: str) -> str | None:
    return {
        "int_parsing": "write a whole number",
        "int_from_float": "write a whole number",
        "float_parsing": "write a number",
        "bool_parsing": "write true or false",
        "string_type": "write text (quote it if YAML reads it as something else)",
        "list_type": "write a list: [a, b] or one '- item' per line",
        "dict_type": "write a mapping: key: value",
        "model_type": "write a mapping: key: value",
        "literal_error": None,
        "too_short": "add at least one item",
    }.get(kind)
