"""Beyond one GPU on CPU: gloo, two processes (torch.multiprocessing.spawn), tiny data.

One spawn runs every two-process job (process start-up and imports cost seconds on a busy
runner); the tests below compare what rank 0 saved with one-process runs in this process.

Tolerances. Training runs compare loss curves at 1e-5 relative, not bit for bit: a rank routes
its slice of the batch as a smaller matrix, so float32 matmuls (and the sums of the gradient
all-reduce) add the same terms in another order; the Stage-1 curves measured here differ by
~2e-8 relative. Parameters compare at 1e-4 absolute (1% of the lr of 1e-2): AdamW's step
m / sqrt(v) is scale-free, so an entry whose gradient is ~0 moves by up to lr in a direction
that rounding decides (measured: at most 2.4e-5). Tokenization and evaluation are compared
exactly: shards are whole chunks, so the same kernels see the same shapes.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch

from capsid_gr.collective import DistContext, shard_bounds
from capsid_gr.eval import BeamValidation

WORLD = 2
RTOL = 1e-5
PARAM_ATOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- shared fixtures (built identically in the parent and in each child) --------------------
def _stage1_setup(batch_size: int = 42):
    import capsid_kernels as ck
    from capsid_gr.data import SyntheticConfig, make_synthetic
    from capsid_gr.stage1 import Stage1Config

    data = make_synthetic(SyntheticConfig(n_items=200, n_users=120, d=32, seed=3))
    x, w = torch.as_tensor(data.item_vectors), data.popularity().astype(float)
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=32, capsules=12, capsule_dim=16, max_length=4, tau=0.82, eps=0.08),
                             seed=5)
    # 180 training items in batches of 42: the last global batch has 12 (slices of 6 and 6);
    # in batches of 179 the last has 1 item, so one rank's slice is empty
    return tok, x, w, Stage1Config(epochs=2, batch_size=batch_size, lr=1e-2, val_fraction=0.1)


def _stage2_setup(**overrides):
    import dataclasses

    from capsid_gr.generator import Generator, GeneratorConfig
    from capsid_gr.stage2 import Stage2Config
    from test_generator import tiny_capsid
    from test_stage2 import deterministic_dataset

    items, _, _ = tiny_capsid(n=30, merges=True)
    data = deterministic_dataset(n_users=60)
    cfg = Stage2Config(epochs=2, lr=1e-2, batch_size=48, eval_every=1, num_beams=10, val_users=30,
                       eval_batch_size=7, max_history=5, length_buckets=2)
    cfg = dataclasses.replace(cfg, **overrides)
    # dropout 0: a sharded batch cannot reproduce one process's dropout draws
    model = Generator(items.vocab_size, GeneratorConfig(layers=2, heads=2, hidden=32, ffn=64, dropout=0.0,
                                                        max_positions=128),
                      token_init=items.token_init, has_init=items.has_init, seed=cfg.seed)
    return items, data, cfg, model


def _eval_setup():
    from capsid_gr.eval import Recommender, build_item_trie

    items, data, _, model = _stage2_setup()
    split = data.split(max_history=5)
    from capsid_gr.generator import ItemInputs

    rec = Recommender(model, ItemInputs(items, None), items, build_item_trie(items, data.popularity(), "cpu"), 5)
    hist = split.test.histories()[:37]
    return rec, hist, split.test.target[:37], data.tiers()


class _Stop(Exception):
    pass


def _stop_after_first(record):
    if record["epoch"] == 0:
        raise _Stop


# Runs where one of the two ranks holds an empty slice: 300 Stage-2 samples in batches of 299
# (the last batch has 1 sample) and 1 validation user; a 1-item catalogue; 3 users in one chunk.
S1_TINY_BATCH = 179
S2_TINY = {"batch_size": 299, "length_buckets": 1, "val_users": 1}
TINY_TOKENIZE_N, TINY_EVAL_Q = 1, 3


def _empty_slice_jobs(dist, out: str) -> None:
    from capsid_gr.eval.sharded import evaluate_sharded
    from capsid_gr.distributed.tokenize import tokenize_sharded
    from capsid_gr.stage1 import train_stage1
    from capsid_gr.stage2 import train_stage2

    tok, x, w, cfg = _stage1_setup(S1_TINY_BATCH)
    res = train_stage1(tok, x, w, cfg, show_progress=False, dist=dist)
    if dist.is_writer:
        torch.save({"history": res.history, "state": tok.state_dict()}, os.path.join(out, "s1_tiny.pt"))
    items, data, cfg2, model = _stage2_setup(**S2_TINY)
    res2 = train_stage2(model, items, data.split(max_history=cfg2.max_history), data.popularity(), cfg2,
                        show_progress=False, dist=dist, validation=BeamValidation())
    if dist.is_writer:
        torch.save({"history": res2.history, "state": model.state_dict()}, os.path.join(out, "s2_tiny.pt"))
    tok, _, _, _ = _stage1_setup()
    xs = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1))[:TINY_TOKENIZE_N]
    got = tokenize_sharded(tok, xs, dist, batch_size=96, fields=("sids", "lengths", "stop_reason", "recon"))
    rec, hist, target, tiers = _eval_setup()
    metrics = evaluate_sharded(rec, hist[:TINY_EVAL_Q], target[:TINY_EVAL_Q], dist, tiers=tiers, ks=(1, 5, 10),
                               num_beams=10, batch_size=8)
    if dist.is_writer:
        torch.save(got, os.path.join(out, "tok_tiny.pt"))
        with open(os.path.join(out, "eval_tiny.json"), "w") as f:
            json.dump(metrics, f)


def _time_budget_job(dist, out: str) -> None:
    """Rank 1 reaches Stage 2 late, so at the end of epoch 0 only rank 0's clock has passed the
    budget (it waited in the first collective): the ranks must still stop together."""
    import time

    from capsid_gr.stage2 import train_stage2

    items, data, cfg, model = _stage2_setup(epochs=4, eval_every=100, max_seconds=1.0)
    if dist.rank == 1:
        time.sleep(2.0)
    res = train_stage2(model, items, data.split(max_history=cfg.max_history), data.popularity(), cfg,
                       show_progress=False, dist=dist, validation=BeamValidation())
    torch.save(res.history, os.path.join(out, f"s2_time_rank{dist.rank}.pt"))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from capsid_gr.eval.sharded import evaluate_sharded
    from capsid_gr.distributed.tokenize import tokenize_sharded
    from capsid_gr.stage1 import train_stage1
    from capsid_gr.stage2 import train_stage2

    dist = DistContext.from_env(backend="gloo", device="cpu")
    try:
        # Stage 1: a full two-epoch run, and one stopped after epoch 0 (resumed by the parent)
        tok, x, w, cfg = _stage1_setup()
        res = train_stage1(tok, x, w, cfg, out_dir=os.path.join(out, "s1"), show_progress=False, dist=dist)
        if dist.is_writer:
            torch.save({"history": res.history, "state": tok.state_dict()}, os.path.join(out, "s1.pt"))
        tok, x, w, cfg = _stage1_setup()
        try:
            train_stage1(tok, x, w, cfg, out_dir=os.path.join(out, "s1_cut"), show_progress=False, dist=dist,
                         on_epoch_end=_stop_after_first)
        except _Stop:
            pass
        dist.barrier()
        # Stage 2
        items, data, cfg2, model = _stage2_setup()
        split = data.split(max_history=cfg2.max_history)
        res2 = train_stage2(model, items, split, data.popularity(), cfg2, out_dir=os.path.join(out, "s2"),
                            show_progress=False, dist=dist, validation=BeamValidation())
        if dist.is_writer:
            torch.save({"history": res2.history, "state": model.state_dict()}, os.path.join(out, "s2.pt"))
        # sharded tokenization: 1000 items in chunks of 96 (slices of 480 and 520 rows)
        tok, x, _, _ = _stage1_setup()
        xs = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1))
        got = tokenize_sharded(tok, xs, dist, batch_size=96, fields=("sids", "lengths", "stop_reason", "recon"))
        # sharded evaluation: 37 users in chunks of 8
        rec, hist, target, tiers = _eval_setup()
        metrics = evaluate_sharded(rec, hist, target, dist, tiers=tiers, ks=(1, 5, 10), num_beams=10, batch_size=8)
        if dist.is_writer:
            torch.save(got, os.path.join(out, "tok.pt"))
            with open(os.path.join(out, "eval.json"), "w") as f:
                json.dump(metrics, f)
        dist.barrier()
        # resume a one-process Stage-1 checkpoint (written by the parent) on two processes
        tok, x, w, cfg = _stage1_setup()
        res = train_stage1(tok, x, w, cfg, out_dir=os.path.join(out, "s1_grow"), show_progress=False, dist=dist)
        if dist.is_writer:
            torch.save({"history": res.history, "state": tok.state_dict()}, os.path.join(out, "s1_grow.pt"))
        dist.barrier()
        _empty_slice_jobs(dist, out)
        dist.barrier()
        _time_budget_job(dist, out)
        dist.barrier()
    finally:
        dist.close()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    import torch.multiprocessing as mp

    from capsid_gr.stage1 import train_stage1

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # a one-process Stage-1 run stopped after epoch 0, which the children resume on two
        tok, x, w, cfg = _stage1_setup()
        train_stage1(tok, x, w, cfg, out_dir=out / "s1_grow", show_progress=False, on_epoch_end=_stop_after_first)
    except _Stop:
        pass
    finally:
        torch.set_num_threads(before)
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _close_histories(a: list[dict], b: list[dict], keys) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=RTOL, abs=1e-7), (ra["epoch"], k, ra[k], rb[k])


def _close_states(a: dict, b: dict) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=PARAM_ATOL, msg=k)


# ---- unit tests of the sharding rule --------------------------------------------------------
@pytest.mark.parametrize("n,world,align", [(0, 2, 1), (1, 2, 1), (7, 3, 1), (1000, 2, 96), (97, 4, 8), (5, 8, 2)])
def test_shards_cover_in_order(n, world, align):
    bounds = [shard_bounds(n, world, r, align) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(lo % align == 0 for lo, _ in bounds)


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    t = torch.arange(5.0)
    assert not ctx.active and ctx.is_writer
    assert torch.equal(ctx.shard(t), t) and torch.equal(ctx.all_gather_rows(t, 5), t)
    assert ctx.sum_floats(2.0, 3) == (2.0, 3.0) and ctx.local_weight(4) == 1.0


# ---- two processes against one ---------------------------------------------------------------
STAGE1_KEYS = ("train_route", "train_spread", "train_len", "val_route")
# train_bpe (and so train_total) left out: since SemanticBPE finds candidates (item-space embedding, 2026-12-08)
# the two-process gate drifts from the one-process gate; test_stage1_two_process_bpe_gate_matches_one says so.


def test_stage1_two_processes_match_one(two_process_run, one_thread):
    from capsid_gr.stage1 import load_checkpoint, train_stage1

    tok, x, w, cfg = _stage1_setup()
    res = train_stage1(tok, x, w, cfg, show_progress=False)
    got = torch.load(two_process_run / "s1.pt")
    _close_histories(got["history"], res.history, STAGE1_KEYS)
    _close_states(got["state"], tok.state_dict())
    # rank 0 alone wrote the checkpoint and the log
    _, meta = load_checkpoint(two_process_run / "s1" / "stage1.safetensors")
    assert meta["epoch"] == 1
    assert len((two_process_run / "s1" / "stage1_log.jsonl").read_text().splitlines()) == 2


@pytest.mark.xfail(strict=True, reason="open bug found 2026-12-08: with BPE candidates, the merge gate's second "
                   "update differs on two processes (gate logits 0.386 against 0.398 in one process); the "
                   "tokenizer's losses and state still match")
def test_stage1_two_process_bpe_gate_matches_one(two_process_run, one_thread):
    from capsid_gr.stage1 import train_stage1

    tok, x, w, cfg = _stage1_setup()
    res = train_stage1(tok, x, w, cfg, show_progress=False)
    got = torch.load(two_process_run / "s1.pt")
    assert res.history[-1]["candidates"] > 0  # the gate trains in this run
    _close_histories(got["history"], res.history, ("train_bpe", "train_total"))


def test_stage1_resumes_a_two_process_checkpoint_in_one(two_process_run, one_thread):
    from capsid_gr.stage1 import train_stage1

    tok, x, w, cfg = _stage1_setup()
    straight = train_stage1(tok, x, w, cfg, show_progress=False)
    fresh, x, w, cfg = _stage1_setup()
    resumed = train_stage1(fresh, x, w, cfg, out_dir=two_process_run / "s1_cut", show_progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1]
    _close_histories(resumed.history, straight.history, STAGE1_KEYS)
    _close_states(fresh.state_dict(), tok.state_dict())


def test_stage2_two_processes_match_one(two_process_run, one_thread):
    from capsid_gr.stage2 import train_stage2

    items, data, cfg, model = _stage2_setup()
    res = train_stage2(model, items, data.split(max_history=cfg.max_history), data.popularity(), cfg,
                       show_progress=False, validation=BeamValidation())
    got = torch.load(two_process_run / "s2.pt")
    _close_histories(got["history"], res.history, ("train_loss",))
    assert [h["val_recall@10"] for h in got["history"]] == [h["val_recall@10"] for h in res.history]
    _close_states(got["state"], model.state_dict())


def test_sharded_tokenization_is_bit_identical(two_process_run, one_thread):
    from capsid_gr.tokenizer.inference import tokenize_items

    tok, _, _, _ = _stage1_setup()
    xs = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1))
    want = tokenize_items(tok, xs, 96)
    got = torch.load(two_process_run / "tok.pt")
    for field in ("sids", "lengths", "stop_reason", "recon"):
        assert torch.equal(got[field], getattr(want, field)), field


def test_sharded_evaluation_equals_one_process(two_process_run, one_thread):
    from capsid_gr.eval import evaluate

    rec, hist, target, tiers = _eval_setup()
    want = evaluate(rec, hist, target, tiers=tiers, ks=(1, 5, 10), num_beams=10, batch_size=8, token_metrics=False)
    got = json.loads((two_process_run / "eval.json").read_text())
    keys = [k for k in want if k.startswith(("recall", "ndcg")) or "_recall@" in k or k.endswith("_queries")]
    assert len(keys) >= 14
    for k in keys:
        assert got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])), k
    assert got["queries"] == want["queries"] == 37 and got["world"] == WORLD


# ---- a one-process checkpoint resumed on two processes ---------------------------------------
def test_stage1_resumes_a_one_process_checkpoint_in_two(two_process_run, one_thread):
    from capsid_gr.stage1 import load_checkpoint, train_stage1

    tok, x, w, cfg = _stage1_setup()
    straight = train_stage1(tok, x, w, cfg, show_progress=False)
    got = torch.load(two_process_run / "s1_grow.pt")
    assert [h["epoch"] for h in got["history"]] == [0, 1]
    _close_histories(got["history"], straight.history, STAGE1_KEYS)
    _close_states(got["state"], tok.state_dict())
    _, meta = load_checkpoint(two_process_run / "s1_grow" / "stage1.safetensors")
    assert meta["epoch"] == 1


# ---- a rank whose slice is empty ---------------------------------------------------------------
def test_empty_slices_are_the_sharding_rule():
    # what the runs below rely on: one of the two ranks gets nothing
    assert shard_bounds(1, WORLD, 0) == (0, 0) and shard_bounds(1, WORLD, 1) == (0, 1)
    assert shard_bounds(TINY_EVAL_Q, WORLD, 0, 8) == (0, 0)


def test_stage1_final_batch_of_one_item(two_process_run, one_thread):
    from capsid_gr.stage1 import train_stage1

    tok, x, w, cfg = _stage1_setup(S1_TINY_BATCH)
    assert (180 % cfg.batch_size) == 1
    res = train_stage1(tok, x, w, cfg, show_progress=False)
    got = torch.load(two_process_run / "s1_tiny.pt")
    _close_histories(got["history"], res.history, STAGE1_KEYS)
    _close_states(got["state"], tok.state_dict())


def test_stage2_final_batch_of_one_sample_and_one_validation_user(two_process_run, one_thread):
    from capsid_gr.stage2 import train_stage2

    items, data, cfg, model = _stage2_setup(**S2_TINY)
    res = train_stage2(model, items, data.split(max_history=cfg.max_history), data.popularity(), cfg,
                       show_progress=False, validation=BeamValidation())
    got = torch.load(two_process_run / "s2_tiny.pt")
    _close_histories(got["history"], res.history, ("train_loss",))
    assert [h["val_recall@10"] for h in got["history"]] == [h["val_recall@10"] for h in res.history]
    _close_states(got["state"], model.state_dict())


def test_sharded_tokenization_of_fewer_items_than_ranks(two_process_run, one_thread):
    from capsid_gr.tokenizer.inference import tokenize_items

    tok, _, _, _ = _stage1_setup()
    xs = torch.randn(1000, 32, generator=torch.Generator().manual_seed(1))[:TINY_TOKENIZE_N]
    want = tokenize_items(tok, xs, 96)
    got = torch.load(two_process_run / "tok_tiny.pt")
    for field in ("sids", "lengths", "stop_reason", "recon"):
        assert torch.equal(got[field], getattr(want, field)), field


def test_sharded_evaluation_with_an_idle_rank(two_process_run, one_thread):
    from capsid_gr.eval import evaluate

    rec, hist, target, tiers = _eval_setup()
    want = evaluate(rec, hist[:TINY_EVAL_Q], target[:TINY_EVAL_Q], tiers=tiers, ks=(1, 5, 10), num_beams=10,
                    batch_size=8, token_metrics=False)
    got = json.loads((two_process_run / "eval_tiny.json").read_text())
    keys = [k for k in want if k.startswith(("recall", "ndcg")) or "_recall@" in k or k.endswith("_queries")]
    for k in keys:
        assert got[k] == want[k] or (np.isnan(got[k]) and np.isnan(want[k])), k
    assert got["queries"] == want["queries"] == TINY_EVAL_Q


def test_stage2_time_budget_stops_every_rank_together(two_process_run):
    h0, h1 = (torch.load(two_process_run / f"s2_time_rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert len(h0) == len(h1) == 1 and h0[0]["stopped_by"] == h1[0]["stopped_by"] == "time"
    assert h0[0]["val_recall@10"] == h1[0]["val_recall@10"]
