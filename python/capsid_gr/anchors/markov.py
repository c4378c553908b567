"""The Markov-chain anchor (SPEC §8): next-item counts over training transitions, with back-off.

Transition counts C[i, j] = how often item j directly follows item i in the training split.
A query with history (..., h_3, h_2, h_1) scores item j as

    sum_k  w^(k - 1) * C[h_k, j] / sum_j' C[h_k, j']      (k = 1 .. order)
    + 1e-6 * popularity(j) / max popularity,

so with a small back-off weight w the last item decides, the items before it break its ties
and fill its empty rows, and popularity fills what no transition reaches. `fit_markov` picks w
on the validation queries from a small grid; order 1 is the plain first-order chain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from ..checks import check_config

BACKOFF_GRID = (0.01, 0.1, 0.3, 0.6, 1.0)


@dataclass
class MarkovRecommender:
    n_items: int
    rows: "object"  # scipy.sparse.csr_matrix [N, N], row-normalised transition probabilities
    popularity: np.ndarray
    order: int = 3
    backoff: float = 0.1

    @classmethod
    def from_sequences(cls, n_items: int, sequences: Sequence[np.ndarray], popularity: np.ndarray, order: int = 3,
                       backoff: float = 0.1) -> "MarkovRecommender":
        from scipy import sparse

        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order: expected an integer >= 1, got {order!r}")
        src = np.concatenate([np.asarray(s[:-1], np.int64) for s in sequences if len(s) > 1] or [np.zeros(0, np.int64)])
        dst = np.concatenate([np.asarray(s[1:], np.int64) for s in sequences if len(s) > 1] or [np.zeros(0, np.int64)])
        counts = sparse.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items, n_items))
        counts.sum_duplicates()
        tot = np.asarray(counts.sum(1)).ravel()
        rows = sparse.diags(np.where(tot > 0, 1.0 / np.maximum(tot, 1), 0.0)) @ counts
        pop = np.asarray(popularity, np.float64)
        return cls(n_items, rows.tocsr(), pop / max(pop.max(), 1.0), order, backoff)

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        from scipy import sparse

        q = len(histories)
        out = np.tile(1e-6 * self.popularity, (q, 1))
        for k in range(1, self.order + 1):
            rows = [i for i, h in enumerate(histories) if len(h) >= k]
            if not rows:
                break
            last = np.array([histories[i][-k] for i in rows], np.int64)
            sel = sparse.csr_matrix((np.ones(len(rows)), (np.arange(len(rows)), last)), shape=(len(rows), self.n_items))
            out[rows] += (self.backoff ** (k - 1)) * (sel @ self.rows).toarray()
        return out

    def recommend(self, histories: Sequence[np.ndarray], num_beams: int = 50, top_k: Optional[int] = None,
                  batch_size: int = 2048, backend: str = "auto") -> tuple[np.ndarray, dict]:
        top_k = min(top_k or num_beams, self.n_items)
        out = np.empty((len(histories), top_k), np.int64)
        start = time.perf_counter()
        for lo in range(0, len(histories), batch_size):
            s = self.scores(histories[lo: lo + batch_size])
            part = np.argpartition(-s, top_k - 1, axis=1)[:, :top_k]
            # score order, ties by lower item id
            order = np.lexsort((part, -np.take_along_axis(s, part, 1)), axis=1)
            out[lo: lo + len(s)] = np.take_along_axis(part, order, 1)
        s = time.perf_counter() - start
        return out, {"decode_seconds": s, "latency_ms_per_query": 1e3 * s / max(len(histories), 1)}


def fit_markov(n_items: int, train: Sequence[np.ndarray], popularity: np.ndarray, valid_histories,
               valid_targets: np.ndarray, order: int = 3, grid: Sequence[float] = BACKOFF_GRID) -> tuple[MarkovRecommender, dict]:
    """Counts from `train`; the back-off weight with the best validation NDCG@10 (order 1: none)."""
    from ..ranking import ranking_metrics

    rec = MarkovRecommender.from_sequences(n_items, train, popularity, order)
    if order == 1:
        return rec, {"backoff": None}
    tried = {}
    for w in grid:
        rec.backoff = float(w)
        ranked, _ = rec.recommend(valid_histories, top_k=10)
        tried[float(w)] = ranking_metrics(ranked, np.asarray(valid_targets), ks=(10,))["ndcg@10"]
    rec.backoff = max(tried, key=lambda w: (tried[w], -w))
    return rec, {"backoff": rec.backoff, "val_ndcg@10_by_backoff": tried}


@dataclass(frozen=True)
class MarkovConfig:
    """order: how many of the last items vote (1 = the plain first-order chain); the back-off
    weight is chosen on validation from `BACKOFF_GRID`."""

    order: int = 3

    def __post_init__(self) -> None:
        check_config(self)
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"MarkovConfig.order: expected an integer >= 1, got {self.order!r}")
