"""The tokenizer stack of SPEC §3: normalise, route depth by depth, stop, compact.

The eager stack, written once: the per-depth layer is passed in as ``route_fn`` (the eager
reference, or the public ``route`` bound to a backend), so the stop rules, compaction and
bookkeeping of every backend but Triton's (``triton/stack.py``, which compacts on the GPU) live
here. ``tokenize_stack`` is the executable SPEC: check, normalise, ``route_stack``. How a catalogue
is cut into chunks and where the results go is execution, in ``ops/stack_chunks.py``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..config import ExecutionOptions, RoutingParams, routing_params
from .routing import CONTINUE, STOP_CAP, STOP_CONF, STOP_RESID, RouteOutput, route_reference
from .squash import compute_dtype

PAD_TOKEN = -1
CHECK_CHUNK = 1 << 20  # rows per step of the item-vector check


class DepthOutput(NamedTuple):
    """What happened at one depth to the items that entered it (``index`` into the batch)."""

    index: Tensor  # [M] int64, the items active at this depth
    token: Tensor  # [M]
    confidence: Tensor  # [M] q
    onorm: Tensor  # [M] ||o|| of the last round
    residual_norm: Tensor  # [M] ||r_l||
    prev_residual_norm: Tensor  # [M] ||r_{l-1}||
    stop_reason: Tensor  # [M]
    weights: Optional[Tensor]  # [M, K] c*, on request


class StackOutput(NamedTuple):
    """Padded SIDs [N, L_max] (PAD_TOKEN after the end), lengths [N], stop reason [N],
    reconstruction x_hat [N, d] and final residual [N, d] in the compute dtype, per-depth records."""

    sids: Tensor
    lengths: Tensor
    stop_reason: Tensor
    recon: Tensor
    residual: Tensor
    depths: tuple[DepthOutput, ...]


STACK_OUTPUTS = StackOutput._fields  # the outputs tokenize(outputs=) may keep


def check_item_vectors(x: Tensor, name: str = "x") -> None:
    """Zero or non-finite item vectors cannot be normalised: name the first offender."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [N, d], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name}: expected a floating dtype (float64, float32, bfloat16), got {x.dtype}")
    if x.shape[0] == 0:
        return
    # Row flags chunk by chunk: the temporaries stay O(chunk * d) on a catalogue of millions.
    n = x.shape[0]
    bad_finite = torch.empty(n, dtype=torch.bool, device=x.device)
    zero = torch.empty(n, dtype=torch.bool, device=x.device)
    for start in range(0, n, CHECK_CHUNK):
        rows = x[start:start + CHECK_CHUNK]
        bad_finite[start:start + rows.shape[0]] = ~torch.isfinite(rows).all(dim=1)
        zero[start:start + rows.shape[0]] = (rows == 0).all(dim=1)
    if bool(bad_finite.any()):
        i = int(bad_finite.nonzero()[0, 0])
        raise ValueError(
            f"{name}: item {i} has a non-finite value (NaN or Inf); {int(bad_finite.sum())} such items in all"
        )
    if bool(zero.any()):
        i = int(zero.nonzero()[0, 0])
        raise ValueError(f"{name}: item {i} is the zero vector and cannot be normalised; {int(zero.sum())} such items")


def normalise(x: Tensor) -> Tensor:
    """r_0 = x / ||x|| in the compute dtype, returned in x's dtype."""
    xc = x.to(compute_dtype(x.dtype))
    return (xc / torch.linalg.vector_norm(xc, dim=-1, keepdim=True)).to(x.dtype)


RouteFn = Callable[..., RouteOutput]


def tokenize_stack(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams = RoutingParams(),
    *,
    need_weights: bool = False,
    route_fn: RouteFn = route_reference,
    check_inputs: bool = ExecutionOptions.check_inputs,
    **routing_keywords,
) -> StackOutput:
    """Tokenize N item vectors with ``len(layers)`` = L_max depths of (W, b, D).

    ``routing`` is passed whole to ``route_fn(r, W, b, D, routing, last=..., ...)`` at every depth;
    keywords may replace its fields, as in ``route``. ``check_inputs`` rejects zero and non-finite
    rows (``check_item_vectors``); the rows are then normalised and routed by ``route_stack``.
    Differentiable in x and every depth's parameters.
    """
    routing = routing_params(routing, routing_keywords)
    if check_inputs:
        check_item_vectors(x)
    return route_stack(normalise(x), layers, routing, need_weights=need_weights, route_fn=route_fn)


def route_stack(
    r: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams,
    *,
    need_weights: bool = False,
    route_fn: RouteFn = route_reference,
) -> StackOutput:
    """The stack from unit item vectors r_0 [N, d] (``normalise(x)``): depth by depth, ``route_fn``
    routes the items still going, the stopped ones leave the batch (compaction), and every depth's
    outputs are scattered back to item order. Differentiable in r and every depth's parameters.
    """
    if len(layers) == 0:
        raise ValueError("layers: expected at least one depth of (W, b, D), got none")
    n, d, device = r.shape[0], r.shape[1], r.device
    cd = compute_dtype(r.dtype)
    l_max = len(layers)

    sids = torch.full((n, l_max), PAD_TOKEN, dtype=torch.int64, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    reasons = torch.zeros(n, dtype=torch.int64, device=device)
    recon = torch.zeros(n, d, dtype=cd, device=device)
    residual = torch.zeros(n, d, dtype=cd, device=device)

    active = torch.arange(n, device=device)
    depths = []
    for depth, (W, b, D) in enumerate(layers):
        last = depth == l_max - 1
        out = route_fn(r, W, b, D, routing, last=last, need_weights=need_weights, need_onorm=True)
        prev_norm = torch.linalg.vector_norm(r.to(cd), dim=-1)
        res_c = out.residual.to(cd)
        res_norm = torch.linalg.vector_norm(res_c, dim=-1)
        sids[active, depth] = out.token
        recon = recon.index_add(0, active, out.recon.to(cd))
        depths.append(
            DepthOutput(active, out.token, out.confidence, out.onorm, res_norm, prev_norm, out.stop_reason, out.weights)
        )
        stopped = out.stop_reason != CONTINUE
        stop_idx = active[stopped]
        lengths[stop_idx] = depth + 1
        reasons[stop_idx] = out.stop_reason[stopped]
        residual = residual.index_copy(0, stop_idx, res_c[stopped])
        keep = ~stopped
        active, r = active[keep], out.residual[keep]
        if active.numel() == 0:
            break
    return StackOutput(sids, lengths, reasons, recon, residual, tuple(depths))


@torch.no_grad()
def stack_diagnostics(out: StackOutput, capsules: Sequence[int]) -> dict:
    """Per-depth and whole-catalogue SID statistics (SPEC §3 and §8), as plain Python numbers."""
    n = int(out.lengths.shape[0])
    per_depth = []
    for depth, rec in enumerate(out.depths):
        m = int(rec.index.numel())
        k = capsules[depth]
        usage = torch.bincount(rec.token, minlength=k).cpu()
        winner = torch.where(rec.onorm > 0, rec.confidence / rec.onorm.clamp_min(1e-30), torch.zeros_like(rec.onorm))
        per_depth.append(
            {
                "depth": depth + 1,
                "active": m,
                "stops": {name: int((rec.stop_reason == code).sum()) for code, name in
                          ((STOP_CONF, "conf"), (STOP_RESID, "resid"), (STOP_CAP, "cap"))},
                "mean_winner_weight": float(winner.double().mean()) if m else float("nan"),
                "mean_confidence": float(rec.confidence.double().mean()) if m else float("nan"),
                "residual_grew": float((rec.residual_norm > rec.prev_residual_norm).double().mean()) if m else float("nan"),
                "codes_used": int((usage > 0).sum()),
                "code_usage": usage.tolist(),
            }
        )
    length_hist = torch.bincount(out.lengths, minlength=len(capsules) + 1).cpu().tolist()
    unique = torch.unique(out.sids, dim=0).shape[0] if n else 0
    total_codes = sum(capsules[: len(out.depths)])
    used_codes = sum(d["codes_used"] for d in per_depth)
    return {
        "items": n,
        "mean_length": float(out.lengths.double().mean()) if n else float("nan"),
        "length_histogram": {i: c for i, c in enumerate(length_hist) if i > 0},
        "stop_fractions": {name: float((out.stop_reason == code).double().mean()) if n else float("nan")
                           for code, name in ((STOP_CONF, "conf"), (STOP_RESID, "resid"), (STOP_CAP, "cap"))},
        "collision_rate": 1.0 - unique / n if n else float("nan"),
        "code_utilisation": used_codes / total_codes if total_codes else float("nan"),
        "depths": per_depth,
    }
