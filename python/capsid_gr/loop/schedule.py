"""Learning-rate schedules of the training loop, as pure functions of the optimizer step.

Two shapes, each written once: `Cosine` (SPEC §1: AdamW with a cosine from the peak to 0 over
the epoch budget; Stage 1 and Stage 2) and `WarmupCosine` (linear warm-up, then a cosine to a
floor that ends at the step budget or the time budget, whichever comes first; the sequential
fit). They are separate classes, not one with a zero warm-up, because each keeps the exact
floating-point order its trainer has always used (a logged `lr_end` and every step after it
stay bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Cosine:
    """peak * (1 + cos(pi * step / total)) / 2: `peak` at step 0, 0 at step `total`."""

    peak: float
    total: int

    def __call__(self, step: int, elapsed: Optional[float] = None) -> float:
        return self.peak * 0.5 * (1.0 + math.cos(math.pi * step / self.total))


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up over `warmup_steps` to `peak`, then a cosine from `peak` to `floor * peak`
    that ends at `total` steps or, when `max_seconds` is set and `elapsed` given, at the time
    budget, whichever comes first (so a run cut by its budget has decayed, not stopped at the
    peak)."""

    peak: float
    total: int
    warmup_steps: int = 0
    floor: float = 0.0
    max_seconds: Optional[float] = None

    def __call__(self, step: int, elapsed: Optional[float] = None) -> float:
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        frac = min(1.0, (step - self.warmup_steps) / max(1, self.total - self.warmup_steps))
        if self.max_seconds and elapsed is not None:
            frac = max(frac, min(1.0, elapsed / self.max_seconds))
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * frac)))
