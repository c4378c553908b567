"""Checks the code already made that no test held (docs/validation.md, "known limits"): each
test gives a realistic bad input and asserts the error type and that the message names the
argument, what was expected and what came. Each was seen to fail with its check removed."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.decode import trie as trie_module
from capsid_kernels.decode.beam_step import beam_step
from capsid_kernels.decode.hf import TrieLogitsProcessor
from capsid_kernels.decode.search import initial_beams
from capsid_kernels.decode.trie import EOS, Trie, TrieError, build_trie

V = 8
PATHS = [[3, 4, EOS], [3, 5, EOS], [6, EOS]]


@pytest.fixture
def trie():
    return build_trie(PATHS, V)


def _loud(what: str):
    """A stand-in for expensive work that must not start: fails the test if called."""
    def fail(*_, **__):
        raise AssertionError(f"{what} ran before the bad input was refused")
    return fail


# ---------------------------------------------------------------- build_trie


def test_build_trie_refuses_negative_item_ids_naming_the_row():
    with pytest.raises(TrieError, match=r"item_ids: expected ids >= 0, got -1 at row 1 \(1 such rows\)"):
        build_trie(PATHS, V, item_ids=[4, -1, 7])  # e.g. a 0-based id made from a 0 that meant "none"


@pytest.mark.parametrize("vocab_size", [3, 0, -5, 2**31])
def test_build_trie_refuses_vocab_size_outside_its_range(vocab_size):
    with pytest.raises(TrieError, match=rf"vocab_size: expected 3 < vocab_size < 2\*\*31, got {vocab_size}$"):
        build_trie([[3, EOS]], vocab_size)


def test_build_trie_refuses_popularity_of_the_wrong_shape_or_not_finite():
    with pytest.raises(TrieError, match=r"popularity: expected shape \(3,\), got \(2,\)"):
        build_trie(PATHS, V, popularity=torch.tensor([1.0, 2.0]))  # one count short
    with pytest.raises(TrieError, match=r"popularity: expected shape \(3,\), got \(3, 1\)"):
        build_trie(PATHS, V, popularity=torch.ones(3, 1))  # a column vector
    with pytest.raises(TrieError, match=r"popularity: expected finite values, got nan at row 2 \(1 such rows\)"):
        build_trie(PATHS, V, popularity=[1.0, 2.0, float("nan")])  # e.g. a log of 0/0
    with pytest.raises(TrieError, match=r"popularity: expected finite values, got inf at row 0 \(2 such rows\)"):
        build_trie(PATHS, V, popularity=np.array([np.inf, 1.0, -np.inf]))


def test_build_trie_refuses_more_nodes_than_int32_node_ids_allow(monkeypatch):
    """2**31 nodes cannot be built in a test: the limit is lowered to the 5 nodes of PATHS
    (root, 3, 3-4, 3-5, 6), so that the same comparison refuses them."""
    monkeypatch.setattr(trie_module, "INDEX_LIMIT", 5)
    with pytest.raises(TrieError, match=r"paths: expected a trie of fewer than 5 nodes \(int32 node ids\), "
                                        r"got 5 nodes from 3 items"):
        build_trie(PATHS, V)
    monkeypatch.setattr(trie_module, "INDEX_LIMIT", 6)
    assert build_trie(PATHS, V).num_nodes == 5


def test_build_trie_refuses_more_items_than_int32_leaf_offsets_allow(monkeypatch):
    """Colliding items share nodes, so the item count has its own limit (lowered here to 4)."""
    monkeypatch.setattr(trie_module, "INDEX_LIMIT", 4)
    with pytest.raises(TrieError, match=r"paths: expected fewer than 4 items \(int32 leaf offsets\), got 4"):
        build_trie([[3, EOS]] * 4, V)  # 2 nodes (root, 3), 4 items on one leaf
    assert build_trie([[3, EOS]] * 3, V).num_items == 3


# ---------------------------------------------------------------- a trie that is not a Trie


def test_beam_search_and_hf_processor_refuse_a_trie_that_is_not_a_trie(trie, tmp_path):
    path = tmp_path / "trie.pt"
    trie.save(path)
    calls = []

    def step_fn(b):
        calls.append(b.step)
        return torch.zeros(b.node.numel(), V)

    for not_a_trie, kind in ((str(path), "str"), (trie.tensors(), "dict"), (PATHS, "list")):
        with pytest.raises(TypeError, match=rf"trie: expected a capsid_kernels Trie, got {kind}$"):
            ck.beam_search(step_fn, not_a_trie, 2, 1)
        with pytest.raises(TypeError, match=rf"trie: expected a capsid_kernels Trie, got {kind}$"):
            TrieLogitsProcessor(not_a_trie, prefix_len=1)
    assert calls == []


# ---------------------------------------------------------------- beam_step devices (CPU: meta tensors)


def test_beam_step_refuses_beams_and_trie_on_another_device_than_the_logits(trie):
    """The device checks read metadata only, so tensors of the `meta` device reach them on a
    machine without a GPU: a beam state or a trie left on the CPU beside logits elsewhere."""
    s = initial_beams(2, 2, "cpu")
    node, score, fin = s.node, s.score, s.finished
    logits = torch.zeros(4, V, device="meta")
    with pytest.raises(ValueError, match=r"node: expected the device of logits \(meta\), got cpu; "
                                         r"put beams and logits together"):
        beam_step(logits, node, score.to("meta"), fin.to("meta"), trie, 2, backend="eager")
    with pytest.raises(ValueError, match=r"score: expected the device of logits \(meta\), got cpu"):
        beam_step(logits, node.to("meta"), score, fin.to("meta"), trie, 2, backend="eager")
    with pytest.raises(ValueError, match=r"finished: expected the device of logits \(meta\), got cpu"):
        beam_step(logits, node.to("meta"), score.to("meta"), fin, trie, 2, backend="eager")
    with pytest.raises(ValueError, match=r"trie: expected the device of logits \(meta\), got cpu; "
                                         r"use trie.to\(logits.device\)"):
        beam_step(logits, node.to("meta"), score.to("meta"), fin.to("meta"), trie, 2, backend="eager")
    with pytest.raises(ValueError, match=r"trie: expected the device of logits \(cpu\), got meta"):
        beam_step(torch.zeros(4, V), node, score, fin, trie.to("meta"), 2, backend="eager")


# ---------------------------------------------------------------- Trie.load


def _save_payload(path, trie, meta_changes=(), drop=(), **tensors):
    meta = {**trie.meta(), "fingerprint": trie.fingerprint(), **dict(meta_changes)}
    payload = {"meta_json": json.dumps(meta), **trie.tensors(), **tensors}
    for name in drop:
        del payload[name]
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())


def test_trie_load_of_a_missing_file_names_it(tmp_path):
    path = tmp_path / "runs" / "trie.pt"  # e.g. a run that never wrote its trie
    with pytest.raises(FileNotFoundError, match=rf"{path}: trie file not found"):
        Trie.load(path)


def test_trie_load_refuses_missing_tensors_naming_them(trie, tmp_path):
    path = tmp_path / "t.pt"
    _save_payload(path, trie, drop=("items", "end_rank"))  # e.g. a trie saved by hand without them
    with pytest.raises(TrieError, match=rf"{path}: missing tensors \['end_rank', 'items'\]; "
                                        r"the file is not a saved Trie"):
        Trie.load(path)


@pytest.mark.parametrize("key, value, said", [
    ("vocab_size", "8", "'8'"), ("max_len", -1, "-1"), ("max_fanout", 2.0, "2.0"),
    ("max_len", True, "True"), ("vocab_size", None, "None"),
])
def test_trie_load_refuses_bad_meta_integers(trie, tmp_path, key, value, said):
    path = tmp_path / "t.pt"
    _save_payload(path, trie, meta_changes={key: value})
    with pytest.raises(TrieError, match=rf"{path}: meta {key}: expected an integer >= 0, got {said}$"):
        Trie.load(path)


# ---------------------------------------------------------------- data: an item table without datamaps.json


def test_item_table_without_datamaps_is_refused_naming_both_files(tmp_path):
    from capsid_gr.data import DataError, load_amazon

    (tmp_path / "Toy.txt").write_text("1 1 2 3\n2 3 2 1\n")
    table = tmp_path / "Amazon_Toy.item"
    table.write_text("item_id:token\ttitle:token\tcategories:token_seq\tprice:float\tbrand:token\n"
                     "A1\tOne\t'Toys'\t1.0\tB\nB2\tTwo\t'Toys'\t2.0\tB\nC3\tThree\t'Toys'\t3.0\tB\n")
    with pytest.raises(DataError, match=rf"{table}: item table found but {tmp_path / 'datamaps.json'} is "
                                        r"missing, and the join from item id to ASIN needs it"):
        load_amazon(tmp_path, name="Toy")
    assert load_amazon(tmp_path, name="Toy", with_metadata=False).n_items == 3  # the way out it names


# ---------------------------------------------------------------- train_stage1: item weights up front


def test_train_stage1_checks_item_weights_before_training(tmp_path, monkeypatch):
    from capsid_gr.stage1 import Stage1Config, train_stage1
    from capsid_gr.stage1 import train as train_module

    monkeypatch.setattr(train_module, "split_items", _loud("Stage 1 training"))
    x = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    cfg = Stage1Config(epochs=1, batch_size=4, init=None)
    for w, msg in ((np.ones(11), r"item_weights: expected shape \(12,\), got \(11,\)"),
                   (np.r_[np.ones(5), np.nan, np.ones(6)],
                    r"item_weights: expected finite weights >= 0, got nan for item 5 \(1 such items\)"),
                   (np.r_[np.ones(11), -3.0], r"item_weights: expected finite weights >= 0, got -3.0 for item 11")):
        tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=8, capsules=4, capsule_dim=4, max_length=2))
        with pytest.raises(ValueError, match=msg):
            train_stage1(tok, x, w, cfg, out_dir=tmp_path / "s1", show_progress=False)
    assert not (tmp_path / "s1" / "stage1.safetensors").exists()


# ---------------------------------------------------------------- CLI


def _cli_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("capsid: error: "), err
    return err


def test_vectors_save_is_test_written_before_anything_is_computed(tmp_path, capsys, monkeypatch):
    from capsid_gr import cli

    monkeypatch.setattr(cli, "_load_data", _loud("loading the data"))
    monkeypatch.setattr("capsid_gr.vectors.build_item_vectors", _loud("building the vectors"))
    afile = tmp_path / "afile"
    afile.write_text("a regular file where a folder should be")
    target = afile / "x.npy"
    assert cli.main(["vectors", "--items", "300", "--users", "200", "--device", "cpu", "--quiet",
                     "--save", str(target)]) == 2
    err = _cli_error(capsys)
    assert f"--save {afile}: expected a folder this process can write to, got " in err, err
    # a folder given as the file: it could never be written at the end either
    assert cli.main(["vectors", "--items", "300", "--users", "200", "--device", "cpu", "--quiet",
                     "--save", str(tmp_path)]) == 2
    assert f"--save {tmp_path}: expected a .npy file to write, got a folder" in _cli_error(capsys)


@pytest.mark.parametrize("command", ["run", "tokenize"])
def test_tokenize_refuses_vectors_with_another_row_count_than_the_catalogue(tmp_path, capsys, monkeypatch, command):
    from capsid_gr.cli import main

    monkeypatch.setattr("capsid_gr.jobs.tokenize.run_tokenize", _loud("the tokenizers"))
    path = tmp_path / "v.npy"
    np.save(path, np.ones((299, 8), dtype=np.float32))  # vectors of another catalogue, one item short
    rc = main([command, "--items", "300", "--users", "200", "--vectors", str(path), "--device", "cpu", "--quiet",
               "--out", str(tmp_path / "out")])
    assert rc == 2
    err = _cli_error(capsys)
    assert f"--vectors {path}: expected a [N=300, d >= 1] matrix (one row per item), got float32 [299, 8]" in err


def test_pipeline_refuses_vectors_with_another_row_count_than_the_catalogue(tmp_path, capsys, monkeypatch):
    from capsid_gr import pipeline
    from capsid_gr.cli import main

    monkeypatch.setattr(pipeline, "run_anchor", _loud("an anchor"))
    monkeypatch.setattr(pipeline, "run_one", _loud("a variant"))
    path = tmp_path / "v.npy"
    np.save(path, np.ones((1001, 16), dtype=np.float32))  # the cpu preset's catalogue has 1000 items
    rc = main(["pipeline", "--preset", "cpu", "--vectors", str(path), "--device", "cpu", "--quiet",
               "--out", str(tmp_path / "out")])
    assert rc == 2
    err = _cli_error(capsys)
    assert f"--vectors {path}: expected a [N=1000, d >= 1] matrix (one row per item), got float32 [1001, 16]" in err


@pytest.mark.parametrize("argv, target", [
    (["run", "--quiet"], "capsid_gr.cli.cmd_tokenize"),
    (["vectors", "--quiet"], "capsid_gr.cli.cmd_vectors"),
    (["pipeline", "--quiet"], "capsid_gr.pipeline.run"),
])
def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch, argv, target):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    from capsid_gr.cli import main

    try:
        rc = main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped capsid's main")
    assert rc == 130
    captured = capsys.readouterr()
    assert captured.err == "capsid: interrupted (a training run resumes from its last checkpoint)\n"
    assert "Traceback" not in captured.out
