"""``capsid::route_cuda``: one routing layer (SPEC §2) on the CUDA C++ kernel (csrc/route_fwd.cu).

The forward calls ``torch.ops.capsid_C.route_forward`` (the extension is loaded on first call,
never at import); the backward is route.py's recompute-the-reference backward, as for Triton.
The kernel returns the final agreement logits and their log-sum-exp; c* = exp(logits − lse)
is formed here only when the weights are asked for.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ext
from .route import _backward, _OutTuple, _setup, route_fake

DTYPES = (torch.float32, torch.bfloat16)
# The kernel keeps one 128-item tile with d padded to 128 and d_c padded to 64/96/128 on chip.
MAX_D = 128
MAX_DC = 128
MAX_ROUNDS = 64


def shape_reason(d: int, dc: int, rounds: int) -> Optional[str]:
    """None when the CUDA routing kernel handles these sizes, else why not (names limit and fix)."""
    if d > MAX_D:
        return f"item dim d={d} exceeds the CUDA kernel's limit {MAX_D} (use backend='triton' or 'eager')"
    if dc > MAX_DC:
        return f"capsule dim d_c={dc} exceeds the CUDA kernel's limit {MAX_DC} (use backend='triton' or 'eager')"
    if rounds > MAX_ROUNDS:
        return f"rounds={rounds} exceeds the CUDA kernel's limit {MAX_ROUNDS} (use backend='eager')"
    return None


# Where "auto" puts this kernel ahead of Triton for route (measured, bench/results/routing_cuda.json,
# H100, 2026-11-23): float32 inputs with wide layers (K >= 1024 and d_c > 64, the industrial preset)
# ran 1.05x (tf32) and 1.94x (exact fp32) Triton's speed; bf16 and the default preset ran slower
# (0.61x bf16), so everything else stays on Triton. ``python -m capsid_kernels.info`` prints this.
AUTO_RULE = ("route: 'auto' takes cuda before triton for float32 with K >= 1024 and d_c > 64 "
             "(measured 1.05x tf32, 1.94x exact fp32 on an H100); triton otherwise (csrc/ROUTE_CUDA.md)")


@torch.compiler.assume_constant_result
def auto_prefers_cuda(device_type: str, dtype: torch.dtype, K: int, dc: int, d: int, rounds: int) -> bool:
    """True where "auto" should run this kernel instead of Triton (AUTO_RULE) and it can run."""
    from ..backends import unsupported_reason

    if dtype != torch.float32 or K < 1024 or dc <= 64 or shape_reason(d, dc, rounds) is not None:
        return False
    return unsupported_reason("route", "cuda", device_type, dtype) is None


def extension_reason() -> Optional[str]:
    """Why the built extension cannot serve route (None when it can)."""
    err = _ext.error()
    if err is not None:
        return err
    if not hasattr(torch.ops.capsid_C, "route_forward"):
        return "the built extension predates the route_forward op: rebuild it (python setup.py build_ext --inplace)"
    return None


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
