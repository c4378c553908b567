"""Interrupted Stage-1 runs (issue 10, part 3) and CPU determinism (part 4).

A real `capsid tokenize` runs in a subprocess on a tiny synthetic catalogue with one torch
thread; it is killed with SIGKILL (or SIGTERM) once a checkpoint exists, a second subprocess
resumes it from the checkpoint in the same folder, and the finished run's SIDs, merges,
training log and Stage-1 parameters must equal an uninterrupted run's with the same seed
bit for bit: every random draw in Stage 1 comes from generators seeded by (seed, epoch), and
the checkpoint holds the parameters, the best epoch's parameters, the AdamW state and the
early-stopping counters, so nothing but the epoch loop's starting point differs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from capsid_gr.stage1 import load_checkpoint

# lr 1e-2, n_min 2 and theta_end -1 so that the gate is trained and merges exist to compare
ARGS = ["tokenize", "--tokenizer", "capsid", "--items", "300", "--users", "200", "--epochs", "14",
        "--patience", "100", "--capsules", "8", "--capsule-dim", "8", "--max-length", "3",
        "--batch-size", "64", "--lr", "1e-2", "--bpe-n-min", "2", "--bpe-theta-end", "-1",
        "--threads", "1", "--device", "cpu", "--quiet", "--seed", "3",
        "--init", "random"]  # random start: long SIDs, so the merge gate is exercised too
EPOCHS = 14


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CAPSID_CACHE_DIR=str(tmp_path / "cache"))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root / "python"), str(root), env.get("PYTHONPATH", "")])
    return env


def _start(out: Path, tmp_path: Path, log: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "capsid_gr.cli", *ARGS, "--out", str(out)],
                            env=_env(tmp_path), stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, tmp_path: Path, log: str) -> None:
    rc = proc.wait(timeout=120)
    assert rc == 0, (tmp_path / log).read_text()[-3000:]


def _epochs_logged(out: Path) -> int:
    log = out / "capsid" / "stage1_log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _interrupt(out: Path, tmp_path: Path, sig: int, after_epochs: int, tag: str) -> int:
    """Start a run, send `sig` once `after_epochs` epochs are checkpointed; the checkpoint's epoch."""
    proc = _start(out, tmp_path, f"{tag}-killed.log")
    ckpt = out / "capsid" / "stage1.safetensors"
    deadline = time.monotonic() + 90
    while _epochs_logged(out) < after_epochs or not ckpt.is_file():
        assert proc.poll() is None, "the run ended before it could be interrupted:\n" + \
            (tmp_path / f"{tag}-killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    assert rc == -sig, f"expected death by signal {sig}, got return code {rc}"
    assert not (out / "capsid" / "sids.npy").exists(), "the run finished before the signal arrived"
    _, meta = load_checkpoint(ckpt)  # whole and readable however the kill landed
    assert meta["epoch"] < EPOCHS - 1 and meta["format_version"] == 1
    return meta["epoch"]


def _assert_same_run(a: Path, b: Path) -> None:
    a, b = a / "capsid", b / "capsid"
    assert np.array_equal(np.load(a / "sids.npy"), np.load(b / "sids.npy"))
    assert json.loads((a / "merges.json").read_text()) == json.loads((b / "merges.json").read_text())
    assert (a / "merged.json").read_text() == (b / "merged.json").read_text()
    assert json.loads((a / "merges.json").read_text())["pairs"], "no merges: the gate went untested"
    # the per-epoch log holds every loss and metric as floats: equal means bit-identical training
    assert (a / "stage1_log.jsonl").read_text() == (b / "stage1_log.jsonl").read_text()
    ta, ma = load_checkpoint(a / "stage1.safetensors")
    tb, mb = load_checkpoint(b / "stage1.safetensors")
    assert ma["epoch"] == mb["epoch"] == EPOCHS - 1
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_sigkill_and_sigterm_resume_to_the_uninterrupted_result(tmp_path):
    reference = _start(tmp_path / "straight", tmp_path, "straight.log")  # runs beside the killed ones
    try:
        for sig, after, tag in ((signal.SIGKILL, 1, "kill"), (signal.SIGTERM, 4, "term")):
            out = tmp_path / tag
            epoch = _interrupt(out, tmp_path, sig, after, tag)
            resumed = _start(out, tmp_path, f"{tag}-resumed.log")
            _finish(resumed, tmp_path, f"{tag}-resumed.log")
            log = [json.loads(line) for line in (out / "capsid" / "stage1_log.jsonl").read_text().splitlines()]
            assert [r["epoch"] for r in log] == list(range(EPOCHS)), f"{tag}: resumed after epoch {epoch}"
        _finish(reference, tmp_path, "straight.log")
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    for tag in ("kill", "term"):
        _assert_same_run(tmp_path / "straight", tmp_path / tag)


@pytest.mark.parametrize("warm_up", [True, False])
def test_same_seed_gives_the_same_sids_merges_and_metrics_twice(warm_up):
    """Two in-process Stage-1 runs with one seed: equal SIDs, merges, history (CPU). With the
    random start the SIDs are long enough for merges, so the gate's determinism is covered too."""
    import capsid_kernels as ck
    from capsid_gr.data import SyntheticConfig, make_synthetic
    from capsid_gr.stage1 import Stage1Config, train_stage1
    from capsid_gr.bpe import SemanticBPEConfig

    data = make_synthetic(SyntheticConfig(n_items=200, n_users=150, seed=1))
    x = torch.as_tensor(data.item_vectors)
    w = data.popularity().astype(float)
    from capsid_gr.stage1.init import InitConfig

    cfg = Stage1Config(epochs=3, batch_size=64, lr=1e-2, seed=4,
                       bpe=SemanticBPEConfig(n_min=2, theta_end=-1.0), init=InitConfig() if warm_up else None)
    runs = []
    for _ in range(2):
        tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=x.shape[1], capsules=8, capsule_dim=8, max_length=3,
                                                 backend="eager"), seed=4)
        res = train_stage1(tok, x, w, cfg, show_progress=False)
        with torch.no_grad():
            sids = tok.tokenize(x).sids
        runs.append((sids, res.merges.to_json(), res.history))
    (s1, m1, h1), (s2, m2, h2) = runs
    assert torch.equal(s1, s2)
    assert m1 == m2 and (warm_up or json.loads(m1)["pairs"])
    assert h1 == h2


def test_checkpoint_of_another_format_version_is_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "stage1.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"capsid": json.dumps({"format_version": 99})})
    with pytest.raises(ValueError, match=r"stage1\.safetensors: checkpoint format_version 99"):
        load_checkpoint(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"stage1\.safetensors: not a readable capsid checkpoint"):
        load_checkpoint(path)
    # written before the field existed: same layout, read as version 1
    save_file({"a": torch.zeros(1)}, str(path), metadata={"capsid": json.dumps({"epoch": 0})})
    assert load_checkpoint(path)[1]["epoch"] == 0
