"""Inference SIDs for a trained CAPSID stack (SPEC §3): the compacting stack of
`capsid_kernels.tokenize` (through the tokenizer's own `tokenize`, with its routing and execution
options whole), which drops an item once it stops. Stage 1 calls it for its
end-of-epoch SIDs; the pipeline, the tokenizer jobs and the sharded catalogue tokenization
(capsid_gr.distributed.tokenize) call it after training. (It used to live in stage1/train.py.)
"""

from __future__ import annotations

import torch
from torch import Tensor

import capsid_kernels as ck


@torch.no_grad()
def tokenize_items(tokenizer: ck.CapsIDTokenizer, x: Tensor, batch_size: int = 4096) -> ck.StackOutput:
    """Inference SIDs through the compacting stack, ``batch_size`` items at a time."""
    return tokenizer.tokenize(x, batch_size=batch_size)
