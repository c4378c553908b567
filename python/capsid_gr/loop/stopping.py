"""Early stopping: the best validation value so far, its epoch, and when patience runs out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass
class EarlyStopping:
    """patience: how long to wait for a better validation value; `counts` says in what:
        "evaluations": validations without improvement (Stage 1 validates every epoch, Stage 2
        every `eval_every`), "epochs": epochs since the best one, checked every epoch (the fit).
    goal: "max" (higher is better) or "min"; min_delta: an improvement must beat the best by
        more than this (Stage 1's L_route: 1e-7, so float noise is no improvement).
    best: the value to beat at the start (None: inf for "min", -inf for "max").
    keys: the checkpoint header's names for (best, best_epoch, bad); None = not stored. Each
        trainer keeps the names its checkpoints have always had, so those resume."""

    patience: int
    goal: str = "max"
    min_delta: float = 0.0
    counts: str = "evaluations"
    best: Optional[float] = None
    best_epoch: int = -1
    bad: int = 0
    keys: tuple = ("best", "best_epoch", "bad")

    def __post_init__(self) -> None:
        if self.goal not in ("max", "min"):
            raise ValueError(f"EarlyStopping.goal: expected 'max' or 'min', got {self.goal!r}")
        if self.counts not in ("evaluations", "epochs"):
            raise ValueError(f"EarlyStopping.counts: expected 'evaluations' or 'epochs', got {self.counts!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"EarlyStopping.patience: expected an integer >= 1, got {self.patience!r}")
        if self.best is None:
            self.best = math.inf if self.goal == "min" else -math.inf

    def improves(self, value: float) -> bool:
        """Whether `value` beats the best so far (NaN never does)."""
        if self.goal == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def observe(self, epoch: int, value: float) -> bool:
        """Record one validation of `epoch`; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.bad = value, epoch, 0
            return True
        self.bad += 1
        return False

    def exhausted(self, epoch: int) -> bool:
        """Patience has run out after `epoch` (the last finished one)."""
        if self.counts == "epochs":
            return self.best_epoch >= 0 and epoch - self.best_epoch >= self.patience
        return self.bad >= self.patience

    def header(self) -> dict:
        """The checkpoint header's fields (named by `keys`)."""
        return {k: v for k, v in zip(self.keys, (self.best, self.best_epoch, self.bad)) if k is not None}

    def required(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if k is not None)

    def load_header(self, meta: dict) -> None:
        """Restore best, best_epoch and bad from a header written by `header()`."""
        names = dict(zip(("best", "best_epoch", "bad"), self.keys))
        for field, key in names.items():
            if key is not None:
                setattr(self, field, meta[key])
