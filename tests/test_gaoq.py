"""GAOQ (ReSID): balanced hierarchical k-means with globally aligned anchor codes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import scipy  # noqa: F401  (a hard dependency of the GR system)

from capsid_gr.baselines.gaoq import (  # noqa: E402
    GAOQConfig,
    balanced_assignment,
    fit_gaoq,
    level_anchors,
    match_anchors,
)
from capsid_gr.metrics import collision_rate  # noqa: E402


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("n,k", [(1, 1), (5, 5), (7, 3), (97, 7), (100, 10), (1025, 13)])
def test_balanced_sizes_differ_by_at_most_one(n, k, exact):
    cost = np.random.default_rng(n * 31 + k).random((n, k)) ** 3  # skewed: everyone wants a few clusters
    labels = balanced_assignment(cost, exact=exact)
    sizes = np.bincount(labels, minlength=k)
    assert labels.shape == (n,) and sizes.sum() == n
    assert sizes.max() - sizes.min() <= 1


def test_exact_balanced_assignment_is_optimal():
    """Brute force over every labelling with sizes (3, 2, 2)."""
    n, k = 7, 3
    cost = np.random.default_rng(0).random((n, k))
    best = min(sum(cost[i, lab[i]] for i in range(n))
               for lab in itertools.product(range(k), repeat=n)
               if sorted(np.bincount(lab, minlength=k)) == [2, 2, 3])
    labels = balanced_assignment(cost, exact=True)
    assert cost[np.arange(n), labels].sum() == pytest.approx(best)
    greedy = balanced_assignment(cost, exact=False)
    assert cost[np.arange(n), greedy].sum() >= best - 1e-12


def test_anchor_matching_is_injective_and_optimal():
    rng = np.random.default_rng(1)
    dirs, anchors = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    got = match_anchors(dirs, anchors)
    assert len(set(got.tolist())) == 3
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    score = lambda p: sum(unit[i] @ anchors[p[i]] for i in range(3))  # noqa: E731
    assert score(got) == pytest.approx(max(score(p) for p in itertools.permutations(range(4), 3)))


def test_anchors_are_orthonormal_when_g_le_d():
    a = level_anchors(np.random.default_rng(2).standard_normal((200, 16)), 8, 10, np.random.default_rng(0))
    assert np.allclose(a @ a.T, np.eye(8), atol=1e-10)
    wide = level_anchors(np.random.default_rng(2).standard_normal((200, 4)), 9, 10, np.random.default_rng(0))
    assert np.allclose(np.linalg.norm(wide, axis=1), 1.0)


def _two_parents(noise=0.02, per_child=5, seed=0):
    """Parents e0 and e1; under each, four children leaving along e2..e5 (the same directions)."""
    rng = np.random.default_rng(seed)
    d = 12
    eye = np.eye(d)
    rows, truth = [], []
    for p in (0, 1):
        for c in range(4):
            centre = eye[p] + 0.4 * eye[2 + c]
            rows.append(centre + noise * rng.standard_normal((per_child, d)))
            truth += [(p, c)] * per_child
    return np.concatenate(rows), np.array(truth)


def test_shared_direction_gets_the_same_index_under_both_parents():
    x, truth = _two_parents()
    res = fit_gaoq(x, GAOQConfig(branching=(2, 4), seed=5))
    assert res.codes.shape == (40, 2) and collision_rate(res.codes) > 0  # leaves hold 5 items
    assert res.sids.shape == (40, 3) and collision_rate(res.sids) == 0
    assert len(set(res.codes[truth[:, 0] == 0, 0])) == 1 != len(set(res.codes[:, 0]))
    for c in range(4):
        codes = {int(v) for v in res.codes[truth[:, 1] == c, 1]}
        assert len(codes) == 1, f"direction e{2 + c} got codes {codes} under the two parents"
    # ... and the four directions got four different codes.
    assert len({int(res.codes[truth[:, 1] == c, 1][0]) for c in range(4)}) == 4


def test_fit_is_balanced_per_node_injective_and_seeded():
    from capsid_gr.data import SyntheticConfig, make_synthetic

    x = make_synthetic(SyntheticConfig(n_items=700, n_users=40)).item_vectors
    cfg = GAOQConfig(branching=(6, 5, 4), anchors=(8, 5, 6), exact_limit=64, seed=1)
    res = fit_gaoq(x, cfg)
    assert res.codes.shape == (700, 3)
    for level, (b, g) in enumerate(zip(cfg.branching, cfg.anchors_per_level)):
        prefixes = res.codes[:, :level]
        _, group = np.unique(prefixes, axis=0, return_inverse=True)
        for gid in np.unique(group):
            col = res.codes[group.reshape(-1) == gid, level]
            if (col < 0).all():
                continue  # a one-item node ended these SIDs
            sizes = np.bincount(col, minlength=g)
            used = sizes[sizes > 0]
            assert col.min() >= 0 and col.max() < g
            assert len(used) == min(b, len(col))  # injective: one anchor per child
            assert used.max() - used.min() <= 1  # balanced
    # 6 * 5 * 4 = 120 leaves < 700 items: the disambiguation column separates them.
    assert collision_rate(res.codes) > 0 and collision_rate(res.sids) == 0
    assert res.capsules[:3] == (8, 5, 6) and res.capsules[3] == int(res.sids[:, 3].max()) + 1
    again = fit_gaoq(x, cfg)
    assert np.array_equal(again.sids, res.sids)


def test_one_item_nodes_end_the_sid_and_enough_leaves_need_no_disambiguation():
    x = np.random.default_rng(3).standard_normal((10, 6))
    res = fit_gaoq(x, GAOQConfig(branching=(4, 4, 4)))
    lengths = (res.sids >= 0).sum(1)
    assert collision_rate(res.sids) == 0.0 and res.sids.shape == (10, 3)
    assert lengths.max() <= 2  # 10 items -> nodes of 2-3 -> singletons
    for row, n in zip(res.sids, lengths):
        assert (row[:n] >= 0).all() and (row[n:] == -1).all()


def test_rejects_zero_rows_and_bad_anchors():
    with pytest.raises(ValueError, match="item 1"):
        fit_gaoq(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="g_l >= b_l"):
        GAOQConfig(branching=(4, 4), anchors=(4, 3))
