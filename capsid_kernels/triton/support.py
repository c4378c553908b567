"""When the Triton backend can run: its records live in ``capsid_kernels.registry``; this module
keeps the limits' former names and ``shape_reason`` for callers.

Importing it imports neither Triton nor CUDA (the registry looks for Triton with
``importlib.util.find_spec`` only).
"""

from __future__ import annotations

from typing import Optional

from ..registry import first_limit_reason, kernel

_ROUTE = kernel("route", "triton")
DTYPES = _ROUTE.dtypes
MAX_D = _ROUTE.limits["d"]
MAX_DC = _ROUTE.limits["d_c"]
MAX_ROUNDS = _ROUTE.limits["rounds"]


def shape_reason(d: int, dc: int, rounds: int) -> Optional[str]:
    """None when the routing kernel handles these sizes, else why not (names limit and fix)."""
    return first_limit_reason("route", "triton", d=d, d_c=dc, rounds=rounds)
