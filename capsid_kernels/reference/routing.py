"""Eager reference of one CAPSID routing layer: SPEC §2 written as code.

This is the only place the routing math is written in Python. Tests and benchmarks
import it; the fast backends are checked against it. No performance tricks.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .squash import compute_dtype, squash
from ..config import RoutingParams, routing_params

# Stop reasons (SPEC §3). CONTINUE means the item goes on to the next depth.
CONTINUE, STOP_CONF, STOP_RESID, STOP_CAP = 0, 1, 2, 3
STOP_REASON_NAMES = {CONTINUE: "continue", STOP_CONF: "conf", STOP_RESID: "resid", STOP_CAP: "cap"}


class RouteOutput(NamedTuple):
    """Outputs of one routing layer for N items.

    token [N] int64, confidence q [N], residual r' [N, d], recon z [N, d],
    stop_reason [N] int64 (CONTINUE, STOP_CONF, STOP_RESID, STOP_CAP),
    weights c* [N, K] or None, onorm ||o|| [N] or None.
    q, c* and ||o|| are float32 (float64 for float64 input); r' and z have the input dtype.
    """

    token: Tensor
    confidence: Tensor
    residual: Tensor
    recon: Tensor
    stop_reason: Tensor
    weights: Optional[Tensor] = None
    onorm: Optional[Tensor] = None


def stop_reasons(confidence: Tensor, residual_norm: Tensor, tau: float, eps: float, last: bool) -> Tensor:
    """CONF if q >= tau, else RESID if ||r'|| <= eps, else CAP at the last depth, else CONTINUE."""
    tail = torch.full_like(confidence, STOP_CAP if last else CONTINUE, dtype=torch.int64)
    resid = torch.where(residual_norm <= eps, torch.full_like(tail, STOP_RESID), tail)
    return torch.where(confidence >= tau, torch.full_like(tail, STOP_CONF), resid)


def route_votes(r: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """u_k = W_k r + b_k for every capsule: [N, K, d_c]."""
    return torch.einsum("kcd,nd->nkc", W, r) + b


def route_reference(
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
    """One routing layer (SPEC §2) in float32 (float64 for float64 inputs).

    ``routing`` (rounds, mode, eta, tau, eps), whose fields keywords may replace, as in ``route``.
    Inputs are upcast before any arithmetic, so a bfloat16 input is treated as the exact
    values it holds: the same products a tensor core forms, accumulated in float32.
    Differentiable in r, W, b and D; the token and stop reason are not.
    """
    routing = routing_params(routing, routing_keywords)
    rounds, mode, eta, tau, eps = routing.rounds, routing.mode, routing.eta, routing.tau, routing.eps
    cd = compute_dtype(r.dtype)
    rc, Wc, bc, Dc = (t.to(cd) for t in (r, W, b, D))
    return route_from_votes(route_votes(rc, Wc, bc), rc, Dc, mode, eta, tau, eps, rounds, last=last,
                            need_weights=need_weights, need_onorm=need_onorm, out_dtype=r.dtype)


def route_from_votes(u: Tensor, rc: Tensor, Dc: Tensor, mode: str, eta: float, tau: float, eps: float, rounds: int,
                     *, last: bool = False, need_weights: bool = False, need_onorm: bool = False,
                     out_dtype: torch.dtype | None = None) -> RouteOutput:
    """Everything of ``route_reference`` after the votes u [N, K, d_c] (in the compute dtype of
    rc [N, d] and Dc [d, d_c]): agreement rounds, reconstruction, residual, stop reasons. A caller
    that forms the votes another way (bench/anchors.py: bf16 tensor-core votes) shares the rest."""
    out_dtype = out_dtype or rc.dtype
    n, k = rc.shape[0], u.shape[1]
    a = rc.new_zeros(n, k)
    o = rc.new_zeros(n, u.shape[2])
    for _ in range(rounds):
        c = torch.softmax(a, dim=-1)
        v = torch.einsum("nk,nkc->nc", c, u)
        o = squash(v)
        a = a + torch.einsum("nkc,nc->nk", u, o)
    cstar = torch.softmax(a, dim=-1)
    onorm = torch.linalg.vector_norm(o, dim=-1)
    token = torch.argmax(cstar, dim=-1)  # first maximal index: ties pick the lowest capsule
    q = cstar.gather(1, token[:, None]).squeeze(1) * onorm

    if mode == "soft":
        rec = torch.einsum("nk,nkc->nc", cstar, squash(u))
    else:
        rec = squash(u[torch.arange(n, device=u.device), token])
    z = rec @ Dc.T
    r_new = rc - eta * z
    reason = stop_reasons(q, torch.linalg.vector_norm(r_new, dim=-1), tau, eps, last)
    return RouteOutput(
        token,
        q,
        r_new.to(out_dtype),
        z.to(out_dtype),
        reason,
        cstar if need_weights else None,
        onorm if need_onorm else None,
    )


def codebook_centres(b: Tensor, D: Tensor) -> Tensor:
    """C_k = D squash(b_k): each capsule's output for a zero residual (SPEC §3). [K, d]."""
    cd = compute_dtype(b.dtype)
    return squash(b.to(cd)) @ D.to(cd).T
