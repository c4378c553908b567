"""What every routing forward op shares (eager, triton, cuda): the output tuple, the fake
(meta) implementation, and the recompute-the-reference backward with its setup.

route.py and route_cuda.py both import this module; neither imports the other's private names.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import RoutingParams
from ..reference import RouteOutput, compute_dtype, route_reference
from ._precision import matmul_precision

# Floating outputs first (q, r', z, c*, ||o||), then token and stop reason: the op's order,
# which ``route`` rearranges into a RouteOutput.
_OutTuple = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def op_scalars(routing: RoutingParams) -> tuple[int, bool, float, float, float]:
    """(rounds, hard, eta, tau, eps): a RoutingParams as the routing ops' scalar arguments
    (torch.library schemas take primitives). Built here and read back by ``op_routing`` only."""
    return routing.rounds, routing.mode == "hard", float(routing.eta), float(routing.tau), float(routing.eps)


def op_routing(rounds: int, hard: bool, eta: float, tau: float, eps: float) -> RoutingParams:
    """``op_scalars``' inverse, inside an op."""
    return RoutingParams(rounds=rounds, mode="hard" if hard else "soft", eta=eta, tau=tau, eps=eps)


def _reference(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm) -> RouteOutput:
    return route_reference(r, W, b, D, op_routing(rounds, hard, eta, tau, eps), last=last,
                           need_weights=need_weights, need_onorm=need_onorm)


def route_fake(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32) -> _OutTuple:
    """Output shapes and dtypes of every routing forward op (eager, triton, cuda)."""
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
