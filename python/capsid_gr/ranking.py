"""Ranking metrics from top-K item lists (SPEC §8); numpy only, one target per query."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np


def target_rank(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each query's target in its list [Q, K]; K (a miss) when absent."""
    ranked, target = np.asarray(ranked), np.asarray(target)
    hit = ranked == target[:, None]
    return np.where(hit.any(1), hit.argmax(1), ranked.shape[1])


def recall_at(rank: np.ndarray, k: int) -> float:
    """Recall@K = hit rate with one target per query."""
    return float(np.mean(rank < k)) if rank.size else float("nan")


def ndcg_at(rank: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: 1 / log2(rank + 2) inside the top K, else 0."""
    if not rank.size:
        return float("nan")
    return float(np.mean(np.where(rank < k, 1.0 / np.log2(np.minimum(rank, k) + 2.0), 0.0)))


def ranking_metrics(ranked: np.ndarray, target: np.ndarray, ks: Iterable[int] = (5, 10),
                    masks: Optional[dict[str, np.ndarray]] = None, tier_k: int = 10) -> dict:
    """Recall@K and NDCG@K over all queries, plus Recall@tier_k on query subsets.

    `masks` maps a subset name to a boolean mask over items (head/torso/tail/cold); a query
    belongs to a subset when its target item does. Subsets with no query report NaN.
    """
    ks = list(ks)
    if ranked.shape[1] < max(ks, default=0):
        raise ValueError(f"ranked lists hold {ranked.shape[1]} items; Recall@{max(ks)} needs at least that many")
    return metrics_from_rank(target_rank(ranked, target), target, ks, masks, tier_k)


def metrics_from_rank(rank: np.ndarray, target: np.ndarray, ks: Iterable[int] = (5, 10),
                      masks: Optional[dict[str, np.ndarray]] = None, tier_k: int = 10) -> dict:
    """`ranking_metrics` from each query's 0-based target rank (`target_rank`): what sharded
    evaluation gathers, so its numbers come out of this same code (capsid_gr.distributed)."""
    ks = list(ks)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at(rank, k)
        out[f"ndcg@{k}"] = ndcg_at(rank, k)
    for name, mask in (masks or {}).items():
        sel = np.asarray(mask)[np.asarray(target)]
        out[f"{name}_recall@{tier_k}"] = recall_at(rank[sel], tier_k)
        out[f"{name}_queries"] = int(sel.sum())
    return out
