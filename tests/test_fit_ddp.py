"""Issue 22: the sequential fit (encoder-decoder generator) under DistributedDataParallel on CPU,
gloo, two processes (torch.multiprocessing.spawn), compared with one-process runs in the parent.

One spawn runs every two-process job: a full two-epoch fit, the same fit stopped after epoch 0
and resumed (two processes), one stopped after epoch 0 that the parent resumes in one process,
and the validation of a fixed model.

Tolerance. The two-process update equals the one-process update on the same global batch up to
float32 summation order: a rank runs its slice as a smaller matrix and DDP sums two partial
gradients, so the same terms are added in another order. Measured on a 2-core CPU runner
(PyTorch 2.14, 12 steps at lr 1e-2, AdamW, 6.3k parameters; seeds 1-4, global batches of 31
as here and of 37): largest parameter difference 4.8e-7 to 2.1e-6, epoch losses at most 9.3e-8
relative. AdamW's m / sqrt(v) is scale-free, so an entry whose gradient is near 0
moves by up to lr in a direction rounding decides; PARAM_ATOL = 1e-5 is ~5x the largest
measured difference (0.1% of lr), LOSS_RTOL = 1e-6 ~10x.
Validation and resume are compared exactly: shards are whole decode chunks, and a resumed run
replays the same operations.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as tdist

WORLD = 2
PARAM_ATOL = 1e-5
LOSS_RTOL = 1e-6

pytestmark = pytest.mark.skipif(not (tdist.is_available() and tdist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this build")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    """The same tiny run in the parent and in each child: synthetic catalogue, RQ-KMeans SIDs,
    a one-layer encoder-decoder without dropout (a sharded batch cannot draw one process's masks)."""
    from capsid_gr.data import SyntheticConfig, make_synthetic
    from capsid_gr.eval import build_item_trie
    from capsid_gr.generator.seq import EncDecConfig, EncDecGenerator, EncDecRecommender
    from capsid_gr.pipeline import fit_baseline
    from capsid_gr.stage2.fit import FitConfig

    data = make_synthetic(SyntheticConfig(n_items=120, n_users=150, branching=(4, 3, 2), mean_len=8.0, seed=3))
    items, _ = fit_baseline("rqkmeans", data.item_vectors, {"rqkmeans": {"levels": 2, "codes": 8, "n_init": 1}}, 0)
    # 156 windows in batches of 31, bucket runs of 62: 31, 31, 31, 31, 31 and a batch of 1 window,
    # where rank 1's slice is empty; 41 validation users in chunks of 8: ranks decode 24 and 17
    cfg = FitConfig(epochs=2, lr=1e-2, warmup_steps=3, batch_size=31, eval_every=1, patience=5, val_users=41,
                    num_beams=10, eval_batch_size=8, max_history=12, length_buckets=2, seed=1)
    model = EncDecGenerator(items, EncDecConfig(hidden=16, heads=2, enc_layers=1, dec_layers=1, ffn=32, dropout=0.0,
                                                max_len=12), seed=1)
    rec = EncDecRecommender(model, build_item_trie(items, data.popularity(), "cpu"), 12)
    return data.split(max_history=12), cfg, model, rec


class _Stop(Exception):
    pass


def _stop_after_first(record):
    if record["epoch"] == 0:
        raise _Stop


def _fit(out, name, dist=None, log=None):
    from capsid_gr.stage2.fit import fit_sequential

    split, cfg, model, rec = _setup()
    try:
        res = fit_sequential(model, rec, split, cfg, out_dir=os.path.join(out, name), show_progress=False, log=log,
                             dist=dist)
    except _Stop:
        return None
    return {"history": res.history, "state": model.state_dict()}


def _join(rank: int, port: int):
    """Rank `rank` of WORLD in a gloo group on this host, with one intra-op thread (as the
    parent's one-process reference: the thread count can change float32 reduction order)."""
    from capsid_gr.collective import DistContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    return DistContext.from_env(backend="gloo", device="cpu")


def _worker(rank: int, port: int, out: str) -> None:
    from capsid_gr.stage2.fit import validation_metrics, validation_users

    dist = _join(rank, port)
    try:
        saved = {"full": _fit(out, "full", dist)}
        _fit(out, "cut", dist, log=_stop_after_first)
        saved["resumed"] = _fit(out, "cut", dist)
        _fit(out, "shrink", dist, log=_stop_after_first)  # the parent resumes it in one process
        split, cfg, model, rec = _setup()  # validation of the seeded initial model
        users = validation_users(split, cfg)
        saved["val"] = validation_metrics(rec, [split.valid.history[u, : split.valid.length[u]] for u in users],
                                          split.valid.target[users], cfg, dist)
        if dist.is_writer:
            torch.save(saved, os.path.join(out, "ddp.pt"))
    finally:
        dist.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("fit_ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _fit(out, "one")
    finally:
        torch.set_num_threads(before)
    return out, torch.load(out / "ddp.pt", weights_only=False), one


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_update_as_one_on_the_global_batch(runs):
    _, two, one = runs
    assert len(two["full"]["history"]) == len(one["history"]) == 2
    for ra, rb in zip(two["full"]["history"], one["history"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=LOSS_RTOL)
    diff = _max_diff(two["full"]["state"], one["state"])
    assert diff < PARAM_ATOL, f"largest parameter difference {diff:.2e}"
    # the update moved the parameters far beyond that tolerance: the comparison has teeth
    _, _, fresh, _ = _setup()
    assert _max_diff(one["state"], fresh.state_dict()) > 1e3 * PARAM_ATOL


def test_sharded_validation_equals_one_process(runs, one_torch_thread):
    from capsid_gr.stage2.fit import validation_metrics, validation_users

    out, two, _ = runs
    split, cfg, model, rec = _setup()
    users = validation_users(split, cfg)
    hist = [split.valid.history[u, : split.valid.length[u]] for u in users]
    assert two["val"] == validation_metrics(rec, hist, split.valid.target[users], cfg)
    # end to end: the last epoch's logged validation is one process's on the checkpoint's live state
    from capsid_gr.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(out / "full" / "fit.safetensors")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    m = validation_metrics(rec, hist, split.valid.target[users], cfg)
    last = two["full"]["history"][-1]
    assert {k: last[f"val_{k}"] for k in m} == m


def test_two_process_resume_equals_an_uninterrupted_run(runs):
    _, two, _ = runs
    assert two["resumed"]["history"][1:] == [
        {**r, "seconds": s["seconds"]} for r, s in zip(two["full"]["history"][1:], two["resumed"]["history"][1:])]
    for k, v in two["full"]["state"].items():
        assert torch.equal(v, two["resumed"]["state"][k]), k


def test_a_two_process_checkpoint_resumes_in_one_process(runs, one_torch_thread):
    out, two, _ = runs
    grown = _fit(out, "shrink")  # epoch 1 in one process, after epoch 0 on two
    diff = _max_diff(grown["state"], two["full"]["state"])
    assert diff < PARAM_ATOL, f"largest parameter difference {diff:.2e}"


def test_torchrun_launches_the_fit_on_two_cpu_processes(tmp_path, one_torch_thread):
    """`torchrun --nproc_per_node 2 -m capsid_gr.distributed.run fit` end to end (gloo), against
    the same command in this process (a one-process context)."""
    import argparse
    import json
    import subprocess
    import sys

    from capsid_gr.distributed.run import add_arguments, run

    flags = ["fit", "--device", "cpu", "--items", "300", "--users", "200", "--epochs", "2", "--batch-size", "45",
             "--hidden", "16", "--val-users", "50", "--num-beams", "10", "--eval-batch", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "capsid_gr.distributed.run", *flags, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (two,) = [json.loads(line) for line in (tmp_path / "two" / "fit.jsonl").read_text().splitlines()]
    p = argparse.ArgumentParser()
    add_arguments(p)
    run(p.parse_args([*flags, "--out", str(tmp_path / "one")]))
    (one,) = [json.loads(line) for line in (tmp_path / "one" / "fit.jsonl").read_text().splitlines()]
    assert (two["world"], one["world"], two["epochs_run"]) == (2, 1, 2)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_RTOL)
