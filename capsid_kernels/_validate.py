"""Argument checks shared by the public ops and modules.

Every message names the argument, what was expected and what came. The shape, dtype, device
and int32-limit checks read only tensor metadata, so they cost nothing on the GPU and never
synchronise. The non-finite check (``check_finite``) reads values: one synchronisation, so
the functional ops take it as an opt-in flag (``route(..., check_finite=True)``) and the
modules turn it on by default (``ExecutionOptions.check_inputs``).
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16)
MODES = ("soft", "hard")
PRECISIONS = ("exact", "tf32")
_MODULE_SKIP = "ExecutionOptions(check_inputs=False)"


def short(value: object, limit: int = 40) -> str:
    """repr of a value for an error message, elided past `limit` characters."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[: limit - 12]}...({len(r)} chars)"


def _tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t: object) -> Tensor:
    t = _tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float64, float32 or bfloat16, got {t.dtype}")
    return t


def check_route_args(r: object, W: object, b: object, D: object, precision: str,
                     check_finite_values: bool = False) -> None:
    """Shapes r [N, d], W [K, d_c, d], b [K, d_c], D [d, d_c]; one dtype and one device; int32
    limits; the precision; with ``check_finite_values`` also NaN/Inf in every tensor (one
    synchronisation). The routing parameters were checked when their RoutingParams was made."""
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {short(precision)}")
    check_index_limits(r, W)
    if check_finite_values:
        check_finite(r=r, W=W, b=b, D=D)


def check_squash_args(z: object, check_finite_values: bool = False) -> None:
    z = check_float("z", z)
    if z.dim() < 1:
        raise ValueError(f"z: expected at least one dimension (the vector axis), got a 0-d tensor")
    if z.shape[-1] == 0:
        raise ValueError(f"z: expected a non-empty last axis (the vector axis), got shape {tuple(z.shape)}")
    if check_finite_values:
        check_finite(z=z)


# int32 limits. The Triton routing kernel computes item rows as program_id * BM + arange (int32)
# and W offsets as k * d_c * d (int32); trie node and token ids are int32 too. Past these the
# offsets would wrap silently, so the API refuses the shapes and says how to split them.
INT32_MAX = 2**31 - 1


def check_index_limits(r: Tensor, W: Tensor) -> None:
    """N rows of r and every element of W must be addressable with int32 offsets."""
    n = r.shape[0]
    if n > INT32_MAX:
        raise ValueError(f"r: expected at most 2**31 - 1 = {INT32_MAX} rows (int32 item offsets), got N = {n}; "
                         "split the items into chunks (tokenize(..., batch_size=...))")
    if W.numel() > INT32_MAX:
        k, dc, d = W.shape
        raise ValueError(f"W: expected K * d_c * d <= 2**31 - 1 = {INT32_MAX} elements (int32 offsets), got "
                         f"{k} * {dc} * {d} = {W.numel()}; use fewer capsules or smaller dimensions")


def check_finite(**tensors: Tensor) -> None:
    """Raise naming the first argument (and its first row) holding NaN or Inf.

    One host synchronisation for all arguments together: the per-argument flags are stacked
    and read once; only on failure is the offending argument searched for its first row.
    """
    named = [(name, t) for name, t in tensors.items()
             if isinstance(t, Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return
    flags = torch.stack([(~torch.isfinite(t)).any() for _, t in named]).tolist()
    for (name, t), bad in zip(named, flags):
        if bad:
            if t.dim() == 0:
                raise ValueError(f"{name}: expected a finite value, got {t.item()}; "
                                 f"pass check_finite=False ({_MODULE_SKIP} in the modules) to skip this check")
            rows = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(dim=1)
            raise ValueError(f"{name}: row {int(rows.nonzero()[0, 0])} has a non-finite value (NaN or Inf), "
                             f"expected finite values ({int(rows.sum())} such rows along dim 0); "
                             f"pass check_finite=False ({_MODULE_SKIP} in the modules) to skip this check")
