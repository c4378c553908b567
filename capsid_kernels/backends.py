"""Backend selection: which implementation serves an op, and why the others cannot.

Each fast backend declares, per op, a support check ``(device_type, dtype) -> reason | None``
with ``@supports(op, backend)``; an op/backend pair with no check has no kernel.
``backend="auto"`` takes the first backend in ``PREFERENCE`` that can run the inputs;
asking for a specific one that cannot run raises ``BackendUnavailable`` with the reason.
The choice depends only on (op, requested, device type, dtype), so under ``torch.compile``
it is made once at trace time and baked into the graph.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _ext
from ._validate import short

OPS = ("squash", "route", "tokenize")
BACKENDS = ("eager", "triton", "cuda")
# The fast backends, fastest first; "eager" always closes the list.
PREFERENCE = ("cuda", "triton")

# Where measurement put another backend first for an op and dtype, "auto" follows this table
# instead of PREFERENCE (python -m capsid_kernels.info prints the order). Routing: the Triton
# forward beat the CUDA C++ one on an H100 (bench/results/routing_cuda.json, csrc/ROUTE_CUDA.md), so
# Triton leads and "cuda" serves only where Triton cannot run (one measured shape exception for
# float32 routing lives in ops/route_cuda.py:AUTO_RULE); the tokenizer stack follows.
AUTO_ORDER: dict[tuple[str, torch.dtype], tuple[str, ...]] = {
    (op, dtype): ("triton", "cuda") for op in ("route", "tokenize") for dtype in (torch.float32, torch.bfloat16)
}


def auto_order(op: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The fast backends "auto" tries for ``op`` on ``dtype``, first choice first."""
    return AUTO_ORDER.get((op, dtype), PREFERENCE)


SupportCheck = Callable[[str, torch.dtype], Optional[str]]
_CHECKS: dict[tuple[str, str], SupportCheck] = {}


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name and cannot run these inputs."""


def supports(op: str, backend: str) -> Callable[[SupportCheck], SupportCheck]:
    """Declare that ``backend`` has a kernel for ``op``; the decorated check says when it can run."""

    def register(check: SupportCheck) -> SupportCheck:
        _CHECKS[(op, backend)] = check
        return check

    return register


def unsupported_reason(op: str, backend: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """None when ``backend`` can run ``op`` on such inputs, else a sentence saying why not."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {short(op)}")
    if backend == "eager":
        return None
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {short(backend)}")
    check = _CHECKS.get((op, backend))
    if check is None:
        kind = "Triton kernel" if backend == "triton" else "CUDA C++ kernel"
        return f"no {kind} for '{op}' in this version (the eager reference serves it)"
    return check(device_type, dtype)


@torch.compiler.assume_constant_result
def select(op: str, requested: str, device_type: str, dtype: torch.dtype) -> str:
    """Resolve ``requested`` ("auto" or a backend name) to the backend that will run."""
    if requested == "auto":
        for name in auto_order(op, dtype):
            if unsupported_reason(op, name, device_type, dtype) is None:
                return name
        return "eager"
    reason = unsupported_reason(op, requested, device_type, dtype)
    if reason is not None:
        raise BackendUnavailable(f"backend={short(requested)} cannot run op '{op}': {reason}")
    return requested


def cuda_extension_reason(device_type: str, dtype: torch.dtype,
                          dtypes=(torch.float64, torch.float32, torch.bfloat16)) -> Optional[str]:
    """The common conditions of every op of the C++ extension."""
    if device_type != "cuda":
        return f"the cuda backend needs CUDA tensors, got tensors on '{device_type}'"
    if dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"the cuda backend supports {names}, got {dtype}"
    return _ext.error()


@supports("squash", "cuda")
def _squash_cuda(device_type: str, dtype: torch.dtype) -> Optional[str]:
    return cuda_extension_reason(device_type, dtype)


@supports("route", "cuda")
def _route_cuda(device_type: str, dtype: torch.dtype) -> Optional[str]:
    reason = cuda_extension_reason(device_type, dtype, dtypes=(torch.float32, torch.bfloat16))
    if reason is None and not hasattr(torch.ops.capsid_C, "route_forward"):
        return "the built extension predates the route_forward op: rebuild it (python setup.py build_ext --inplace)"
    return reason


@supports("tokenize", "cuda")
def _tokenize_cuda(device_type: str, dtype: torch.dtype) -> Optional[str]:
    # The reference stack with every depth on the CUDA routing kernel (host-side compaction).
    return _route_cuda(device_type, dtype)


OPS = OPS + ("beam_step",)


@supports("beam_step", "cuda")
def _beam_step_cuda(device_type: str, dtype: torch.dtype) -> Optional[str]:
    reason = cuda_extension_reason(device_type, dtype, dtypes=(torch.float32, torch.bfloat16))
    if reason is None and not hasattr(torch.ops.capsid_C, "beam_step"):
        return "the built extension predates the beam_step op: rebuild it (python setup.py build_ext --inplace)"
    return reason
from .triton import support as _triton_support  # noqa: E402,F401  (registers the Triton checks; imports no Triton)
