"""Entry-point checks added in issue 21's second pass: wrong types are TypeErrors naming the argument,
long values are elided, ids outside a caller's vocabulary are no trie tokens, and every CLI setting is
checked before the data is read."""

from __future__ import annotations

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.decode import build_trie
from capsid_kernels.decode.beam_step import beam_step
from capsid_kernels.decode.hf import TrieLogitsProcessor

EOS, V = 2, 12


def test_long_values_are_elided_in_kernel_errors():
    with pytest.raises(ValueError, match=r"backend: expected .*\.\.\.\(2002 chars\)") as e:
        ck.CapsIDConfig(backend="x" * 2000)
    assert len(str(e.value)) < 150
    with pytest.raises(ValueError, match=r"mode: .*\.\.\.\(") as e:
        ck.CapsIDConfig(mode="soft" * 500)
    assert len(str(e.value)) < 150
    with pytest.raises(ValueError, match=r"num_beams: .*chars\)"):
        ck.beam_search(lambda b: None, build_trie([[3, EOS]], V), "9" * 300, 1)


def test_wrong_types_are_type_errors_naming_the_argument():
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=8, capsules=4, capsule_dim=4, max_length=2))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        tok.tokenize([[0.1] * 8])
    with pytest.raises(TypeError, match="x: expected a floating dtype"):
        tok.tokenize(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        ck.tokenize([[1.0] * 8], [(m.W, m.b, m.D) for m in tok.layers])
    with pytest.raises(ValueError, match="batch_size"):
        ck.tokenize(torch.randn(4, 8), [(m.W, m.b, m.D) for m in tok.layers], batch_size=True)
    rows = 2
    with pytest.raises(TypeError, match="trie: expected a capsid_kernels Trie"):
        beam_step(torch.randn(rows, V), torch.zeros(rows, dtype=torch.int32), torch.zeros(rows),
                  torch.zeros(rows, dtype=torch.bool), {"not": "a trie"}, 2)


def test_hf_processor_treats_ids_outside_the_vocabulary_as_text():
    lay = ck.TokenLayout(pad=0, bos=0, eos=1, first_code=20, num_codes=V - 3)
    trie = build_trie(lay.trie_paths(torch.tensor([[20, 21, 1, 0], [24, 1, 0, 0]])), lay.trie_vocab_size)
    scores = torch.randn(4, 40)
    ids = torch.tensor([[0, 20], [0, 99], [0, -5], [0, 24]])  # 99 >= V and -5 < 0: no code, no IndexError
    out = TrieLogitsProcessor(trie, layout=lay)(ids, scores)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [21]
    assert not torch.isfinite(out[1]).any() and not torch.isfinite(out[2]).any()
    assert torch.isfinite(out[3]).nonzero().flatten().tolist() == [1]


@pytest.mark.parametrize("flags, field", [
    (["--lr", "-1"], "lr"), (["--epochs", "0"], "epochs"), (["--capsules", "0"], "capsules"),
    (["--backend", "fast"], "backend"), (["--max-length", "0"], "max_length"),
])
def test_tokenize_settings_are_checked_before_the_data_is_read(tmp_path, capsys, flags, field):
    from capsid_gr.cli import main

    missing = tmp_path / "no-such-data"  # reading it would fail with another message
    assert main(["tokenize", "--data", str(missing), "--out", str(tmp_path / "o"), "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capsid: error: ") and field in err and "no-such-data" not in err, err


@pytest.mark.parametrize("flags, word", [
    (["--beams", "0"], "--beams"), (["--ks", "0"], "--ks"), (["--seeds", "-1"], "--seeds"),
    (["--stage2-epochs", "0"], "--stage2-epochs"),
])
def test_pipeline_flags_are_checked_before_any_work(tmp_path, capsys, flags, word):
    from capsid_gr.cli import main

    assert main(["pipeline", "--preset", "cpu", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("capsid: error: ") and word in err and "none" not in err.split(word)[0], err


def test_encode_preset_and_backend_are_checked_before_vectors_are_drawn(capsys):
    from capsid_gr.cli import main

    assert main(["encode", "--items", "10", "--preset", "huge", "--device", "cpu", "--quiet"]) == 2
    assert "name: expected one of" in capsys.readouterr().err
    assert main(["encode", "--items", "10", "--backend", "fast", "--device", "cpu", "--quiet"]) == 2
    assert "backend: expected" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [0, 2, True, 3.0])
def test_load_amazon_refuses_min_items_leave_one_out_cannot_split(tmp_path, bad):
    from capsid_gr.data import load_amazon

    (tmp_path / "Beauty.txt").write_text("1 1 2 3\n2 2 3 1\n")
    with pytest.raises(ValueError, match="min_items: expected an integer >= 3"):
        load_amazon(tmp_path, min_items=bad)
