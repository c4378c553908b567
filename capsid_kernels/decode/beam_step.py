"""``beam_step``: one trie-constrained beam step behind ``backend=`` selection.

Backends: ``eager`` (the torch CSR method of beam_step_torch, as the custom op
``capsid::beam_step_eager``) and ``cuda`` (``capsid_C::beam_step``, csrc/beam_step.cu).
Neither kernel synchronises with the host; the value checks of ``check_values=True`` (the
default) read one flag vector per step, so turn them off for CUDA graphs. Contract: see
beam_step_torch.

Both backends take PAD and EOS as op arguments, and :func:`beam_step` passes them from their
one home, capsid_kernels.decode.trie; csrc/ holds no token id.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .. import _ext
from ..config import ExecutionOptions, execution_options
from ..registry import dispatch, kernel
from .beam_step_torch import beam_step_torch, step_fake
from .trie import EOS, PAD, Trie
from .._validate import short

MAX_CUDA_BEAMS = kernel("beam_step", "cuda").limits["num_beams"]  # 'auto' runs a wider beam on eager, warning once


class StepOutput(NamedTuple):
    token: Tensor     # int64 [Q*B]
    parent: Tensor    # int64 [Q*B], global row index of the parent beam
    node: Tensor      # int32 [Q*B], -1 = empty
    score: Tensor     # float32 [Q*B], -inf = empty
    finished: Tensor  # bool [Q*B]


@torch.library.custom_op("capsid::beam_step_eager", mutates_args=())
def beam_step_eager(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, child_start: Tensor,
                    token: Tensor, end_bits: Tensor, num_beams: int, max_fanout: int, pad: int,
                    eos: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return beam_step_torch(logits, node, score, finished, child_start, token, end_bits, num_beams, max_fanout,
                           pad, eos)


@beam_step_eager.register_fake
def _(logits, node, score, finished, child_start, token, end_bits, num_beams, max_fanout, pad, eos):
    return step_fake(logits)


def check_step_args(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, trie: Trie, num_beams: int,
                    check_values: bool = False) -> None:
    """Shapes, dtypes and devices (metadata only, no synchronisation); with ``check_values``
    also the values (one synchronisation): see :func:`check_step_values`."""
    for name, t in (("logits", logits), ("node", node), ("score", score), ("finished", finished)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not isinstance(trie, Trie):
        raise TypeError(f"trie: expected a capsid_kernels Trie (build_trie or Trie.load), got {type(trie).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [Q*B, V], got shape {tuple(logits.shape)}")
    rows, vocab = logits.shape
    if not isinstance(num_beams, int) or isinstance(num_beams, bool) or num_beams < 1 or rows % num_beams:
        raise ValueError(f"num_beams: expected an integer >= 1 that divides the {rows} logit rows, got {short(num_beams)}")
    if vocab != trie.vocab_size:
        raise ValueError(f"logits: expected V = trie.vocab_size = {trie.vocab_size} columns, got V = {vocab}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits: expected a float dtype, got {logits.dtype}")
    for name, t, dtype in (("node", node, torch.int32), ("score", score, torch.float32),
                           ("finished", finished, torch.bool)):
        if t.shape != (rows,) or t.dtype != dtype:
            raise ValueError(f"{name}: expected {dtype} of shape ({rows},), got {t.dtype} {tuple(t.shape)}")
        if t.device != logits.device:
            raise ValueError(f"{name}: expected the device of logits ({logits.device}), got {t.device}; "
                             "put beams and logits together")
    if trie.device != logits.device:
        raise ValueError(f"trie: expected the device of logits ({logits.device}), got {trie.device}; "
                         "use trie.to(logits.device)")
    if check_values:
        check_step_values(logits, node, score, trie)


def check_step_values(logits: Tensor, node: Tensor, score: Tensor, trie: Trie) -> None:
    """Value checks of one step, read with one host synchronisation.

    * ``node`` in ``[-1, trie.num_nodes)`` (-1 = empty beam): a node of another trie would
      index the CSR arrays out of bounds.
    * ``logits`` without NaN or +inf (-inf is allowed: it masks a token). A NaN poisons the
      row's log-softmax, and the order of NaN in a top-k is unspecified per backend.
    * ``score`` of present beams (node >= 0) not NaN and not +inf.
    """
    present = node >= 0
    flags = torch.stack([
        ((node < -1) | (node >= trie.num_nodes)).any(),
        torch.isnan(logits).any(),
        torch.isposinf(logits).any(),
        (present & (torch.isnan(score) | torch.isposinf(score))).any(),
    ]).tolist()
    if flags[0]:
        bad = ((node < -1) | (node >= trie.num_nodes)).nonzero()[0, 0]
        raise ValueError(f"node: expected trie node ids in [-1, trie.num_nodes = {trie.num_nodes}) (-1 = empty "
                         f"beam), got {int(node[bad])} at row {int(bad)}; were the beams made with another trie?")
    if flags[1] or flags[2]:
        rows = (torch.isnan(logits) | torch.isposinf(logits)).any(dim=1)
        what = "NaN" if flags[1] else "+inf"
        raise ValueError(f"logits: expected finite values or -inf, got {what} in row {int(rows.nonzero()[0, 0])} "
                         f"({int(rows.sum())} such rows); check the generator's output, or pass "
                         "check_values=False to skip this check (a NaN row then has no selectable candidate "
                         "on the eager backend; on cuda the outcome is unspecified)")
    if flags[3]:
        bad = (present & (torch.isnan(score) | torch.isposinf(score))).nonzero()[0, 0]
        raise ValueError(f"score: expected a finite or -inf score for every present beam, got {float(score[bad])} "
                         f"at row {int(bad)}")


def beam_step(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, trie: Trie, num_beams: int, *,
              execution: Optional[ExecutionOptions] = None, backend: Optional[str] = None,
              check_values: Optional[bool] = None) -> StepOutput:
    """Advance Q queries of ``num_beams`` beams by one token inside ``trie`` (SPEC §7).

    ``execution``: an ``ExecutionOptions`` (default ``ExecutionOptions()``; its precision has no
    effect here); ``backend=`` and ``check_values=`` (its ``check_inputs``) replace its fields.

    ``check_values`` (default on) checks node ids, NaN/+inf logits and scores, which costs one
    host synchronisation; pass ``check_values=False`` in the hot path or under CUDA-graph
    capture. Unchecked, a NaN in a logit row makes that beam's candidates unselectable on the
    eager backend (its log-softmax is NaN) and is unspecified on cuda; a node id outside the
    trie reads out of bounds.
    """
    ex = execution_options(execution, {"backend": backend, "check_values": check_values})
    check_step_args(logits, node, score, finished, trie, num_beams, ex.check_inputs)
    name = dispatch("beam_step", ex.backend, logits.device.type, logits.dtype, num_beams=num_beams)
    if name == "cuda":
        _ext.load()
        out = torch.ops.capsid_C.beam_step(logits.contiguous(), node, score, finished, trie.child_start,
                                           trie.token, trie.end_bits, num_beams, PAD, EOS)
    else:
        out = beam_step_eager(logits, node, score, finished, trie.child_start, trie.token, trie.end_bits,
                              num_beams, trie.max_fanout, PAD, EOS)
    return StepOutput(*out)
