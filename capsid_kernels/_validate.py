"""Argument checks shared by the public ops and modules.

Every message names the argument, what was expected and what came. Checks here read only
tensor metadata, so they cost nothing on the GPU and never synchronise; value checks
(non-finite vectors) live with the tokenizer stack, where they are switchable.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16)
MODES = ("soft", "hard")
PRECISIONS = ("exact", "tf32")


def _tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t: object) -> Tensor:
    t = _tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float64, float32 or bfloat16, got {t.dtype}")
    return t


def check_route_args(r: object, W: object, b: object, D: object, rounds: int, mode: str, precision: str) -> None:
    """Shapes r [N, d], W [K, d_c, d], b [K, d_c], D [d, d_c]; one dtype and one device."""
    r, W, b, D = (check_float(n, t) for n, t in (("r", r), ("W", W), ("b", b), ("D", D)))
    if r.dim() != 2:
        raise ValueError(f"r: expected shape [N, d], got {tuple(r.shape)}")
    n, d = r.shape
    if W.dim() != 3 or W.shape[2] != d or W.shape[0] < 1 or W.shape[1] < 1:
        raise ValueError(f"W: expected shape [K, d_c, d={d}] with K, d_c >= 1, got {tuple(W.shape)}")
    k, dc = W.shape[0], W.shape[1]
    if tuple(b.shape) != (k, dc):
        raise ValueError(f"b: expected shape [K={k}, d_c={dc}], got {tuple(b.shape)}")
    if tuple(D.shape) != (d, dc):
        raise ValueError(f"D: expected shape [d={d}, d_c={dc}], got {tuple(D.shape)}")
    for name, t in (("W", W), ("b", b), ("D", D)):
        if t.dtype != r.dtype:
            raise TypeError(f"{name}: expected the dtype of r ({r.dtype}), got {t.dtype}")
        if t.device != r.device:
            raise ValueError(f"{name}: expected the device of r ({r.device}), got {t.device}")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds: expected an integer >= 1, got {rounds!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")


def check_squash_args(z: object) -> None:
    z = check_float("z", z)
    if z.dim() < 1:
        raise ValueError(f"z: expected at least one dimension (the vector axis), got a 0-d tensor")
