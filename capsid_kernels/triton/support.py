"""When the Triton backend can run: the support checks behind ``backend="triton"`` and the shape limits.

Imported by ``capsid_kernels.backends`` at package import, so it must not import Triton or touch
CUDA: the checks look for Triton with ``importlib.util.find_spec`` only.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from ..backends import supports

DTYPES = (torch.float32, torch.bfloat16)
# One item tile keeps r [BM, d] and several [BM, d_c] float32 accumulators on chip; past these
# the tile would spill, so larger shapes run on the eager reference ("auto") or raise ("triton").
MAX_D = 256
MAX_DC = 128
MAX_ROUNDS = 16


def _common(device_type: str, dtype: torch.dtype) -> Optional[str]:
    if device_type != "cuda":
        return f"the triton backend needs CUDA tensors, got tensors on '{device_type}'"
    if dtype not in DTYPES:
        return f"the triton backend supports float32 and bfloat16, got {dtype} (use backend='eager')"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    return None


@supports("route", "triton")
def _route_triton(device_type: str, dtype: torch.dtype) -> Optional[str]:
    return _common(device_type, dtype)


@supports("tokenize", "triton")
def _tokenize_triton(device_type: str, dtype: torch.dtype) -> Optional[str]:
    return _common(device_type, dtype)


def shape_reason(d: int, dc: int, rounds: int) -> Optional[str]:
    """None when the routing kernel handles these sizes, else why not (names limit and fix)."""
    if d > MAX_D:
        return f"item dim d={d} exceeds the Triton kernel's limit {MAX_D} (use backend='eager')"
    if dc > MAX_DC:
        return f"capsule dim d_c={dc} exceeds the Triton kernel's limit {MAX_DC} (use backend='eager')"
    if rounds > MAX_ROUNDS:
        return f"rounds={rounds} exceeds the Triton kernel's limit {MAX_ROUNDS} (use backend='eager')"
    return None
