"""Sharded catalogue tokenization: each rank runs the fused stack on a contiguous slice of the
item vectors, and the SIDs are gathered back in item order.

Bit-identical to one process because every rank cuts its slice at multiples of `batch_size`
(`shard_bounds(..., align=batch_size)`): the chunks `capsid_kernels.tokenize` sees are the
very chunks a single process would see, with the same shapes, so the same kernels produce
the same bits. (A slice boundary inside a chunk would change a matrix shape, and with it the
reduction order some BLAS and GPU kernels use.)
"""

from __future__ import annotations

import capsid_kernels as ck
from torch import Tensor

from ..tokenizer.inference import tokenize_items
from ..collective import DistContext

GATHERED = ("sids", "lengths", "stop_reason")
"""What a sharded tokenization returns by default: [N, d] reconstructions and residuals of a
35.8M-item catalogue would not fit one device, and nothing after Stage 1 reads them."""


def tokenize_sharded(tokenizer: ck.CapsIDTokenizer, x: Tensor, dist: DistContext, batch_size: int = 4096,
                     fields: tuple[str, ...] = GATHERED) -> dict[str, Tensor]:
    """{field: [N, ...] tensor} for `fields` of the StackOutput, in item order, on every rank.

    `x` is the whole catalogue [N, d] (each rank reads only its rows; a memory-mapped array
    keeps the rest on disk). Each rank's rows move to `dist.device` just before tokenizing."""
    n = x.shape[0]
    lo, hi = dist.bounds(n, align=batch_size)
    local = tokenize_items(tokenizer, x[lo:hi].to(dist.device), batch_size)
    return {f: dist.all_gather_rows(getattr(local, f).contiguous(), n, align=batch_size) for f in fields}
