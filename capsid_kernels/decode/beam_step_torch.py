"""One trie-constrained beam step in plain torch ops: the CSR gather method (runs on CPU).

This is the executable form of SPEC §7 for one step, the fallback backend and the benchmark
baseline. Each beam's children are gathered from the CSR rows, padded to the trie's largest
fanout; a stable descending sort keeps the top B per beam and then the top B per query, so
ties go to the lower beam, then the lower token, exactly as the spec orders them.

Inputs, for Q queries of B beams (rows r = q * B + b):
    logits   [Q*B, V] float   (log-probs work too: log-softmax is idempotent)
    node     [Q*B] int32      trie node of each beam; -1 = empty beam
    score    [Q*B] float32    sum of full-vocabulary log-softmax of the tokens taken
    finished [Q*B] bool       the beam took EOS (empty beams are finished too)
    pad, eos                  the token ids (capsid_kernels.decode.trie's PAD and EOS; every
                              backend takes them from the caller, none fixes them)
Outputs (new beams, sorted by score within each query):
    token    [Q*B] int64      eos on finishing, pad for finished or empty beams
    parent   [Q*B] int64      global row of the beam each new beam extends (identity for empty)
    node     [Q*B] int32      -1 for empty beams
    score    [Q*B] float32    -inf for empty beams
    finished [Q*B] bool
A candidate is selectable when it is a trie child (or a finished beam's virtual child of
log-prob 0) and its score is above -inf (a NaN score counts as not selectable).
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def beam_step_torch(logits: Tensor, node: Tensor, score: Tensor, finished: Tensor, child_start: Tensor,
                    token: Tensor, end_bits: Tensor, num_beams: int, max_fanout: int, pad: int, eos: int):
    rows, vocab = logits.shape
    b = num_beams
    q = rows // b
    dev = logits.device
    num_inner = child_start.numel() - 1
    num_nodes = token.numel()
    logp = torch.log_softmax(logits.float(), dim=-1)

    present = node >= 0
    live = present & ~finished
    n = node.clamp(min=0).long()
    is_end = (((end_bits.long()[n >> 5] >> (n & 31)) & 1).bool()) & live
    inner = live & (n < num_inner)
    n_in = n.clamp(max=max(num_inner - 1, 0))
    lo = torch.where(inner, child_start.long()[n_in], 0)
    hi = torch.where(inner, child_start.long()[n_in + 1], 0)
    count = is_end.long() + (hi - lo)

    f = max(int(max_fanout), 1)
    rank = torch.arange(f, device=dev)
    valid = rank[None, :] < count[:, None]
    eos_slot = is_end[:, None] & (rank[None, :] == 0)
    child = (lo - is_end.long())[:, None] + rank[None, :]
    tok = torch.where(eos_slot, eos, token.long()[child.clamp(0, num_nodes - 1)])
    tok = torch.where(valid, tok, 0)  # column 0 only keeps the gather in bounds; invalid slots are masked below
    cand = score.float()[:, None] + logp.gather(1, tok)
    fin = present & finished
    virtual = fin[:, None] & (rank[None, :] == 0)
    cand = torch.where(virtual, score.float()[:, None], cand)
    cand = torch.where((valid | virtual) & (cand > NEG_INF), cand, NEG_INF)

    k = min(b, f)
    per_val, per_idx = torch.sort(cand, dim=1, descending=True, stable=True)
    per_val, per_idx = per_val[:, :k], per_idx[:, :k]
    flat_val = per_val.reshape(q, b * k)
    top_val, top_pos = torch.sort(flat_val, dim=1, descending=True, stable=True)
    if b * k < b:  # cannot happen (k >= 1); kept for clarity of shapes
        raise AssertionError
    top_val, top_pos = top_val[:, :b], top_pos[:, :b]

    beam = top_pos // k
    src = (torch.arange(q, device=dev)[:, None] * b + beam).reshape(-1)
    sel_rank = per_idx.reshape(q, b * k).gather(1, top_pos).reshape(-1)
    new_score = top_val.reshape(-1)
    empty = new_score == NEG_INF
    self_row = torch.arange(rows, device=dev)

    src_fin = fin[src]
    src_end = is_end[src]
    took_eos = ~src_fin & src_end & (sel_rank == 0)
    child_node = lo[src] - src_end.long() + sel_rank
    stay = src_fin | took_eos
    new_node = torch.where(stay, n[src], child_node)
    new_tok = torch.where(src_fin, pad, torch.where(took_eos, eos, token.long()[child_node.clamp(0, num_nodes - 1)]))
    new_fin = stay

    new_node = torch.where(empty, -1, new_node).to(torch.int32)
    new_tok = torch.where(empty, pad, new_tok)
    parent = torch.where(empty, self_row, src)
    new_fin = new_fin | empty
    return new_tok, parent, new_node, new_score, new_fin


def step_fake(logits: Tensor):
    """Output shapes and dtypes of every beam-step op (eager and the C++ ``capsid_C::beam_step``)."""
    rows = logits.shape[0]
    new = logits.new_empty
    return (new(rows, dtype=torch.int64), new(rows, dtype=torch.int64), new(rows, dtype=torch.int32),
            new(rows, dtype=torch.float32), new(rows, dtype=torch.bool))
