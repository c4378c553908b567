"""Every depth on every item: the training-time view of the stack (SPEC §3-4).

The compacting stack of `capsid_kernels.tokenize` drops an item once it stops, which is what
inference wants. Stage 1 also needs q_l and ||r_l|| at depths an item never reaches (the soft
length surrogate E[L] sums over all L_max depths), so this runs `capsid_kernels.route` per
depth on the whole batch and applies the hard stops afterwards. Same routing op, same stop
rule: the SIDs equal the stack's (tests/test_stage1.py checks it).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

import capsid_kernels as ck


class AllDepths(NamedTuple):
    """x0 [N, d] the normalised input; per depth stacked on dim 1: token [N, L], confidence
    [N, L], residual_norm [N, L]; weights: one c* [N, K_l] per depth; lengths [N] (hard stops);
    x_hat [N, d] = sum of z_l over l <= L_i; reached [N, L] bool (l <= L_i)."""

    x0: Tensor
    token: Tensor
    confidence: Tensor
    residual_norm: Tensor
    weights: tuple[Tensor, ...]
    lengths: Tensor
    stop_reason: Tensor
    x_hat: Tensor
    reached: Tensor


def forward_all_depths(tokenizer: ck.CapsIDTokenizer, x: Tensor, *, need_weights: bool = True) -> AllDepths:
    """Route every item through all L_max depths of `tokenizer`; differentiable like `route`."""
    r = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    x0 = r
    n, l_max = x.shape[0], len(tokenizer.layers)
    tokens, confs, norms, recons, reasons, weights = [], [], [], [], [], []
    for depth, layer in enumerate(tokenizer.layers):
        out = tokenizer.route_depth(depth, r, need_weights=need_weights)
        tokens.append(out.token)
        confs.append(out.confidence)
        norms.append(torch.linalg.vector_norm(out.residual, dim=-1))
        recons.append(out.recon)
        reasons.append(out.stop_reason)
        weights.append(out.weights if need_weights else None)
        r = out.residual
    reason = torch.stack(reasons, dim=1)
    stopped = reason != ck.CONTINUE
    # First depth with a stop reason; the last depth always has one (CAP at the latest).
    first = torch.argmax(stopped.to(torch.int8), dim=1)
    lengths = first + 1
    reached = torch.arange(l_max, device=x.device)[None, :] < lengths[:, None]
    recon = torch.stack(recons, dim=1)  # [N, L, d]
    x_hat = (recon * reached[..., None].to(recon.dtype)).sum(dim=1)
    stop_reason = reason.gather(1, first[:, None]).squeeze(1)
    return AllDepths(x0, torch.stack(tokens, 1), torch.stack(confs, 1), torch.stack(norms, 1),
                     tuple(weights), lengths, stop_reason, x_hat, reached)
