"""Autograd for the C++ squash operator, registered once the extension has loaded."""

from __future__ import annotations

import torch
from torch import Tensor


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad: Tensor) -> Tensor:
    (z,) = ctx.saved_tensors
    return torch.ops.capsid_C.squash_backward(grad.contiguous(), z)


def register() -> None:
    torch.library.register_autograd("capsid_C::squash_forward", _backward, setup_context=_setup)
