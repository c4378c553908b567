"""Tokenizer configuration: one dataclass with SPEC §1's defaults; presets are data."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Union

from ._validate import MODES, PRECISIONS, short
from .registry import BACKENDS


@dataclass(frozen=True)
class CapsIDConfig:
    """A CAPSID tokenizer's shape and stop rules (SPEC §1-3).

    d: item-vector dimension (vectors are l2-normalised before depth 1).
    capsules: K per depth; an int for every depth or a tuple of length ``max_length``.
    capsule_dim: d_c, the capsule output dimension.
    rounds: T, routing-by-agreement rounds per depth.
    max_length: L_max, the longest SID.
    tau: confidence stop (q >= tau).  eps: residual stop (||r|| <= eps). tau > 1 or eps < 0
        switches that rule off (q < 1 and ||r|| >= 0 always): the fixed-length ablations use it.
    eta: residual step r' = r - eta z.
    mode: "soft" (routed reconstruction) or "hard" (winner only, the ablation).
    precision: "exact" float32 matmuls, or "tf32" on the GPU.
    backend: "auto", "eager", "triton" or "cuda" (see ``python -m capsid_kernels.info``).
    check_inputs: reject zero and non-finite item vectors, and non-finite weights W, b, D in
        ``CapsIDTokenizer.tokenize`` (one synchronisation per call each).
    """

    d: int = 128
    capsules: Union[int, tuple[int, ...]] = 256
    capsule_dim: int = 64
    rounds: int = 3
    max_length: int = 6
    tau: float = 0.82
    eps: float = 0.08
    eta: float = 1.0
    mode: str = "soft"
    precision: str = "exact"
    backend: str = "auto"
    check_inputs: bool = True

    def __post_init__(self) -> None:
        for name in ("d", "capsule_dim", "rounds", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {short(value)}")
        if not isinstance(self.capsules, (int, tuple, list)) or isinstance(self.capsules, bool):
            raise ValueError(f"capsules: expected an int >= 1 or {self.max_length} ints >= 1, got {short(self.capsules)}")
        ks = self.capsules_per_depth
        if len(ks) != self.max_length or any((not isinstance(k, int)) or isinstance(k, bool) or k < 1 for k in ks):
            raise ValueError(
                f"capsules: expected an int >= 1 or {self.max_length} ints >= 1 (one per depth), got {short(self.capsules)}"
            )
        for name in ("tau", "eps", "eta"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {short(value)}")
        if self.eta <= 0:
            raise ValueError(f"eta: expected a residual step > 0, got {short(self.eta)}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {short(self.mode)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {short(self.precision)}")
        if not isinstance(self.check_inputs, bool):
            raise ValueError(f"check_inputs: expected a bool, got {short(self.check_inputs)}")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {short(self.backend)}")

    @property
    def capsules_per_depth(self) -> tuple[int, ...]:
        if isinstance(self.capsules, int):
            return (self.capsules,) * self.max_length
        return tuple(self.capsules)

    @classmethod
    def preset(cls, name: str, **overrides) -> "CapsIDConfig":
        """A named preset (``PRESETS``) with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"name: expected one of {sorted(PRESETS)}, got {short(name)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that decide what is computed: `to_dict` less the execution options
        (`EXECUTION`: backend, precision, check_inputs), which a resumed run may change."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION}


EXECUTION = ("backend", "precision", "check_inputs")
"""CapsIDConfig fields that choose how the routing runs, not what it computes (to within the
backends' measured tolerances): not part of any checkpoint identity."""

PRESETS: dict[str, dict] = {
    "default": {},
    "industrial": {"capsules": 1024, "capsule_dim": 96},
}
