"""Full-catalogue evaluation (SPEC §8): beam top-K -> Recall/NDCG, tiers, token accuracy, latency."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .decode import Recommender
from ..ranking import metrics_from_rank, ranking_metrics
from .teacher_forced import teacher_forced_scores


def evaluate(rec: Recommender, histories: Sequence[np.ndarray], targets: np.ndarray, *,
             tiers=None, ks: Sequence[int] = (5, 10), num_beams: int = 50, batch_size: int = 64,
             token_metrics: bool = True, code_m: int = 50) -> dict:
    """Every SPEC §8 recommendation metric for one set of queries (validation or test)."""
    top_k = max(max(ks), 10)
    if num_beams < top_k:
        raise ValueError(f"num_beams={num_beams} < {top_k}: the beam must hold every rank the metrics read")
    ranked, timing = rec.recommend(histories, num_beams=num_beams, top_k=num_beams, batch_size=batch_size)
    masks = None
    if tiers is not None:
        masks = {"head": tiers.head, "torso": tiers.torso, "tail": tiers.tail, "cold": tiers.cold}
    out = {"queries": len(histories), **ranking_metrics(ranked, np.asarray(targets), ks, masks), **timing}
    out.update(unseen_metrics(*history_ranks(ranked, histories, np.asarray(targets)), np.asarray(targets), ks))
    if token_metrics:
        out.update(teacher_forced_scores(rec.model, rec.inputs, rec.items, histories, np.asarray(targets),
                                         rec.max_history, code_m=code_m))
    return out



def history_ranks(ranked: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the 0-based rank of the target in its list once the query's own history items
    are removed (order kept, the list refilled from deeper ranks; the list length = a miss), and
    how many of the first 10 slots hold a history item. Amazon 5-core data has no repeat
    purchase (Beauty: no validation or test target is in its history), so such a slot is lost."""
    k = ranked.shape[1]
    rank = np.full(len(ranked), k, np.int64)
    seen10 = np.zeros(len(ranked), np.int64)
    for i, (row, h, t) in enumerate(zip(ranked, histories, targets)):
        in_h = np.isin(row, np.asarray(h))
        seen10[i] = int(in_h[:10].sum())
        hit = np.flatnonzero((row == t) & ~in_h)
        if hit.size:
            rank[i] = hit[0] - int(in_h[: hit[0]].sum())
    return rank, seen10


def unseen_metrics(rank: np.ndarray, seen10: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (5, 10)) -> dict:
    """From `history_ranks`: the share of top-10 slots that hold a history item, and Recall/NDCG@K
    with the history removed (`*_unseen`), the protocol of evaluators that mask it, reported
    beside the plain one."""
    filtered = metrics_from_rank(rank, targets, ks)
    return {"history_share@10": float(seen10.mean() / 10) if seen10.size else float("nan"),
            **{f"{k}_unseen": v for k, v in filtered.items()}}
