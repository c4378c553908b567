"""Backend selection: which implementation serves an op, and why the others cannot.

``backend="auto"`` takes the first backend in ``PREFERENCE`` that can run the inputs;
asking for a specific one that cannot run raises ``BackendUnavailable`` with the reason.
The choice depends only on (op, requested, device type, dtype), so under ``torch.compile``
it is made once at trace time and baked into the graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _ext

OPS = ("squash", "route", "tokenize")
BACKENDS = ("eager", "triton", "cuda")
# The fast backends, fastest first; "eager" always closes the list.
PREFERENCE = ("cuda", "triton")
_CUDA_OPS = ("squash",)
_CUDA_DTYPES = (torch.float64, torch.float32, torch.bfloat16)


class BackendUnavailable(RuntimeError):
    """A backend was asked for by name and cannot run these inputs."""


def unsupported_reason(op: str, backend: str, device_type: str, dtype: torch.dtype) -> Optional[str]:
    """None when ``backend`` can run ``op`` on such inputs, else a sentence saying why not."""
    if op not in OPS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    if backend == "eager":
        return None
    if backend == "triton":
        return f"no Triton kernel for '{op}' in this version (the eager reference serves it)"
    if backend == "cuda":
        target = "route" if op == "tokenize" else op
        if target not in _CUDA_OPS:
            return f"no CUDA C++ kernel for '{op}' in this version (the eager reference serves it)"
        if device_type != "cuda":
            return f"the cuda backend needs CUDA tensors, got tensors on '{device_type}'"
        if dtype not in _CUDA_DTYPES:
            return f"the cuda backend supports float64, float32 and bfloat16, got {dtype}"
        return _ext.error()
    raise ValueError(f"backend: expected 'auto' or one of {BACKENDS}, got {backend!r}")


@torch.compiler.assume_constant_result
def select(op: str, requested: str, device_type: str, dtype: torch.dtype) -> str:
    """Resolve ``requested`` ("auto" or a backend name) to the backend that will run."""
    if requested == "auto":
        for name in PREFERENCE:
            if unsupported_reason(op, name, device_type, dtype) is None:
                return name
        return "eager"
    reason = unsupported_reason(op, requested, device_type, dtype)
    if reason is not None:
        raise BackendUnavailable(f"backend={requested!r} cannot run op '{op}': {reason}")
    return requested
