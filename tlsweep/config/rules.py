"""A config key's one-line help and its range, declared once beside the key as dataclass field metadata.

The schema (tlsweep/config/schema.py, data.py, advise.py) declares each key with `key(default, help,
rule)`; `schema.check_ranges` and `recipes.Recipe` refuse a value by its rule, and the manual
(tlsweep/manual/pages.py) prints the same help and rule in docs/configuration.md. So what the page says a key
may be is what the code checks. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import MISSING as NO_DEFAULT, Field, dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    """What a key may be: `text` completes "must be ..." in an error and fills the page's range column."""

    text: str
    ok: Callable[[Any], bool]


def at_least(low: int, null: str | None = None, note: str = "") -> Rule:
    """An integer >= low; `null` says what null means where it is allowed."""
    text = f"an integer >= {low}" + (f" or null (null: {null})" if null else "") + note
    return Rule(text, lambda v: (v is None and null is not None) or (v is not None and v >= low))


def number(low: float, strict: bool, note: str = "", finite: bool = False) -> Rule:
    """A number > low (strict) or >= low."""
    text = f"a {'finite ' if finite else ''}number {'>' if strict else '>='} {low:g}{note}"
    return Rule(text, lambda v: v is not None and (not finite or math.isfinite(v))
                and (v > low if strict else v >= low))


def unit_interval(text: str = "in [0, 1)") -> Rule:
    """A number in [0, 1)."""
    return Rule(text, lambda v: v is not None and 0 <= v < 1)


def fraction() -> Rule:
    """A share held out of a split: in (0, 1), or null for none."""
    return Rule("a fraction in (0, 1), or null for none held out", lambda v: v is None or 0 < v < 1)


def one_of(*choices) -> Rule:
    """One of `choices` (None spelt null): "a, b or c"."""
    names = ["null" if c is None else str(c) for c in choices]
    return Rule(" or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names), lambda v: v in choices)


def key(default: Any = NO_DEFAULT, help: str = "", rule: Rule | None = None, *,
        factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its help and rule in its metadata (what OmegaConf ignores)."""
    meta = {"help": help, "rule": rule}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def help_of(f: Field) -> str:
    return f.metadata.get("help", "")


def rule_of(f: Field) -> Rule | None:
    return f.metadata.get("rule")
