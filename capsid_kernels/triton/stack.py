"""The tokenizer stack (SPEC §3) on the Triton backend: compaction on the GPU, one sync per chunk.

Items are processed in chunks of ``chunk`` rows (bounded memory: per chunk a residual buffer
[chunk, d], two index lists and the per-depth records, plus [chunk, K] per depth when c* is
asked for). Within a chunk the active rows are an index list ``idx[0:count]`` whose count
lives on the device: each depth launches the fused kernel over the whole chunk's tile count,
tiles past ``count`` exit at once, and the next list is built by a prefix sum and a scatter.
The host learns the per-depth counts once per chunk, at its end, to cut the per-depth records
(``DepthOutput``) to size; that is the only synchronisation. The catalogue-wide outputs (SIDs,
lengths, stop reasons, x̂, final residual) are allocated once and written in place.

Forward only: ``ops.tokenize`` uses this path when no gradient is needed. One difference from
the reference records, bfloat16 only: ``DepthOutput.residual_norm`` is ||r'|| before r' is rounded
to bfloat16 (the value the stop rule uses in both), where the reference stack takes it after.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..config import RoutingParams
from ..reference.routing import CONTINUE
from ..reference.stack import PAD_TOKEN, DepthOutput, StackOutput, normalise
from .route_fwd import pack_layer, route_stack_depth, tile_config

DEFAULT_CHUNK = 1 << 21


def _records(m: int, k: int, need_weights: bool, device) -> dict:
    f32, i64 = torch.float32, torch.int64
    return {
        "confidence": torch.empty(m, dtype=f32, device=device),
        "onorm": torch.empty(m, dtype=f32, device=device),
        "token": torch.empty(m, dtype=i64, device=device),
        "stop_reason": torch.empty(m, dtype=i64, device=device),
        "residual_norm": torch.empty(m, dtype=f32, device=device),
        "prev_residual_norm": torch.empty(m, dtype=f32, device=device),
        "logits": torch.empty((m, k) if need_weights else (0,), dtype=f32, device=device),
        "lse": torch.empty(m if need_weights else 0, dtype=f32, device=device),
    }


@torch.no_grad()
def tokenize_stack_triton(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams,
    *,
    need_weights: bool = False,
    tf32: bool = False,
    chunk: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> StackOutput:
    """Same outputs as ``reference.tokenize_stack`` (x already checked; float32 or bfloat16 on CUDA)."""
    n, d = x.shape
    dev, l_max = x.device, len(layers)
    rounds, hard, eta, tau, eps = routing.rounds, routing.mode == "hard", routing.eta, routing.tau, routing.eps
    params = []
    for W, b, D in layers:
        W, b, D = W.detach().contiguous(), b.detach().contiguous(), D.detach().contiguous()
        cfg = tile_config(W.shape[2], W.shape[1], W.device.type, W.element_size())
        params.append((W.shape[0], D, pack_layer(W, b, cfg["BC"], cfg["BD"], tf32)))
    sids = torch.full((n, l_max), PAD_TOKEN, dtype=torch.int64, device=dev)
    lengths = torch.zeros(n, dtype=torch.int64, device=dev)
    reasons = torch.zeros(n, dtype=torch.int64, device=dev)
    recon = torch.zeros(n, d, dtype=torch.float32, device=dev)
    residual = torch.empty(n, d, dtype=torch.float32, device=dev)
    parts: list[list[DepthOutput]] = [[] for _ in range(l_max)]

    step = max(1, chunk or DEFAULT_CHUNK)
    for start in range(0, n, step):
        m = min(step, n - start)
        sl = slice(start, start + m)
        R = normalise(x[sl]).contiguous()
        rows = torch.arange(m, device=dev)
        idx = rows.clone()
        count = torch.full((1,), m, dtype=torch.int64, device=dev)
        counts = torch.empty(l_max, dtype=torch.int64, device=dev)
        history = []
        for depth, (k, D, packed) in enumerate(params):
            counts[depth:depth + 1].copy_(count)
            rec = _records(m, k, need_weights, dev)
            route_stack_depth(
                R, idx, count, packed, D, capsules=k, rounds=rounds, hard=hard, eta=eta, tau=tau, eps=eps,
                last=depth == l_max - 1, depth=depth, sids=sids[sl], lengths=lengths[sl],
                reasons=reasons[sl], recon=recon[sl], need_weights=need_weights, tf32=tf32, rec=rec,
            )
            history.append((idx, rec))
            if depth == l_max - 1:
                break
            # Stable compaction of the rows that go on, without the host: prefix sum + scatter.
            keep = (rec["stop_reason"] == CONTINUE) & (rows < count)
            pos = torch.cumsum(keep, 0) - 1
            nxt = torch.empty(m + 1, dtype=torch.int64, device=dev)  # slot m takes the dropped rows
            nxt.scatter_(0, torch.where(keep, pos, m), idx)
            idx, count = nxt[:m], keep.sum().reshape(1)
        residual[sl] = R.float()
        host_counts = counts.tolist()  # the chunk's one synchronisation
        for depth, (idx_d, rec) in enumerate(history):
            c = host_counts[depth]
            if c == 0:
                continue
            weights = torch.exp(rec["logits"][:c] - rec["lse"][:c, None]) if need_weights else None
            parts[depth].append(DepthOutput(
                idx_d[:c] + start, rec["token"][:c], rec["confidence"][:c], rec["onorm"][:c],
                rec["residual_norm"][:c], rec["prev_residual_norm"][:c], rec["stop_reason"][:c], weights,
            ))
        if progress is not None:
            progress(m)

    depths = []
    for recs in parts:
        if not recs:
            break
        fields = [None if getattr(recs[0], f) is None else torch.cat([getattr(r, f) for r in recs])
                  for f in DepthOutput._fields]
        depths.append(DepthOutput(*fields))
    return StackOutput(sids, lengths, reasons, recon, residual, tuple(depths))
