"""The tokenizer stack on a chosen backend: the reference stack with the public ``route``."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

from torch import Tensor

from ..reference import StackOutput, check_item_vectors, tokenize_stack
from ..reference.stack import concat_outputs
from .route import route


def tokenize(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    *,
    rounds: int = 3,
    mode: str = "soft",
    eta: float = 1.0,
    tau: float = 0.82,
    eps: float = 0.08,
    need_weights: bool = False,
    precision: str = "exact",
    backend: str = "auto",
    check_inputs: bool = True,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> StackOutput:
    """Tokenize item vectors x [N, d] through ``layers`` = [(W, b, D)] * L_max (SPEC §3).

    Zero or non-finite rows raise an error naming the item (``check_inputs=False`` skips
    that check, which costs one device synchronisation). ``batch_size`` bounds memory by
    tokenizing that many items at a time; ``progress(n)`` is called after each chunk of n items.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected None or an integer >= 1, got {batch_size!r}")
    if check_inputs:
        check_item_vectors(x)  # once, so an error names the item's index in x, not in a chunk
    route_fn = functools.partial(route, precision=precision, backend=backend)
    step = batch_size or max(1, x.shape[0])
    parts = []
    for start in range(0, max(1, x.shape[0]), step):
        chunk = x[start:start + step]
        parts.append(tokenize_stack(
            chunk, layers, rounds=rounds, mode=mode, eta=eta, tau=tau, eps=eps,
            need_weights=need_weights, route_fn=route_fn, check_inputs=False,
        ))
        if progress is not None:
            progress(chunk.shape[0])
    return concat_outputs(parts)
