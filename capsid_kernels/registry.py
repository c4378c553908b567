"""One registry of ops and backends: which kernel serves which op, on what, and why not.

Per (op, backend) that has a kernel, one frozen ``Kernel`` record: its dtypes and device type,
its shape limits as data (size name -> largest value), what it needs at run time (Triton
installed, or an operator of the built extension ``capsid_kernels._C``) and a note. The eager
reference serves every op on every device and has no record: it is where everything falls back.

``not_supported_reasons(op, backend, device_type=..., dtype=..., **sizes)`` lists every reason a
backend cannot run some inputs (empty: it can). ``"auto"`` walks the op's priority list
(``auto_order``: ``AUTO_ORDER`` where measured, else ``PREFERENCE``) and applies the measured
exceptions of ``AUTO_RULES``; when it falls back to the eager reference for CUDA tensors it
warns once per (op, reasons) with ``BackendFallbackWarning``. ``python -m capsid_kernels.info``
prints these records.

The walk skips a backend that cannot run the device, dtype or build, and stops at the first
that can: if the inputs are past that backend's limits, eager runs them (it does not go on to
the next backend for sizes: the behaviour from before this registry, kept so the same inputs
pick the same backend).

The choice depends only on (op, requested, device type, dtype) and the sizes, so under
``torch.compile`` the device/dtype/build part is made once at trace time
(``assume_constant_result``) and the size limits become shape guards.

A leaf module: it imports nothing of the package but ``_ext`` and ``_validate``, so the ops,
``info`` and the Triton and CUDA wrappers all read it without import cycles.
"""

from __future__ import annotations

import importlib.util
import operator
import os
import sys
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Optional

import torch

from . import _ext
from ._validate import short

OPS = ("squash", "route", "tokenize", "beam_step")
BACKENDS = ("eager", "triton", "cuda")
# The fast backends, fastest first; "eager" always closes the list.
PREFERENCE = ("cuda", "triton")

# Where measurement put another backend first for an op and dtype, "auto" follows this table
# instead of PREFERENCE. Routing: the Triton forward beat the CUDA C++ one on an H100
# (bench/results/routing_cuda.json, csrc/ROUTE_CUDA.md), so Triton leads and "cuda" serves only
# where Triton cannot run (one measured shape exception for float32 routing is in AUTO_RULES);
# the tokenizer stack follows.
AUTO_ORDER: dict[tuple[str, torch.dtype], tuple[str, ...]] = {
    (op, dtype): ("triton", "cuda") for op in ("route", "tokenize") for dtype in (torch.float32, torch.bfloat16)
}

# The sizes a selection may name, and how a message calls them.
SIZE_LABELS = {"K": "capsules K", "d": "item dim d", "d_c": "capsule dim d_c", "rounds": "rounds",
               "num_beams": "num_beams"}
_KERNEL_NAMES = {"triton": "Triton", "cuda": "CUDA"}

# One item tile keeps r [BM, d] and several [BM, d_c] float32 accumulators on chip; past these
# the tile would spill (triton/route_fwd.py).
TRITON_ROUTE_LIMITS = {"d": 256, "d_c": 128, "rounds": 16}
# The CUDA kernel keeps one 128-item tile with d padded to 128 and d_c padded to 64/96/128 on chip.
CUDA_ROUTE_LIMITS = {"d": 128, "d_c": 128, "rounds": 64}


@dataclass(frozen=True)
class Kernel:
    """One (op, backend) pair that has a kernel: what it runs and what it needs."""

    op: str
    backend: str
    dtypes: tuple[torch.dtype, ...]
    limits: Mapping[str, int] = field(default_factory=dict)  # size name -> largest value it takes
    needs: str = ""  # "triton" (installed) or "capsid_C::<op>" (an operator of the built extension)
    note: str = ""
    device_type: str = "cuda"

    def __post_init__(self) -> None:
        object.__setattr__(self, "limits", MappingProxyType(dict(self.limits)))

    def as_dict(self) -> dict:
        """The record as JSON-ready data."""
        return {"op": self.op, "backend": self.backend, "device_type": self.device_type,
                "dtypes": [dtype_name(d) for d in self.dtypes], "limits": dict(self.limits),
                "needs": self.needs, "note": self.note}


KERNELS: tuple[Kernel, ...] = (
    Kernel("squash", "cuda", (torch.float64, torch.float32, torch.bfloat16), needs="capsid_C::squash_forward",
           note="csrc/squash.cu: fused forward and backward"),
    Kernel("route", "triton", (torch.float32, torch.bfloat16), TRITON_ROUTE_LIMITS, needs="triton",
           note="triton/route_fwd.py and route_bwd.py: fused forward, fused backward; past the limits "
                "an item tile would spill"),
    Kernel("route", "cuda", (torch.float32, torch.bfloat16), CUDA_ROUTE_LIMITS, needs="capsid_C::route_forward",
           note="csrc/route_fwd.cu: the forward (backward recomputes the reference); one 128-item tile with "
                "d padded to 128 and d_c to 64/96/128 on chip"),
    Kernel("tokenize", "triton", (torch.float32, torch.bfloat16), TRITON_ROUTE_LIMITS, needs="triton",
           note="triton/stack.py: the whole stack with GPU compaction, forward only (with a gradient, "
                "the reference stack on route backend='triton'); every depth within the routing limits"),
    Kernel("tokenize", "cuda", (torch.float32, torch.bfloat16), CUDA_ROUTE_LIMITS, needs="capsid_C::route_forward",
           note="the reference stack with every depth on the CUDA routing kernel (host-side compaction)"),
    Kernel("beam_step", "cuda", (torch.float32, torch.bfloat16), {"num_beams": 128}, needs="capsid_C::beam_step",
           note="csrc/beam_step.cu: the cuda step takes at most 128 beams per query; 'auto' runs a wider "
                "beam on eager and warns once"),
)
_BY_KEY = {(k.op, k.backend): k for k in KERNELS}

_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class AutoRule:
    """A measured exception to the priority list: where ``when`` holds for ``op`` on ``dtypes`` and
    "auto" chose ``over``, it takes ``prefer`` instead if that backend can run the inputs."""

    op: str
    dtypes: tuple[torch.dtype, ...]
    when: tuple[tuple[str, str, int], ...]  # (size, comparison, value), all must hold
    prefer: str
    over: str
    note: str

    def holds(self, dtype: torch.dtype, sizes: Mapping[str, int]) -> bool:
        return dtype in self.dtypes and all(name in sizes and _COMPARE[cmp](sizes[name], value)
                                            for name, cmp, value in self.when)

    def as_dict(self) -> dict:
        return {"op": self.op, "dtypes": [dtype_name(d) for d in self.dtypes],
                "when": [f"{n} {c} {v}" for n, c, v in self.when], "prefer": self.prefer, "over": self.over,
                "note": self.note}


# Measured on an H100 (bench/results/routing_cuda.json, 2026-11-23, csrc/ROUTE_CUDA.md): float32
# with wide layers (the industrial preset) ran 1.05x (tf32) and 1.94x (exact fp32) Triton's speed
# on the CUDA kernel; bf16 and the default preset ran slower (0.61x bf16), so they stay on Triton.
AUTO_RULES: tuple[AutoRule, ...] = (
    AutoRule("route", (torch.float32,), (("K", ">=", 1024), ("d_c", ">", 64)), prefer="cuda", over="triton",
             note="route: 'auto' takes cuda before triton for float32 with K >= 1024 and d_c > 64 "
                  "(measured 1.05x tf32, 1.94x exact fp32 on an H100); triton otherwise (csrc/ROUTE_CUDA.md)"),
)


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name and cannot run these inputs."""


class BackendLimitExceeded(BackendUnavailable, ValueError):
    """A backend asked for by name runs this device and dtype, but not these sizes (also a
    ValueError: an argument is past the kernel's range)."""


class BackendFallbackWarning(RuntimeWarning):
    """``backend="auto"`` runs an op on the eager reference for CUDA tensors because no fast
    backend can run them; the message names each backend's reasons. Issued once per (op, reasons)."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _names(values) -> str:
    values = list(values)
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def kernel(op: str, backend: str) -> Optional[Kernel]:
    """The record of ``backend``'s kernel for ``op`` (None: no such kernel, eager serves it)."""
    return _BY_KEY.get((op, backend))


def auto_order(op: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The fast backends "auto" tries for ``op`` on ``dtype``, first choice first."""
    return AUTO_ORDER.get((op, dtype), PREFERENCE)


def _check_names(op: str, backend: str) -> None:
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {short(op)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {short(backend)}")


def need_reason(needs: str) -> Optional[str]:
    """Why a run-time need of a kernel is not met here (None when it is)."""
    if not needs:
        return None
    if needs == "triton":
        return None if importlib.util.find_spec("triton") is not None else "Triton is not installed (pip install triton)"
    namespace, _, name = needs.partition("::")
    if namespace != "capsid_C" or not name:
        raise ValueError(f"needs: expected 'triton' or 'capsid_C::<op>', got {short(needs)}")
    err = _ext.error()
    if err is not None:
        return err
    if not hasattr(torch.ops.capsid_C, name):
        return f"the built extension predates the {name} op: rebuild it (python setup.py build_ext --inplace)"
    return None


def base_reasons(op: str, backend: str, device_type: str, dtype: torch.dtype) -> tuple[str, ...]:
    """Every reason, apart from sizes, that ``backend`` cannot run ``op``: device, dtype, build."""
    _check_names(op, backend)
    if backend == "eager":
        return ()
    rec = kernel(op, backend)
    if rec is None:
        what = "Triton kernel" if backend == "triton" else "CUDA C++ kernel"
        return (f"no {what} for '{op}' in this version (the eager reference serves it)",)
    reasons = []
    if device_type != rec.device_type:
        reasons.append(f"the {backend} backend needs {rec.device_type.upper()} tensors, got tensors on "
                       f"'{device_type}'")
    if dtype not in rec.dtypes:
        reasons.append(f"the {backend} backend supports {_names([dtype_name(d) for d in rec.dtypes])}, got {dtype}")
    need = need_reason(rec.needs)
    if need is not None:
        reasons.append(need)
    return tuple(reasons)


# Under torch.compile: run once at trace time, the result baked into the graph.
_base_reasons = torch.compiler.assume_constant_result(base_reasons)


def limit_reasons(op: str, backend: str, **sizes: int) -> list[str]:
    """Every size past ``backend``'s limits for ``op`` (sizes not given are not checked)."""
    unknown = sorted(set(sizes) - set(SIZE_LABELS))
    if unknown:
        raise ValueError(f"sizes: expected names from {tuple(SIZE_LABELS)}, got {unknown}")
    rec = kernel(op, backend)
    if rec is None:
        return []
    reasons = []
    for name, limit in rec.limits.items():
        value = sizes.get(name)
        if value is not None and value > limit:
            reasons.append(f"{SIZE_LABELS[name]}={value} exceeds the {_KERNEL_NAMES[backend]} kernel's limit "
                           f"{limit} ({_size_hint(op, backend, name, value)})")
    return reasons


def _size_hint(op: str, backend: str, name: str, value: int) -> str:
    """Which backends take ``value`` for this size: the other fast ones within their limit, and eager."""
    others = [b for b in BACKENDS[1:] if b != backend and kernel(op, b) is not None
              and kernel(op, b).limits.get(name, value) >= value]
    return "use backend=" + " or ".join(f"'{b}'" for b in others + ["eager"])


def not_supported_reasons(op: str, backend: str, *, device_type: str, dtype: torch.dtype, **sizes: int) -> list[str]:
    """Every reason ``backend`` cannot run ``op`` on such inputs; empty when it can.

    Sizes are keywords (``K``, ``d``, ``d_c``, ``rounds``, ``num_beams``); those not given are not
    checked. Eager has no reasons: it runs everything the op's argument checks accept.
    """
    return [*_base_reasons(op, backend, device_type, dtype), *limit_reasons(op, backend, **sizes)]


def _walk(op: str, device_type: str, dtype: torch.dtype, sizes: Mapping[str, int]):
    """("auto"'s backend, the (backend, reasons) of those it passed over)."""
    passed = []
    order = auto_order(op, dtype)
    for i, name in enumerate(order):
        base = _base_reasons(op, name, device_type, dtype)
        if base:
            passed.append((name, base))
            continue
        limits = limit_reasons(op, name, **sizes)
        if not limits:
            return apply_rules(op, name, device_type, dtype, sizes), ()
        passed.append((name, tuple(limits)))
        not_tried = f"not tried: auto stops at {name}, the first backend that runs this device and dtype"
        passed.extend((later, (not_tried,)) for later in order[i + 1:])
        break
    return "eager", tuple(passed)


def apply_rules(op: str, name: str, device_type: str, dtype: torch.dtype, sizes: Mapping[str, int]) -> str:
    """The backend "auto" runs once the walk chose ``name``: a rule's ``prefer`` where it holds and
    that backend can run the inputs, else ``name``."""
    for rule in AUTO_RULES:
        if rule.op == op and rule.over == name and rule.holds(dtype, sizes) and not not_supported_reasons(
                op, rule.prefer, device_type=device_type, dtype=dtype, **sizes):
            return rule.prefer
    return name


def _refuse(op: str, backend: str, device_type: str, dtype: torch.dtype, sizes: Mapping[str, int]) -> None:
    base = _base_reasons(op, backend, device_type, dtype)
    limits = limit_reasons(op, backend, **sizes)
    if base or limits:
        cls = BackendUnavailable if base else BackendLimitExceeded
        raise cls(f"backend={short(backend)} cannot run op '{op}': " + "; ".join([*base, *limits]))


@torch.compiler.assume_constant_result
def select(op: str, requested: str, device_type: str, dtype: torch.dtype) -> str:
    """Resolve ``requested`` ("auto" or a backend name) to the backend that will run, from the
    device type and dtype only (no sizes, no warning). A named backend that cannot run raises
    ``BackendUnavailable`` listing every reason."""
    if requested == "auto":
        _check_names(op, "eager")
        return _walk(op, device_type, dtype, {})[0]
    _refuse(op, requested, device_type, dtype, {})
    return requested


def dispatch(op: str, requested: str, device_type: str, dtype: torch.dtype, **sizes: int) -> str:
    """What the ops call: ``select`` with the sizes' limits and the measured rules; "auto" falling
    back to eager for CUDA tensors warns once (``BackendFallbackWarning``)."""
    if requested != "auto":
        _refuse(op, requested, device_type, dtype, sizes)
        return requested
    _check_names(op, "eager")
    name, passed = _walk(op, device_type, dtype, sizes)
    if name == "eager" and device_type == "cuda" and passed:  # on CPU, eager is the only path: no warning
        _warn_fallback(op, passed)
    return name


_WARNED: set = set()


@torch.compiler.assume_constant_result
def _warn_fallback(op: str, passed: tuple) -> bool:
    key = (op, passed)
    if key in _WARNED:
        return False
    _WARNED.add(key)
    why = "; ".join(f"{backend}: {', '.join(reasons)}" for backend, reasons in passed)
    warnings.warn(f"backend='auto' runs '{op}' on the eager reference (much slower) for these CUDA inputs: {why}. "
                  "Pass backend='eager' to choose it explicitly; python -m capsid_kernels.info lists every "
                  "backend's dtypes and limits", BackendFallbackWarning, stacklevel=_outside_package())
    return True


def _outside_package() -> int:
    """The stacklevel of the first caller outside capsid_kernels (where the op was called)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def reset_fallback_warnings() -> None:
    """Forget which fallbacks were warned about (each warns once per process otherwise)."""
    _WARNED.clear()


def unsupported_reason(op: str, backend: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """None when ``backend`` can run ``op`` on such inputs (sizes aside), else its reasons in one sentence."""
    reasons = _base_reasons(op, backend, device_type, dtype)
    return "; ".join(reasons) if reasons else None


def first_limit_reason(op: str, backend: str, **sizes: int) -> Optional[str]:
    """The first size past ``backend``'s limits for ``op``, or None."""
    reasons = limit_reasons(op, backend, **sizes)
    return reasons[0] if reasons else None


def records(device_type: Optional[str] = None) -> list[dict]:
    """Every kernel record as data; with ``device_type``, also why it cannot run here per dtype."""
    out = []
    for rec in KERNELS:
        entry = rec.as_dict()
        if device_type is not None:
            entry["why_not"] = {dtype_name(d): list(base_reasons(rec.op, rec.backend, device_type, d))
                                for d in rec.dtypes}
        out.append(entry)
    return out
