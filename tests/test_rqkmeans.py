"""RQ-KMeans (TIGER-style): hard residual codes, then the disambiguation token."""

from __future__ import annotations

import numpy as np
import pytest

import sklearn  # noqa: F401  (a hard dependency of the GR system)

from capsid_gr.baselines import RQKMeansConfig, disambiguation_column, fit_rqkmeans  # noqa: E402
from capsid_gr.metrics import collision_rate, tokenizer_metrics  # noqa: E402


def test_disambiguation_column_by_hand():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    assert disambiguation_column(codes).tolist() == [0, 0, 1, 2, 0]


def _vectors(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[n // 2:] = x[: n - n // 2]  # exact duplicates collide at every level, whatever k-means does
    return x


def test_zero_collisions_after_disambiguation():
    x = _vectors()
    res = fit_rqkmeans(x, RQKMeansConfig(levels=3, codes=8, n_init=1, max_iter=20))
    assert res.codes.shape == (300, 3) and res.sids.shape == (300, 4)
    assert collision_rate(res.codes) >= 0.5  # the duplicates at least
    assert collision_rate(res.sids) == 0.0
    assert res.capsules == (8, 8, 8, max(8, int(res.sids[:, -1].max()) + 1))
    m = tokenizer_metrics(res.sids, res.capsules, x)
    assert m["collision_rate"] == 0.0 and m["mean_length"] == 4.0


def test_residual_levels_reduce_error_and_are_seeded():
    x = _vectors(seed=1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    errs = []
    for levels in (1, 2, 3):
        res = fit_rqkmeans(x, RQKMeansConfig(levels=levels, codes=8, n_init=1, max_iter=20, seed=4))
        errs.append(((xn - res.recon) ** 2).sum(1).mean())
    assert errs[0] > errs[1] > errs[2]
    again = fit_rqkmeans(x, RQKMeansConfig(levels=3, codes=8, n_init=1, max_iter=20, seed=4))
    assert np.array_equal(again.codes, res.codes)


def test_no_disambiguation_keeps_levels():
    res = fit_rqkmeans(_vectors(), RQKMeansConfig(levels=2, codes=4, n_init=1, disambiguate=False))
    assert res.sids.shape == (300, 2) and res.capsules == (4, 4)
