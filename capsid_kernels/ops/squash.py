"""``squash`` as a custom op: eager reference and the C++ kernel, one public entry point."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _ext
from .._validate import check_squash_args
from ..config import HOT_PATH, ExecutionOptions, execution_options
from ..registry import dispatch
from ..reference import squash as squash_ref
from ..reference import squash_backward as squash_backward_ref


@torch.library.custom_op("capsid::squash_eager", mutates_args=())
def squash_eager(z: Tensor) -> Tensor:
    return squash_ref(z)


@squash_eager.register_fake
def _(z: Tensor) -> Tensor:
    return torch.empty_like(z)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad: Tensor) -> Tensor:
    (z,) = ctx.saved_tensors
    return squash_backward_ref(grad, z)


squash_eager.register_autograd(_backward, setup_context=_setup)


def squash(z: Tensor, *, execution: Optional[ExecutionOptions] = None, backend: Optional[str] = None,
           check_finite: Optional[bool] = None) -> Tensor:
    """``z * ||z|| / (0.5 + ||z||^2)`` over the last dimension, differentiable.

    Computed in float32 (float64 for float64 input); returns z's dtype. ``execution``: an
    ``ExecutionOptions`` (default ``HOT_PATH``; its precision has no effect here);
    ``backend=`` and ``check_finite=`` (its ``check_inputs``) replace its fields. ``check_finite=True``
    rejects NaN/Inf in z (one device synchronisation; off by default in this hot path).
    """
    ex = execution_options(execution, {"backend": backend, "check_finite": check_finite}, default=HOT_PATH)
    check_squash_args(z, ex.check_inputs)
    name = dispatch("squash", ex.backend, z.device.type, z.dtype)
    if name == "cuda":
        _ext.load()
        return torch.ops.capsid_C.squash_forward(z.contiguous())
    return squash_eager(z)
