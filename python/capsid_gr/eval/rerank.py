"""Offline re-ranking of saved beams (`capsid pipeline --save-lists`): choose on validation, read test once.

A finished beam is a list of items with log P(item | history). A re-ranking adds per-item terms to that
score and sorts again; nothing outside the beam can enter the list. The terms:

- `exclude_history`: the query's own history items leave the list (Beauty 5-core has no repeat
  interaction, so such a slot is lost; RecBole-style evaluators mask them for every model);
- `beta * cos(item, last history item)` on the item vectors;
- `gamma * log P_markov(item | history)` from the Markov anchor's counts (a hybrid with the anchor, reported
  as its own row, never as the generator alone).

`choose_rerank` scores every grid point on the validation beams and keeps the best by one declared metric
(ties to the smallest weights), so the test beams are read once, at that point.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..checks import short
from ..ranking import metrics_from_rank, target_rank


@dataclass(frozen=True)
class BeamLists:
    """One split's saved beams: items [Q, B] int (-1 past the end), scores [Q, B] (log-probabilities, -inf
    past the end), targets [Q], and the histories the beams were decoded from."""

    items: np.ndarray
    scores: np.ndarray
    target: np.ndarray
    histories: Sequence[np.ndarray]

    def __post_init__(self) -> None:
        q = len(self.target)
        if self.items.ndim != 2 or self.items.shape != self.scores.shape or self.items.shape[0] != q:
            raise ValueError(f"BeamLists: expected items and scores [Q, B] with Q = {q} targets, got "
                             f"{self.items.shape} and {self.scores.shape}")
        if len(self.histories) != q:
            raise ValueError(f"BeamLists: expected {q} histories, got {len(self.histories)}")


def history_mask(items: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """[Q, B] bool: the slot holds one of its query's history items."""
    return np.stack([np.isin(row, np.asarray(h)) for row, h in zip(items, histories)]) if len(items) else \
        np.zeros(items.shape, bool)


def last_item_cosine(items: np.ndarray, histories: Sequence[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """[Q, B] cosine between each beam item and its query's last history item (0 where either is absent)."""
    v = np.asarray(vectors, np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    last = np.array([h[-1] if len(h) else -1 for h in histories], np.int64)
    ok = (items >= 0) & (last[:, None] >= 0)
    cos = np.einsum("qbd,qd->qb", v[np.maximum(items, 0)], v[np.maximum(last, 0)])
    return np.where(ok, cos, 0.0).astype(np.float32)


def markov_log_prob(items: np.ndarray, histories: Sequence[np.ndarray], markov, batch: int = 2048) -> np.ndarray:
    """[Q, B] log of the Markov anchor's score (`MarkovRecommender.scores`, popularity-floored so finite)."""
    out = np.zeros(items.shape, np.float32)
    for lo in range(0, len(items), batch):
        s = markov.scores(list(histories[lo: lo + batch]))
        out[lo: lo + batch] = np.log(np.take_along_axis(s, np.maximum(items[lo: lo + batch], 0), 1) + 1e-12)
    return out


def rerank(lists: BeamLists, *, exclude_history: bool = False, beta: float = 0.0, gamma: float = 0.0,
           cos: Optional[np.ndarray] = None, markov_lp: Optional[np.ndarray] = None,
           seen: Optional[np.ndarray] = None) -> np.ndarray:
    """The re-ranked lists [Q, B] (-1 where a slot is empty or removed, always after the real items).
    `cos`, `markov_lp` and `seen` are the precomputed terms (`last_item_cosine`, `markov_log_prob`,
    `history_mask`); each is needed only when its weight is on."""
    for name, w, term in (("beta", beta, cos), ("gamma", gamma, markov_lp)):
        if w and term is None:
            raise ValueError(f"rerank: {name}={w} needs its precomputed term, got None")
    if exclude_history and seen is None:
        raise ValueError("rerank: exclude_history=True needs the history mask `seen`, got None")
    s = lists.scores.astype(np.float64)
    valid = (lists.items >= 0) & np.isfinite(s)
    if beta:
        s = s + beta * cos
    if gamma:
        s = s + gamma * markov_lp
    if exclude_history:
        valid &= ~seen
    s = np.where(valid, s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")  # ties keep the beam's own order
    ranked = np.take_along_axis(lists.items, order, 1)
    return np.where(np.take_along_axis(valid, order, 1), ranked, -1)


def score_lists(ranked: np.ndarray, target: np.ndarray, ks: Sequence[int] = (5, 10), masks=None) -> dict:
    return metrics_from_rank(target_rank(ranked, np.asarray(target)), np.asarray(target), ks, masks)


GridPoint = dict


def choose_rerank(val: BeamLists, terms: Callable[[BeamLists], dict], grid: Sequence[GridPoint],
                  metric: str = "recall@10") -> tuple[GridPoint, dict]:
    """The grid point with the best validation `metric` (ties: the earliest point; list the grid from the
    smallest weights up), and every point's validation metrics as {repr(point): metrics}."""
    if not grid:
        raise ValueError("choose_rerank: expected a non-empty grid, got []")
    t = terms(val)
    tried, best, best_v = {}, None, -np.inf
    for point in grid:
        m = score_lists(rerank(val, **point, **t), val.target)
        if metric not in m:
            raise ValueError(f"choose_rerank: metric {short(metric)} is not one of {sorted(m)}")
        tried[repr(point)] = m
        if m[metric] > best_v:
            best, best_v = point, m[metric]
    return best, tried


def grid(exclude_history: Sequence[bool] = (False, True), betas: Sequence[float] = (0.0,),
         gammas: Sequence[float] = (0.0,)) -> list[GridPoint]:
    """Every combination, smallest weights first (so `choose_rerank`'s ties go to the plainer point)."""
    return [{"exclude_history": e, "beta": float(b), "gamma": float(g)}
            for e, b, g in itertools.product(exclude_history, sorted(betas), sorted(gammas))]
