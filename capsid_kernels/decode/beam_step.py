"""``beam_step``: one trie-constrained beam step behind ``backend=`` selection.

Backends: ``eager`` (the torch CSR method of beam_step_torch, as the custom op
``capsid::beam_step_eager``) and ``cuda`` (``capsid_C::beam_step``, csrc/beam_step.cu).
Neither synchronises with the host. Contract: see beam_step_torch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import _ext
from ..backends import select
from .beam_step_torch import beam_step_torch
from .trie import Trie

MAX_CUDA_BEAMS = 128


class StepOutput(NamedTuple):
    token: Tensor     # int64 [Q*B]
    parent: Tensor    # int64 [Q*B], global row index of the parent beam
    node: Tensor      # int32 [Q*B], -1 = empty
    score: Tensor     # float32 [Q*B], -inf = empty
    finished: Tensor  # bool [Q*B]


@torch.library.custom_op("capsid::beam_step_eager", mutates_args=())
def beam_step_eager(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, child_start: Tensor,
                    token: Tensor, end_bits: Tensor, num_beams: int,
                    max_fanout: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return beam_step_torch(logits, node, score, finished, child_start, token, end_bits, num_beams, max_fanout)


@beam_step_eager.register_fake
def _(logits, node, score, finished, child_start, token, end_bits, num_beams, max_fanout):
    return step_fake(logits)


def step_fake(logits: Tensor):
    rows = logits.shape[0]
    new = logits.new_empty
    return (new(rows, dtype=torch.int64), new(rows, dtype=torch.int64), new(rows, dtype=torch.int32),
            new(rows, dtype=torch.float32), new(rows, dtype=torch.bool))


def check_step_args(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, trie: Trie, num_beams: int) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [Q*B, V], got shape {tuple(logits.shape)}")
    rows, vocab = logits.shape
    if num_beams < 1 or rows % num_beams:
        raise ValueError(f"num_beams: {num_beams} must be >= 1 and divide the {rows} logit rows")
    if vocab != trie.vocab_size:
        raise ValueError(f"logits: V = {vocab} but the trie was built for vocab_size = {trie.vocab_size}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits: expected a float dtype, got {logits.dtype}")
    for name, t, dtype in (("node", node, torch.int32), ("score", score, torch.float32),
                           ("finished", finished, torch.bool)):
        if t.shape != (rows,) or t.dtype != dtype:
            raise ValueError(f"{name}: expected {dtype} of shape ({rows},), got {t.dtype} {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"{name}: on {t.device}, logits on {logits.device}; put beams and logits together")
    if trie.device != logits.device:
        raise ValueError(f"trie: on {trie.device}, logits on {logits.device}; use trie.to(logits.device)")


def beam_step(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, trie: Trie, num_beams: int, *,
              backend: str = "auto") -> StepOutput:
    """Advance Q queries of ``num_beams`` beams by one token inside ``trie`` (SPEC §7)."""
    check_step_args(logits, node, score, finished, trie, num_beams)
    name = select("beam_step", backend, logits.device.type, logits.dtype)
    if name == "cuda" and num_beams > MAX_CUDA_BEAMS:
        if backend == "cuda":
            raise ValueError(f"num_beams: the cuda beam step takes at most {MAX_CUDA_BEAMS} beams, got "
                             f"{num_beams}; use backend='eager'")
        name = "eager"
    if name == "cuda":
        _ext.load()
        out = torch.ops.capsid_C.beam_step(logits.contiguous(), node, score, finished, trie.child_start,
                                           trie.token, trie.end_bits, num_beams)
    else:
        out = beam_step_eager(logits, node, score, finished, trie.child_start, trie.token, trie.end_bits,
                              num_beams, trie.max_fanout)
    return StepOutput(*out)
