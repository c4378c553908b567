"""SemanticBPE settings (SPEC §1 and §5), one dataclass with the documented defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from ..checks import check_config


@dataclass(frozen=True)
class SemanticBPEConfig:
    """alpha: Eq. 9's weight of normalised frequency against cosine (1.0 = frequency only).
    theta_start / theta_end: the cosine threshold a candidate must beat, annealed over Stage 1.
    n_min: least (weighted) count of a pair in the training corpus.
    max_merges: the label threshold m* is the score of the max_merges-th best candidate,
        and at most this many merges enter the vocabulary.
    warmup: fraction of Stage 1 that uses alpha = 1 (the frequency warm-up).
    gumbel_start / gumbel_end: Gumbel-Softmax temperature tau_g, annealed.
    gate_hidden: width of the gate MLP's hidden layer.
    """

    alpha: float = 0.6
    theta_start: float = 0.90
    theta_end: float = 0.55
    n_min: int = 20
    max_merges: int = 1024
    warmup: float = 0.1
    gumbel_start: float = 1.0
    gumbel_end: float = 0.1
    gate_hidden: int = 64

    def __post_init__(self) -> None:
        check_config(self, {"theta_start": (-1.0, 1.0), "theta_end": (-1.0, 1.0)})  # cosine thresholds
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: expected a value in [0, 1], got {self.alpha}")
        if self.max_merges < 1 or self.n_min < 0 or self.gate_hidden < 1:
            raise ValueError(f"max_merges >= 1, n_min >= 0 and gate_hidden >= 1 needed, got {self}")
        if not (self.gumbel_start > 0 and self.gumbel_end > 0):
            raise ValueError(f"Gumbel temperatures must be > 0, got {self.gumbel_start}, {self.gumbel_end}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
