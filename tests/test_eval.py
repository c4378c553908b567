"""Evaluation: the beam equals exhaustive scoring on a toy model; metric definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capsid_gr.eval import Recommender, brute_force_topk, build_item_trie, evaluate, ranking_metrics, path_scores
from capsid_gr.generator import EOS, Generator, GeneratorConfig, ItemInputs, RoutingAdapter, from_paths

from test_generator import tiny_capsid


# Tiny models: one intra-op thread avoids oversubscribing shared 2-core runners (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = GeneratorConfig(layers=2, heads=2, hidden=16, ffn=32, dropout=0.0, max_positions=128)


def toy_items():
    """Variable lengths, a node that both ends an item and prefixes others, and a collision."""
    paths = [[3, EOS], [3, 5, EOS], [3, 5, 7, EOS], [4, 6, EOS], [4, 6, EOS], [4, 7, EOS], [5, EOS],
             [6, 3, 4, EOS], [6, 3, EOS], [7, 7, 7, EOS]]
    return from_paths(paths, vocab_size=8)


@pytest.mark.parametrize("soft", [False, True])
def test_beam_equals_brute_force(soft):
    if soft:
        items, _, _ = tiny_capsid(n=25, merges=True)
    else:
        items = toy_items()
    model = Generator(items.vocab_size, CFG, seed=5).double()
    with torch.no_grad():  # sharper, non-uniform logits so the ranking is not decided by ties
        model.tok.weight.mul_(40.0)
    inputs = ItemInputs(items, RoutingAdapter(items) if soft else None).double()
    pop = np.arange(items.n_items)[::-1].astype(float)
    trie = build_item_trie(items, pop, "cpu")
    rec = Recommender(model, inputs, items, trie)
    rng = np.random.default_rng(0)
    hists = [rng.integers(items.n_items, size=int(rng.integers(1, 6))) for _ in range(7)]
    n_paths = len(set(map(tuple, items.paths)))
    got, _ = rec.recommend(hists, num_beams=n_paths, top_k=items.n_items, batch_size=3)
    want = brute_force_topk(model, inputs, items, hists, items.n_items, popularity=pop)
    np.testing.assert_array_equal(got, want)
    # and the metrics of both agree
    target = np.array([int(h[-1]) for h in hists])
    assert ranking_metrics(got, target, (1, 5)) == ranking_metrics(want, target, (1, 5))


def test_path_scores_are_a_distribution_over_paths():
    """Exhaustive path log-probs of a trie-complete vocabulary sum to at most 1 (tokens off-trie take the rest)."""
    items = toy_items()
    model = Generator(items.vocab_size, CFG, seed=1).double()
    s = path_scores(model, ItemInputs(items), items, np.array([1, 2]))
    unique = {tuple(p): v for p, v in zip(items.paths, s)}
    assert 0 < sum(np.exp(v) for v in unique.values()) <= 1 + 1e-12


def test_ranking_metrics_by_hand():
    ranked = np.array([[5, 1, 2], [3, 4, 0], [7, 8, 9]])
    target = np.array([1, 3, 6])
    m = ranking_metrics(ranked, target, ks=(1, 3))
    assert m["recall@1"] == pytest.approx(1 / 3) and m["recall@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1.0) / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    masks = {"head": np.isin(np.arange(10), [3]), "tail": np.isin(np.arange(10), [1, 6])}
    m = ranking_metrics(ranked, target, ks=(3,), masks=masks, tier_k=1)
    assert m["head_recall@1"] == 1.0 and m["tail_recall@1"] == 0.0 and m["tail_queries"] == 2
    with pytest.raises(ValueError, match="Recall@5"):
        ranking_metrics(ranked, target, ks=(5,))


def test_evaluate_reports_everything():
    items = toy_items()
    model = Generator(items.vocab_size, CFG, seed=2)
    from capsid_gr.data import popularity_tiers
    pop = np.arange(items.n_items, dtype=np.int64)
    rec = Recommender(model, ItemInputs(items), items, build_item_trie(items, pop, "cpu"))
    hists = [np.array([0, 1]), np.array([2]), np.array([3, 4, 5])]
    out = evaluate(rec, hists, np.array([2, 3, 9]), tiers=popularity_tiers(pop), num_beams=10)
    for key in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "head_recall@10", "cold_recall@10",
                "code_recall@50", "token_top1", "token_top5", "latency_ms_per_query"):
        assert key in out, key
    assert out["recall@10"] == 1.0  # 9 distinct paths, beam 10: every item is retrieved
    assert out["code_recall@50"] == 1.0 and len(out["token_top1"]) == 4


def test_per_chunk_rows_give_the_same_recommendations_as_catalogue_rows():
    """Above the row budget each decode chunk builds only its history items' rows (soft inputs
    routed per chunk): the recommendations do not change."""
    items, _, _ = tiny_capsid(n=25, merges=True)
    model = Generator(items.vocab_size, CFG, seed=5).double()
    with torch.no_grad():
        model.tok.weight.mul_(40.0)
    inputs = ItemInputs(items, RoutingAdapter(items)).double()
    rec = Recommender(model, inputs, items, build_item_trie(items, np.arange(items.n_items, dtype=float), "cpu"))
    rng = np.random.default_rng(1)
    hists = [rng.integers(items.n_items, size=int(rng.integers(1, 6))) for _ in range(7)]
    full, _ = rec.recommend(hists, num_beams=10, top_k=5, batch_size=3)
    rec.rows_budget_bytes = 0
    assert rec.catalogue_rows() is None
    lazy, _ = rec.recommend(hists, num_beams=10, top_k=5, batch_size=3)
    assert (full >= 0).any()
    np.testing.assert_array_equal(full, lazy)
