"""The tokenizer stack (SPEC §3) on the Triton backend: compaction on the GPU, one sync per chunk.

``TritonStack`` routes one chunk of items (``ops.stack_chunks.run_stack`` cuts x into chunks of
``DEFAULT_CHUNK`` rows unless told otherwise; bounded memory: per chunk a residual buffer
[chunk, d], two index lists and the per-depth records, plus [chunk, K] per depth when c* is
asked for). Within a chunk the active rows are an index list ``idx[0:count]`` whose count
lives on the device: each depth launches the fused kernel over the whole chunk's tile count,
tiles past ``count`` exit at once, and the next list is built by a prefix sum and a scatter.
The host learns the per-depth counts once per chunk, at its end, to cut the per-depth records
(``DepthOutput``) to size; that is the only synchronisation, and a call that does not keep the
records has none. The catalogue-wide outputs (SIDs, lengths, stop reasons, x̂, final residual)
go through ``ops.stack_chunks.StackResults``: allocated once, only those asked for, written in
place on the device or copied chunk by chunk into pinned host memory.

Forward only: ``ops.tokenize`` uses this path when no gradient is needed. One difference from
the reference records, bfloat16 only: ``DepthOutput.residual_norm`` is ||r'|| before r' is rounded
to bfloat16 (the value the stop rule uses in both), where the reference stack takes it after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from ..config import RoutingParams
from ..reference.routing import CONTINUE
from ..reference.stack import DepthOutput
from .route_fwd import pack_layer, route_stack_depth, tile_config

if TYPE_CHECKING:
    from ..ops.stack_chunks import StackResults

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


class TritonStack:
    """The Triton stack of one chunk (``ops.stack_chunks.ChunkStack``), the layers packed once.

    Same outputs as ``reference.stack.route_stack`` (float32 or bfloat16 r_0 and layers, one device;
    the kernels' results in float32). ``ops.stack_chunks.run_stack`` calls it chunk by chunk.
    """

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor, Tensor]], routing: RoutingParams, *,
                 need_weights: bool = False, tf32: bool = False) -> None:
        self.routing, self.need_weights, self.tf32 = routing, need_weights, tf32
        self.params = []
        for W, b, D in layers:
            W, b, D = W.detach().contiguous(), b.detach().contiguous(), D.detach().contiguous()
            cfg = tile_config(W.shape[2], W.shape[1], W.device.type, W.element_size())
            self.params.append((W.shape[0], D, pack_layer(W, b, cfg["BC"], cfg["BD"], tf32)))

    @torch.no_grad()
    def __call__(self, r0: Tensor, results: StackResults, start: int) -> None:
        """Route the m unit rows r0 (items ``start`` to ``start + m``) and write them through ``results``."""
        routing, need_weights, l_max = self.routing, self.need_weights, len(self.params)
        rounds, hard, eta, tau, eps = routing.rounds, routing.mode == "hard", routing.eta, routing.tau, routing.eps
        keep_depths, keep_residual = results.keeps("depths"), results.keeps("residual")
        dev, m = results.device, r0.shape[0]
        R = r0.contiguous()
        out = results.chunk(start, m)
        rows = torch.arange(m, device=dev)
        idx = rows.clone()
        count = torch.full((1,), m, dtype=torch.int64, device=dev)
        counts = torch.empty(l_max, dtype=torch.int64, device=dev) if keep_depths else None
        history = []
        for depth, (k, D, packed) in enumerate(self.params):
            if keep_depths:
                counts[depth:depth + 1].copy_(count)
            rec = _records(m, k, need_weights, dev)
            route_stack_depth(
                R, idx, count, packed, D, capsules=k, rounds=rounds, hard=hard, eta=eta, tau=tau, eps=eps,
                last=depth == l_max - 1, depth=depth, sids=out["sids"], lengths=out["lengths"],
                reasons=out["stop_reason"], recon=out["recon"], need_weights=need_weights, tf32=self.tf32, rec=rec,
            )
            if keep_depths:
                history.append((idx, rec))
            if depth == l_max - 1:
                break
            # Stable compaction of the rows that go on, without the host: prefix sum + scatter.
            keep = (rec["stop_reason"] == CONTINUE) & (rows < count)
            pos = torch.cumsum(keep, 0) - 1
            nxt = torch.empty(m + 1, dtype=torch.int64, device=dev)  # slot m takes the dropped rows
            nxt.scatter_(0, torch.where(keep, pos, m), idx)
            idx, count = nxt[:m], keep.sum().reshape(1)
        if keep_residual:
            if out["residual"] is None:
                out["residual"] = R.float()
            else:
                out["residual"].copy_(R)
        results.commit(start, m, out)
        if keep_depths:
            results.add_depths(start, _cut_records(history, counts.tolist(), need_weights))


def _cut_records(history: list, counts: list[int], need_weights: bool) -> list[DepthOutput]:
    """The per-depth records cut to each depth's item count (learnt by the chunk's one synchronisation)."""
    records = []
    for (idx_d, rec), c in zip(history, counts):
        if c == 0:
            break
        weights = torch.exp(rec["logits"][:c] - rec["lse"][:c, None]) if need_weights else None
        records.append(DepthOutput(
            idx_d[:c], rec["token"][:c], rec["confidence"][:c], rec["onorm"][:c],
            rec["residual_norm"][:c], rec["prev_residual_norm"][:c], rec["stop_reason"][:c], weights,
        ))
    return records
