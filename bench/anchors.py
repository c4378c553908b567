"""The fair anchor of the routing benchmarks (KERNELS.md, "Fair anchors"; issue 20, item 1).

``route_fair_anchor`` computes one routing layer (SPEC §2) exactly as
``capsid_kernels.reference.route_reference`` does, in plain torch, with one difference: for
bfloat16 inputs the vote GEMM ``u = r Wᵀ`` runs on bf16 tensor cores (bf16 operands, float32
accumulation and a float32 result), where the reference upcasts r and W to float32 first and so
pays what float32 costs. Everything after the GEMM (bias, softmax, agreement, the weighted sums,
squash, z = D rec, r') is the reference's float32 math. That is the precision of work of the bf16
Triton kernel, so timing it is a fair comparison; the reference stays the executable SPEC.

Backward (autograd, for the training-step rows): the vote GEMM's backward, ``dr = g_u W`` and
``dW = g_uᵀ r``, also runs on bf16 tensor cores, with the float32 ``g_u`` split into two bf16 terms
(hi + lo, 16 significant bits) as the fused Triton backward does; the rest is autograd of the float32
math. ``dr`` leaves the GEMM in float32 and meets the residual path's gradient in float32, so every
gradient is rounded to bf16 once, as in the reference.

Float32 and float64 inputs: the votes are the reference's own ``route_votes`` (tf32 only where the
caller turned it on), so for fp32 rows the fair anchor is the reference's fp32 math and a benchmark
compares fp32 and tf32 rows with the compiled reference.

Devices: ``torch.mm(..., out_dtype=torch.float32)`` exists for CUDA (and meta) tensors only. On CPU
the same values come from upcasting first (products of bf16 values are exact in float32, and the sum
is float32 either way), so the CPU tests check the math and the meta-device test checks the CUDA call.

Imports torch and capsid_kernels' reference, config and argument checks; nothing else.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsid_kernels._validate import check_route_args
from capsid_kernels.config import RoutingParams, routing_params
from capsid_kernels.reference import RouteOutput, compute_dtype, route_votes
from capsid_kernels.reference.routing import route_from_votes


def mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of two bf16 matrices, accumulated and returned in float32 (bf16 tensor cores on CUDA)."""
    if a.device.type == "cpu":  # no aten::mm.dtype kernel on CPU; exact products, float32 sums, as on the GPU
        return a.float() @ b.float()
    return torch.mm(a, b, out_dtype=torch.float32)


def split_bf16(x: Tensor) -> tuple[Tensor, Tensor]:
    """float32 ``x`` as ``hi + lo``, two bf16 tensors: 16 significant bits of every element."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.float()).to(torch.bfloat16)


class Bf16Votes(torch.autograd.Function):
    """``r Wᵀ`` [N, K·d_c] in float32 from ``r`` [N, d] float32 holding bf16 values (the reference's
    upcast residual, so its gradient stays float32) and ``W`` [K·d_c, d] bf16, on bf16 tensor cores.

    ``torch.mm(out_dtype=)`` has no derivative, hence this Function; its backward multiplies the hi and
    lo bf16 terms of ``g_u`` on the tensor cores and sums them in float32.
    """

    @staticmethod
    def forward(ctx, r: Tensor, w: Tensor) -> Tensor:
        rb = r.to(torch.bfloat16)  # exact: r holds bf16 values
        ctx.save_for_backward(rb, w)
        return mm_f32(rb, w.T)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        rb, w = ctx.saved_tensors
        hi, lo = split_bf16(g)
        dr = mm_f32(hi, w) + mm_f32(lo, w) if ctx.needs_input_grad[0] else None
        dw = (mm_f32(hi.T, rb) + mm_f32(lo.T, rb)).to(w.dtype) if ctx.needs_input_grad[1] else None
        return dr, dw


def fair_votes(rc: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """u_k = W_k r + b_k [N, K, d_c] in ``rc``'s dtype: bf16 tensor-core products for bf16 ``W``
    (``rc`` its upcast residual), else the reference's ``route_votes``."""
    if W.dtype != torch.bfloat16:
        return route_votes(rc, W.to(rc.dtype), b.to(rc.dtype))
    k, dc, d = W.shape
    return Bf16Votes.apply(rc, W.reshape(k * dc, d)).view(rc.shape[0], k, dc) + b.to(rc.dtype)


def route_fair_anchor(
    r: Tensor,
    W: Tensor,
    b: Tensor,
    D: Tensor,
    routing: RoutingParams = RoutingParams(),
    *,
    last: bool = False,
    need_weights: bool = False,
    need_onorm: bool = False,
    **routing_keywords,
) -> RouteOutput:
    """One routing layer with the signature and outputs of ``route_reference``; bf16 votes on tensor
    cores for bf16 inputs, the reference's math otherwise (see the module docstring).

    r [N, d], W [K, d_c, d], b [K, d_c], D [d, d_c], one dtype and device (checked, naming the argument).
    Differentiable in r, W, b and D.
    """
    check_route_args(r, W, b, D, "exact")
    routing = routing_params(routing, routing_keywords)
    rounds, mode, eta, tau, eps = routing.rounds, routing.mode, routing.eta, routing.tau, routing.eps
    cd = compute_dtype(r.dtype)
    rc, Dc = r.to(cd), D.to(cd)
    # after the votes, the reference's own code (route_from_votes)
    return route_from_votes(fair_votes(rc, W, b), rc, Dc, mode, eta, tau, eps, rounds, last=last,
                            need_weights=need_weights, need_onorm=need_onorm, out_dtype=r.dtype)
