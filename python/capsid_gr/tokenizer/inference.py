"""Inference SIDs for a trained CAPSID stack (SPEC §3).

Two stop rules:

- ``"plain"``, the paper's: an item stops at the first depth with a stop reason (CONF, RESID, CAP).
  Through the compacting stack of `capsid_kernels.tokenize` (the tokenizer's own `tokenize`, with
  its routing and execution options whole), which drops an item once it stops and cuts the
  catalogue into independent chunks.
- ``"unique"``, the uniqueness-aware stop: an item whose SID so far is shared with another item
  active at that depth does not stop at CONF or RESID but routes on, and stops at the first later
  depth where its SID so far is its own (or at L_max, where the items still colliding are left to
  the caller's disambiguation token, `generator.from_capsid(disambiguate=True)`). Routing an item
  does not depend on other items, so every token is the plain rule's token at its depth (exactly in
  float64 on the CPU; on a GPU the two paths route different row blocks, so a near tie may differ);
  only the lengths grow. Memory: r, x̂ and the residual of the whole catalogue [N, d] stay on x's
  device. The rule needs the whole catalogue at every depth, so the depths go one at a time
  over all items (the routing itself in chunks of ``batch_size`` through the tokenizer's
  ``route_depth``, any backend).

Stage 1 ends every epoch with its config's rule (Stage1Config.stop_rule); the pipeline and the
tokenizer jobs call `tokenize_items` after training. The sharded catalogue tokenization
(capsid_gr.distributed.tokenize) is the plain rule only: the uniqueness-aware one needs every item at
every depth.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

import capsid_kernels as ck
from capsid_kernels.reference.stack import DepthOutput, check_item_vectors, normalise
from capsid_kernels.reference.squash import compute_dtype

STOP_RULES = ("plain", "unique")


class UniqueStop(NamedTuple):
    """`unique_stop_tokenize`'s result: the SIDs and records, and per depth the number of items
    held there (they had had CONF or RESID but shared their SID so far; the rule's cost in length)."""

    output: ck.StackOutput
    held: list[int]


@torch.no_grad()
def tokenize_items(tokenizer: ck.CapsIDTokenizer, x: Tensor, batch_size: int = 4096,
                   stop: str = "plain") -> ck.StackOutput:
    """Inference SIDs with the ``stop`` rule (``STOP_RULES``), ``batch_size`` items at a time."""
    if stop not in STOP_RULES:
        raise ValueError(f"stop: expected one of {', '.join(STOP_RULES)}, got {stop!r}")
    if stop == "plain":
        return tokenizer.tokenize(x, batch_size=batch_size)
    return unique_stop_tokenize(tokenizer, x, batch_size).output


def _route_chunks(tokenizer: ck.CapsIDTokenizer, depth: int, r: Tensor, batch_size: int) -> ck.RouteOutput:
    """``route_depth`` over r in chunks of ``batch_size`` rows, outputs concatenated."""
    parts = [tokenizer.route_depth(depth, r[i:i + batch_size], need_onorm=True) for i in range(0, r.shape[0], batch_size)]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return ck.RouteOutput(cat("token"), cat("confidence"), cat("residual"), cat("recon"), cat("stop_reason"),
                          None, cat("onorm"))


def held_for_uniqueness(prefix: np.ndarray, wants: np.ndarray) -> np.ndarray:
    """Which of the items active at one depth may not stop yet: those that want to (``wants``, they
    have had a stop reason) but share their SID so far (``prefix``, one id per distinct prefix) with
    another active item."""
    _, inverse, counts = np.unique(prefix, return_inverse=True, return_counts=True)
    return wants & (counts[inverse.reshape(-1)] > 1)


@torch.no_grad()
def unique_stop_tokenize(tokenizer: ck.CapsIDTokenizer, x: Tensor, batch_size: int = 4096) -> "UniqueStop":
    """The uniqueness-aware stop (module docstring): a `StackOutput` in the plain rule's layout and
    per depth how many items were held.

    An item's stop reason is the first it had (CONF or RESID; CAP for an item that never had
    one); the depth records' ``stop_reason`` is CONTINUE for an item held at that depth. x̂ and the
    final residual are those at the item's own length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    if tokenizer.config.execution.check_inputs:
        check_item_vectors(x)
    x = x.to(tokenizer.layers[0].W.dtype)
    n, d, device = x.shape[0], x.shape[1], x.device
    cd = compute_dtype(x.dtype)
    l_max = len(tokenizer.layers)
    sids = torch.full((n, l_max), ck.PAD_TOKEN, dtype=torch.int64, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    reasons = torch.zeros(n, dtype=torch.int64, device=device)
    recon = torch.zeros(n, d, dtype=cd, device=device)
    residual = torch.zeros(n, d, dtype=cd, device=device)
    first_reason = np.zeros(n, np.int64)  # CONTINUE until an item has had a reason
    prefix = np.zeros(n, np.int64)  # an id per distinct SID so far, over all items
    active = torch.arange(n, device=device)
    r = normalise(x)
    depths, held = [], []
    for depth in range(l_max):
        if active.numel() == 0:
            break
        out = _route_chunks(tokenizer, depth, r, batch_size)
        idx = active.cpu().numpy()
        prev_norm = torch.linalg.vector_norm(r.to(cd), dim=-1)
        res_c = out.residual.to(cd)
        sids[active, depth] = out.token
        recon = recon.index_add(0, active, out.recon.to(cd))
        reason = out.stop_reason.cpu().numpy()
        fresh = (first_reason[idx] == ck.CONTINUE) & (reason != ck.CONTINUE) & (reason != ck.STOP_CAP)
        first_reason[idx[fresh]] = reason[fresh]
        _, ids = np.unique(np.stack([prefix[idx], out.token.cpu().numpy()], axis=1), axis=0, return_inverse=True)
        prefix[idx] = ids.reshape(-1)
        wants = first_reason[idx] != ck.CONTINUE
        if depth == l_max - 1:
            stops = np.ones(len(idx), bool)
        else:
            stops = wants & ~held_for_uniqueness(prefix[idx], wants)
        held.append(int((wants & ~stops).sum()))
        final = np.where(first_reason[idx] != ck.CONTINUE, first_reason[idx], ck.STOP_CAP)
        rec_reason = torch.as_tensor(np.where(stops, final, ck.CONTINUE), dtype=torch.int64, device=device)
        depths.append(DepthOutput(active, out.token, out.confidence, out.onorm, torch.linalg.vector_norm(res_c, dim=-1),
                                  prev_norm, rec_reason, None))
        stopped = torch.as_tensor(stops, device=device)
        stop_idx = active[stopped]
        lengths[stop_idx] = depth + 1
        reasons[stop_idx] = rec_reason[stopped]
        residual = residual.index_copy(0, stop_idx, res_c[stopped])
        active, r = active[~stopped], out.residual[~stopped]
    return UniqueStop(ck.StackOutput(sids, lengths, reasons, recon, residual, tuple(depths)), held)

