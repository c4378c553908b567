"""Tokenizer configuration (SPEC §1's defaults), as three frozen dataclasses with one job each:

``RoutingParams``     what one routing layer computes (rounds, mode, eta, tau, eps): the one home
                      of those defaults, passed whole to every routing function;
``ExecutionOptions``  how it runs (backend, precision, input checks): never part of a model's or
                      checkpoint's identity, so a run may resume on another backend;
``CapsIDConfig``      a tokenizer's shape plus both of the above. Presets are data.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

from ._validate import MODES, PRECISIONS, short
from .registry import BACKENDS


def _check_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {short(value)}")


@dataclass(frozen=True)
class RoutingParams:
    """The routing of every depth (SPEC §2-3). Every routing function takes this whole.

    rounds: T, routing-by-agreement rounds per depth.
    mode: "soft" (routed reconstruction) or "hard" (winner only, the ablation).
    eta: residual step r' = r - eta z (> 0).
    tau: confidence stop (q >= tau).  eps: residual stop (||r'|| <= eps). tau > 1 or eps < 0
        switches that rule off (q < 1 and ||r'|| >= 0 always): the fixed-length ablations use it.
    """

    rounds: int = 3
    mode: str = "soft"
    eta: float = 1.0
    tau: float = 0.82
    eps: float = 0.08

    def __post_init__(self) -> None:
        _check_int("rounds", self.rounds)
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {short(self.mode)}")
        # a NaN would pass every comparison of the stop rule as False and give NaN residuals silently
        for name in ("eta", "tau", "eps"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {short(value)}")
        if self.eta <= 0:
            raise ValueError(f"eta: expected a residual step > 0, got {short(self.eta)}")


ROUTING_FIELDS = tuple(f.name for f in dataclasses.fields(RoutingParams))


def routing_params(routing: Optional[RoutingParams] = None, overrides: Optional[dict] = None) -> RoutingParams:
    """``routing`` (default ``RoutingParams()``) with keyword overrides: how the public functions keep
    accepting ``rounds=``, ``tau=``, ... beside a ``RoutingParams``. Unknown names raise TypeError."""
    if routing is None:
        routing = RoutingParams()
    elif not isinstance(routing, RoutingParams):
        raise TypeError(f"routing: expected a capsid_kernels.RoutingParams, got {type(routing).__name__}")
    if not overrides:
        return routing
    unknown = sorted(set(overrides) - set(ROUTING_FIELDS))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; "
                        f"the routing keywords are {', '.join(ROUTING_FIELDS)}")
    return dataclasses.replace(routing, **overrides)


@dataclass(frozen=True)
class ExecutionOptions:
    """How an op runs, not what it computes (to within the backends' measured tolerances). The
    modules take it whole, and so does every public op (``execution=``), whose loose keywords
    (``backend=``, ...) replace its fields (``execution_options``): these defaults are the only ones.

    backend: "auto", "eager", "triton" or "cuda" (see ``python -m capsid_kernels.info``).
    precision: "exact" float32 matmuls, or "tf32" on the GPU (no effect on squash and the beam ops).
    check_inputs: reject zero and non-finite item vectors, and non-finite weights W, b, D
        (one synchronisation per call each); ``route``'s and ``squash``'s ``check_finite`` (off by
        default there, ``HOT_PATH``) and the beam ops' ``check_values`` (their value checks).
    """

    backend: str = "auto"
    precision: str = "exact"
    check_inputs: bool = True

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {short(self.backend)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {short(self.precision)}")
        if not isinstance(self.check_inputs, bool):
            raise ValueError(f"check_inputs: expected a bool, got {short(self.check_inputs)}")


EXECUTION = tuple(f.name for f in dataclasses.fields(ExecutionOptions))
"""CapsIDConfig fields that choose how the routing runs: not part of any checkpoint identity."""

HOT_PATH = ExecutionOptions(check_inputs=False)
"""What ``route`` and ``squash`` run with when no ``execution`` is given: ExecutionOptions' backend and
precision, without the value check (one synchronisation per call in a hot path). The modules,
``tokenize`` and the beam ops start from ``ExecutionOptions()``, which checks."""

EXECUTION_ALIASES = {"check_finite": "check_inputs", "check_values": "check_inputs"}
"""Loose keywords that spell a field another way: ``route``'s and ``squash``'s ``check_finite`` and the
beam ops' ``check_values`` are ``check_inputs``."""


def execution_options(execution: Optional[ExecutionOptions] = None, keywords: Optional[dict] = None, *,
                      default: Optional[ExecutionOptions] = None) -> ExecutionOptions:
    """``execution`` (when None: ``default``, else ``ExecutionOptions()``) with the loose keywords that
    were given: how the public ops keep accepting ``backend=``, ``precision=``, ``check_inputs=`` (or an
    ``EXECUTION_ALIASES`` spelling) beside an ``ExecutionOptions``. A keyword left at None means "the
    field of ``execution``", so no signature writes a default of its own. Unknown names raise TypeError;
    a bad value raises ValueError naming the keyword."""
    if execution is None:
        execution = ExecutionOptions() if default is None else default
    elif not isinstance(execution, ExecutionOptions):
        raise TypeError(f"execution: expected None or a capsid_kernels.ExecutionOptions, got {type(execution).__name__}")
    fields = {}
    for name, value in (keywords or {}).items():
        if value is None:
            continue
        field = EXECUTION_ALIASES.get(name, name)
        if field not in EXECUTION:
            raise TypeError(f"unexpected keyword argument {name!r}; the execution keywords are {', '.join(EXECUTION)}")
        if field != name and not isinstance(value, bool):  # the dataclass would name the field, not the keyword
            raise ValueError(f"{name}: expected None or a bool (ExecutionOptions.{field}), got {short(value)}")
        fields[field] = value
    if not fields:
        return execution
    return dataclasses.replace(execution, **fields)

_R, _E = RoutingParams, ExecutionOptions  # the defaults below are read from these, never rewritten


@dataclass(frozen=True)
class CapsIDConfig:
    """A CAPSID tokenizer's shape (SPEC §1-3), its ``routing`` and its ``execution``.

    d: item-vector dimension (vectors are l2-normalised before depth 1).
    capsules: K per depth; an int for every depth or a tuple of length ``max_length``.
    capsule_dim: d_c, the capsule output dimension.
    max_length: L_max, the longest SID.
    rounds, mode, eta, tau, eps: ``RoutingParams``' fields and defaults; ``config.routing`` is
        them as one RoutingParams, which is what the tokenizer passes on.
    backend, precision, check_inputs: ``ExecutionOptions``' fields and defaults
        (``config.execution``); ``identity()`` leaves them out.
    The fields stay flat so ``CapsIDConfig(tau=...)``, ``--set tokenizer.tau=...`` and the stored
    checkpoints keep one spelling; the defaults live in the two dataclasses only.
    """

    d: int = 128
    capsules: Union[int, tuple[int, ...]] = 256
    capsule_dim: int = 64
    rounds: int = _R.rounds
    max_length: int = 6
    tau: float = _R.tau
    eps: float = _R.eps
    eta: float = _R.eta
    mode: str = _R.mode
    precision: str = _E.precision
    backend: str = _E.backend
    check_inputs: bool = _E.check_inputs

    def __post_init__(self) -> None:
        for name in ("d", "capsule_dim", "max_length"):
            _check_int(name, getattr(self, name))
        _ = self.routing, self.execution  # making each checks its fields, naming the one at fault
        if not isinstance(self.capsules, (int, tuple, list)) or isinstance(self.capsules, bool):
            raise ValueError(f"capsules: expected an int >= 1 or {self.max_length} ints >= 1, got {short(self.capsules)}")
        ks = self.capsules_per_depth
        if len(ks) != self.max_length or any((not isinstance(k, int)) or isinstance(k, bool) or k < 1 for k in ks):
            raise ValueError(
                f"capsules: expected an int >= 1 or {self.max_length} ints >= 1 (one per depth), got {short(self.capsules)}"
            )

    @property
    def routing(self) -> RoutingParams:
        return RoutingParams(**{name: getattr(self, name) for name in ROUTING_FIELDS})

    @property
    def execution(self) -> ExecutionOptions:
        return ExecutionOptions(**{name: getattr(self, name) for name in EXECUTION})

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


PRESETS: dict[str, dict] = {
    "default": {},
    "industrial": {"capsules": 1024, "capsule_dim": 96},
}
