"""Item-vector settings (SPEC §10): which sources, the target dimension, the models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union
from ..checks import check_config, short

SOURCES = ("given", "content", "collab", "cooc", "attr")
AUTO_WEIGHTS = (1.0, 0.75, 0.5, 0.25)
"""The grid `weights="auto"` searches for every source after the first (largest first, so a tie keeps it larger)."""


@dataclass(frozen=True)
class VectorConfig:
    """sources: any of "given" (vectors shipped with the data, e.g. the synthetic catalogue),
        "content" (sentence embedding of "title; brand; categories; price"; needs the
        `vectors` extra), "collab" (item embeddings of a SASRec trained on the training
        split only), "cooc" (truncated SVD of the positive PMI of items that co-occur within
        `cooc_window` steps in the training split: collaborative, deterministic, seconds), "attr" (idf-weighted multi-hot item attributes).
    weights: one weight per source (None = all 1): each block is scaled to unit rows and then by
        its weight before the joint reduction, so a weight below 1 lets a block shape the
        vectors less. "auto": the first source keeps 1 and every other one takes the weight from
        AUTO_WEIGHTS with the best last-item nearest-neighbour Recall@10 on the *validation*
        queries (ties to the larger weight; Beauty: content + 0.75 x cooc,
        docs/results/beauty_gpu_2026-12-07_probe.md).
    d: output dimension after the SVD reduction; vectors come out ell2-normalised.
    collab_*: the SASRec: hidden size, layers, heads, epochs, batch, learning rate, history cap.
    content_batch: sentences per encoder batch.
    seed: every random draw (SASRec init, negatives, batching).
    """

    sources: tuple[str, ...] = ("content", "collab", "attr")
    weights: Optional[Union[tuple[float, ...], str]] = None
    d: int = 128
    collab_dim: int = 64
    collab_layers: int = 2
    collab_heads: int = 2
    collab_epochs: int = 10
    collab_batch: int = 256
    collab_lr: float = 1e-3
    collab_max_len: int = 50
    cooc_dim: int = 64
    cooc_window: int = 3
    content_batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(f"sources: expected a non-empty subset of {SOURCES}, got {self.sources}")
        if isinstance(self.weights, str):
            if self.weights != "auto":
                raise ValueError(f"weights: expected None, \"auto\" or one number per source, got {short(self.weights)}")
        elif self.weights is not None:
            w = tuple(self.weights)
            if len(w) != len(self.sources) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and x < float("inf") for x in w):
                raise ValueError(f"weights: expected one finite number > 0 per source {self.sources}, "
                                 f"got {short(self.weights)}")
            object.__setattr__(self, "weights", tuple(float(x) for x in w))
        if self.d < 1 or self.collab_dim < 1 or self.collab_epochs < 0:
            raise ValueError(f"d >= 1, collab_dim >= 1 and collab_epochs >= 0 needed, got {self}")

    def to_dict(self) -> dict:
        """Every field; `weights` only when set, so vectors cached before it existed keep their key."""
        d = dataclasses.asdict(self)
        if d["weights"] is None:
            del d["weights"]
        return d
