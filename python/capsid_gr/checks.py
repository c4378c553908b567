"""The one set of type and range checks every configuration dataclass runs on construction.

`check_config(cfg)` reads each field's annotation: `bool` fields must be bools; `int` fields
integers that are not bools; `float` fields real numbers that are not bools and not NaN or
infinite; `Optional[...]` fields may also be None. Numbers must be >= 0 unless `ranges` gives
the field another (lo, hi) interval. A class's own `__post_init__` then checks what is specific
to it (lower bounds of 1, orderings between fields). Messages name the class and field, what was
expected and what came, with long values elided.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional


def short(value: object, limit: int = 40) -> str:
    """repr of a value, elided past `limit` characters."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[: limit - 12]}...({len(r)} chars)"


def _base(annotation: str) -> tuple[str, bool]:
    t = str(annotation).replace(" ", "").replace("typing.", "")
    if t.startswith("Optional[") and t.endswith("]"):
        return t[9:-1], True
    parts = t.split("|")
    if "None" in parts:
        return "|".join(p for p in parts if p != "None"), True
    return t, False


def check_config(cfg: object, ranges: Optional[dict[str, tuple[float, float]]] = None) -> None:
    ranges = ranges or {}
    for f in dataclasses.fields(cfg):
        base, optional = _base(f.type)
        v = getattr(cfg, f.name)
        name = f"{type(cfg).__name__}.{f.name}"
        if v is None:
            if optional or base not in ("bool", "int", "float"):
                continue
            raise ValueError(f"{name}: expected {'a bool' if base == 'bool' else 'a number'}, got None")
        if base == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"{name}: expected a bool (true or false), got {short(v)}")
            continue
        if base not in ("int", "float"):
            continue
        lo, hi = ranges.get(f.name, (0, math.inf))
        if base == "int":
            ok = isinstance(v, int) and not isinstance(v, bool)
            what = "an integer"
        else:
            ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            what = "a finite number"
        if not ok:
            raise ValueError(f"{name}: expected {what} in [{lo}, {hi}], got {short(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"{name}: expected {what} in [{lo}, {hi}], got {short(v)}")
