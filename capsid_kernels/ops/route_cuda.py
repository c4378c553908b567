"""``capsid::route_cuda``: one routing layer (SPEC §2) on the CUDA C++ kernel (csrc/route_fwd.cu).

The forward calls ``torch.ops.capsid_C.route_forward`` (the extension is loaded on first call,
never at import); the backward is the recompute-the-reference one of ops/_route_common.py.
The kernel returns the final agreement logits and their log-sum-exp; c* = exp(logits − lse)
is formed here only when the weights are asked for.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..registry import apply_rules, first_limit_reason, kernel, need_reason
from ._route_common import _backward, _OutTuple, _setup, route_fake

_RECORD = kernel("route", "cuda")  # dtypes, limits and needs: capsid_kernels.registry
DTYPES = _RECORD.dtypes
MAX_D = _RECORD.limits["d"]
MAX_DC = _RECORD.limits["d_c"]
MAX_ROUNDS = _RECORD.limits["rounds"]


def shape_reason(d: int, dc: int, rounds: int) -> Optional[str]:
    """None when the CUDA routing kernel handles these sizes, else why not (names limit and fix)."""
    return first_limit_reason("route", "cuda", d=d, d_c=dc, rounds=rounds)


def auto_prefers_cuda(device_type: str, dtype: torch.dtype, K: int, dc: int, d: int, rounds: int) -> bool:
    """True where "auto" should run this kernel instead of Triton (registry.AUTO_RULES) and it can run."""
    sizes = {"K": K, "d_c": dc, "d": d, "rounds": rounds}
    return apply_rules("route", "triton", device_type, dtype, sizes) == "cuda"


def extension_reason() -> Optional[str]:
    """Why the built extension cannot serve route (None when it can)."""
    return need_reason(_RECORD.needs)


def forward(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32, stage_skip=0):
    """The raw kernel call; ``stage_skip`` != 0 is for leave-one-stage-out timings only."""
    reason = extension_reason()
    if reason is not None:
        raise RuntimeError(f"capsid::route_cuda: {reason}")
    q, rout, z, logits, lse, onorm, token, stop = torch.ops.capsid_C.route_forward(
        r.contiguous(), W.contiguous(), b.contiguous(), D.contiguous(), rounds, hard, eta, tau, eps, last,
        need_weights, need_onorm, tf32, stage_skip)
    weights = torch.exp(logits - lse[:, None]) if need_weights else logits
    return q, rout, z, weights, onorm, token, stop


@torch.library.custom_op("capsid::route_cuda", mutates_args=())
def route_cuda(
    r: Tensor, W: Tensor, b: Tensor, D: Tensor, rounds: int, hard: bool, eta: float, tau: float,
    eps: float, last: bool, need_weights: bool, need_onorm: bool, tf32: bool,
) -> _OutTuple:
    return forward(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32)


route_cuda.register_fake(route_fake)
route_cuda.register_autograd(_backward, setup_context=_setup)
