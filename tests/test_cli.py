"""The `capsid` command: the main job end to end, and errors that name file and line."""

from __future__ import annotations

import json

import pytest

from capsid_gr.cli import main

import sklearn  # noqa: F401  (a hard dependency of the GR system)

TINY = ["--items", "200", "--users", "150", "--epochs", "1", "--capsules", "8", "--capsule-dim", "8",
        "--max-length", "3", "--batch-size", "128", "--quiet"]


def test_run_trains_capsid_and_rqkmeans_and_writes_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out), "--tokenizer", "capsid,capsid-len2,rqkmeans"]) == 0
    text = capsys.readouterr().out
    assert "collision rate" in text and "rqkmeans" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tokenizers"]) == {"capsid", "capsid-len2", "rqkmeans"}
    capsid = summary["tokenizers"]["capsid"]
    for key in ("collision_rate", "code_utilisation", "gini", "intra_code_similarity", "mean_length",
                "length_histogram", "stop_fractions", "depths", "bpe"):
        assert key in capsid, key
    assert summary["tokenizers"]["capsid-len2"]["length_histogram"] == {"2": 200}
    assert summary["tokenizers"]["rqkmeans"]["collision_rate_after_disambiguation"] == 0.0
    for name in ("sids.npy", "merged.json", "merges.json", "stage1.safetensors", "stage1_log.jsonl",
                 "diagnostics.json"):
        assert (out / "capsid" / name).is_file(), name
    assert (out / "summary.md").read_text().startswith("**synthetic")
    # a second run finds the finished checkpoint and trains nothing more
    assert main(["run", *TINY, "--out", str(out), "--tokenizer", "capsid"]) == 0


def test_unknown_tokenizer_is_refused(tmp_path, capsys):
    assert main(["tokenize", *TINY, "--out", str(tmp_path), "--tokenizer", "vqvae"]) == 2
    assert "unknown" in capsys.readouterr().err


@pytest.mark.parametrize("content, where", [
    ("1 1 2 3\n2 1 2 99\n", "Beauty.txt:2"),  # unknown item id (datamaps has 3 items)
    ("1 1 2 3\n\n2 1 2 3\n", "Beauty.txt:2"),  # an empty history line
])
def test_bad_sequences_name_file_and_line(tmp_path, capsys, content, where):
    (tmp_path / "Beauty.txt").write_text(content)
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {"1": "A", "2": "B", "3": "C"}}))
    assert main(["tokenize", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert where in capsys.readouterr().err


def test_malformed_metadata_names_file_and_line(tmp_path, capsys):
    (tmp_path / "Beauty.txt").write_text("1 1 2 3\n")
    (tmp_path / "datamaps.json").write_text('{"id2item": {"1": "A",\n "2": }}')
    assert main(["tokenize", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "datamaps.json:2" in capsys.readouterr().err
