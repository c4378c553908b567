"""`capsid pipeline` end to end on a tiny synthetic catalogue (every stage, two variants)."""

from __future__ import annotations

import json

import pytest
import torch

from capsid_gr import pipeline
from capsid_gr.data import SyntheticConfig

TINY = {
    "synthetic": {"n_items": 200, "n_users": 300, "branching": (4, 2, 2), "level_scales": (1.0, 0.6, 0.35)},
    "tokenizer": {"capsules": 8, "capsule_dim": 8, "max_length": 3},
    "stage1": {"epochs": 2, "patience": 2},
    "bpe": {"max_merges": 8, "n_min": 5},
    "generator": {"layers": 1, "heads": 2, "hidden": 32, "ffn": 64, "max_positions": 256},
    "stage2": {"epochs": 2, "lr": 3e-3, "eval_every": 2, "val_users": 50},
    "rqkmeans": {"levels": 2, "codes": 8, "n_init": 1},
}


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    monkeypatch.setitem(pipeline.PRESETS, "tiny", TINY)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pipeline_writes_results_table(tmp_path, capsys):
    rc = pipeline.main(["--preset", "tiny", "--tokenizer", "capsid+bpe", "rqkmeans", "--seeds", "0", "1",
                        "--out", str(tmp_path), "--quiet", "--beams", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| capsid | 0,1 |" in printed and "| rqkmeans | 0,1 |" in printed and " ± " in printed
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = json.loads((folder / "results.json").read_text())
    assert len(rows) == 4
    for r in rows:
        assert 0.0 <= r["recall@10"] <= 1.0 and r["recall@5"] <= r["recall@10"]
        run = folder / r["variant"] / f"seed{r['seed']}"
        assert (run / "stage2.safetensors").is_file() and (run / "results.json").is_file()
        # every row names the vectors it read: the synthetic catalogue's own, by shape and digest
        assert r["vectors"]["source"] == "synthetic (given)" and len(r["vectors"]["digest"]) == 64
        assert r["vectors"]["shape"] == [TINY["synthetic"]["n_items"], SyntheticConfig().d]
    assert len({r["vectors"]["digest"] for r in rows}) == 1
    assert (folder / "results.md").read_text().startswith("dataset ")


def test_variant_settings_cover_the_ablations():
    base = pipeline.PRESETS["cpu"]
    assert pipeline.variant_settings("hard", base)[0]["mode"] == "hard"
    assert pipeline.variant_settings("capsid-t1", base)[0]["rounds"] == 1
    tok, _, _, merges = pipeline.variant_settings("len2", base)
    assert tok["max_length"] == 2 and tok["tau"] > 1 and tok["eps"] < 0 and merges
    assert pipeline.variant_settings("nospread", base)[1]["lambda_spread"] == 0.0
    assert pipeline.variant_settings("freqbpe", base)[2]["alpha"] == 1.0
    _, st1, _, merges = pipeline.variant_settings("capsid-nobpe", base)
    assert st1["lambda_bpe"] == 0.0 and not merges
    assert pipeline.variant_settings("capsid+bpe", base)[3]
    assert pipeline.variant_settings("capsid-hamr", base)[1]["hamr"].m_full == 0.8


def test_set_overrides_parse_apply_and_reject_unknown_fields():
    import argparse

    from capsid_gr.pipeline import PRESETS, parse_override, preset_settings

    assert parse_override("stage2.epochs=5") == ("stage2", "epochs", 5)
    assert parse_override("stage2.soft_inputs=true") == ("stage2", "soft_inputs", True)
    assert parse_override("stage2.routing_precision=tf32") == ("stage2", "routing_precision", "tf32")
    with pytest.raises(argparse.ArgumentTypeError, match="SECTION.FIELD=VALUE"):
        parse_override("epochs=5")
    args = argparse.Namespace(preset="cpu", set=[("stage2", "epochs", 3), ("tokenizer", "capsules", 16)])
    got = preset_settings(args)
    assert got["stage2"]["epochs"] == 3 and got["tokenizer"]["capsules"] == 16
    assert PRESETS["cpu"]["stage2"]["epochs"] != 3  # the preset itself is not modified
    with pytest.raises(ValueError, match="stage2.nope: unknown field"):
        preset_settings(argparse.Namespace(preset="cpu", set=[("stage2", "nope", 1)]))
    # values of the wrong type or range fail before any work, naming the section and field
    for section, field, value, what in [("tokenizer", "tau", "x", "tau: expected a finite number, got 'x'"),
                                        ("fit", "lr", "abc", "FitConfig.lr: expected a"),
                                        ("stage2", "epochs", 0, "epochs"),
                                        ("encdec", "item_ids", 1, "EncDecConfig.item_ids: expected a bool")]:
        with pytest.raises(ValueError, match=rf"--set {section}\.\*: .*{what}"):
            preset_settings(argparse.Namespace(preset="cpu", set=[(section, field, value)]))
    # --set reaches the synthetic catalogue too (it used to read the bare preset)
    from capsid_gr.pipeline import load_data

    data = load_data(argparse.Namespace(preset="cpu", data="synthetic", data_seed=0,
                                        set=[("synthetic", "n_items", 250), ("synthetic", "n_users", 90)]))
    assert data.n_items == 250 and len(data.sequences) == 90


def test_pipeline_capsid_dedup_gives_every_item_its_own_leaf(tmp_path):
    """capsid-dedup: capsid's Stage 1 (same SIDs, same collision diagnostics) and a generator
    whose paths are all distinct; sequence batches run end to end with hard inputs."""
    rc = pipeline.main(["--preset", "tiny", "--tokenizer", "capsid", "capsid-dedup", "--seeds", "0",
                        "--out", str(tmp_path), "--quiet", "--beams", "20",
                        "--set", "stage2.soft_inputs=false", "--set", "stage2.sequence_batches=true"])
    assert rc == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["variant"]: r for r in json.loads((folder / "results.json").read_text())}
    plain, dedup = rows["capsid"], rows["capsid-dedup"]
    assert plain["collision_rate"] == dedup["collision_rate"] > 0  # this tiny tokenizer collides
    assert plain["disambiguation_tokens"] == 0 and dedup["disambiguation_tokens"] >= 2
    assert 0.0 <= dedup["recall@10"] <= 1.0 and dedup["stage2"]["sequence_batches"]


def test_pipeline_runs_anchors_and_the_encoder_decoder_in_one_table(tmp_path, monkeypatch, capsys):
    """--anchors adds Markov and SASRec rows beside the generative ones (same split, metrics,
    tiers); --generator encdec trains through the fit protocol and decodes under the trie."""
    monkeypatch.setitem(pipeline.PRESETS, "tiny", {
        **TINY,
        "encdec": {"hidden": 32, "heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn": 64},
        "sasrec": {"hidden": 32, "heads": 2, "layers": 1, "ffn": 64},
        "fit": {"epochs": 3, "batch_size": 64, "eval_every": 1, "val_users": 50, "max_history": 20,
                "warmup_steps": 10, "num_beams": 20},
        "markov": {},
    })
    rc = pipeline.main(["--preset", "tiny", "--tokenizer", "rqkmeans", "--generator", "encdec",
                        "--anchors", "markov", "markov1", "sasrec", "--seeds", "0", "--out", str(tmp_path), "--quiet",
                        "--beams", "20"])
    assert rc == 0
    printed = capsys.readouterr().out
    for name in ("markov", "markov1", "sasrec", "rqkmeans"):
        assert f"| {name} | 0 |" in printed
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = {r["variant"]: r for r in json.loads((folder / "results.json").read_text())}
    assert rows["rqkmeans"]["generator_kind"] == "encdec" and rows["rqkmeans"]["stage2_epochs_run"] == 3
    assert rows["markov"]["backoff"] is not None and rows["markov1"]["backoff"] is None
    for r in rows.values():
        assert 0.0 <= r["recall@10"] <= 1.0 and r["recall@5"] <= r["recall@10"]
        assert r["head_queries"] + r["torso_queries"] + r["tail_queries"] == r["queries"]
    assert (folder / "rqkmeans" / "seed0" / "fit.safetensors").is_file()
    assert (folder / "sasrec" / "seed0" / "fit_log.jsonl").read_text().count("\n") == 3


def test_sasrec_fit_sits_on_top_of_fit_for_the_sasrec_anchor_only():
    import argparse

    from capsid_gr.pipeline import _fit_overrides, preset_settings

    args = argparse.Namespace(preset="gpu", set=[("fit", "lr", 3e-3), ("sasrec_fit", "epochs", 7)],
                              stage2_epochs=None)
    p = preset_settings(args)
    enc, sas = _fit_overrides(p, args), _fit_overrides(p, args, sasrec=True)
    assert enc["lr"] == 3e-3 and enc["epochs"] == p["fit"]["epochs"] != 7
    assert sas["epochs"] == 7 and sas["lr"] == p["sasrec_fit"]["lr"] != 3e-3
    assert sas["eval_every"] == p["fit"]["eval_every"]  # what sasrec_fit leaves out comes from fit
    args.stage2_epochs = 5  # the command-line budget wins over both
    assert _fit_overrides(p, args)["epochs"] == 5 == _fit_overrides(p, args, sasrec=True)["epochs"]
    with pytest.raises(ValueError, match=r"--set sasrec_fit\.\*: .*FitConfig.patience"):
        preset_settings(argparse.Namespace(preset="gpu", set=[("sasrec_fit", "patience", 0)]))


def test_long_values_are_elided_in_set_and_generator_messages():
    import argparse

    from capsid_gr.generator.seq import EncDecConfig
    from capsid_gr.pipeline import parse_override, preset_settings

    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse_override("x" * 500)
    assert "...(502 chars)" in str(e.value) and "x" * 60 not in str(e.value)
    with pytest.raises(ValueError) as e:
        EncDecConfig(positions="p" * 300)
    assert "...(302 chars)" in str(e.value) and "p" * 60 not in str(e.value)
    with pytest.raises(ValueError) as e:  # an unknown field's name is elided too
        preset_settings(argparse.Namespace(preset="cpu", set=[("fit", "f" * 300, 1)]))
    assert "...(302 chars)" in str(e.value) and "f" * 60 not in str(e.value)


def test_synthetic_config_names_the_rule_and_only_the_fields_it_reads():
    from capsid_gr.data.synthetic import SyntheticConfig

    with pytest.raises(ValueError) as e:
        SyntheticConfig(min_len=9, mean_len=5)
    msg = str(e.value)
    assert "expected 3 <= min <= mean <= max len" in msg and "min_len=9" in msg and "mean_len=5" in msg
    assert "n_items" not in msg and "p_same_leaf" not in msg  # not the whole config
    with pytest.raises(ValueError, match=r"level_scales=\(1\.0,\)"):
        SyntheticConfig(branching=(4, 4), level_scales=(1.0,))
