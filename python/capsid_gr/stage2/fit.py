"""One training protocol for the item-level sequence models (encoder-decoder generator, SASRec).

Every training window (`training_windows`: up to max_history + 1 consecutive training items)
is one row; every item after the first is a target. AdamW with linear warm-up and cosine
decay to `min_lr` times the peak over the epoch budget or the time budget (whichever ends
first), gradient-norm clipping, bf16 autocast
on CUDA. Every `eval_every` epochs the model ranks the validation users (a fixed seeded subset
of `val_users`, or all) and NDCG@10 decides early stopping (`patience` in epochs) and the best
state; the test is run once, by the caller, at that best state. After every epoch an atomic
checkpoint (safetensors + JSON header: model, best model, optimizer, history) is written; a
rerun in the same folder resumes after the last finished epoch with the same result as an
uninterrupted run (shuffling and dropout are seeded from (seed, epoch)).

Under torchrun (`dist=`, a capsid_gr.collective.DistContext of world > 1) the model trains
under DistributedDataParallel with exact global-batch semantics (capsid_gr.loop.GlobalBatchLoss):
every rank draws the same global batches, computes the loss of its contiguous slice of rows,
and the update is the one-process update on the whole batch up to float32 summation order
(with dropout 0; dropout masks are drawn per rank). Validation decodes whole chunks of queries
on each rank and gathers their target ranks (capsid_gr.loop.sharded_ranking_metrics), so its
metrics equal one process's for the same parameters. Rank 0 alone writes the checkpoint; it
holds global state only, so a run resumes on any world size (bit-identical to an uninterrupted
run at the same world size, to float32 tolerance at another). The loop is
capsid_gr.loop.TrainLoop (schedule: capsid_gr.loop.WarmupCosine); this file keeps the fit's
batches, its validation NDCG@10 and the popularity-correction choice.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..data import Split
from ..generator import autocast
from ..generator.seq import attention_backends, window_tensors
from ..loop import (Checkpointing, EarlyStopping, GlobalBatchLoss, TrainLoop, WarmupCosine, reseed_global,
                    sharded_ranking_metrics, validation_subset)
from ..ranking import ranking_metrics
from .samples import batch_count, bucketed_batches, training_windows, window_batch
from ..checks import check_config, short


@dataclass(frozen=True)
class FitConfig:
    """epochs: the budget the cosine decays over; warmup_steps: linear warm-up; lr, min_lr
    (fraction of lr at the end), weight_decay, grad_clip (None = off), betas: AdamW;
    batch_size: windows per step; eval_every: epochs between validations; patience: epochs
    without a better validation NDCG@10 before stopping; val_users: validation subset size
    (None = all); num_beams: beam width of generative models; eval_batch_size: queries per
    decoding batch; max_history: window length in items (SPEC §8: 50); length_buckets: see
    `bucketed_batches`; max_seconds: wall-clock budget (not part of the run's identity);
    prior_alphas: the popularity corrections a generative model's beam may be re-ranked with
    (`choose_prior_alpha`: score - alpha * log(1 + training count), alpha picked on the
    validation users at the best state; (0.0,) = plain beam scores; a decoding choice, not part
    of the run's identity)."""

    epochs: int = 200
    lr: float = 1e-3
    min_lr: float = 0.05
    warmup_steps: int = 300
    weight_decay: float = 0.05
    grad_clip: Optional[float] = 1.0
    beta2: float = 0.98
    batch_size: int = 256
    eval_every: int = 2
    patience: int = 20
    val_users: Optional[int] = 8192
    num_beams: int = 50
    eval_batch_size: int = 256
    max_history: int = 50
    length_buckets: int = 16
    max_seconds: Optional[float] = None
    prior_alphas: tuple = (0.0,)
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        for n in ("epochs", "batch_size", "eval_every", "patience", "num_beams", "eval_batch_size", "max_history",
                  "length_buckets"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FitConfig.{n}: expected an integer >= 1, got {short(v)}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"FitConfig.warmup_steps: expected an integer >= 0, got {short(self.warmup_steps)}")
        for n, lo, hi in (("lr", 0, math.inf), ("min_lr", 0, 1), ("weight_decay", 0, math.inf), ("beta2", 0, 1)):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi) or (n == "lr" and v == 0):
                raise ValueError(f"FitConfig.{n}: expected a number in [{lo}, {hi}]{' above 0' if n == 'lr' else ''}, "
                                 f"got {short(v)}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"FitConfig.grad_clip: expected None or a number > 0, got {short(self.grad_clip)}")
        if self.val_users is not None and (isinstance(self.val_users, bool) or not isinstance(self.val_users, int)
                                           or self.val_users < 1):
            raise ValueError(f"FitConfig.val_users: expected None or an integer >= 1, got {short(self.val_users)}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float)) and self.max_seconds >= 0):
            raise ValueError(f"FitConfig.max_seconds: expected None or a number >= 0, got {short(self.max_seconds)}")
        a = self.prior_alphas
        if (not isinstance(a, (list, tuple)) or not a
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 4 for v in a)):
            raise ValueError(f"FitConfig.prior_alphas: expected a non-empty list of numbers in [0, 4], got {short(a)}")
        object.__setattr__(self, "prior_alphas", tuple(float(v) for v in a))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k not in ("max_seconds", "prior_alphas")}


def learning_rate(cfg: FitConfig, step: int, total: int, elapsed: Optional[float] = None) -> float:
    """Linear warm-up over `warmup_steps`, then a cosine from `lr` to `min_lr * lr` that ends at
    `total` steps or, when `cfg.max_seconds` is set and `elapsed` given, at the time budget,
    whichever comes first (capsid_gr.loop.WarmupCosine)."""
    return schedule(cfg, total)(step, elapsed)


def schedule(cfg: FitConfig, total: int) -> WarmupCosine:
    """The fit's learning rate over `total` steps (FitConfig: lr, warmup_steps, min_lr, max_seconds)."""
    return WarmupCosine(cfg.lr, total, cfg.warmup_steps, cfg.min_lr, cfg.max_seconds)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val: dict
    stopped_by: str
    seconds: float


def validation_users(split: Split, cfg: FitConfig) -> np.ndarray:
    return validation_subset(split.valid.target.shape[0], cfg.val_users, cfg.seed)


def fit_sequential(model: torch.nn.Module, recommender, split: Split, cfg: FitConfig = FitConfig(), *,
                   device=None, out_dir: Optional[Path] = None, resume: bool = True, identity: Optional[dict] = None,
                   show_progress: bool = True, log: Optional[Callable[[dict], None]] = None,
                   dist=None) -> FitResult:
    """Train `model` (anything with `loss(items [B, T], targets [B, T]) -> (mean loss, count)`)
    on `split.train`; `recommender.recommend(histories, num_beams, top_k, batch_size)` ranks the
    validation users. Leaves the best state loaded and the model in eval mode. `log` is called
    with each epoch's record once its checkpoint is written (on every rank). `dist`: a
    capsid_gr.collective.DistContext under torchrun (see the module doc; device defaults to its
    device); None or a one-process context: one process."""
    start = time.perf_counter()
    dist = dist if dist is not None and dist.active else None
    if device is None:
        device = dist.device if dist is not None else "cpu"
    device = torch.device(device)
    model.to(device)
    windows = training_windows(split.train, cfg.max_history)
    if len(windows) == 0:
        raise ValueError("split.train: no user has 2 training items, so there is nothing to train on")
    lengths = np.minimum(windows[:, 1], cfg.max_history + 1)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda")
    steps_per_epoch = batch_count(windows, cfg.batch_size, cfg.max_history, cfg.length_buckets, lengths)
    users = validation_users(split, cfg)
    val_hist = [split.valid.history[u, : split.valid.length[u]] for u in users]
    val_target = split.valid.target[users]

    checkpoint = None
    if out_dir is not None:
        checkpoint = Checkpointing(Path(out_dir) / "fit.safetensors", Path(out_dir) / "fit_log.jsonl",
                                   header={"fit": cfg.identity(), "model": identity or {}}, live_prefix="model.",
                                   required=("best_val",))
    loop = TrainLoop(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, schedule=schedule(cfg, cfg.epochs * steps_per_epoch),
        stopping=EarlyStopping(cfg.patience, best=-1.0, counts="epochs", keys=("best", "best_epoch", None)),
        optimizer=opt, params=list(model.parameters()), state=model.state_dict, load_state=model.load_state_dict,
        device=device, seed=cfg.seed, eval_every=cfg.eval_every, grad_clip=cfg.grad_clip,
        max_seconds=cfg.max_seconds, clock_resumes=True, record_stop_as="stop", checkpoint=checkpoint,
        resume=resume, on_epoch_end=log, clock_start=start, dist=dist, grad_reduction="ddp")
    if dist is not None:
        dist.barrier()  # a checkpoint rank 0 is still writing (an earlier call) is on disk before any rank reads it
    meta = loop.begin()
    best_val: dict = meta["best_val"] if meta is not None else {}
    ddp = GlobalBatchLoss(model, dist) if dist is not None else None  # after a resume: every rank holds its state
    with attention_backends():  # no cuDNN attention (see attention_backends)
        for epoch in loop.epochs():
            dropout_seed, order_seed = loop.seeds()
            reseed_global(dropout_seed, dist)
            rng = np.random.default_rng(order_seed)
            perm = rng.permutation(len(windows))
            batches = bucketed_batches(windows[perm], cfg.batch_size, cfg.max_history, cfg.length_buckets, rng,
                                       lengths[perm])
            model.train()
            n_sum = 0
            losses = []
            for i, chosen in enumerate(batches):
                loop.set_lr(i)
                inp, tgt = window_tensors(window_batch(split.train, chosen, cfg.max_history))
                rows = torch.as_tensor(inp, device=device), torch.as_tensor(tgt, device=device)
                with autocast(device):
                    if ddp is None:
                        loss, n = model.loss(*rows)
                        summed = loss.detach() * n
                    else:
                        loss, summed, n = ddp(rows)
                loop.step(loss)
                losses.append(summed)
                n_sum += n
            loss_sum = float(torch.stack(losses).sum()) if losses else 0.0
            elapsed, loss_sum, n_sum = loop.close_steps(loss_sum, n_sum)
            record = {"epoch": epoch, "lr_end": loop.lr, "train_loss": loss_sum / max(n_sum, 1), "seconds": elapsed}
            if loop.validation_due():
                m = validation_metrics(recommender, val_hist, val_target, cfg, dist)
                record.update({f"val_{k}": v for k, v in m.items()})
                if loop.observe(m["ndcg@10"]):
                    best_val = m
            record["best_epoch"] = loop.best_epoch
            if show_progress:
                print(f"[fit] epoch {epoch} loss {record['train_loss']:.4f} "
                      f"val ndcg@10 {record.get('val_ndcg@10', float('nan')):.4f} "
                      f"best {loop.stopping.best:.4f}@{loop.best_epoch} ({elapsed:.0f} s)", flush=True)
            loop.end_epoch(record, meta={"best_val": best_val})
    loop.finish()
    model.eval()
    if dist is not None:
        dist.barrier()  # every rank returns with the last checkpoint on disk
    return FitResult(loop.history, loop.best_epoch, best_val, loop.stopped_by or "epochs", loop.elapsed())


def validation_metrics(recommender, histories, targets: np.ndarray, cfg: FitConfig, dist=None) -> dict:
    """Recall@10 and NDCG@10 of `recommender` on the validation users; with `dist` (world > 1)
    decoded in shards and gathered, equal to one process's."""
    if dist is None:
        ranked, _ = recommender.recommend(histories, num_beams=cfg.num_beams, top_k=10, batch_size=cfg.eval_batch_size)
        return ranking_metrics(ranked, targets, ks=(10,))
    return sharded_ranking_metrics(recommender, histories, targets, dist, ks=(10,), num_beams=cfg.num_beams, top_k=10,
                                   batch_size=cfg.eval_batch_size)


def choose_decode_weight(recommender, split: Split, cfg: FitConfig, attr: str, values) -> tuple[float, dict]:
    """Pick the decoding weight `attr` of `recommender` (e.g. `prior_alpha`, `sim_beta`) among
    `values` on the same validation users as early stopping, by NDCG@10 (ties go to the smaller);
    leaves the winner set and returns it with each candidate's validation metrics. With one
    candidate nothing is decoded."""
    values = sorted(float(v) for v in values)
    if len(values) == 1:
        setattr(recommender, attr, values[0])
        return values[0], {}
    users = validation_users(split, cfg)
    hist = [split.valid.history[u, : split.valid.length[u]] for u in users]
    target = split.valid.target[users]
    table, best, best_value = {}, -1.0, values[0]
    for value in values:
        setattr(recommender, attr, value)
        ranked, _ = recommender.recommend(hist, num_beams=cfg.num_beams, top_k=10, batch_size=cfg.eval_batch_size)
        m = ranking_metrics(ranked, target, ks=(10,))
        table[str(value)] = m
        if m["ndcg@10"] > best:
            best, best_value = m["ndcg@10"], value
    setattr(recommender, attr, best_value)
    return best_value, table


def choose_prior_alpha(recommender, split: Split, cfg: FitConfig) -> tuple[float, dict]:
    """The popularity correction `prior_alpha` among `cfg.prior_alphas` (`choose_decode_weight`)."""
    return choose_decode_weight(recommender, split, cfg, "prior_alpha", cfg.prior_alphas)
