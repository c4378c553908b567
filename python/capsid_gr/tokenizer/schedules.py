"""Stage-1 annealing schedules (SPEC §4-5) as pure functions of training progress.

Progress is `epoch / (epochs - 1)` in [0, 1], so the first epoch sees the start value and
the last epoch the end value whatever the epoch budget; early stopping simply ends sooner.
"""

from __future__ import annotations


def progress(epoch: int, epochs: int) -> float:
    """Fraction of Stage 1 done at the start of 0-based `epoch` out of `epochs`."""
    if epochs <= 1:
        return 1.0
    return min(1.0, max(0.0, epoch / (epochs - 1)))


def linear(start: float, end: float, t: float) -> float:
    """start at t = 0, end at t = 1, straight line between."""
    return start + (end - start) * min(1.0, max(0.0, t))


def spread_margin(t: float, start: float = 0.2, end: float = 0.9) -> float:
    """m of L_spread: 0.2 -> 0.9 over Stage 1."""
    return linear(start, end, t)


def bpe_threshold(t: float, start: float = 0.90, end: float = 0.55) -> float:
    """theta of the SemanticBPE candidate filter: strict -> moderate."""
    return linear(start, end, t)


def gumbel_temperature(t: float, start: float = 1.0, end: float = 0.1) -> float:
    """tau_g of the Gumbel-Softmax gate: 1.0 -> 0.1."""
    return linear(start, end, t)


def bpe_alpha(t: float, alpha: float, warmup: float = 0.1) -> float:
    """Eq. 9's alpha: 1 (frequency only) for the first `warmup` of Stage 1, then `alpha`."""
    return 1.0 if t < warmup else alpha
