"""Argument and value checks of the decode entry points (issue 10): each error names the
argument, what was expected and what came; each switch-off really switches the check off."""

from __future__ import annotations

import io
import os

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.decode.beam_step import beam_step
from capsid_kernels.decode.hf import TrieLogitsProcessor
from capsid_kernels.decode.search import initial_beams
from capsid_kernels.decode.trie import EOS, Trie, TrieError, build_trie

V = 8


@pytest.fixture
def trie():
    return build_trie([[3, 4, EOS], [3, 5, EOS], [6, EOS]], V, popularity=torch.tensor([1.0, 2.0, 3.0]))


def beams(trie, q=2, b=2):
    s = initial_beams(q, b, "cpu")
    return torch.zeros(q * b, V), s.node, s.score, s.finished


def test_node_outside_the_trie_is_refused_by_value(trie):
    logits, node, score, fin = beams(trie)
    node = node.clone()
    node[2] = trie.num_nodes  # one past the last node: a beam from another trie
    fin = fin.clone()
    fin[2] = False
    with pytest.raises(ValueError, match=rf"node: expected trie node ids in \[-1, trie.num_nodes = "
                                         rf"{trie.num_nodes}\).*got {trie.num_nodes} at row 2"):
        beam_step(logits, node, score, fin, trie, 2, backend="eager")
    node[2] = -2
    with pytest.raises(ValueError, match="got -2 at row 2"):
        beam_step(logits, node, score, fin, trie, 2, backend="eager")


def test_nan_and_posinf_logits_are_refused_naming_the_row(trie):
    logits, node, score, fin = beams(trie)
    logits[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"logits: expected finite values or -inf, got NaN in row 3 \(1 such rows\)"):
        beam_step(logits, node, score, fin, trie, 2, backend="eager")
    logits[3, 5] = float("inf")
    with pytest.raises(ValueError, match=r"got \+inf in row 3"):
        beam_step(logits, node, score, fin, trie, 2, backend="eager")


def test_minus_inf_logits_mask_tokens_and_pass(trie):
    logits, node, score, fin = beams(trie, q=1, b=2)
    logits[0, 3] = float("-inf")  # forbid code 3: only item 2 (path [6]) stays reachable at step 1
    out = beam_step(logits, node, score, fin, trie, 2, backend="eager")
    assert out.token.tolist()[0] == 6 and out.node.tolist()[1] == -1


def test_unchecked_nan_row_has_no_selectable_candidate_on_eager(trie):
    """The documented handling with check_values=False: the NaN row's beam dies, no NaN leaks."""
    logits, node, score, fin = beams(trie, q=1, b=2)
    logits[0, 5] = float("nan")
    out = beam_step(logits, node, score, fin, trie, 2, backend="eager", check_values=False)
    assert out.node.tolist() == [-1, -1] and out.score.tolist() == [float("-inf")] * 2
    assert not torch.isnan(out.score).any()


def test_nan_score_of_a_present_beam_is_refused(trie):
    logits, node, score, fin = beams(trie)
    score = score.clone()
    score[0] = float("nan")
    with pytest.raises(ValueError, match=r"score: expected a finite or -inf score .* got nan at row 0"):
        beam_step(logits, node, score, fin, trie, 2, backend="eager")


def test_step_shape_errors_name_expected_and_actual(trie):
    logits, node, score, fin = beams(trie)
    with pytest.raises(ValueError, match=r"logits: expected V = trie.vocab_size = 8 columns, got V = 9"):
        beam_step(torch.zeros(4, 9), node, score, fin, trie, 2)
    with pytest.raises(ValueError, match=r"num_beams: expected an integer >= 1 that divides the 4 logit rows, got 3"):
        beam_step(logits, node, score, fin, trie, 3)
    with pytest.raises(ValueError, match=r"node: expected torch.int32 of shape \(4,\), got torch.int64"):
        beam_step(logits, node.long(), score, fin, trie, 2)
    with pytest.raises(TypeError, match="score: expected a torch.Tensor, got list"):
        beam_step(logits, node, score.tolist(), fin, trie, 2)


def test_beam_search_checks_arguments_up_front(trie):
    calls = []

    def step_fn(b):
        calls.append(b.step)
        return torch.zeros(b.node.numel(), V)

    for kw, msg in (({"num_queries": 0}, r"num_queries: expected an integer >= 1, got 0"),
                    ({"num_queries": 2.0}, r"num_queries: expected an integer >= 1, got 2.0"),
                    ({"num_beams": 0}, r"num_beams: expected an integer >= 1, got 0"),
                    ({"top_k": 0}, r"top_k: expected None or an integer >= 1, got 0"),
                    ({"device": "meta"}, r"device: expected the trie's device \(cpu\), got meta")):
        args = {"num_beams": 2, "num_queries": 1, **kw}
        with pytest.raises(ValueError, match=msg):
            ck.beam_search(step_fn, trie, args.pop("num_beams"), args.pop("num_queries"), **args)
    assert calls == []  # refused before the generator ran


def test_beam_search_live_only_row_count_is_checked(trie):
    with pytest.raises(ValueError, match=r"step_fn: with live_only=True expected logits \[len\(beams.rows\) = 1, V\] "
                                         r"at step 0, got \(2, 8\)"):
        ck.beam_search(lambda b: torch.zeros(2, V), trie, 2, 1, live_only=True)


def test_beam_search_nan_from_the_generator_names_the_step_row(trie):
    def step_fn(b):
        out = torch.zeros(b.node.numel(), V)
        if b.step == 1:
            out[1] = float("nan")
        return out

    with pytest.raises(ValueError, match="logits: expected finite values or -inf, got NaN in row 1"):
        ck.beam_search(step_fn, trie, 2, 1)
    res = ck.beam_search(step_fn, trie, 2, 1, check_values=False)  # hot path: no check, no NaN out
    assert not torch.isnan(res.item_scores).any()


def test_hf_processor_checks_prefix_and_vocab(trie):
    with pytest.raises(ValueError, match=r"prefix_len: expected an integer >= 0, got -1"):
        TrieLogitsProcessor(trie, prefix_len=-1)
    proc = TrieLogitsProcessor(trie, prefix_len=3)
    ids = torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"prefix_len: expected at most the 2 tokens of input_ids, got 3"):
        proc(ids, torch.zeros(2, V))
    proc = TrieLogitsProcessor(trie, prefix_len=1)
    with pytest.raises(ValueError, match=r"scores: expected V >= 8 columns \(the trie.s 8 tokens in this layout\), got 7"):
        proc(ids[:, :1], torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"scores: expected 2 rows \(one per row of input_ids\), got 3"):
        proc(ids[:, :1], torch.zeros(3, V))
    # A padded model vocabulary is allowed; the extra tokens are never allowed.
    out = proc(ids[:, :1], torch.zeros(2, V + 5))
    assert out.shape == (2, V + 5)
    assert torch.isfinite(out[0]).nonzero().squeeze(1).tolist() == [3, 6]


def test_trie_save_fsyncs_and_stores_a_fingerprint(trie, tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    trie.save(tmp_path / "t.pt")
    assert len(synced) == 2  # the file, then its folder
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]  # no temporary left behind
    back = Trie.load(tmp_path / "t.pt", expect_fingerprint=trie.fingerprint())
    assert back.fingerprint() == trie.fingerprint()
    other = build_trie([[3, 4, EOS], [3, 5, EOS], [7, EOS]], V)
    assert other.fingerprint() != trie.fingerprint()
    with pytest.raises(TrieError, match="built from other SIDs or another vocabulary"):
        Trie.load(tmp_path / "t.pt", expect_fingerprint=other.fingerprint())


def _save_payload(path, trie, **changes):
    import json

    meta = {**trie.meta(), "fingerprint": trie.fingerprint()}
    payload = {"meta_json": json.dumps(meta), **{k: v for k, v in trie.tensors().items()}}
    payload.update(changes)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())


def test_trie_load_checks_dtypes_structure_and_fingerprint(trie, tmp_path):
    p = tmp_path / "t.pt"
    _save_payload(p, trie, child_start=trie.child_start.float())
    with pytest.raises(TrieError, match=r"tensor child_start: expected a 1-D tensor of torch.int32, got torch.float32"):
        Trie.load(p)
    items = trie.items.clone()
    items[0] = 7  # same dtype and shape: only the fingerprint can tell
    _save_payload(p, trie, items=items)
    with pytest.raises(TrieError, match="fingerprint .* differs from the stored"):
        Trie.load(p)
    token = trie.token.clone()
    token[1], token[2] = token[2].clone(), token[1].clone()  # siblings out of order
    _save_payload(p, trie, token=token)
    with pytest.raises(TrieError, match="not sorted by token"):
        Trie.load(p)
    p.write_bytes(b"not a zip file")
    with pytest.raises(TrieError, match="not a readable trie file"):
        Trie.load(p)


@pytest.mark.parametrize("args, kw, what", [
    (([[3, 4, 2]], 12.5), {}, r"vocab_size: expected an integer, got 12.5"),
    (([[3, 4, 2]], True), {}, r"vocab_size: expected an integer, got True"),
    (([[3.5, 4, 2]], 12), {}, r"paths: item row 0 holds 3.5 \(float\)"),
    (([[3, 4, 2]], 12), {"item_ids": [1.5]}, r"item_ids: expected integer ids, got dtype torch.float32"),
    (([[3, 4, 2]], 12), {"item_ids": [1, 2]}, r"item_ids: expected shape \(1,\), got \(2,\)"),
    (([[3, 4, 2]], 12), {"popularity": "many"}, r"popularity: expected 1 numbers"),
])
def test_build_trie_refuses_fractions_and_names_bad_lists(args, kw, what):
    """Fractional sizes and ids were truncated silently; plain lists raised AttributeError."""
    with pytest.raises(ck.TrieError, match=what):
        ck.build_trie(*args, **kw)


def test_build_trie_takes_lists_for_ids_and_popularity():
    trie = ck.build_trie([[3, 2], [3, 2], [4, 2]], 8, item_ids=[7, 5, 9], popularity=[1, 3, 2])
    assert trie.items.tolist() == [5, 7, 9]  # the shared leaf lists the more popular item first
