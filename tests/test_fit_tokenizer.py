"""One tokenizer-fitting path (issue 17, item 4): `capsid tokenize`/`run` and `capsid pipeline`
both fit through capsid_gr.jobs.fit_tokenizer, so the same settings give the same SIDs and the
same vectors are refused with the same message by both (CPU, tiny synthetic catalogue)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from capsid_gr import pipeline
from capsid_gr.cli import main
from capsid_gr.data import SyntheticConfig, make_synthetic
from capsid_gr.jobs import tokenize as tokenize_job
from capsid_gr.jobs.fit_tokenizer import FitSettings, check_item_vectors, fit_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLI = ["--items", "300", "--users", "200", "--epochs", "1", "--capsules", "8", "--capsule-dim", "8",
       "--max-length", "3", "--batch-size", "128", "--rq-levels", "2", "--quiet", "--threads", "1",
       "--device", "cpu"]
PRESET = {  # the same settings as CLI, written as a pipeline preset
    "tokenizer": {"capsules": 8, "capsule_dim": 8, "max_length": 3, "backend": "auto"},
    "stage1": {"epochs": 1, "batch_size": 128},
    "bpe": {},
    "rqkmeans": {"levels": 2, "codes": 8},
    "gaoq": {},
    "rqvae": {"levels": 2, "codes": 8},
}


def test_the_cli_and_a_preset_with_the_same_settings_meet_in_one_fit_settings():
    from capsid_gr.stage1 import Stage1Config

    cli = tokenize_job.fit_settings(tokenize_job.TokenizeSettings(
        capsules=8, capsule_dim=8, max_length=3, rq_levels=2, stage1=Stage1Config(epochs=1, batch_size=128)))
    preset = pipeline.fit_settings(PRESET)
    assert cli.threads == 1 and preset.threads is None  # RQ-VAE on one thread unless `capsid tokenize --threads`
    assert dataclasses.replace(cli, threads=None) == preset


def test_tokenize_and_the_pipeline_fit_the_same_sids_and_merges(tmp_path):
    out = tmp_path / "tok"
    data = make_synthetic(SyntheticConfig(n_items=300, n_users=200, seed=0))  # the CLI's catalogue
    np.save(tmp_path / "v.npy", data.item_vectors)  # the vectors the pipeline's synthetic preset uses
    assert main(["tokenize", *CLI, "--vectors", str(tmp_path / "v.npy"), "--out", str(out),
                 "--tokenizer", "capsid,rqkmeans,gaoq"]) == 0
    settings = pipeline.fit_settings(PRESET)
    for name in ("capsid", "rqkmeans", "gaoq"):
        fit = fit_tokenizer(name, data.item_vectors, settings, 0, weights=data.popularity(),
                            out_dir=tmp_path / "pipe" / name)
        assert np.array_equal(fit.sids, np.load(out / name / "sids.npy")), name
    assert fit.x is data.item_vectors  # float32 vectors are used as given, not copied
    capsid = fit_tokenizer("capsid", data.item_vectors, settings, 0, weights=data.popularity(),
                           out_dir=tmp_path / "pipe" / "capsid")  # resumes the finished run
    assert capsid.merges.to_json() == (out / "capsid" / "merges.json").read_text()
    assert capsid.merged() == json.loads((out / "capsid" / "merged.json").read_text())


def _zero_row(path, n: int, row: int = 7) -> None:
    x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    x[row] = 0.0  # an item without a direction: every tokenizer normalises each item
    np.save(path, x)


def test_both_commands_refuse_a_zero_item_vector_with_one_message(tmp_path, capsys):
    want = "item vectors: expected finite, non-zero rows (in float32), row 7 is zero (1 such rows)"
    _zero_row(tmp_path / "v300.npy", 300)
    for tokenizer in ("rqkmeans", "capsid"):
        assert main(["tokenize", *CLI, "--vectors", str(tmp_path / "v300.npy"), "--tokenizer", tokenizer,
                     "--out", str(tmp_path / "tok")]) == 2
        assert want in capsys.readouterr().err, tokenizer
    _zero_row(tmp_path / "v1000.npy", 1000)  # the cpu preset's catalogue
    for tokenizer in ("rqkmeans", "capsid"):
        assert main(["pipeline", "--preset", "cpu", "--vectors", str(tmp_path / "v1000.npy"), "--device", "cpu",
                     "--tokenizer", tokenizer, "--quiet", "--out", str(tmp_path / "pipe")]) == 2
        assert want in capsys.readouterr().err, tokenizer


def test_check_item_vectors_takes_awkward_shapes_and_names_what_is_wrong():
    one = np.ones((1, 1), np.float32)
    assert check_item_vectors(one) is one  # one item of one dimension; float32 is not copied
    assert check_item_vectors(np.ones((3, 5))).dtype == np.float32  # float64 and ints become float32
    assert check_item_vectors(np.arange(1, 7).reshape(3, 2)).dtype == np.float32
    assert check_item_vectors(torch.ones(2, 3, dtype=torch.float64)).shape == (2, 3)
    for bad, what in [(np.ones((0, 4)), r"expected a \[N >= 1, d >= 1\] matrix .*got float64 \[0, 4\]"),
                      (np.ones(4), r"got float64 \[4\]"),
                      (np.ones((2, 2), bool), "expected real numbers .*got dtype bool"),
                      (np.array([[1.0], [np.nan], [np.inf]]), r"row 1 is NaN or Inf \(2 such rows\)"),
                      (np.array([[1.0], [1e39]]), r"row 1 is NaN or Inf"),  # past float32's range
                      (np.array([[1.0, 0.0], [0.0, 0.0]]), r"row 1 is zero")]:
        with pytest.raises(ValueError, match=what):
            check_item_vectors(bad)
    with pytest.raises(ValueError, match=r"expected a \[N=3, d >= 1\] matrix .*got float32 \[1, 1\]"):
        check_item_vectors(one, rows=3)


def test_a_capsid_fit_needs_the_item_weights_and_unknown_names_are_refused():
    x = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="needs weights"):
        fit_tokenizer("capsid", x, FitSettings(), 0)
    with pytest.raises(ValueError, match="unknown 'vqvae'"):
        fit_tokenizer("vqvae", x, FitSettings(), 0)
    with pytest.raises(ValueError, match=r"\[N=3, d >= 1\]"):
        fit_tokenizer("rqkmeans", x, FitSettings(), 0, weights=np.ones(3))
