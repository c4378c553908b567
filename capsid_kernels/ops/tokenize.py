"""The tokenizer stack on a chosen backend.

The reference stack with the public ``route`` serves every backend and autograd; on the
Triton backend a forward-only call (no gradient needed) runs ``triton.stack`` instead, which
compacts on the GPU and writes the catalogue-wide outputs in place.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..config import RoutingParams, routing_params
from ..reference import StackOutput, check_item_vectors, tokenize_stack
from ..reference.stack import concat_outputs
from ..registry import limit_reasons, select
from .route import route
from .._validate import short


def tokenize(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams = RoutingParams(),
    *,
    need_weights: bool = False,
    precision: str = "exact",
    backend: str = "auto",
    check_inputs: bool = True,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    **routing_keywords,
) -> StackOutput:
    """Tokenize item vectors x [N, d] through ``layers`` = [(W, b, D)] * L_max (SPEC §3).

    ``routing``: the ``RoutingParams`` of every depth; keywords may replace its fields, as in ``route``.

    Zero or non-finite rows raise an error naming the item (``check_inputs=False`` skips
    that check, which costs one device synchronisation). ``batch_size`` bounds memory by
    tokenizing that many items at a time; ``progress(n)`` is called after each chunk of n items.
    """
    routing = routing_params(routing, routing_keywords)
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor [N, d], got {type(x).__name__}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size: expected None or an integer >= 1, got {short(batch_size)}")
    if check_inputs:
        check_item_vectors(x)  # once, so an error names the item's index in x, not in a chunk
    if _fast_stack(x, layers, routing.rounds, backend):
        from ..triton.stack import tokenize_stack_triton  # imports Triton on first use only

        return tokenize_stack_triton(
            x, layers, routing, need_weights=need_weights, tf32=precision == "tf32", chunk=batch_size,
            progress=progress,
        )
    route_fn = functools.partial(route, precision=precision, backend=backend)
    step = batch_size or max(1, x.shape[0])
    parts = []
    for start in range(0, max(1, x.shape[0]), step):
        chunk = x[start:start + step]
        parts.append(tokenize_stack(
            chunk, layers, routing, need_weights=need_weights, route_fn=route_fn, check_inputs=False,
        ))
        if progress is not None:
            progress(chunk.shape[0])
    return concat_outputs(parts)


def _fast_stack(x: Tensor, layers, rounds: int, backend: str) -> bool:
    """The Triton stack runs when the backend resolves to triton, every depth fits the kernel's
    limits, and no gradient is needed (it is forward-only); else the reference stack runs."""
    if backend not in ("auto", "triton") or x.shape[0] == 0 or len(layers) == 0:
        return False
    if select("tokenize", backend, x.device.type, x.dtype) != "triton":
        return False
    if any(limit_reasons("tokenize", "triton", d=W.shape[2], d_c=W.shape[1], rounds=rounds) for W, _, _ in layers):
        return False  # route() raises for backend="triton" or falls back to eager for "auto"
    tensors = [x] + [t for layer in layers for t in layer]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.dtype == x.dtype and t.device == x.device for t in tensors)
