"""The one training loop (capsid_gr.loop) that Stage 1, Stage 2 and the sequential fit drive:
the schedules, early stopping, the best state, checkpoint + resume equal to an uninterrupted
run, the time budget and the distributed reductions, on a toy regression (CPU, fast)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from capsid_gr.checkpoint import load_checkpoint
from capsid_gr.loop import (Checkpointing, Cosine, EarlyStopping, TrainLoop, WarmupCosine, epoch_seeds,
                            validation_subset)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cosine_goes_from_the_peak_to_zero():
    s = Cosine(2e-3, 100)
    assert s(0) == 2e-3 and s(100) == pytest.approx(0.0, abs=1e-18)
    assert s(50) == pytest.approx(1e-3, rel=1e-12) and s(25) == pytest.approx(1e-3 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert all(s(i) > s(i + 1) for i in range(100))
    assert s(30, elapsed=1e9) == s(30)  # no time budget


def test_warmup_cosine_warms_up_decays_to_the_floor_and_ends_at_the_time_budget():
    s = WarmupCosine(1e-3, 110, warmup_steps=10, floor=0.1)
    assert [s(i) for i in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert s(60) == pytest.approx(0.55e-3) and s(110) == pytest.approx(1e-4) and s(500) == pytest.approx(1e-4)
    timed = WarmupCosine(1e-3, 10_000, warmup_steps=10, floor=0.1, max_seconds=100.0)
    assert timed(20, 50.0) == pytest.approx(0.55e-3)  # time is further along than steps
    assert timed(20, 500.0) == pytest.approx(1e-4)
    assert timed(5_005, 1.0) == pytest.approx(0.55e-3)  # steps are further along than time
    assert timed(20, None) == WarmupCosine(1e-3, 10_000, 10, 0.1)(20)  # no elapsed: steps only


def test_early_stopping_min_with_delta_counts_evaluations():
    es = EarlyStopping(2, goal="min", min_delta=1e-7)
    assert es.best == math.inf and not es.exhausted(0)
    assert es.observe(0, 1.0) and (es.best, es.best_epoch, es.bad) == (1.0, 0, 0)
    assert not es.observe(1, 1.0 - 1e-8)  # within min_delta: no improvement
    assert not es.observe(2, float("nan")) and es.exhausted(2)  # NaN never improves
    assert es.best_epoch == 0 and es.bad == 2


def test_early_stopping_in_epochs_since_the_best():
    es = EarlyStopping(3, best=-1.0, counts="epochs")
    assert not es.exhausted(10)  # nothing validated yet
    assert es.observe(4, 0.2) and not es.exhausted(6) and es.exhausted(7)
    assert not es.observe(8, 0.2)  # equal is no improvement in "max" mode
    assert es.observe(8, 0.3) and not es.exhausted(10)


def test_early_stopping_header_uses_each_trainers_names_and_refuses_bad_settings():
    es = EarlyStopping(2, goal="min", keys=("best_val", "best_epoch", "bad_epochs"))
    es.observe(3, 0.5)
    es.observe(4, 0.7)
    assert es.header() == {"best_val": 0.5, "best_epoch": 3, "bad_epochs": 1}
    fit = EarlyStopping(2, keys=("best", "best_epoch", None))
    assert set(fit.header()) == {"best", "best_epoch"} and fit.required() == ("best", "best_epoch")
    back = EarlyStopping(2, goal="min", keys=es.keys)
    back.load_header(json.loads(json.dumps(es.header())))
    assert (back.best, back.best_epoch, back.bad) == (0.5, 3, 1)
    for bad in ({"goal": "lower"}, {"counts": "steps"}, {"patience": 0}):
        with pytest.raises(ValueError, match="EarlyStopping"):
            EarlyStopping(**{"patience": 2, **bad})


def test_epoch_seeds_and_validation_subset_are_fixed_by_the_seed():
    assert epoch_seeds(0, 5) == (5, 5) and epoch_seeds(3, 2) == (3 * 1_000_003 + 2, 3 * 7_919 + 2)
    a = validation_subset(100, 10, seed=4)
    assert len(a) == 10 and (a == sorted(a)).all() and (a == validation_subset(100, 10, seed=4)).all()
    assert (validation_subset(7, None, seed=0) == range(7)).all()


class _Stop(Exception):
    pass


def _toy(tmp_path, *, epochs=8, patience=2, eval_every=1, vals=None, stop_after=None, init_seed=0,
         record_stop_as=None, max_seconds=None, header=None, dist=None, counts="evaluations", clock_resumes=False):
    """A linear regression trained by TrainLoop the way the three trainers drive it. `vals`:
    scripted validation values per epoch (None: the held-out loss)."""
    g = torch.Generator().manual_seed(11)
    x, xv = torch.randn(40, 3, generator=g), torch.randn(10, 3, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5]])
    y, yv = x @ w, xv @ w
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        init = torch.Generator().manual_seed(init_seed)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=init))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    states = {}

    def on_epoch_end(record):
        states[record["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}
        if stop_after is not None and record["epoch"] == stop_after:
            raise _Stop

    ckpt = None if tmp_path is None else Checkpointing(tmp_path / "toy.safetensors", tmp_path / "toy_log.jsonl",
                                                       header=header or {"toy": 1})
    loop = TrainLoop(epochs=epochs, steps_per_epoch=4, schedule=Cosine(0.1, epochs * 4),
                     stopping=EarlyStopping(patience, goal="min", counts=counts), optimizer=opt,
                     params=list(model.parameters()), state=model.state_dict, load_state=model.load_state_dict,
                     device="cpu", seed=5, eval_every=eval_every, grad_clip=1.0, max_seconds=max_seconds,
                     record_stop_as=record_stop_as, clock_resumes=clock_resumes, checkpoint=ckpt, dist=dist,
                     modules=(model,),
                     on_epoch_end=on_epoch_end)
    loop.begin()
    for epoch in loop.epochs():
        order, _ = loop.seeds()
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(order))
        total = 0.0
        for step in range(4):
            loop.set_lr(step)
            idx = perm[step * 10:(step + 1) * 10]
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loop.step(loss)
            total += float(loss.detach())
        seconds, total = loop.close_steps(total)
        record = {"epoch": epoch, "lr_end": loop.lr, "train": total}
        if clock_resumes:
            record["seconds"] = seconds
        if loop.validation_due():
            with torch.no_grad():
                v = float(torch.nn.functional.mse_loss(model(xv), yv)) if vals is None else vals[epoch]
            record["val"] = v
            loop.observe(v)
        record["best_epoch"] = loop.best_epoch
        loop.end_epoch(record)
    loop.finish()
    return loop, model, states


def test_early_stopping_ends_the_run_and_loads_the_best_epochs_state():
    vals = [5.0, 3.0, 4.0, 3.5, 1.0, 0.5, 0.4, 0.3]  # best at epoch 1, then two worse: stop after 3
    loop, model, states = _toy(None, vals=vals)
    assert [r["epoch"] for r in loop.history] == [0, 1, 2, 3] and loop.stopped_by == "patience"
    assert loop.best_epoch == 1 and loop.stopping.best == 3.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    assert not torch.equal(states[1]["weight"], states[3]["weight"])  # training did move on


def test_validation_runs_every_eval_every_and_on_the_last_epoch():
    loop, _, _ = _toy(None, epochs=7, eval_every=3, patience=10)
    assert [r["epoch"] for r in loop.history if "val" in r] == [2, 5, 6]
    assert loop.stopped_by is None and loop.history[-1]["lr_end"] == Cosine(0.1, 28)(27)


@pytest.mark.parametrize("record_stop_as", [None, "stop"])
@pytest.mark.parametrize("stop_after", [0, 2, 4])
def test_resume_equals_the_uninterrupted_run(tmp_path, record_stop_as, stop_after):
    vals = [5.0, 3.0, 4.0, 2.0, 2.5, 2.6, 1.0, 0.9]  # stops by patience after epoch 5
    ref, ref_model, _ = _toy(tmp_path / "a", vals=vals, record_stop_as=record_stop_as)
    with pytest.raises(_Stop):
        _toy(tmp_path / "b", vals=vals, record_stop_as=record_stop_as, stop_after=stop_after)
    _, meta = load_checkpoint(tmp_path / "b" / "toy.safetensors")
    assert meta["epoch"] == stop_after  # the callback runs after the epoch's checkpoint
    got, got_model, _ = _toy(tmp_path / "b", vals=vals, record_stop_as=record_stop_as, init_seed=9)
    assert got.history == ref.history and got.stopped_by == ref.stopped_by == "patience"
    assert got.best_epoch == ref.best_epoch == 3
    assert (tmp_path / "b" / "toy_log.jsonl").read_bytes() == (tmp_path / "a" / "toy_log.jsonl").read_bytes()
    for (k, a), b in zip(ref_model.state_dict().items(), got_model.state_dict().values()):
        assert torch.equal(a, b), k
    assert ("stop" in got.history[-1]) == (record_stop_as == "stop")
    again, _, _ = _toy(tmp_path / "b", vals=vals, record_stop_as=record_stop_as, init_seed=9)
    assert again.history == ref.history and again.stopped_by == "patience"  # a finished run stays finished


def test_resume_refuses_another_identity_naming_the_field(tmp_path):
    _toy(tmp_path, epochs=2, header={"toy": 1, "width": 3})
    with pytest.raises(ValueError, match=r"other settings or data \(width: checkpoint 3, this run 4\)"):
        _toy(tmp_path, epochs=2, header={"toy": 1, "width": 4})


def test_time_budget_validates_stops_and_resumes_as_each_trainer_wants(tmp_path):
    loop, _, _ = _toy(tmp_path / "a", max_seconds=0.0, eval_every=5)
    assert len(loop.history) == 1 and "val" in loop.history[0] and loop.stopped_by == "time"
    # not recorded (Stage 2): a resume gets a fresh budget and trains on
    more, _, _ = _toy(tmp_path / "a", max_seconds=None, eval_every=5, patience=10)
    assert [r["epoch"] for r in more.history] == list(range(8)) and more.stopped_by is None
    # recorded (the fit): a resumed run stays stopped
    timed, _, _ = _toy(tmp_path / "b", max_seconds=0.0, record_stop_as="stop")
    assert timed.history[-1]["stop"] == "time"
    still, _, _ = _toy(tmp_path / "b", max_seconds=None, record_stop_as="stop")
    assert still.history == timed.history and still.stopped_by == "time"


@pytest.mark.parametrize("clock_resumes", [False, True])
def test_a_resumed_clock_continues_from_the_last_record_when_asked(tmp_path, clock_resumes):
    from capsid_gr.checkpoint import save_checkpoint

    with pytest.raises(_Stop):
        _toy(tmp_path, epochs=3, stop_after=0, clock_resumes=True)
    tensors, meta = load_checkpoint(tmp_path / "toy.safetensors")
    meta["history"][-1]["seconds"] = 1000.0  # as if epoch 0 had taken 1000 s
    save_checkpoint(tmp_path / "toy.safetensors", tensors, meta)
    loop, _, _ = _toy(tmp_path, epochs=3, clock_resumes=clock_resumes)
    assert (loop.elapsed() >= 1000.0) == clock_resumes
    if clock_resumes:
        assert [r["seconds"] >= 1000.0 for r in loop.history] == [True, True, True]


def test_step_clips_the_global_gradient_norm():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    loop = TrainLoop(epochs=1, steps_per_epoch=1, schedule=Cosine(1.0, 1), stopping=EarlyStopping(1), optimizer=opt,
                     params=[p], state=lambda: {"p": p}, load_state=lambda t: None, device="cpu", grad_clip=0.5)
    loop.step((p * torch.tensor([30.0, 0.0, 40.0, 0.0])).sum())  # gradient norm 50
    torch.testing.assert_close(p.detach(), torch.tensor([-0.3, 0.0, -0.4, 0.0]))


class _FakeDist:
    """Two ranks' worth of reductions on one process: sums double, only a non-writer."""

    is_writer = False

    def __init__(self):
        self.calls = []

    def broadcast_modules(self, *modules):
        self.calls.append(("broadcast", len(modules)))

    def average_gradients(self, params):
        self.calls.append(("average", len(params)))

    def sum_gradients(self, params):
        self.calls.append(("sum", len(params)))

    def sum_floats(self, *values):
        self.calls.append(("sum_floats", len(values)))
        return tuple(2.0 * float(v) for v in values)


def test_distributed_run_reduces_once_per_epoch_and_only_the_writer_writes(tmp_path):
    dist = _FakeDist()
    one, _, _ = _toy(None, epochs=2)
    two, _, _ = _toy(tmp_path, epochs=2, dist=dist)
    assert dist.calls[0] == ("broadcast", 1)
    assert dist.calls.count(("average", 2)) == 8  # every step's gradients (Stage 1's mean)
    assert dist.calls.count(("sum_floats", 2)) == 2  # the totals and the time decision together, per epoch
    assert [r["train"] for r in two.history] == [2.0 * r["train"] for r in one.history]
    assert not any(tmp_path.iterdir())  # rank != 0 writes nothing
