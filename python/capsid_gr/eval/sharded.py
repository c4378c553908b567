"""Sharded evaluation: each rank beams over a contiguous slice of the users with the full trie;
the metrics are computed once from every user's target rank, so they equal one process's.

The reduction gathers each query's 0-based target rank (one integer per query), not partial
means: Recall and NDCG then come out of the same `metrics_from_rank` a single process calls,
summed in the same order, so the numbers are equal to the last bit, not merely close. User
slices are whole chunks of `batch_size` queries, so every beam-search chunk (and its padded
history length) is the one a single process would decode.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..collective import DistContext
from ..ranking import metrics_from_rank, target_rank
from .decode import Recommender
from .evaluate import history_ranks, unseen_metrics


def target_ranks_sharded(rec: Recommender, histories: Sequence[np.ndarray], targets: np.ndarray, dist: DistContext,
                         *, num_beams: int = 50, top_k: Optional[int] = None,
                         batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """(per query, in item order on every rank: [Q, 3] = the target's rank, its rank with the
    query's history removed and the history items in its top 10 (`history_ranks`); this rank's
    timing)."""
    q = len(histories)
    lo, hi = dist.bounds(q, align=batch_size)
    top_k = top_k or num_beams
    ranked, timing = rec.recommend(list(histories[lo:hi]), num_beams=num_beams, top_k=top_k, batch_size=batch_size)
    ranked = ranked.reshape(-1, top_k)
    local_t = np.asarray(targets)[lo:hi]
    unseen, seen10 = history_ranks(ranked, list(histories[lo:hi]), local_t)
    local = torch.as_tensor(np.stack([target_rank(ranked, local_t), unseen, seen10], 1), dtype=torch.int64)
    ranks = dist.all_gather_rows(local, q, align=batch_size).numpy()  # [Q, 3]
    (slowest,) = (timing["decode_seconds"],) if not dist.active else _max(dist, timing["decode_seconds"])
    timing = {**timing, "local_queries": hi - lo, "decode_seconds_local": timing["decode_seconds"],
              "decode_seconds": slowest, "queries_per_second": q / slowest if slowest > 0 else float("nan")}
    return ranks, timing


def evaluate_sharded(rec: Recommender, histories: Sequence[np.ndarray], targets: np.ndarray, dist: DistContext,
                     *, tiers=None, ks: Sequence[int] = (5, 10), num_beams: int = 50, batch_size: int = 64) -> dict:
    """The ranking metrics of `capsid_gr.eval.evaluate` (Recall/NDCG@K, tier recalls) over users
    sharded across ranks; every rank returns the same dict. Teacher-forced token metrics are
    not sharded: run `evaluate` on one rank for those."""
    top_k = max(max(ks), 10)
    if num_beams < top_k:
        raise ValueError(f"num_beams={num_beams} < {top_k}: the beam must hold every rank the metrics read")
    ranks, timing = target_ranks_sharded(rec, histories, targets, dist, num_beams=num_beams, top_k=num_beams,
                                         batch_size=batch_size)
    masks = None
    if tiers is not None:
        masks = {"head": tiers.head, "torso": tiers.torso, "tail": tiers.tail, "cold": tiers.cold}
    return {"queries": len(histories), **metrics_from_rank(ranks[:, 0], np.asarray(targets), ks, masks), **timing,
            **unseen_metrics(ranks[:, 1], ranks[:, 2], np.asarray(targets), ks), "world": dist.world}


def _max(dist: DistContext, value: float) -> tuple[float]:
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.float64, device=dist._comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return (float(t.item()),)
