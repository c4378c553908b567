"""Pair statistics and merge candidates of SPEC §5 (steps 1-3).

Pairs are adjacent tokens inside one item's SID, never across items. The corpus is the
training histories; an item that occurs c times there contributes each of its pairs c times,
which is the same count as writing out every history and counting inside item boundaries.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .vocab import NO_TOKEN


class PairCounts(NamedTuple):
    pairs: np.ndarray  # [P, 2] int64 global ids, sorted
    counts: np.ndarray  # [P] float64, occurrences in the corpus


class Candidates(NamedTuple):
    """Pairs that pass n_min and theta, with Eq. 9's parts and the gate's labels."""

    pairs: np.ndarray  # [P, 2]
    counts: np.ndarray  # [P]
    freq_hat: np.ndarray  # [P] count / max count over all pairs
    cos: np.ndarray  # [P]
    score: np.ndarray  # [P] m = alpha freq_hat + (1 - alpha) cos
    label: np.ndarray  # [P] bool, m >= m*


def check_item_weights(weights, n: int, name: str = "item_weights") -> np.ndarray:
    """Corpus weights per item [n]: finite and >= 0 (a NaN or negative weight would silently
    corrupt every pair count it touches). Returns them as float64; errors name the item."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: expected finite weights >= 0, got {w[i]} for item {i} ({bad.size} such items)")
    return w


def count_pairs(ids: np.ndarray, weights: np.ndarray | None = None) -> PairCounts:
    """Weighted counts of adjacent pairs within each row of `ids` [N, L] (NO_TOKEN padded).

    `weights[i]` is how often item i occurs in the corpus (default 1).
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = ids.shape[0]
    w = np.ones(n) if weights is None else check_item_weights(weights, n, "weights")
    if ids.shape[1] < 2 or n == 0:
        return PairCounts(np.zeros((0, 2), np.int64), np.zeros(0))
    a, b = ids[:, :-1], ids[:, 1:]
    valid = (a != NO_TOKEN) & (b != NO_TOKEN)
    a, b = a[valid], b[valid]
    wv = np.broadcast_to(w[:, None], valid.shape)[valid]
    keep = wv > 0
    pairs, inverse = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), weights=wv[keep], minlength=len(pairs))
    return PairCounts(pairs.reshape(-1, 2), counts)


def pair_cosine(emb: Tensor, pairs: np.ndarray) -> Tensor:
    """cos(e_a, e_b) for global-id pairs [P, 2] against the embedding table emb [V, d]."""
    idx = torch.as_tensor(pairs, dtype=torch.int64, device=emb.device)
    return F.cosine_similarity(emb[idx[:, 0]], emb[idx[:, 1]], dim=-1, eps=1e-12)


def select_candidates(pc: PairCounts, emb: Tensor, *, n_min: float, theta: float, alpha: float,
                      max_merges: int) -> Candidates:
    """Steps 2-3 of SPEC §5 and the gate's labels 1[m >= m*] (m* = max_merges-th best score)."""
    if len(pc.pairs) == 0:
        empty = np.zeros(0)
        return Candidates(np.zeros((0, 2), np.int64), empty, empty, empty, empty, np.zeros(0, bool))
    cos = pair_cosine(emb.detach().double(), pc.pairs).cpu().numpy()
    freq_hat = pc.counts / pc.counts.max()
    keep = (pc.counts >= n_min) & (cos > theta)
    pairs, counts, freq_hat, cos = pc.pairs[keep], pc.counts[keep], freq_hat[keep], cos[keep]
    score = alpha * freq_hat + (1.0 - alpha) * cos
    if len(score) == 0:
        return Candidates(pairs, counts, freq_hat, cos, score, np.zeros(0, bool))
    m_star = np.sort(score)[::-1][min(max_merges, len(score)) - 1]
    return Candidates(pairs, counts, freq_hat, cos, score, score >= m_star)
