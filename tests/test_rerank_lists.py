"""Offline re-ranking of saved beams (capsid_gr.eval.rerank) against plain-Python references."""

import numpy as np
import pytest

from capsid_gr.anchors.markov import MarkovRecommender
from capsid_gr.eval.evaluate import history_ranks
from capsid_gr.eval.rerank import (BeamLists, choose_rerank, grid, history_mask, last_item_cosine, markov_log_prob,
                                   rerank, score_lists)
from capsid_gr.ranking import metrics_from_rank


def _lists(rng, q=40, b=12, n=60, pad=True):
    items = np.stack([rng.choice(n, b, replace=False) for _ in range(q)]).astype(np.int64)
    scores = np.sort(rng.normal(size=(q, b)).astype(np.float32), axis=1)[:, ::-1].copy()
    if pad:  # a few short beams, as the trie leaves them
        for i in rng.choice(q, q // 4, replace=False):
            k = int(rng.integers(3, b))
            items[i, k:], scores[i, k:] = -1, -np.inf
    hist = [rng.choice(n, int(rng.integers(1, 6)), replace=False) for _ in range(q)]
    target = np.array([rng.choice(row[row >= 0]) if rng.random() < 0.7 else n + 1 for row in items])
    return BeamLists(items, scores, target, hist), n


def _reference(bl, x, beta, exclude):
    """Sort each row in plain Python: score + beta * cos(item, last), history removed if asked."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = np.full(bl.items.shape, -1, np.int64)
    for i, (row, sc, h) in enumerate(zip(bl.items, bl.scores, bl.histories)):
        keep = [(float(s) + beta * float(xn[it] @ xn[h[-1]]), j, int(it)) for j, (it, s) in enumerate(zip(row, sc))
                if it >= 0 and not (exclude and it in set(h.tolist()))]
        keep.sort(key=lambda t: (-t[0], t[1]))
        out[i, : len(keep)] = [t[2] for t in keep]
    return out


def test_rerank_matches_a_plain_python_sort_with_similarity_and_history_removal():
    rng = np.random.default_rng(0)
    bl, n = _lists(rng)
    x = rng.normal(size=(n + 2, 8)).astype(np.float32)
    seen, cos = history_mask(bl.items, bl.histories), last_item_cosine(bl.items, bl.histories, x)
    for beta in (0.0, 0.7, 3.0):
        for exclude in (False, True):
            got = rerank(bl, exclude_history=exclude, beta=beta, cos=cos, seen=seen)
            np.testing.assert_array_equal(got, _reference(bl, x, beta, exclude))
    # with no weight the list is the beam itself
    np.testing.assert_array_equal(rerank(bl), np.where(np.isfinite(bl.scores), bl.items, -1))


def test_history_removal_scores_like_the_evaluators_unseen_protocol():
    rng = np.random.default_rng(1)
    bl, _ = _lists(rng, pad=False)
    got = score_lists(rerank(bl, exclude_history=True, seen=history_mask(bl.items, bl.histories)), bl.target)
    rank, _ = history_ranks(bl.items, bl.histories, bl.target)
    want = metrics_from_rank(rank, bl.target)
    assert got == pytest.approx(want)
    assert got["recall@10"] >= score_lists(rerank(bl), bl.target)["recall@10"]


def test_markov_term_is_the_log_of_the_anchors_own_scores():
    rng = np.random.default_rng(2)
    bl, n = _lists(rng, n=30, b=8)
    seqs = [rng.integers(0, n, int(rng.integers(2, 9))) for _ in range(50)]
    pop = np.bincount(np.concatenate(seqs), minlength=n)
    mk = MarkovRecommender.from_sequences(n, seqs, pop)
    hist = [h % n for h in bl.histories]
    items = np.where(bl.items >= 0, bl.items % n, -1)
    lp = markov_log_prob(items, hist, mk, batch=7)
    full = mk.scores(hist)
    for i in range(len(items)):
        for j in np.flatnonzero(items[i] >= 0):
            assert lp[i, j] == pytest.approx(np.log(full[i, items[i, j]] + 1e-12), rel=1e-5)


def test_choose_rerank_keeps_the_best_validation_point_and_ties_go_to_the_plainer_one():
    rng = np.random.default_rng(3)
    bl, n = _lists(rng)
    x = rng.normal(size=(n + 2, 8)).astype(np.float32)

    def terms(b):
        return {"seen": history_mask(b.items, b.histories), "cos": last_item_cosine(b.items, b.histories, x)}

    g = grid(betas=(0.0, 1.0, 4.0))
    best, tried = choose_rerank(bl, terms, g)
    vals = [tried[repr(p)]["recall@10"] for p in g]
    assert best == g[int(np.argmax(vals))]
    assert len(tried) == 6
    # a grid whose points all score the same keeps the first
    same, _ = choose_rerank(bl, terms, [{"beta": 0.0}, {"beta": 0.0, "exclude_history": False}])
    assert same == {"beta": 0.0}


def test_rerank_names_the_missing_term():
    bl, _ = _lists(np.random.default_rng(4))
    with pytest.raises(ValueError, match="beta"):
        rerank(bl, beta=1.0)
    with pytest.raises(ValueError, match="exclude_history"):
        rerank(bl, exclude_history=True)
    with pytest.raises(ValueError, match="targets"):
        BeamLists(bl.items, bl.scores, bl.target[:-1], bl.histories)
