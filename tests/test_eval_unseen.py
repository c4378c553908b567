"""The history-removed protocol beside the plain one: ranks, the share of lost slots, sharded equality."""

from __future__ import annotations

import numpy as np

from capsid_gr.eval.evaluate import history_ranks, unseen_metrics
from capsid_gr.ranking import metrics_from_rank, target_rank


def _filtered_rank(row, hist, target):
    """The definition, spelled out: drop the history items, find the target."""
    kept = [x for x in row if x not in set(hist)]
    return kept.index(target) if target in kept else len(row)


def test_history_ranks_by_hand():
    ranked = np.array([[7, 3, 9, 1, 4], [2, 5, 6, 8, 0], [1, 2, 3, 4, 5]])
    hist = [np.array([7, 3]), np.array([9]), np.array([1, 2, 3, 4, 5])]
    target = np.array([9, 8, 5])
    rank, seen = history_ranks(ranked, hist, target)
    # 9 moves from rank 2 to 0; 8 stays at 3 (no history item in the list); 5 is a history item: a miss
    assert rank.tolist() == [0, 3, 5] and seen.tolist() == [2, 0, 5]
    m = unseen_metrics(rank, seen, target, ks=(1, 5))
    assert m["recall@1_unseen"] == 1 / 3 and m["recall@5_unseen"] == 2 / 3
    assert m["history_share@10"] == (2 + 0 + 5) / 30


def test_history_ranks_equal_the_definition_on_random_lists():
    rng = np.random.default_rng(11)
    q, k, n = 400, 20, 60
    ranked = np.stack([rng.permutation(n)[:k] for _ in range(q)])
    hist = [rng.choice(n, size=rng.integers(1, 15), replace=False) for _ in range(q)]
    target = rng.integers(0, n, size=q)
    rank, seen = history_ranks(ranked, hist, target)
    want = np.array([_filtered_rank(list(r), list(h), t) for r, h, t in zip(ranked, hist, target)])
    assert np.array_equal(rank, want)
    assert np.array_equal(seen, [np.isin(r[:10], h).sum() for r, h in zip(ranked, hist)])
    # removing history items never pushes a target down, and a target outside every history gains
    plain = target_rank(ranked, target)
    outside = np.array([t not in set(h) for h, t in zip(hist, target)])
    assert (rank[outside] <= plain[outside]).all() and (rank[outside] < plain[outside]).any()
    r10 = metrics_from_rank(rank, target, (10,))["recall@10"]
    assert r10 >= metrics_from_rank(np.where(outside, plain, k), target, (10,))["recall@10"]
