"""One routing layer (SPEC §2) as custom ops with autograd, and the public ``route``.

Two backends: ``capsid::route_eager`` (the reference) and ``capsid::route_triton`` (the fused
Triton forward; Triton is imported on first call). The eager backward recomputes the reference
forward with autograd and differentiates it: only the inputs are saved. The Triton backend trains
through its own fused backward (``capsid::route_triton_train`` / ``capsid::route_triton_backward``,
below), which saves O(N·T·d_c) and recomputes the votes tile by tile.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validate import check_route_args
from ..config import HOT_PATH, ExecutionOptions, RoutingParams, execution_options, routing_params
from ..reference import RouteOutput, compute_dtype
from ..registry import dispatch
from ._precision import matmul_precision
from ._route_common import _backward, _OutTuple, _reference, _setup, op_scalars, route_fake


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


route_eager.register_fake(route_fake)
route_triton.register_fake(route_fake)
route_eager.register_autograd(_backward, setup_context=_setup)


# ---- The Triton backend's training path: the fused backward (triton/route_bwd.py).
# ``route`` calls ``route_triton_train`` when a gradient is wanted: the forward kernel then also
# writes the O(N·T·d_c) state the backward recomputes from. ``route_triton`` called directly with
# grad enabled still trains through the fused backward, after one more forward to rebuild it.

_TrainTuple = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("capsid::route_triton_train", mutates_args=())
def route_triton_train(
    r: Tensor, W: Tensor, b: Tensor, D: Tensor, rounds: int, hard: bool, eta: float, tau: float,
    eps: float, last: bool, need_weights: bool, need_onorm: bool, tf32: bool,
) -> _TrainTuple:
    """``route_triton``'s outputs, then the saved state: v of every round [N, T, d_c], the rounds'
    log-sum-exps and c*_s [N, T + 1], and the reconstruction before D [N, d_c]."""
    from ..triton.route_fwd import route_forward

    return route_forward(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32, save=True)


@route_triton_train.register_fake
def _(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32) -> _TrainTuple:
    n, k, dc, cd = r.shape[0], W.shape[0], W.shape[1], compute_dtype(r.dtype)
    return (
        r.new_empty(n, dtype=cd), torch.empty_like(r), torch.empty_like(r),
        r.new_empty((n, k) if need_weights else (0,), dtype=cd), r.new_empty(n if need_onorm else 0, dtype=cd),
        r.new_empty(n, dtype=torch.int64), r.new_empty(n, dtype=torch.int64),
        r.new_empty((n, rounds, dc), dtype=cd), r.new_empty((n, rounds + 1), dtype=cd), r.new_empty((n, dc), dtype=cd),
    )


@torch.library.custom_op("capsid::route_triton_backward", mutates_args=())
def route_triton_backward(
    r: Tensor, W: Tensor, b: Tensor, D: Tensor, saved_v: Tensor, saved_lse: Tensor, saved_rec: Tensor,
    token: Tensor, weights: Tensor, g_q: Optional[Tensor], g_res: Optional[Tensor], g_z: Optional[Tensor],
    g_w: Optional[Tensor], g_onorm: Optional[Tensor], rounds: int, hard: bool, eta: float, tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dr, dW, db, dD) from ``route_triton_train``'s saved state; deterministic (no atomics)."""
    from ..triton.route_bwd import route_backward

    return route_backward(r, W, b, D, saved_v, saved_lse, saved_rec, token, weights, g_q, g_res, g_z, g_w,
                          g_onorm, rounds, hard, eta, tf32)


@route_triton_backward.register_fake
def _(r, W, b, D, saved_v, saved_lse, saved_rec, token, weights, g_q, g_res, g_z, g_w, g_onorm, rounds, hard,
      eta, tf32):
    return torch.empty_like(r), torch.empty_like(W), torch.empty_like(b), torch.empty_like(D)


def _fused_grads(args, r, W, b, D, sv, slse, srec, token, weights, g_q, g_res, g_z, g_w, g_onorm):
    rounds, hard, eta, need_weights, need_onorm, tf32 = args
    return route_triton_backward(r, W, b, D, sv, slse, srec, token, weights, g_q, g_res, g_z,
                                 g_w if need_weights else None, g_onorm if need_onorm else None,
                                 rounds, hard, eta, tf32)


def _setup_train(ctx, inputs, output) -> None:
    r, W, b, D, rounds, hard, eta, _tau, _eps, _last, need_weights, need_onorm, tf32 = inputs
    q, res, z, weights, onorm, token, reason, sv, slse, srec = output
    ctx.mark_non_differentiable(token, reason, sv, slse, srec)
    ctx.save_for_backward(r, W, b, D, sv, slse, srec, token, weights)
    ctx.args = (rounds, hard, eta, need_weights, need_onorm, tf32)


def _backward_train(ctx, g_q, g_res, g_z, g_w, g_onorm, *_unused):
    grads = _fused_grads(ctx.args, *ctx.saved_tensors, g_q, g_res, g_z, g_w, g_onorm)
    return (*grads, *([None] * 9))


def _backward_triton(ctx, g_q, g_res, g_z, g_w, g_onorm, _g_token, _g_reason):
    rounds, hard, eta, need_weights, need_onorm, tf32 = ctx.args
    r, W, b, D = ctx.saved_tensors
    outs = route_triton_train(r, W, b, D, rounds, hard, eta, 0.0, 0.0, False, need_weights, need_onorm, tf32)
    grads = _fused_grads(ctx.args, r, W, b, D, outs[7], outs[8], outs[9], outs[5], outs[3],
                         g_q, g_res, g_z, g_w, g_onorm)
    return (*grads, *([None] * 9))


route_triton.register_autograd(_backward_triton, setup_context=_setup)
route_triton_train.register_autograd(_backward_train, setup_context=_setup_train)


def resolve_backend(backend: str, r: Tensor, W: Tensor, rounds: int) -> str:
    """The backend that runs these inputs (``registry.dispatch`` with the layer's sizes): a named
    backend that cannot run them raises ``BackendUnavailable``; "auto" takes the first fast backend
    that runs the device and dtype, the measured exception (registry.AUTO_RULES), and eager past
    that backend's limits (warning once for CUDA tensors)."""
    K, dc, d = W.shape
    return dispatch("route", backend, r.device.type, r.dtype, K=K, d_c=dc, d=d, rounds=rounds)


def route(
    r: Tensor,
    W: Tensor,
    b: Tensor,
    D: Tensor,
    routing: RoutingParams = RoutingParams(),
    *,
    last: bool = False,
    need_weights: bool = False,
    need_onorm: bool = False,
    execution: Optional[ExecutionOptions] = None,
    precision: Optional[str] = None,
    backend: Optional[str] = None,
    check_finite: Optional[bool] = None,
    **routing_keywords,
) -> RouteOutput:
    """One CAPSID routing layer for N items (SPEC §2), differentiable in r, W, b and D.

    r [N, d], W [K, d_c, d], b [K, d_c], D [d, d_c], one dtype (float64, float32, bfloat16)
    and one device. ``routing``: a ``RoutingParams`` (rounds, mode, eta, tau, eps); its fields
    may also be given as keywords (``route(r, W, b, D, tau=0.9)``), which replace those of
    ``routing``. ``last`` marks the final depth (stop reason CAP for items still going).
    ``execution``: an ``ExecutionOptions`` (backend, precision, check_inputs; default ``HOT_PATH``,
    which does not check values); ``backend=``, ``precision=`` and ``check_finite=`` (its
    ``check_inputs``) replace its fields. ``precision="tf32"`` lets float32 matmuls use tf32 on the
    GPU. ``check_finite=True`` rejects NaN/Inf in r, W, b and D, naming the argument and row (one
    device synchronisation, so off by default in this hot path; ``CapsuleLayer`` turns it on).
    Returns a ``RouteOutput``.
    """
    routing = routing_params(routing, routing_keywords)
    ex = execution_options(execution, {"backend": backend, "precision": precision, "check_finite": check_finite},
                           default=HOT_PATH)
    check_route_args(r, W, b, D, ex.precision, ex.check_inputs)
    name = resolve_backend(ex.backend, r, W, routing.rounds)
    if name == "cuda":
        from .route_cuda import route_cuda as op  # the C++ kernel's custom op (csrc/route_fwd.cu)
    else:
        op = route_triton if name == "triton" else route_eager
    if op is route_triton and torch.is_grad_enabled() and any(t.requires_grad for t in (r, W, b, D)):
        op = route_triton_train  # the forward also saves what the fused backward needs
    # the kernels take r's dtype as given (SPEC §2: float32 softmax and accumulation); an
    # enclosing autocast region must not turn their internal products into bfloat16
    with torch.autocast(r.device.type, enabled=False):
        outs = op(r, W, b, D, *op_scalars(routing), bool(last), bool(need_weights), bool(need_onorm),
                  ex.precision == "tf32")  # the custom ops' schemas take plain scalars
    q, residual, recon, weights, onorm, token, reason = outs[:7]
    return RouteOutput(token, q, residual, recon, reason, weights if need_weights else None,
                       onorm if need_onorm else None)
