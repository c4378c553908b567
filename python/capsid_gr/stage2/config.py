"""Stage-2 settings (SPEC §1, §6): one dataclass with the documented defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional
from ..checks import check_config, short


@dataclass(frozen=True)
class Stage2Config:
    """AdamW lr 3e-4, cosine to 0 over the epoch budget, wd 1e-5, batch 256, <= 200 epochs.

    eval_every: epochs between validation beam searches; patience counts evaluations without
        a better validation Recall@10 (10 evaluations, SPEC §1).
    val_users: validate on this many users (a fixed seeded subset) to bound the beam's cost;
        None = every user.
    num_beams: validation beam width (SPEC: 50). lora_rank: rank of the vote-transform
        adapters (SPEC: 8). soft_inputs: history items as adapted soft embeddings (CAPSID
        tokenizations only; others always enter hard).
    targets_per_user: training samples per user are every prefix -> next item of the training
        part; keep only the last this-many per user (None = all).
    grad_clip: global gradient-norm clip (None = off).
    routing_precision: "exact" or "tf32": matmul precision of the soft inputs' routing
        (forward and backward) on the GPU; tf32 is several times faster and Stage 2 only
        needs its gradient for the rank-8 adapters.
    length_buckets: sort each run of this many shuffled batches by history length before
        batching, so rows are padded to similar lengths (1 = plain shuffled batches). Every
        sample is still seen once per epoch; only which samples share a batch changes.
    sequence_batches: train on whole sequences (`BOS item_1 EOS ... item_k EOS`, every item
        after the first a target, `make_sequence_batch`) instead of one (prefix -> next item)
        row per target. Same targets and, under causal attention, the same logits per target
        (test); about len/2 times fewer tokens and len times fewer rows per epoch. A batch
        then holds `batch_size` sequences (windows of <= max_history + 1 items), so an epoch
        has fewer, larger steps. Hard inputs only: with soft inputs every item would be a
        soft history input and a hard target at once.
    max_seconds: a wall-clock budget for training (None = none): once an epoch ends past it,
        that epoch is validated (if it was not already) and training stops with the best
        state so far, recorded as `stopped_by = "time"`. A safety net for jobs with a hard
        time limit (several runs sharing one GPU); it is not part of the run's identity, so
        a checkpoint resumes under another budget. It counts from each call (a resumed run
        gets the whole budget again, so it trains at least one more epoch) and, under
        torch.distributed, every rank stops once any rank is out of time.
    """

    epochs: int = 200
    patience: int = 10
    lr: float = 3e-4
    weight_decay: float = 1e-5
    batch_size: int = 256
    eval_every: int = 2
    val_users: Optional[int] = 2048
    num_beams: int = 50
    eval_batch_size: int = 64
    max_history: int = 50
    lora_rank: int = 8
    soft_inputs: bool = True
    targets_per_user: Optional[int] = None
    grad_clip: Optional[float] = 1.0
    length_buckets: int = 32
    routing_precision: str = "exact"
    sequence_batches: bool = False
    max_seconds: Optional[float] = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        if min(self.epochs, self.patience, self.batch_size, self.eval_every, self.num_beams, self.lora_rank,
               self.length_buckets) < 1:
            raise ValueError(f"Stage2Config: epochs, patience, batch_size, eval_every, num_beams, lora_rank and length_buckets "
                             f"must be >= 1, got {self}")
        if self.routing_precision not in ("exact", "tf32"):
            raise ValueError(f"routing_precision: expected 'exact' or 'tf32', got {short(self.routing_precision)}")
        if self.max_seconds is not None and not self.max_seconds >= 0:
            raise ValueError(f"max_seconds: expected None or a number >= 0, got {short(self.max_seconds)}")
        if self.sequence_batches and self.soft_inputs:
            raise ValueError("sequence_batches=True needs soft_inputs=False: in a whole-sequence row every item is "
                             "both a history input (soft) and a target (hard)")
        if self.sequence_batches and self.targets_per_user is not None:
            raise ValueError("targets_per_user applies to prefix rows; with sequence_batches=True every item is a "
                             f"target (got targets_per_user={self.targets_per_user})")
        if self.sequence_batches and self.max_history < 1:
            raise ValueError(f"sequence_batches=True needs max_history >= 1, got {self.max_history}")
        if self.num_beams < 10:
            raise ValueError(f"num_beams={self.num_beams}: validation Recall@10 needs a beam of at least 10")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The settings a checkpoint must match to be resumed (all but the time budget)."""
        return {k: v for k, v in self.to_dict().items() if k != "max_seconds"}
