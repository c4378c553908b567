"""``beam_search``: the trie-constrained decoding loop around a generator's step function.

The loop runs ``trie.max_len + 1`` steps (the longest SID plus its EOS), which is when every
beam has finished or is empty. It reads GPU values on the host only for the value checks
(``check_values=True``, the default: one sync per step), ``early_exit=True`` (one sync per
step) or ``live_only=True`` (compaction needs the count); with ``check_values=False`` and a
capturable ``step_fn`` the loop can be recorded as a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..config import ExecutionOptions, execution_options
from .beam_step import beam_step
from .layout import TokenLayout
from .trie import BOS, Trie
from .._validate import short


@dataclass
class Beams:
    """What the generator sees each step (rows r = q * B + b)."""

    step: int
    tokens: Tensor    # int64 [R]: the token each beam took last (BOS at step 0, PAD once finished)
    parent: Tensor    # int64 [R]: global row each beam came from (identity at step 0)
    node: Tensor      # int32 [R]: trie node, -1 = empty beam
    score: Tensor     # float32 [R]
    finished: Tensor  # bool [R]
    rows: Optional[Tensor] = None  # with live_only=True: the rows passed to step_fn

    @property
    def live(self) -> Tensor:
        return (self.node >= 0) & ~self.finished


@dataclass
class SearchResult:
    items: Tensor        # int64 [Q, top_k], -1 past the last item found
    item_scores: Tensor  # float32 [Q, top_k], -inf past the last item found
    leaves: Tensor       # int64 [Q, B]: leaf id of each final beam, -1 when empty
    scores: Tensor       # float32 [Q, B]: final beam scores, descending
    node: Tensor         # int32 [Q, B]: end node of each final beam


StepFn = Callable[[Beams], Tensor]


def initial_beams(num_queries: int, num_beams: int, device) -> Beams:
    """One live beam at the root per query, the rest empty (so step 1 does not repeat candidates)."""
    rows = num_queries * num_beams
    first = torch.arange(rows, device=device) % num_beams == 0
    node = torch.where(first, 0, -1).to(torch.int32)
    score = torch.where(first, 0.0, float("-inf")).to(torch.float32)
    return Beams(step=0, tokens=torch.full((rows,), BOS, dtype=torch.int64, device=device),
                 parent=torch.arange(rows, device=device), node=node, score=score, finished=~first)


def beam_search(step_fn: StepFn, trie: Trie, num_beams: int, num_queries: int, *, top_k: Optional[int] = None,
                reorder_cache: Optional[Callable[[Tensor], None]] = None,
                execution: Optional[ExecutionOptions] = None, backend: Optional[str] = None,
                live_only: bool = False, early_exit: bool = False, device=None,
                check_values: Optional[bool] = None, layout: Optional[TokenLayout] = None) -> SearchResult:
    """Decode ``num_queries`` queries with ``num_beams`` beams constrained to ``trie``.

    ``step_fn(beams) -> logits [R, V]`` (or [len(beams.rows), V] with ``live_only``) runs the
    generator on each beam's last token; before it is called for step t >= 1,
    ``reorder_cache(parent)`` lets the generator reorder its KV cache by the global parent rows.
    Returns the top-K items per query: finished beams in score order, each leaf expanded to its
    items (most popular first); K defaults to ``num_beams``.

    ``execution``: the ``ExecutionOptions`` of every ``beam_step`` (default ``ExecutionOptions()``);
    ``backend=`` and ``check_values=`` (its ``check_inputs``) replace its fields.
    ``check_values`` (default on) checks each step's logits for NaN/+inf and the beams' node
    ids (one host synchronisation per step, see ``beam_step``); pass ``False`` in the hot path
    or to capture a CUDA graph. ``num_beams``, ``num_queries``, ``top_k`` and ``device`` are
    checked up front without synchronising.

    ``layout`` (default: the trie's numbering, PAD/BOS/EOS = 0/1/2, codes from 3) says where the
    caller's vocabulary keeps those tokens: ``beams.tokens`` then holds the caller's ids and
    ``step_fn`` returns logits over the caller's vocabulary (``capsid_kernels.decode.layout``).
    """
    check_search_args(trie, num_beams, num_queries, top_k, device)
    ex = execution_options(execution, {"backend": backend, "check_values": check_values})
    if layout is not None and not isinstance(layout, TokenLayout):
        raise TypeError(f"layout: expected None or a TokenLayout, got {type(layout).__name__}")
    device = torch.device(device) if device is not None else trie.device
    if layout is not None and not layout.is_native:
        to_caller = layout.to_caller(trie.vocab_size, device)
        need = layout.min_vocab(trie.vocab_size)
        inner_step = step_fn
        rest: dict = {}

        def step_fn(b: Beams) -> Tensor:  # the caller sees and returns its own ids
            shown = Beams(step=b.step, tokens=to_caller[b.tokens], parent=b.parent, node=b.node, score=b.score,
                          finished=b.finished, rows=b.rows)
            logits = inner_step(shown)
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                return logits  # the shape check below names it
            if logits.shape[1] < need:
                raise ValueError(f"step_fn: expected logits over at least {need} caller tokens (layout), got "
                                 f"{logits.shape[1]} at step {b.step}")
            if logits.shape[1] not in rest:
                rest[logits.shape[1]] = layout.rest_columns(to_caller, logits.shape[1])
            return layout.trie_logits(logits, to_caller, rest[logits.shape[1]])
    beams = initial_beams(num_queries, num_beams, device)
    rows = num_queries * num_beams
    for step in range(trie.max_len + 1):
        beams.step = step
        if live_only:
            beams.rows = beams.live.nonzero().squeeze(1)
            part = step_fn(beams)
            if not isinstance(part, Tensor) or part.dim() != 2 or part.shape[0] != beams.rows.numel():
                got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                raise ValueError(f"step_fn: with live_only=True expected logits [len(beams.rows) = "
                                 f"{beams.rows.numel()}, V] at step {step}, got {got}")
            logits = part.new_zeros(rows, part.shape[1]).index_copy_(0, beams.rows, part)
        else:
            logits = step_fn(beams)
        out = beam_step(logits, beams.node, beams.score, beams.finished, trie, num_beams, execution=ex)
        if reorder_cache is not None:
            reorder_cache(out.parent)
        beams = Beams(step=step + 1, tokens=out.token, parent=out.parent, node=out.node, score=out.score,
                      finished=out.finished)
        if early_exit and bool(beams.finished.all()):
            break
    return collect_items(trie, beams, num_queries, num_beams, top_k or num_beams)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 match when one index is left to the current device."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def check_search_args(trie: Trie, num_beams: int, num_queries: int, top_k: Optional[int], device) -> None:
    """Up-front checks of ``beam_search``; errors name the argument, expected and actual value."""
    if not isinstance(trie, Trie):
        raise TypeError(f"trie: expected a capsid_kernels Trie, got {type(trie).__name__}")
    if not _is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams: expected an integer >= 1, got {short(num_beams)}")
    if not _is_int(num_queries) or num_queries < 1:
        raise ValueError(f"num_queries: expected an integer >= 1, got {short(num_queries)}")
    # top_k may exceed num_beams * (largest leaf): the slots that can never be filled are -1 by
    # contract (SearchResult), which callers evaluating at a fixed cutoff rely on.
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k: expected None or an integer >= 1, got {short(top_k)}")
    if device is not None and not _same_device(torch.device(device), trie.device):
        raise ValueError(f"device: expected the trie's device ({trie.device}), got {torch.device(device)}; "
                         f"use trie.to({str(device)!r})")


def collect_items(trie: Trie, beams: Beams, num_queries: int, num_beams: int, top_k: int) -> SearchResult:
    """Expand each finished beam's leaf to its items, in beam (score) order, without host syncs."""
    q, b = num_queries, num_beams
    node = beams.node.view(q, b)
    done = (node >= 0) & beams.finished.view(q, b)
    safe = node.clamp(min=0)
    leaf = torch.where(done, trie.leaf_of(safe), -1)
    ls = trie.leaf_start.long()
    lo = torch.where(done, ls[leaf.clamp(min=0)], 0)
    count = torch.where(done, ls[leaf.clamp(min=0) + 1] - lo, 0)
    cum = torch.cumsum(count, dim=1)                                   # [Q, B]
    k = torch.arange(top_k, device=node.device)
    beam_of = torch.searchsorted(cum, k.expand(q, top_k).contiguous(), right=True)  # [Q, K]
    found = beam_of < b
    beam_of = beam_of.clamp(max=b - 1)
    before = cum.gather(1, beam_of) - count.gather(1, beam_of)
    pos = lo.gather(1, beam_of) + (k[None, :] - before)
    item = trie.items.long()[pos.clamp(0, max(trie.num_items - 1, 0))]
    score = beams.score.view(q, b).gather(1, beam_of)
    items = torch.where(found, item, -1)
    item_scores = torch.where(found, score, float("-inf"))
    return SearchResult(items=items, item_scores=item_scores, leaves=leaf,
                        scores=beams.score.view(q, b), node=node)
