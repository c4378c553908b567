"""The fair anchors of the routing benchmarks (KERNELS.md, "Fair anchors"; issue 20, item 1).

Two plain-torch anchors of one routing layer (SPEC §2), both with the signature and outputs of
``capsid_kernels.reference.route_reference``. For bfloat16 inputs they differ in what they store and
contract in which precision (r, W, b, D bf16; N items, K capsules, d_c capsule dims):

=========================  =====================================  =====================================
step                       ``route_fair_anchor`` (``fair``)        ``route_fair_bf16`` (``fair_bf16``)
=========================  =====================================  =====================================
votes u = W r + b          bf16 tensor-core GEMM, fp32 result:     bf16 tensor-core GEMM with the bias
[N, K, d_c]                u *stored in float32*                   (fp32 accumulation), rounded once:
                                                                   u *stored in bf16*
v = Σ_k c_k u_k            float32 (einsum on fp32 u)              bf16 bmm: c rounded to bf16, fp32
                                                                   accumulation, fp32 result
a += u·o                   float32                                 bf16 bmm: o rounded to bf16, fp32
                                                                   accumulation, fp32 result
rec = Σ_k c*_k squash(u_k) float32 (squash(u) fp32 [N, K, d_c])    bf16 bmm of bf16 c* and bf16
(soft)                                                             squash(u) (see below), fp32 result
rec = squash(u_token)      float32                                 float32 squash of the bf16 vote
(hard)
softmax, squash(v), a, c*, float32                                 float32
||o||, q, z = D rec, r'
=========================  =====================================  =====================================

squash(u) of the bf16 variant: the reference's ``squash`` of the bf16 votes, i.e. computed in float32
from their exact values and rounded to bf16 once (relative error <= 2^-8 per element, on top of the
votes' own rounding). Outputs of both: token, stop reason; q, c*, ||o|| in float32; r', z in bf16.

``route_fair_anchor`` keeps the votes in float32 as our Triton kernel keeps them in float32
accumulators: it does the kernel's precision of work, and a ratio against it compares equal work.
``route_fair_bf16`` does *less precise* work than the Triton kernel: every vote is rounded to bf16
(2^-8 relative) before any contraction, and c, o, c* and squash(u) are rounded to bf16 as matmul
operands; in exchange it moves half the bytes of the [N, K, d_c] votes per pass and runs every
contraction as a tensor-core bmm. It is the stronger (faster) anchor, the one a plain-torch bf16
implementation would be, and so the honest one to quote speedups against (bench/routing.py reports
both and names the faster in ``fastest_fair_anchor``).

Backward (autograd, for the training-step rows).
``route_fair_anchor``: the vote GEMM's backward, ``dr = g_u W`` and ``dW = g_uᵀ r``, also runs on bf16
tensor cores, with the float32 ``g_u`` split into two bf16 terms (hi + lo, 16 significant bits) as the
fused Triton backward does; the rest is autograd of the float32 math. ``dr`` leaves the GEMM in float32
and meets the residual path's gradient in float32, so every gradient is rounded to bf16 once, as in
the reference.
``route_fair_bf16``: each bmm's backward (``Bf16Bmm``) rounds its incoming fp32 gradient to bf16 and
runs two bf16 bmms with fp32 accumulation; the gradients of the small fp32 operands (c, o, c*) come
back in fp32, those of the bf16 votes and squash(u) in bf16, so the votes' gradient is summed over its
2T + 1 uses in bf16, as autograd of any bf16 tensor is. The vote GEMM's backward is autograd of the
bf16 ``linear`` (bf16 results); ``dr`` meets the residual path's gradient in bf16.

Float32 and float64 inputs: both anchors are the reference's own math (``route_fair_anchor`` with the
reference's ``route_votes``, tf32 only where the caller turned it on; ``route_fair_bf16`` calls
``route_reference``), so a benchmark compares fp32 and tf32 rows with the compiled reference.

Devices: ``torch.mm``/``torch.bmm(..., out_dtype=torch.float32)`` exist for CUDA (and meta) tensors
only. On CPU the same values come from upcasting first (products of bf16 values are exact in float32,
and the sum is float32 either way, rounded once to the result's dtype), so the CPU tests check the math
and the meta-device test checks the CUDA calls.

Imports torch and capsid_kernels' reference, config and argument checks; nothing else.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsid_kernels._validate import check_route_args
from capsid_kernels.config import RoutingParams, routing_params
from capsid_kernels.reference import RouteOutput, compute_dtype, route_votes
from capsid_kernels.reference import route_reference, squash
from capsid_kernels.reference.routing import route_from_votes, stop_reasons


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


def like_route_reference(layer):
    """``layer(r, W, b, D, routing, last=, need_weights=, need_onorm=)`` behind the signature and argument
    handling of ``route_reference``, written once for both anchors: r [N, d], W [K, d_c, d], b [K, d_c],
    D [d, d_c] of one dtype and device (checked, naming the argument), and a ``RoutingParams`` whose fields
    keywords may replace."""

    def anchor(r: Tensor, W: Tensor, b: Tensor, D: Tensor, routing: RoutingParams = RoutingParams(), *,
               last: bool = False, need_weights: bool = False, need_onorm: bool = False,
               **routing_keywords) -> RouteOutput:
        check_route_args(r, W, b, D, "exact")
        return layer(r, W, b, D, routing_params(routing, routing_keywords), last=last, need_weights=need_weights,
                     need_onorm=need_onorm)

    anchor.__name__, anchor.__qualname__, anchor.__doc__ = layer.__name__, layer.__qualname__, layer.__doc__
    return anchor


@like_route_reference
def route_fair_anchor(r: Tensor, W: Tensor, b: Tensor, D: Tensor, routing: RoutingParams, **flags) -> RouteOutput:
    """One routing layer with the signature and outputs of ``route_reference``; bf16 votes on tensor
    cores for bf16 inputs, the reference's math otherwise (see the module docstring). Differentiable in
    r, W, b and D.
    """
    cd = compute_dtype(r.dtype)
    rc, Dc = r.to(cd), D.to(cd)
    # after the votes, the reference's own code (route_from_votes)
    return route_from_votes(fair_votes(rc, W, b), rc, Dc, routing.mode, routing.eta, routing.tau, routing.eps,
                            routing.rounds, out_dtype=r.dtype, **flags)


# --------------------------------------------------------------------------- bf16 votes (fair_bf16)

BF16 = torch.bfloat16


def bmm_bf16(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """``a @ b`` of two bf16 batches [B, m, k] x [B, k, n], accumulated in float32 and returned in ``dtype``
    (float32, or bf16: one rounding of the float32 sum). bf16 tensor cores on CUDA."""
    if a.device.type == "cpu":  # no aten::bmm.dtype kernel on CPU; exact products, float32 sums, as on the GPU
        return (a.float() @ b.float()).to(dtype)
    return torch.bmm(a, b) if dtype == BF16 else torch.bmm(a, b, out_dtype=dtype)


class Bf16Bmm(torch.autograd.Function):
    """``x @ y`` [B, m, n] in float32 of batches x [B, m, k] and y [B, k, n], each float32 (a small
    operand: c, o or c*, rounded to bf16 here) or bf16 (the votes or squash(u), used as stored), on bf16
    tensor cores with float32 accumulation.

    ``torch.bmm(out_dtype=)`` has no derivative, hence this Function. Backward: the float32 gradient is
    rounded to bf16 and multiplied on the tensor cores; each operand's gradient comes back in that
    operand's dtype (float32 through ``out_dtype``, bf16 rounded once from the float32 sum).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        xb, yb = x.to(BF16), y.to(BF16)  # no copy for the bf16 operand
        ctx.save_for_backward(xb, yb)
        ctx.dtypes = (x.dtype, y.dtype)
        return bmm_bf16(xb, yb, torch.float32)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xb, yb = ctx.saved_tensors
        gb = g.to(BF16)
        gx = bmm_bf16(gb, yb.transpose(1, 2), ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gy = bmm_bf16(xb.transpose(1, 2), gb, ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gx, gy


def bf16_votes(r: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """u_k = W_k r + b_k [N, K, d_c] in bf16 from bf16 r, W, b: ``linear`` on bf16 tensor cores, float32
    accumulation with the bias, one rounding to bf16 (cuBLAS; PyTorch's default
    ``allow_bf16_reduced_precision_reduction`` lets it reduce split-K partial sums in bf16)."""
    k, dc, d = W.shape
    w2, b2 = W.reshape(k * dc, d), b.reshape(k * dc)
    if r.device.type == "cpu":  # the same values: exact products, float32 sums, one rounding
        u = (r.float() @ w2.float().T + b2.float()).to(BF16)
    else:
        u = torch.nn.functional.linear(r, w2, b2)
    return u.view(r.shape[0], k, dc)


def route_from_bf16_votes(u: Tensor, rc: Tensor, Dc: Tensor, mode: str, eta: float, tau: float, eps: float,
                          rounds: int, *, last: bool = False, need_weights: bool = False,
                          need_onorm: bool = False, out_dtype: torch.dtype = BF16) -> RouteOutput:
    """``route_from_votes`` on bf16 votes u [N, K, d_c]: the reference's steps in its order, with the
    three contractions over the votes as bf16 bmms (``Bf16Bmm``) and everything else in float32 (rc [N, d]
    and Dc [d, d_c] float32). See the module docstring for what is rounded where."""
    n, k, dc = u.shape
    a = rc.new_zeros(n, k)
    o = rc.new_zeros(n, dc)
    for _ in range(rounds):
        c = torch.softmax(a, dim=-1)  # float32 logits, float32 weights
        v = Bf16Bmm.apply(c[:, None, :], u)[:, 0]  # [N, d_c] float32
        o = squash(v)  # float32
        a = a + Bf16Bmm.apply(u, o[:, :, None])[:, :, 0]  # agreement u·o, float32
    cstar = torch.softmax(a, dim=-1)
    onorm = torch.linalg.vector_norm(o, dim=-1)
    token = torch.argmax(cstar, dim=-1)  # first maximal index: ties pick the lowest capsule
    q = cstar.gather(1, token[:, None]).squeeze(1) * onorm

    if mode == "soft":
        rec = Bf16Bmm.apply(cstar[:, None, :], squash(u))[:, 0]  # squash(u): float32 math, bf16 stored
    else:
        rec = squash(u[torch.arange(n, device=u.device), token].float())
    z = rec @ Dc.T
    r_new = rc - eta * z
    reason = stop_reasons(q, torch.linalg.vector_norm(r_new, dim=-1), tau, eps, last)
    return RouteOutput(token, q, r_new.to(out_dtype), z.to(out_dtype), reason,
                       cstar if need_weights else None, onorm if need_onorm else None)


@like_route_reference
def route_fair_bf16(r: Tensor, W: Tensor, b: Tensor, D: Tensor, routing: RoutingParams, **flags) -> RouteOutput:
    """One routing layer with the signature and outputs of ``route_reference``: for bf16 inputs the
    votes stored in bf16 and contracted by bf16 tensor-core bmms (less precise work than the Triton
    kernel; see the module docstring), for every other dtype ``route_reference`` itself.
    Differentiable in r, W, b and D.
    """
    if r.dtype != BF16:
        return route_reference(r, W, b, D, routing, **flags)
    return route_from_bf16_votes(bf16_votes(r, W, b), r.float(), D.float(), routing.mode, routing.eta,
                                 routing.tau, routing.eps, routing.rounds, out_dtype=r.dtype, **flags)
