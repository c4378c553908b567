"""Full-catalogue evaluation (SPEC §8): beam top-K -> Recall/NDCG, tiers, token accuracy, latency."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .decode import Recommender
from ..ranking import ranking_metrics
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
    if token_metrics:
        out.update(teacher_forced_scores(rec.model, rec.inputs, rec.items, histories, np.asarray(targets),
                                         rec.max_history, code_m=code_m))
    return out
