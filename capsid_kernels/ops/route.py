"""One routing layer (SPEC §2) as custom ops with autograd, and the public ``route``.

Two backends: ``capsid::route_eager`` (the reference) and ``capsid::route_triton`` (the fused
Triton forward; Triton is imported on first call). Both backwards recompute the reference
forward with autograd and differentiate it: only the inputs are saved, the exact gradient
comes back, whichever kernel ran the forward.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .._validate import check_route_args
from ..backends import BackendUnavailable, select
from ..reference import RouteOutput, compute_dtype, route_reference
from ..triton.support import shape_reason
from ._precision import matmul_precision

# Floating outputs first (q, r', z, c*, ||o||), then token and stop reason: the op's order,
# which ``route`` rearranges into a RouteOutput.
_OutTuple = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _reference(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm) -> RouteOutput:
    return route_reference(
        r, W, b, D, rounds=rounds, mode="hard" if hard else "soft", eta=eta, tau=tau, eps=eps,
        last=last, need_weights=need_weights, need_onorm=need_onorm,
    )


@torch.library.custom_op("capsid::route_eager", mutates_args=())
def route_eager(
    r: Tensor, W: Tensor, b: Tensor, D: Tensor, rounds: int, hard: bool, eta: float, tau: float,
    eps: float, last: bool, need_weights: bool, need_onorm: bool, tf32: bool,
) -> _OutTuple:
    with matmul_precision(tf32):
        out = _reference(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm)
    empty = r.new_empty(0, dtype=compute_dtype(r.dtype))
    return (
        out.confidence, out.residual, out.recon, out.weights if need_weights else empty,
        out.onorm if need_onorm else empty.clone(), out.token, out.stop_reason,
    )


@torch.library.custom_op("capsid::route_triton", mutates_args=())
def route_triton(
    r: Tensor, W: Tensor, b: Tensor, D: Tensor, rounds: int, hard: bool, eta: float, tau: float,
    eps: float, last: bool, need_weights: bool, need_onorm: bool, tf32: bool,
) -> _OutTuple:
    from ..triton.route_fwd import route_forward  # imports Triton on first use only

    return route_forward(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32)


@route_eager.register_fake
@route_triton.register_fake
def _(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32) -> _OutTuple:
    n, k, cd = r.shape[0], W.shape[0], compute_dtype(r.dtype)
    return (
        r.new_empty(n, dtype=cd),
        torch.empty_like(r),
        torch.empty_like(r),
        r.new_empty((n, k) if need_weights else (0,), dtype=cd),
        r.new_empty(n if need_onorm else 0, dtype=cd),
        r.new_empty(n, dtype=torch.int64),
        r.new_empty(n, dtype=torch.int64),
    )


def _setup(ctx, inputs, output) -> None:
    r, W, b, D, rounds, hard, eta, _tau, _eps, _last, need_weights, need_onorm, tf32 = inputs
    ctx.save_for_backward(r, W, b, D)
    ctx.args = (rounds, hard, eta, need_weights, need_onorm, tf32)


def _backward(ctx, g_q, g_res, g_z, g_w, g_onorm, _g_token, _g_reason):
    rounds, hard, eta, need_weights, need_onorm, tf32 = ctx.args
    leaves = [t.detach().requires_grad_() for t in ctx.saved_tensors]
    with torch.enable_grad(), matmul_precision(tf32):
        out = _reference(*leaves, rounds, hard, eta, 0.0, 0.0, False, need_weights, need_onorm)
        pairs = [(out.confidence, g_q), (out.residual, g_res), (out.recon, g_z)]
        if need_weights:
            pairs.append((out.weights, g_w))
        if need_onorm:
            pairs.append((out.onorm, g_onorm))
        pairs = [(o, g) for o, g in pairs if g is not None]
        if not pairs:
            return (None,) * 13
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    grads = [torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves)]
    return (*grads, *([None] * 9))


route_eager.register_autograd(_backward, setup_context=_setup)
route_triton.register_autograd(_backward, setup_context=_setup)


def resolve_backend(backend: str, r: Tensor, W: Tensor, rounds: int) -> str:
    """The backend that runs these inputs: ``select`` plus the Triton kernel's shape limits
    ("auto" falls back to eager past them; naming "triton" raises with the reason)."""
    name = select("route", backend, r.device.type, r.dtype)  # raises when a named backend cannot run
    if name == "triton":
        reason = shape_reason(W.shape[2], W.shape[1], rounds)
        if reason is not None:
            if backend == "triton":
                raise BackendUnavailable(f"backend='triton' cannot run op 'route': {reason}")
            name = "eager"
    return name


def route(
    r: Tensor,
    W: Tensor,
    b: Tensor,
    D: Tensor,
    *,
    rounds: int = 3,
    mode: str = "soft",
    eta: float = 1.0,
    tau: float = 0.82,
    eps: float = 0.08,
    last: bool = False,
    need_weights: bool = False,
    need_onorm: bool = False,
    precision: str = "exact",
    backend: str = "auto",
) -> RouteOutput:
    """One CAPSID routing layer for N items (SPEC §2), differentiable in r, W, b and D.

    r [N, d], W [K, d_c, d], b [K, d_c], D [d, d_c], one dtype (float64, float32, bfloat16)
    and one device. ``last`` marks the final depth (stop reason CAP for items still going).
    ``precision="tf32"`` lets float32 matmuls use tf32 on the GPU. Returns a ``RouteOutput``.
    """
    check_route_args(r, W, b, D, rounds, mode, precision)
    op = route_triton if resolve_backend(backend, r, W, rounds) == "triton" else route_eager
    outs = op(
        r, W, b, D, rounds, mode == "hard", float(eta), float(tau), float(eps), bool(last),
        bool(need_weights), bool(need_onorm), precision == "tf32",
    )
    q, residual, recon, weights, onorm, token, reason = outs
    return RouteOutput(token, q, residual, recon, reason, weights if need_weights else None,
                       onorm if need_onorm else None)
