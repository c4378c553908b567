"""One registry of tokenizer names for `capsid tokenize` and `capsid pipeline`, and the
GAOQ / RQ-VAE / HaMR integration (issue 11) on a tiny synthetic catalogue."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from capsid_gr import pipeline
from capsid_gr.cli import main
from capsid_gr.jobs import tokenize as tokenize_job
from capsid_gr.jobs.tokenizers import ALIASES, BASELINES, CAPSID_VARIANTS, TOKENIZERS, canonical, parse_tokenizers

import sklearn  # noqa: F401  (a hard dependency of the GR system)
import scipy  # noqa: F401  (a hard dependency of the GR system)

TINY = ["--items", "300", "--users", "200", "--epochs", "1", "--capsules", "8", "--capsule-dim", "8",
        "--max-length", "3", "--batch-size", "128", "--quiet", "--threads", "1"]


# Tiny models: one intra-op thread avoids oversubscribing shared 2-core runners (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pipeline_and_tokenize_share_one_registry():
    assert pipeline.VARIANTS is TOKENIZERS
    assert {"gaoq", "rqvae", "rqvae-hamr", "capsid-hamr", "capsid-nobpe"} <= set(TOKENIZERS)
    assert all(target in TOKENIZERS and alias not in TOKENIZERS for alias, target in ALIASES.items())
    assert parse_tokenizers("capsid+bpe,hard,gaoq,capsid") == ["capsid", "capsid-hard", "gaoq"]
    with pytest.raises(ValueError, match="unknown"):
        canonical("vqvae")
    args = pipeline.build_parser().parse_args(["--tokenizer", "capsid+bpe", "rqvae", "nospread"])
    assert args.tokenizer == ["capsid", "rqvae", "capsid-nospread"]
    with pytest.raises(SystemExit):
        pipeline.build_parser().parse_args(["--tokenizer", "vqvae"])
    for name in CAPSID_VARIANTS:
        pipeline.variant_settings(name, pipeline.PRESETS["cpu"])  # every variant builds its settings


def test_stage1_config_without_hamr_keeps_its_stored_form():
    from capsid_gr.stage1 import Stage1Config
    from capsid_gr.tokenizer.hamr import HaMRConfig

    assert "hamr" not in Stage1Config().to_dict()  # old checkpoints' config still matches
    assert Stage1Config(hamr=HaMRConfig()).to_dict()["hamr"]["m_full"] == 0.8


def test_tokenize_gaoq_and_capsid_with_hamr(tmp_path):
    out = tmp_path / "tok"
    assert main(["tokenize", *TINY, "--out", str(out), "--tokenizer", "gaoq,capsid", "--hamr"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tokenizers"]) == {"gaoq", "capsid"}
    gaoq = summary["tokenizers"]["gaoq"]
    sids = np.load(out / "gaoq" / "sids.npy")
    assert sids.shape[0] == 300 and gaoq["collision_rate_after_disambiguation"] == 0.0
    assert gaoq["config"]["branching"] == [32, 32, 32] and "fit_seconds" in gaoq
    capsid = summary["tokenizers"]["capsid"]
    assert capsid["stage1"]["config"]["hamr"]["weight"] == 0.1
    log = [json.loads(line) for line in (out / "capsid" / "stage1_log.jsonl").read_text().splitlines()]
    assert "train_hamr" in log[0] and np.isfinite(log[0]["train_hamr"])
    for name in ("sids.npy", "merged.json", "merges.json", "stage1.safetensors", "diagnostics.json"):
        assert (out / "capsid" / name).is_file(), name
    # capsid-hamr is the same as capsid --hamr; without --hamr the old config (no hamr key) is kept
    assert main(["tokenize", *TINY, "--out", str(tmp_path / "plain"), "--tokenizer", "capsid-nobpe"]) == 0
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())["tokenizers"]["capsid-nobpe"]
    assert "hamr" not in plain["stage1"]["config"] and plain["bpe"]["merges"] == 0


def test_pipeline_baselines_convert_through_from_paths():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    preset = {"rqkmeans": {"levels": 2, "codes": 8, "n_init": 1}, "gaoq": {"branching": (4, 4)},
              "rqvae": {"levels": 2, "codes": 8, "epochs": 2, "hidden": (16,), "latent": 8, "batch_size": 64}}
    for name in ("rqkmeans", "gaoq", "rqvae-hamr"):
        items, info = pipeline.fit_baseline(name, x, preset, seed=0)
        assert len(items.paths) == 120 and all(p[-1] == 2 for p in items.paths), name
        assert all(3 <= t < items.vocab_size for p in items.paths for t in p[:-1]), name
        assert len({tuple(p) for p in items.paths}) == 120, name  # unique after disambiguation
        assert items.token_init.shape[0] == items.vocab_size and "fit_seconds" in info


def test_tokenize_rqvae_hamr_runs(tmp_path, monkeypatch):
    import functools

    from capsid_gr.baselines import RQVAEConfig

    small = functools.partial(RQVAEConfig, epochs=2, hidden=(16,), latent=8, batch_size=128)
    monkeypatch.setattr(tokenize_job, "RQVAEConfig", small)
    out = tmp_path / "tok"
    assert main(["tokenize", *TINY, "--out", str(out), "--tokenizer", "rqvae-hamr"]) == 0
    diag = json.loads((out / "rqvae-hamr" / "diagnostics.json").read_text())
    assert diag["config"]["hamr"]["m_partial"] == 0.5 and diag["config"]["codes"] == 8
    assert diag["collision_rate_after_disambiguation"] == 0.0 and len(diag["history"]) == 2
    assert np.load(out / "rqvae-hamr" / "sids.npy").shape == (300, 4)
