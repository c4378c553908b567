"""Tests of the data layer: synthetic generator, leave-one-out split, tiers, Amazon loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from capsid_gr.data import (
    PAD_ITEM,
    DataError,
    SequenceDataset,
    SyntheticConfig,
    default_beauty_dir,
    load_amazon,
    make_synthetic,
    popularity_tiers,
    synthetic_item_vectors,
)

SMALL = SyntheticConfig(n_items=300, n_users=200, d=24, branching=(4, 3, 2))
# Awkward: one facet level, prime sizes, d not a multiple of anything.
ODD = SyntheticConfig(n_items=37, n_users=11, d=7, branching=(5,), level_scales=(1.0,))


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("cfg", [SyntheticConfig(), SMALL, ODD], ids=["default", "small", "odd"])
def test_synthetic_is_well_formed(cfg):
    ds = make_synthetic(cfg)
    assert ds.n_items == cfg.n_items and ds.n_users == cfg.n_users
    v = ds.item_vectors
    assert v.shape == (cfg.n_items, cfg.d) and v.dtype == np.float32
    assert np.isfinite(v).all()
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    # Measured: float32 rounding of a normalised row leaves |norm - 1| below ~1e-7.
    assert np.abs(norms - 1).max() < 1e-6
    lengths = ds.lengths()
    assert lengths.min() >= cfg.min_len and lengths.max() <= cfg.max_len
    flat = np.concatenate(ds.sequences)
    assert flat.dtype == np.int64 and flat.min() >= 0 and flat.max() < cfg.n_items
    assert ds.popularity().min() >= 1  # every item reachable, in training
    assert len(ds.item_text) == len(ds.item_attributes) == cfg.n_items
    assert ds.item_text[0].startswith("item 0; brand b") and "; facet " in ds.item_text[0]


def test_synthetic_default_lengths_match_documentation():
    lengths = make_synthetic().lengths()
    assert lengths.min() == 5 and lengths.max() <= 50
    assert 8.5 < lengths.mean() < 10.5


def test_synthetic_is_deterministic_per_seed():
    a, b = make_synthetic(SMALL), make_synthetic(SMALL)
    assert np.array_equal(a.item_vectors, b.item_vectors)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert a.item_text == b.item_text
    assert a.fingerprint() == b.fingerprint()
    c = make_synthetic(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}))
    assert not np.array_equal(a.item_vectors, c.item_vectors)
    assert a.fingerprint() != c.fingerprint()


def test_synthetic_sequences_follow_facets():
    ds = make_synthetic(SMALL)
    v = ds.item_vectors
    pairs = np.concatenate([np.sum(v[s[:-1]] * v[s[1:]], axis=1) for s in ds.sequences])
    rng = np.random.default_rng(0)
    random = np.sum(v[rng.integers(0, ds.n_items, 5000)] * v[rng.integers(0, ds.n_items, 5000)], 1)
    assert pairs.mean() > random.mean() + 0.3


def test_synthetic_config_refuses_impossible_settings():
    with pytest.raises(ValueError, match="leaf facets"):
        SyntheticConfig(n_items=10, branching=(4, 4), level_scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="level_scale"):
        SyntheticConfig(branching=(4, 4))
    with pytest.raises(ValueError, match="raise n_users or max_len"):
        make_synthetic(SyntheticConfig(n_items=200, n_users=2, branching=(4,), level_scales=(1.0,)))


def test_synthetic_item_vectors_are_chunk_independent():
    import torch
    n, d = 40_000, 16  # spans three internal blocks, not a multiple of any of them
    ref = synthetic_item_vectors(n, d=d, seed=3)
    assert ref.shape == (n, d) and ref.dtype == torch.float32
    for chunk in (1000, 7777, 16384, 1 << 20):
        assert torch.equal(synthetic_item_vectors(n, d=d, seed=3, chunk=chunk), ref), chunk
    assert torch.equal(synthetic_item_vectors(123, d=d, seed=3), ref[:123])
    assert torch.isfinite(ref).all()
    assert (ref.double().norm(dim=1) - 1).abs().max() < 1e-6
    assert not torch.equal(synthetic_item_vectors(n, d=d, seed=4)[:100], ref[:100])
    assert synthetic_item_vectors(0, d=d).shape == (0, d)


def test_import_leaves_torch_alone():
    code = "import sys, capsid_gr.data; assert 'torch' not in sys.modules, 'torch imported'"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "python")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# ---------------------------------------------------------------- split, popularity, tiers


def _tiny() -> SequenceDataset:
    return SequenceDataset(
        n_items=8,
        sequences=[
            np.array([0, 1, 2]),
            np.array([3, 4, 5, 6, 7]),
            np.array([1, 1, 2, 3]),
        ],
        name="tiny",
    )


def test_split_leave_one_out_exact():
    sp = _tiny().split()
    assert [s.tolist() for s in sp.train] == [[0], [3, 4, 5], [1, 1]]
    assert sp.n_train_interactions == 6
    P = PAD_ITEM
    assert sp.valid.target.tolist() == [1, 6, 2]
    assert sp.valid.length.tolist() == [1, 3, 2]
    assert sp.valid.history.tolist() == [[0, P, P], [3, 4, 5], [1, 1, P]]
    assert sp.test.target.tolist() == [2, 7, 3]
    assert sp.test.length.tolist() == [2, 4, 3]
    assert sp.test.history.tolist() == [[0, 1, P, P], [3, 4, 5, 6], [1, 1, 2, P]]
    assert [h.tolist() for h in sp.test.histories()] == [[0, 1], [3, 4, 5, 6], [1, 1, 2]]


def test_split_truncates_history_to_most_recent():
    seq = np.arange(60) % 9
    sp = SequenceDataset(n_items=9, sequences=[seq]).split()
    assert sp.valid.history.tolist() == [seq[-52:-2].tolist()]
    assert sp.test.history.tolist() == [seq[-51:-1].tolist()]
    assert sp.train[0].tolist() == seq[:-2].tolist()  # training prefixes are not cut
    sp3 = SequenceDataset(n_items=9, sequences=[seq]).split(max_history=3)
    assert sp3.test.history.tolist() == [seq[-4:-1].tolist()]


def test_split_refuses_short_user():
    ds = SequenceDataset(n_items=4, sequences=[np.array([0, 1, 2]), np.array([3, 0])], name="t")
    with pytest.raises(DataError, match=r"user 1 \(0-based\) has 2 items.*at least 3"):
        ds.split()


def test_dataset_refuses_out_of_range_ids():
    with pytest.raises(DataError, match="user 1 has item id 5, outside 0..4"):
        SequenceDataset(n_items=5, sequences=[np.array([0, 1, 2]), np.array([1, 5, 2])])
    with pytest.raises(DataError, match="item_text has 1 rows for 5 items"):
        SequenceDataset(n_items=5, sequences=[np.array([0, 1, 2])], item_text=["x"])


def test_popularity_counts_training_only():
    assert _tiny().popularity().tolist() == [1, 2, 0, 1, 1, 1, 0, 0]


def test_tiers_on_hand_built_popularity():
    counts = np.array([5, 9, 0, 9, 1, 1, 3, 7, 0, 2])
    t = popularity_tiers(counts)
    # Popularity order with ties by lower id first: 1 3 | 7 0 6 | 9 4 5 2 8
    assert np.flatnonzero(t.head).tolist() == [1, 3]
    assert np.flatnonzero(t.torso).tolist() == [0, 6, 7]
    assert np.flatnonzero(t.tail).tolist() == [2, 4, 5, 8, 9]
    assert np.flatnonzero(t.cold).tolist() == [2, 4, 5, 6, 8, 9]


def test_tiers_all_ties_and_odd_sizes():
    t = popularity_tiers(np.full(7, 4))  # head floor(1.4) = 1, tail floor(3.5) = 3
    assert np.flatnonzero(t.head).tolist() == [0]
    assert np.flatnonzero(t.torso).tolist() == [1, 2, 3]
    assert np.flatnonzero(t.tail).tolist() == [4, 5, 6]
    assert t.cold.all()
    one = popularity_tiers(np.array([3]))
    assert (one.head.sum(), one.torso.sum(), one.tail.sum()) == (0, 1, 0)
    assert (t.head ^ t.torso ^ t.tail).all() and not (t.head & t.tail).any()


def test_fingerprint_tracks_content_not_name():
    a = _tiny()
    b = SequenceDataset(n_items=8, sequences=[s.copy() for s in a.sequences], name="other")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    b.sequences[2][0] = 0
    assert a.fingerprint() != b.fingerprint()
    # The same items split into users differently is different content.
    regrouped = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7, 1, 1, 2, 3])]
    c = SequenceDataset(n_items=8, sequences=regrouped)
    assert c.fingerprint() != a.fingerprint()


# ---------------------------------------------------------------- Amazon loader, small files


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "content, line, what",
    [
        ("1 1 2 3\n2 1 x 3\n", 2, "'x' is not a non-negative integer id"),
        ("1 1 2 3\n2 1 2 3 -4\n", 2, "'-4' is not"),
        ("1 1 2 3\n\n2 1 2 3\n", 2, "empty line"),
        ("1 1 2 3\n2 1 0 3\n", 2, "item id 0 out of range"),
        ("1 1 2 3\n2 3 1\n3 1 2 3\n", 2, "user 2 has 2 items, at least 3 needed"),
        ("1 1 2 3\n2 1 2 3\n1 3 2 1\n", 3, "user 1 already appeared on line 1"),
    ],
)
def test_malformed_sequences_name_file_and_line(tmp_path, content, line, what):
    path = _write(tmp_path, "Toy.txt", content)
    with pytest.raises(DataError) as err:
        load_amazon(tmp_path, name="Toy")
    assert f"{path}:{line}:" in str(err.value)
    assert what in str(err.value)


def test_trailing_blank_lines_and_crlf_are_fine(tmp_path):
    _write(tmp_path, "Toy.txt", "1 1 2 3\r\n2 3 2 1\r\n\n\n")
    ds = load_amazon(tmp_path, name="Toy")
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [2, 1, 0]]
    assert ds.n_items == 3 and ds.item_text is None and ds.item_attributes is None


def test_cr_only_line_endings_are_refused(tmp_path):
    """Old-Mac line endings would otherwise read as one user holding every item."""
    path = _write(tmp_path, "Toy.txt", "1 1 2 3\r2 3 2 1\r3 1 2 3\r")
    with pytest.raises(DataError, match=rf"{path}:1: carriage return without a line feed"):
        load_amazon(tmp_path, name="Toy")
    _write(tmp_path, "Toy.txt", "1 1 2 3\r\n2 3 2 1\n3 1\r2 3\n")  # one stray CR on line 3
    with pytest.raises(DataError, match=r"Toy.txt:3: carriage return"):
        load_amazon(tmp_path, name="Toy")


def test_huge_ids_and_huge_tokens_get_short_errors(tmp_path):
    path = _write(tmp_path, "Toy.txt", "1 1 2 3\n2 3 2 2000000000\n")
    with pytest.raises(DataError, match=rf"{path}: largest item id 2000000000 but only 4 distinct items"):
        load_amazon(tmp_path, name="Toy")
    _write(tmp_path, "Toy.txt", "1 1 2 3\n2 3 2 " + "x" * 100_000 + "\n")
    with pytest.raises(DataError) as err:
        load_amazon(tmp_path, name="Toy")
    assert "is not a non-negative integer id" in str(err.value) and len(str(err.value)) < 200
    _write(tmp_path, "Toy.txt", "1 1 2 3\n2 3 2 900\n")
    assert load_amazon(tmp_path, name="Toy").n_items == 900


@pytest.mark.parametrize("fname", ["datamaps.json", "Toy_item2attributes.json"])
def test_duplicate_json_keys_are_refused(tmp_path, fname):
    _toy_metadata(tmp_path)
    if fname == "datamaps.json":
        text = '{"id2item": {"1": "A1",\n "2": "B2",\n "3": "C3",\n "2": "Z9"}, "item2id": {}}'
    else:
        text = '{"1": [1, 4],\n "3": [2],\n "1": [3]}'
    path = _write(tmp_path, fname, text)
    with pytest.raises(DataError, match=rf"{path}:[34]: key '[12]' appears twice in one object"):
        load_amazon(tmp_path, name="Toy")


def test_metadata_line_numbers_are_looked_up_only_for_errors(tmp_path, monkeypatch):
    """A text search per JSON key made loading quadratic (~15 s per 1,000 keys on Beauty-sized
    files): a valid file searches nothing, a bad one once, for its message."""
    import capsid_gr.data.amazon as amazon

    calls = []
    real = amazon._line_of_key
    monkeypatch.setattr(amazon, "_line_of_key", lambda *a: calls.append(a[1]) or real(*a))
    _toy_metadata(tmp_path)
    assert load_amazon(tmp_path, name="Toy").n_items == 3 and calls == []
    _write(tmp_path, "Toy_item2attributes.json", '{"1": [1],\n "3": "x"}')
    with pytest.raises(DataError, match=r"Toy_item2attributes.json:2: item id 3: attributes"):
        load_amazon(tmp_path, name="Toy")
    assert calls == ["3"]


def _toy_metadata(tmp_path: Path) -> None:
    _write(tmp_path, "Toy.txt", "1 1 2 3\n2 3 2 1 3\n")
    _write(tmp_path, "Toy_item2attributes.json", json.dumps({"1": [1, 4], "3": [2]}))
    maps = {"id2item": {"1": "A1", "2": "B2", "3": "C3"}, "item2id": {}}
    _write(tmp_path, "datamaps.json", json.dumps(maps))
    _write(
        tmp_path,
        "Amazon_Toy.item",
        "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\t"
        "categories:token_seq\tprice:float\tbrand:token\n"
        "C3\tPlain\tToy\t1.0\t'Toys'\t\t\n"
        'A1\t"Crabtree &amp; Evelyn ""Hand""\nCream"\tToy\t3.0\t'
        "\"'Toys', \"\"Women's\"\", 'Hands & Nails'\"\t5\tC&amp;E\n"
        "B2\t\t\t\t'Toys', 'Dolls'\t12.5\tAcme\n",
    )


def test_metadata_join_and_text(tmp_path):
    _toy_metadata(tmp_path)
    ds = load_amazon(tmp_path, name="Toy")
    assert ds.n_items == 3
    assert ds.item_text == [
        "Crabtree & Evelyn \"Hand\" Cream; brand C&E; Toys, Women's, Hands & Nails; price 5.00",
        "brand Acme; Toys, Dolls; price 12.50",
        "Plain; Toys",
    ]
    assert [a.tolist() for a in ds.item_attributes] == [[0, 3], [], [1]]
    bare = load_amazon(tmp_path, name="Toy", with_metadata=False)
    assert bare.item_text is None and bare.item_attributes is None


def test_metadata_unknown_ids_name_file_and_id(tmp_path):
    _toy_metadata(tmp_path)
    attrs = _write(tmp_path, "Toy_item2attributes.json", json.dumps({"1": [1], "9": [2]}))
    with pytest.raises(DataError, match=rf"{attrs}:1: unknown item id '9' \(items are 1..3\)"):
        load_amazon(tmp_path, name="Toy")

    _toy_metadata(tmp_path)
    table = tmp_path / "Amazon_Toy.item"
    table.write_text(table.read_text() + "ZZ\tx\t\t\t'Toys'\t1\tb\n")
    with pytest.raises(DataError, match=rf"{table}:6: unknown item id 'ZZ'"):
        load_amazon(tmp_path, name="Toy")

    _toy_metadata(tmp_path)
    seq = _write(tmp_path, "Toy.txt", "1 1 2 3\n2 3 4 1\n")  # datamaps knows 3 items
    with pytest.raises(DataError, match=rf"{seq}:2: item id 4 out of range \(1..3"):
        load_amazon(tmp_path, name="Toy")


def test_metadata_missing_row_is_an_error(tmp_path):
    _toy_metadata(tmp_path)
    table = tmp_path / "Amazon_Toy.item"
    lines = table.read_text().split("\n")
    table.write_text("\n".join(lines[:1] + lines[2:]))  # drop C3
    with pytest.raises(DataError, match=r"no row for 1 items, e.g. item id 3 \(ASIN 'C3'\)"):
        load_amazon(tmp_path, name="Toy")


def test_default_beauty_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPSID_BEAUTY_DIR", str(tmp_path))
    assert default_beauty_dir() == tmp_path


# ---------------------------------------------------------------- the real Beauty data


@pytest.mark.skipif(default_beauty_dir() is None, reason="Beauty data not found")
def test_beauty_matches_source_counts():
    ds = load_amazon(default_beauty_dir(), name="Beauty")
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (22_363, 12_101, 198_502)
    lengths = ds.lengths()
    assert (lengths.min(), int(np.median(lengths)), lengths.max()) == (5, 6, 204)
    sp = ds.split()
    assert sp.n_train_interactions == 153_776
    assert len(sp.valid.target) == len(sp.test.target) == 22_363
    assert sp.test.history.shape == (22_363, 50)
    assert len(ds.item_text) == 12_101 and all(ds.item_text)
    assert not any("&amp;" in t or "&#39;" in t or "\n" in t for t in ds.item_text)
    assert len(ds.item_attributes) == 12_101 and all(len(a) for a in ds.item_attributes)
    assert max(int(a.max()) for a in ds.item_attributes) == 636  # 637 ids, 0-based
    assert np.isclose(np.mean([len(a) for a in ds.item_attributes]), 3.72, atol=0.005)
    assert ds.popularity().sum() == 153_776
    assert ds.fingerprint() == load_amazon(default_beauty_dir()).fingerprint()
