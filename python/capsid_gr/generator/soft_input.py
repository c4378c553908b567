"""History items as soft embeddings (SPEC §6), with the Stage-2 adapters that shape them.

A history item's depth-l input is sum_k c*_lk E_lk, c* from routing the item vector through
the frozen stack with rank-r LoRA on each depth's vote transform (W_l + U_l V_l^T, stacked
[K d_c, d]); at a merged position it is g E_merge + (1 - g)(soft_a + soft_b)/2 with
g = sigmoid(logit pi_1 + beta). EOS enters as its token embedding. U starts at zero, so an
untrained adapter reproduces Stage 1's routing exactly. Without a RoutingSource (baselines)
every history token enters hard, as E[token].
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

import capsid_kernels as ck

from .items import EOS, ItemTokenization


class RoutingAdapter(nn.Module):
    """LoRA factors per depth and the scalar gate bias beta; the stack itself stays frozen
    (buffers, never parameters, so no optimizer can touch them)."""

    def __init__(self, items: ItemTokenization, rank: int = 8, seed: int = 0, precision: str = "exact") -> None:
        super().__init__()
        self.precision = precision  # "tf32" lets the routing's float32 matmuls use tf32 on the GPU
        src = items.routing
        if src is None:
            raise ValueError(f"{items.name}: no RoutingSource, so there is nothing to adapt")
        self.routing = src.routing
        g = torch.Generator().manual_seed(seed + 104_729)
        self.U = nn.ParameterList()
        self.V = nn.ParameterList()
        for depth, (W, b, D) in enumerate(src.layers):
            k, dc, d = W.shape
            self.register_buffer(f"W{depth}", W.clone())
            self.register_buffer(f"b{depth}", b.clone())
            self.register_buffer(f"D{depth}", D.clone())
            self.U.append(nn.Parameter(torch.zeros(k * dc, rank)))
            self.V.append(nn.Parameter(torch.randn(d, rank, generator=g) / math.sqrt(d)))
        self.gate_bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("x", src.x.clone())
        self.depths = len(src.layers)

    def frozen(self) -> dict[str, Tensor]:
        return {n: b for n, b in self.named_buffers()}

    def routing_weights(self, item_ids: Tensor, lengths: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per depth l: (rows of `item_ids` that reach depth l, their c* [n_l, K_l])."""
        r = self.x[item_ids]
        r = r / torch.linalg.vector_norm(r, dim=1, keepdim=True)
        rows = torch.arange(item_ids.numel(), device=item_ids.device)
        out = []
        for depth in range(self.depths):
            keep = lengths[rows] > depth
            rows, r = rows[keep], r[keep]
            if rows.numel() == 0:
                break
            W, b, D = (getattr(self, f"{n}{depth}") for n in "WbD")
            # routing runs in float32 even inside the generator's autocast region (SPEC §2)
            with torch.autocast(r.device.type, enabled=False):
                W_eff = W + (self.U[depth].float() @ self.V[depth].float().t()).view_as(W)
                o = ck.route(r, W_eff, b, D, self.routing, need_weights=True, precision=self.precision)
            out.append((rows, o.weights))
            r = o.residual
        return out


class ItemInputs(nn.Module):
    """Builds the input rows [U, P, h] of history items for a generator's embedding table."""

    def __init__(self, items: ItemTokenization, adapter: Optional[RoutingAdapter] = None) -> None:
        super().__init__()
        self.adapter = adapter
        paths = torch.as_tensor(items.path_matrix())
        self.register_buffer("paths", paths, persistent=False)
        if adapter is not None:
            lay = items.layout()
            for k, v in lay.items():
                self.register_buffer(f"lay_{k}", torch.as_tensor(v), persistent=False)
            self.register_buffer("base_len", torch.as_tensor((items.base_sids >= 0).sum(1)), persistent=False)
            self.register_buffer("offsets", torch.as_tensor(items.depth_offsets()), persistent=False)
            self.register_buffer("merge_logit", torch.as_tensor(items.merge_logit, dtype=torch.float32),
                                 persistent=False)
            self.capsules = list(items.capsules)

    def rows(self, tok_emb: Tensor, item_ids: Tensor) -> Tensor:
        """Input embeddings of each item's path tokens [U, P, h] (PAD positions: E[PAD])."""
        hard = tok_emb[self.paths[item_ids]]
        if self.adapter is None:
            return hard
        u, p = self.paths[item_ids].shape
        h = tok_emb.shape[1]
        soft = tok_emb.new_zeros(u, self.adapter.depths + 1, h)  # last slot: zeros for "no depth"
        for depth, (rows, w) in enumerate(self.adapter.routing_weights(item_ids, self.base_len)):
            lo = int(self.offsets[depth])
            table = tok_emb[lo: lo + self.capsules[depth]]
            soft = soft.index_put((rows, torch.full_like(rows, depth)), w.to(table.dtype) @ table)
        none = self.adapter.depths
        da, db, mi = (getattr(self, f"lay_{k}")[item_ids] for k in ("depth_a", "depth_b", "merge"))
        ar = torch.arange(u, device=item_ids.device)[:, None]
        sa = soft[ar, torch.where(da >= 0, da, none)]
        sb = soft[ar, torch.where(db >= 0, db, none)]
        merged = mi >= 0
        if self.merge_logit.numel():
            g = torch.sigmoid(self.merge_logit[mi.clamp(min=0)] + self.adapter.gate_bias)[..., None].to(tok_emb.dtype)
            mix = g * hard + (1 - g) * 0.5 * (sa + sb)
        else:
            mix = hard
        out = torch.where(merged[..., None], mix, sa)
        return torch.where((da >= 0)[..., None], out, hard)  # EOS and PAD stay hard
