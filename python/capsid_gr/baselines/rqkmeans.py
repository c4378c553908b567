"""TIGER-style RQ-KMeans: hard residual k-means, then a disambiguation token (SPEC §9).

Level l clusters the residual left by levels < l with k-means (scikit-learn's KMeans: Lloyd
iterations with k-means++ seeding and several restarts; well kept, deterministic under a
seed, and the implementation TIGER-style reproductions use, so the baseline is the standard
one rather than ours). Items whose codes collide get one extra position that counts them
0, 1, 2, ... by item id; every item carries it, so SIDs keep one length, as in TIGER.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from ..checks import check_config


@dataclass(frozen=True)
class RQKMeansConfig:
    """levels x codes per level; n_init restarts and max_iter Lloyd steps per level."""

    levels: int = 3
    codes: int = 256
    n_init: int = 3
    max_iter: int = 100
    disambiguate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        if self.levels < 1 or self.codes < 1:
            raise ValueError(f"levels and codes must be >= 1, got {self.levels}, {self.codes}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class RQKMeansOutput(NamedTuple):
    codes: np.ndarray  # [N, levels] hard codes before disambiguation
    sids: np.ndarray  # [N, levels (+1)] with the disambiguation column when enabled
    centres: list  # per level [K_l, d]
    recon: np.ndarray  # [N, d] sum of the chosen centres
    capsules: tuple  # codes per position, the disambiguation position last


def fit_rqkmeans(x: np.ndarray, cfg: RQKMeansConfig = RQKMeansConfig()) -> RQKMeansOutput:
    """Fit and apply RQ-KMeans to ell2-normalised item vectors x [N, d]."""
    try:
        from sklearn.cluster import KMeans
    except ImportError as exc:  # pragma: no cover - the dependency is declared
        raise ImportError("RQ-KMeans needs scikit-learn: pip install scikit-learn") from exc
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = x.shape[0]
    residual = x.copy()
    codes = np.zeros((n, cfg.levels), dtype=np.int64)
    centres = []
    for level in range(cfg.levels):
        k = min(cfg.codes, n)
        km = KMeans(n_clusters=k, n_init=cfg.n_init, max_iter=cfg.max_iter, random_state=cfg.seed + level)
        codes[:, level] = km.fit_predict(residual)
        c = km.cluster_centers_
        centres.append(c)
        residual = residual - c[codes[:, level]]
    recon = x - residual
    capsules = (cfg.codes,) * cfg.levels
    if not cfg.disambiguate:
        return RQKMeansOutput(codes, codes.copy(), centres, recon, capsules)
    extra = disambiguation_column(codes)
    k_extra = max(cfg.codes, int(extra.max()) + 1)
    return RQKMeansOutput(codes, np.concatenate([codes, extra[:, None]], axis=1), centres, recon,
                          capsules + (k_extra,))


def disambiguation_column(codes: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... among items with identical code rows, in item-id order."""
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((np.arange(len(inverse)), inverse))
    out = np.zeros(len(inverse), dtype=np.int64)
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    out[order] = np.arange(len(order)) - first
    return out
