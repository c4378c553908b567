"""Matmul precision for float32 inputs on CUDA: exact IEEE float32, or tf32 on request."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def matmul_precision(tf32: bool):
    """Set CUDA float32 matmul precision for the duration of an eager computation."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
