"""Checks added in issue 10 on the python side: MergeTable inputs and its JSON, item weights,
re-checked vector caches, atomic .npy artefacts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsid_gr.atomic import save_npy_atomic
from capsid_gr.bpe import MergeTable, count_pairs
from capsid_gr.bpe.merges import FORMAT_VERSION
from capsid_gr.data import make_synthetic, SyntheticConfig
from capsid_gr.vectors import VectorConfig, build_item_vectors

BASE = 15


def test_encode_item_refuses_specials_out_of_range_and_non_integers():
    t = MergeTable(BASE, [(3, 8)])
    assert t.encode_item([3, 8, 4]) == [BASE, 4]
    for bad, err, msg in (([3, 2], ValueError, r"tokens\[1\]: expected a code token in \[3, base_vocab=15\), got 2"),
                          ([-1], ValueError, r"got -1"), ([BASE], ValueError, r"got 15"),
                          ([3.0], TypeError, r"tokens\[0\]: expected an integer token id, got 3.0"),
                          ([True], TypeError, r"got True")):
        with pytest.raises(err, match=msg):
            t.encode_item(bad)


def test_decode_item_refuses_negative_ids():
    with pytest.raises(ValueError, match=r"tokens\[1\]: token -1 is outside the vocabulary \[0, 16\)"):
        MergeTable(BASE, [(3, 8)]).decode_item([3, -1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(3, BASE - 1), st.integers(3, BASE - 1)), max_size=12, unique=True),
       st.lists(st.lists(st.integers(3, BASE - 1), min_size=1, max_size=6), min_size=1, max_size=6))
def test_json_round_trip_keeps_encodings_and_fingerprint(pairs, items):
    t = MergeTable(BASE, pairs)
    back = MergeTable.from_json(t.to_json(), expect_fingerprint=t.fingerprint())
    assert back.pairs == t.pairs and back.fingerprint() == t.fingerprint()
    assert [back.encode_item(i) for i in items] == [t.encode_item(i) for i in items]
    assert back.decode_history(back.encode_history(items)) == items


def test_from_json_checks_version_fingerprint_and_fields():
    t = MergeTable(BASE, [(3, 8), (4, 9)])
    raw = json.loads(t.to_json())
    assert raw["format_version"] == FORMAT_VERSION
    legacy = {"base_vocab": BASE, "pairs": [[3, 8], [4, 9]]}  # written before the version existed
    assert MergeTable.from_json(json.dumps(legacy)).pairs == t.pairs
    with pytest.raises(ValueError, match=r"format_version: expected 1, got 2"):
        MergeTable.from_json(json.dumps({**raw, "format_version": 2}))
    swapped = {**raw, "pairs": [[4, 9], [3, 8]]}  # same pairs, other merged ids
    with pytest.raises(ValueError, match="fingerprint: stored .* the file is corrupt or was edited"):
        MergeTable.from_json(json.dumps(swapped))
    with pytest.raises(ValueError, match="expected the vocabulary"):
        MergeTable.from_json(t.to_json(), expect_fingerprint=MergeTable(BASE, []).fingerprint())
    with pytest.raises(ValueError, match=r"base_vocab: expected an integer > 3, got '15'"):
        MergeTable.from_json(json.dumps({**legacy, "base_vocab": "15"}))
    with pytest.raises(ValueError, match=r"pairs: expected a list of \[a, b\] integer pairs"):
        MergeTable.from_json(json.dumps({**legacy, "pairs": [[3, 8, 1]]}))
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        MergeTable.from_json("{")


def test_item_weights_must_be_finite_and_non_negative():
    ids = np.array([[3, 8], [4, 9], [3, 8]])
    assert count_pairs(ids, np.array([1.0, 0.0, 2.0])).counts.tolist() == [3.0]
    for w, msg in ((np.array([1.0, np.nan, 1.0]), r"got nan for item 1 \(1 such items\)"),
                   (np.array([1.0, 1.0, -2.0]), r"got -2.0 for item 2"),
                   (np.array([np.inf, 1.0, 1.0]), r"got inf for item 0")):
        with pytest.raises(ValueError, match=r"weights: expected finite weights >= 0, " + msg):
            count_pairs(ids, w)


def test_npy_artefacts_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "sids.npy"
    save_npy_atomic(path, np.arange(6).reshape(2, 3))
    assert np.array_equal(np.load(path), np.arange(6).reshape(2, 3))

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        save_npy_atomic(path, np.zeros(3))
    assert np.array_equal(np.load(path), np.arange(6).reshape(2, 3))  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sids.npy"]  # no temporary left


def test_cached_vectors_are_rechecked_and_rebuilt(tmp_path):
    data = make_synthetic(SyntheticConfig(n_items=200, n_users=150, seed=0))
    cfg = VectorConfig(sources=("given",), d=8)
    first, info = build_item_vectors(data, cfg, cache_dir=tmp_path)
    assert not info["cached"]
    again, info = build_item_vectors(data, cfg, cache_dir=tmp_path)
    assert info["cached"] and np.array_equal(again, first)
    cache = tmp_path / f"vectors-{info['key']}.npy"
    for bad in (first[:-1], first.astype(np.float64), np.where(np.arange(200)[:, None] == 7, np.nan, first),
                first * 2.0):
        np.save(cache, bad)
        with pytest.warns(RuntimeWarning, match="cached vectors rejected"):
            rebuilt, info = build_item_vectors(data, cfg, cache_dir=tmp_path)
        assert not info["cached"] and np.array_equal(rebuilt, first)
    cache.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        build_item_vectors(data, cfg, cache_dir=tmp_path)
