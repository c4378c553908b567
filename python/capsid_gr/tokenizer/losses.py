"""The Stage-1 tokenizer losses of SPEC §4, each a pure function of tensors.

Inputs come from `forward_all_depths` (stage1.py), which runs every depth on every item
through `capsid_kernels.route`; nothing here touches routing math. L_BPE lives with the
merge gate in capsid_gr.bpe.gate, because it is a loss over merge candidates, not items.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

SOFT_STOP_WIDTH = 0.05
"""Temperature of the sigmoids in the soft stop p_l (SPEC §4)."""


def route_loss(x: Tensor, x_hat: Tensor) -> Tensor:
    """L_route = mean_i ||x_i - x_hat_i||^2."""
    return ((x - x_hat) ** 2).sum(dim=-1).mean()


def centre_separation(centres: Tensor, margin: float) -> Tensor:
    """mean over k != k' of relu(cos(C_k, C_k') - (1 - m)) for one depth's centres [K, d]."""
    k = centres.shape[0]
    if k < 2:
        return centres.new_zeros(())
    unit = F.normalize(centres, dim=-1, eps=1e-12)
    cos = unit @ unit.T
    off = ~torch.eye(k, dtype=torch.bool, device=centres.device)
    return F.relu(cos[off] - (1.0 - margin)).mean()


def usage_balance(weights: Tensor) -> Tensor:
    """(log K - H(mean_i c*_i)) / log K for routing weights c* [M, K]: 0 when usage is uniform."""
    k = weights.shape[-1]
    if k < 2 or weights.shape[0] == 0:
        return weights.new_zeros(())
    p = weights.mean(dim=0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (math.log(k) - entropy) / math.log(k)


def spread_loss(centres: Sequence[Tensor], weights: Sequence[Tensor], margin: float) -> Tensor:
    """L_spread averaged over depths: separation of the centres plus usage balance.

    `weights[l]` are the c* of the items that reach depth l (an empty tensor when none do).
    """
    terms = [centre_separation(c, margin) + usage_balance(w) for c, w in zip(centres, weights)]
    return torch.stack(terms).mean()


def soft_stop(confidence: Tensor, residual_norm: Tensor, tau: float, eps: float,
              width: float = SOFT_STOP_WIDTH) -> Tensor:
    """p_l = max(sigma((q - tau)/w), sigma((eps - ||r||)/w)), elementwise."""
    return torch.maximum(torch.sigmoid((confidence - tau) / width), torch.sigmoid((eps - residual_norm) / width))


def expected_length(stop_probs: Tensor) -> Tensor:
    """E[L] = sum_{l=1..L_max} prod_{j<l} (1 - p_j) for stop probabilities [N, L_max].

    The last depth's p never enters: every item that reaches L_max stops there.
    """
    n, l_max = stop_probs.shape
    survive = torch.cumprod(1.0 - stop_probs, dim=1)  # prod_{j<=l}
    reach = torch.cat([stop_probs.new_ones(n, 1), survive[:, : l_max - 1]], dim=1)
    return reach.sum(dim=1)


def length_loss(confidence: Tensor, residual_norm: Tensor, tau: float, eps: float) -> Tensor:
    """L_len = mean_i E[L_i] / L_max from per-depth q and ||r_l|| [N, L_max]."""
    p = soft_stop(confidence, residual_norm, tau, eps)
    return expected_length(p).mean() / confidence.shape[1]
