"""Gather a per-rank forward pass into the global batch, keeping it differentiable.

Stage 1's losses are not sums over items: the usage balance takes the entropy of the batch's
mean routing weights, HaMR compares items of the batch with each other. So each rank routes
its slice, the slices are gathered (rank order = global batch order), and every rank computes
the one-process loss on the whole batch. Backward: every rank holds the same gradient for the
gathered rows; summing it over ranks and keeping this rank's rows gives world x the true
gradient of the local rows, which `DistContext.average_gradients` divides out together with
the world-fold gradients of the parameters the loss reads directly (centres, merge gate).
"""

from __future__ import annotations

import math
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from .context import DistContext

T = TypeVar("T", bound=NamedTuple)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: Tensor, dist: DistContext, n: int) -> Tensor:
        ctx.dist, ctx.n = dist, n
        return dist.all_gather_rows(local.detach(), n)

    @staticmethod
    def backward(ctx, grad: Tensor):
        dist = ctx.dist
        grad = grad.contiguous().clone()
        home = grad.device
        g = grad.to(dist._comm_device())
        tdist.all_reduce(g)
        lo, hi = dist.bounds(ctx.n)
        return g[lo:hi].to(home), None, None


def gather_forward(out: T, dist: DistContext, n: int) -> T:
    """The global-batch version of a NamedTuple of per-row tensors (or tuples of them, or None)
    that one rank computed on its slice of an n-row batch. Float tensors are packed into one
    differentiable gather (one collective in backward, so ranks cannot disagree on order);
    integer and boolean tensors are gathered as data."""
    if not dist.active:
        return out
    floats, layout = [], []
    for value in out:
        parts = value if isinstance(value, tuple) else (value,)
        for p in parts:
            if p is not None and p.is_floating_point():
                # explicit width: reshape(0, -1) is ambiguous for a rank whose slice is empty
                floats.append(p.reshape(p.shape[0], math.prod(p.shape[1:])))
    if floats:
        dtype = torch.promote_types(floats[0].dtype, floats[-1].dtype)
        for f in floats:
            dtype = torch.promote_types(dtype, f.dtype)
        packed = _GatherRows.apply(torch.cat([f.to(dtype) for f in floats], 1), dist, n)
    offset = 0
    fields = []
    for value in out:
        parts = value if isinstance(value, tuple) else (value,)
        new = []
        for p in parts:
            if p is None:
                new.append(None)
            elif p.is_floating_point():
                w = math.prod(p.shape[1:])
                new.append(packed[:, offset:offset + w].reshape(n, *p.shape[1:]).to(p.dtype))
                offset += w
            else:
                new.append(dist.all_gather_rows(p, n))
        fields.append(tuple(new) if isinstance(value, tuple) else new[0])
    return type(out)(*fields)
