"""The epoch loop every trainer drives: Stage 1 (the CAPSID tokenizer), Stage 2 (the token-level
generator) and the sequential fit (encoder-decoder generator, SASRec).

`TrainLoop` owns what the three share: which epochs are left, the per-step learning rate
(`schedule`), the optimizer step (zero, backward, the optional distributed gradient reduction,
clipping), the time budget, periodic validation with early stopping, the best state, and after
every epoch an atomic checkpoint (capsid_gr.checkpoint: live state, best state, optimizer,
history) plus the JSON log; a rerun that finds the checkpoint resumes after the last finished
epoch. A trainer keeps only what is its own: its batches, its loss, its validation metric and
the fields of its log records. It drives the loop like this:

    loop = TrainLoop(...); meta = loop.begin()
    for epoch in loop.epochs():
        for step, batch in enumerate(batches):
            loop.set_lr(step); ...loss...; loop.step(loss)
        totals = loop.close_steps(*running_sums)       # summed over ranks, time budget checked
        record = {...}
        if loop.validation_due(): loop.observe(metric)
        loop.end_epoch(record)                         # stop decision, checkpoint, log, callback
    loop.finish()                                      # the best state loaded

Nothing here draws random numbers: `epoch_seeds` gives each epoch its seeds, and each trainer
seeds its own generators from them, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import (differences, flatten_optimizer, load_checkpoint, require_meta, restore_optimizer,
                          save_checkpoint)
from ..atomic import write_atomic
from .stopping import EarlyStopping

OPT_PREFIX = "opt."  # flatten_optimizer's tensor names


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
    """Two seeds of one epoch of a run seeded `seed`, distinct for every (seed, epoch): the
    trainers seed their shuffling (and Stage 2 and the fit their dropout) from them."""
    return seed * 1_000_003 + epoch, seed * 7_919 + epoch


def reseed_global(seed: int, dist=None) -> None:
    """Seed torch's global generator (dropout) for one epoch; under torch.distributed every rank
    draws its own stream (`DistContext.reseed`)."""
    torch.manual_seed(seed)
    if dist is not None:
        dist.reseed(seed)


def validation_subset(n: int, size: Optional[int], seed: int) -> np.ndarray:
    """The sorted validation users: a seeded `size` of the `n` (None or 0: all)."""
    pick = np.random.default_rng(seed).permutation(n)
    return np.sort(pick[:size] if size else pick)


def _same_identity(identity: dict) -> Callable[[dict], Optional[str]]:
    want = json.loads(json.dumps(identity))

    def mismatch(meta: dict) -> Optional[str]:
        stored = {k: meta.get(k) for k in want}
        return differences(stored, want) if stored != want else None

    return mismatch


@dataclass
class Checkpointing:
    """Where and how a trainer checkpoints. `path`: the safetensors file; `log`: the JSON-lines
    history beside it. `header`: fields written into every checkpoint's header; `identity`:
    those a resume must match (default: all of `header`), compared as JSON; `mismatch`: a
    trainer's own check instead, meta -> why it cannot resume (None: it can). `live_prefix`,
    `best_prefix`: the tensor names of the live and the best state (the names each trainer has
    always written). `required`: further header fields a resume reads (a missing one is named)."""

    path: Path
    log: Path
    header: dict = field(default_factory=dict)
    identity: Optional[dict] = None
    mismatch: Optional[Callable[[dict], Optional[str]]] = None
    live_prefix: str = ""
    best_prefix: str = "best."
    required: tuple[str, ...] = ()

    def check(self, meta: dict) -> Optional[str]:
        if self.mismatch is not None:
            return self.mismatch(meta)
        return _same_identity(self.header if self.identity is None else self.identity)(meta)


class TrainLoop:
    """One run's epochs (see the module docstring for the calls a trainer makes).

    epochs: the budget; steps_per_epoch: optimizer steps per epoch (the schedule's step is
    epoch * steps_per_epoch + step); schedule: step, elapsed seconds -> learning rate
    (capsid_gr.loop.schedule); stopping: the early-stopping state; eval_every: epochs between
    validations (the last epoch and an epoch past the time budget always validate).
    state, load_state: the trainer's learnable state as named tensors, and how to load it back
    (best state and resume). params: what the optimizer steps (gradient reduction, clipping);
    grad_clip: global-norm clip (None/0: off).
    max_seconds: wall-clock budget: an epoch that ends past it validates and stops the run
    (None: none); clock_resumes: a resumed run's clock (budget and reported seconds) continues
    from its last record's `seconds` instead of starting at 0.
    record_stop_as: the log field the stop reason ("patience", "time") is written to; a resumed
    run whose last record has it stays stopped. None: not logged, and a resume re-derives
    patience from `stopping` (a time budget starts afresh).
    checkpoint: None (no files) or where to checkpoint; resume: pick up a checkpoint found there.
    dist: a capsid_gr.collective.DistContext under torchrun (None: one process): `modules` are
    broadcast from rank 0 at `begin`, gradients are all-reduced ("mean": every rank computed the
    whole batch's loss, Stage 1; "sum": each rank's loss is already weighted by its share,
    Stage 2; "ddp": DistributedDataParallel reduced them during backward, the sequential fit
    through capsid_gr.loop.ddp), the running totals and the time decision are summed in one
    reduction, only the writer rank writes.
    on_epoch_end: called with each record after its checkpoint is written.
    """

    def __init__(self, *, epochs: int, steps_per_epoch: int, schedule: Callable[[int, Optional[float]], float],
                 stopping: EarlyStopping, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                 state: Callable[[], dict], load_state: Callable[[dict], None], device, seed: int = 0,
                 eval_every: int = 1, grad_clip: Optional[float] = None,
                 max_seconds: Optional[float] = None, clock_resumes: bool = False,
                 record_stop_as: Optional[str] = None, checkpoint: Optional[Checkpointing] = None,
                 resume: bool = True, dist=None, modules: Sequence = (), grad_reduction: str = "mean",
                 on_epoch_end: Optional[Callable[[dict], None]] = None, clock_start: Optional[float] = None) -> None:
        if grad_reduction not in ("mean", "sum", "ddp"):
            raise ValueError(f"TrainLoop.grad_reduction: expected 'mean', 'sum' or 'ddp', got {grad_reduction!r}")
        self.epochs_total, self.steps_per_epoch, self.schedule = epochs, steps_per_epoch, schedule
        self.stopping, self.optimizer, self.params = stopping, optimizer, list(params)
        self._state, self._load_state, self.device, self.seed = state, load_state, device, seed
        self.eval_every, self.grad_clip, self.max_seconds = eval_every, grad_clip, max_seconds
        self.clock_resumes, self.record_stop_as = clock_resumes, record_stop_as
        self.checkpoint, self.dist, self.modules = checkpoint, dist, tuple(modules)
        self.grad_reduction, self.on_epoch_end = grad_reduction, on_epoch_end
        self.start = time.perf_counter() if clock_start is None else clock_start
        self.resume = resume
        self.best_state: dict = {}
        self.history: list[dict] = []
        self.first_epoch = 0
        self.epoch = -1
        self.lr: Optional[float] = None
        self.late = False
        self.stopped_by: Optional[str] = None

    # -- before the first epoch -------------------------------------------------------------
    @property
    def resumable(self) -> bool:
        """A checkpoint is there and will be resumed by `begin`."""
        return self.checkpoint is not None and self.resume and Path(self.checkpoint.path).is_file()

    def begin(self, fallback: Optional[dict] = None) -> Optional[dict]:
        """Take the fallback best state (what `finish` loads if no validation ever improves;
        default: a copy of the state now), resume from the checkpoint if there is one (returning
        its header, for the trainer's own fields; None otherwise), and broadcast `modules`."""
        self.best_state = self._snapshot() if fallback is None else fallback
        meta = self._resume() if self.resumable else None
        if self.dist is not None:
            self.dist.broadcast_modules(*self.modules)
        return meta

    def _resume(self) -> dict:
        spec = self.checkpoint
        tensors, meta = load_checkpoint(spec.path)
        why = spec.check(meta)
        if why:
            raise ValueError(f"{spec.path}: checkpoint was written with other settings or data ({why}); use another "
                             "output folder or resume=False (--no-resume)")
        live = {k[len(spec.live_prefix):]: v for k, v in tensors.items()
                if k.startswith(spec.live_prefix) and not k.startswith((spec.best_prefix, OPT_PREFIX))}
        self._load_state(live)
        self.best_state = {k[len(spec.best_prefix):]: v.to(self.device) for k, v in tensors.items()
                           if k.startswith(spec.best_prefix)}
        require_meta(spec.path, meta, ("optimizer", "history", *self.stopping.required(), *spec.required, "epoch"))
        restore_optimizer(self.optimizer, tensors, meta["optimizer"], OPT_PREFIX)
        self.history = meta["history"]
        self.stopping.load_header(meta)
        self.first_epoch = meta["epoch"] + 1
        if self.clock_resumes and self.history:
            self.start -= self.history[-1]["seconds"]
        if self.record_stop_as is not None:
            self.stopped_by = self.history[-1].get(self.record_stop_as) if self.history else None
        elif self.stopping.exhausted(meta["epoch"]):
            self.stopped_by = "patience"
        return meta

    # -- the epochs ---------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self.stopped_by is not None

    @property
    def epochs_left(self) -> int:
        return max(0, self.epochs_total - self.first_epoch)

    def epochs(self) -> Iterator[int]:
        """The epochs still to run; ends early once the run has stopped."""
        for epoch in range(self.first_epoch, self.epochs_total):
            if self.stopped:
                return
            self.epoch, self.late = epoch, False
            yield epoch

    def seeds(self) -> tuple[int, int]:
        """This epoch's two seeds (`epoch_seeds`)."""
        return epoch_seeds(self.seed, self.epoch)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def set_lr(self, step: int) -> float:
        """The schedule's rate at `step` of this epoch, set on every parameter group."""
        self.lr = self.schedule(self.epoch * self.steps_per_epoch + step, self.elapsed())
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def step(self, objective: torch.Tensor) -> None:
        """One optimizer step on `objective`: zero the gradients, backward, all-reduce them over
        ranks (unless DDP did, `grad_reduction="ddp"`), clip, step."""
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if self.dist is not None and self.grad_reduction != "ddp":
            if self.grad_reduction == "mean":
                self.dist.average_gradients(self.params)
            else:
                self.dist.sum_gradients(self.params)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()

    def close_steps(self, *totals: float) -> tuple:
        """After the epoch's steps: its wall-clock seconds so far, then the trainer's running
        totals summed over ranks (unchanged in one process); decides `late` (past the time budget
        on any rank) in the same reduction."""
        seconds = self.elapsed()
        late = float(self.max_seconds is not None and seconds > self.max_seconds)
        if self.dist is not None:
            *totals, late = self.dist.sum_floats(*totals, late)
        self.late = late > 0
        return (seconds, *totals)

    def validation_due(self) -> bool:
        epoch = self.epoch
        return (epoch + 1) % self.eval_every == 0 or epoch == self.epochs_total - 1 or self.late

    def observe(self, value: float) -> bool:
        """One validation of this epoch; True (and the state kept as the best) when it improves."""
        improved = self.stopping.observe(self.epoch, value)
        if improved:
            self.best_state = self._snapshot()
        return improved

    @property
    def best_epoch(self) -> int:
        return self.stopping.best_epoch

    def end_epoch(self, record: dict, meta: Optional[dict] = None) -> None:
        """Decide whether the run stops, append `record` to the history, write the checkpoint
        (header + `meta`, the trainer's own fields) and the log, then call on_epoch_end."""
        if self.stopping.exhausted(self.epoch):
            self.stopped_by = "patience"
        if self.late:
            self.stopped_by = "time"
        if self.record_stop_as is not None and self.stopped:
            record[self.record_stop_as] = self.stopped_by
        self.history.append(record)
        spec = self.checkpoint
        if spec is not None and (self.dist is None or self.dist.is_writer):
            opt_tensors, opt_meta = flatten_optimizer(self.optimizer, OPT_PREFIX)
            header = {**spec.header, "epoch": self.epoch, "history": self.history, **self.stopping.header(),
                      "optimizer": opt_meta, **(meta or {})}
            tensors = {**{spec.live_prefix + k: v for k, v in self._state().items()},
                       **{spec.best_prefix + k: v for k, v in self.best_state.items()}, **opt_tensors}
            save_checkpoint(spec.path, tensors, header)
            write_atomic(Path(spec.log), "".join(json.dumps(r) + "\n" for r in self.history).encode())
        if self.on_epoch_end is not None:
            self.on_epoch_end(record)

    def finish(self) -> None:
        """Load the best state (the fallback if no validation improved)."""
        self._load_state(self.best_state)

    def _snapshot(self) -> dict:
        return {k: v.detach().clone() for k, v in self._state().items()}
