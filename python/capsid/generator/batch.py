"""From (history, target) item lists to the generator's token layout (SPEC §6).

Row layout, left-padded so every prefix ends at the same column:
    PAD ... | item_1 tokens EOS | ... | item_n tokens EOS | BOS | t_1 ... t_m | PAD ...
Labels (training) sit on BOS, t_1 .. t_m and are t_1 .. t_m, EOS: next-token cross entropy
on the target item's tokens only. History tokens remember (item, position in path) so that
soft inputs can replace their embeddings; the target's tokens always enter hard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .items import BOS, EOS, PAD

IGNORE = -100


@dataclass
class Batch:
    tokens: Tensor      # [B, T] int64
    hist_slot: Tensor   # [B, T] index into `unique` for history tokens, -1 elsewhere
    hist_pos: Tensor    # [B, T] position of the token inside its item's path
    unique: Tensor      # [U] item ids of the history items
    positions: Tensor   # [B, T] from each row's first real token
    sid_pos: Tensor     # [B, T] 0 for PAD/BOS, j + 1 for the j-th token of an item
    key_valid: Tensor   # [B, T] bool
    labels: Optional[Tensor]  # [B, T] or None
    prefix_len: int     # columns up to and including BOS

    def to(self, device) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})


def make_batch(paths: Sequence[Sequence[int]], histories: Sequence[np.ndarray],
               targets: Optional[Sequence[int]] = None, max_history: int = 50) -> Batch:
    rows = len(histories)
    hists = [np.asarray(h, dtype=np.int64)[-max_history:] if max_history else np.zeros(0, np.int64)
             for h in histories]
    unique, inverse = np.unique(np.concatenate(hists) if rows else np.zeros(0, np.int64), return_inverse=True)
    prefix = []
    at = 0
    for h in hists:
        toks, slot, pos, sid = [], [], [], []
        for item, u in zip(h, inverse[at: at + len(h)]):
            p = paths[int(item)]
            toks.extend(p)
            slot.extend([int(u)] * len(p))
            pos.extend(range(len(p)))
            sid.extend(range(1, len(p) + 1))
        at += len(h)
        prefix.append((toks + [BOS], slot + [-1], pos + [0], sid + [0]))
    tp = max((len(p[0]) for p in prefix), default=1)
    tails = [list(paths[int(t)]) for t in targets] if targets is not None else [[] for _ in range(rows)]
    tt = max((max(len(t) - 1, 0) for t in tails), default=0)  # target inputs: path without its EOS
    width = tp + tt
    tokens = np.full((rows, width), PAD, np.int64)
    slot = np.full((rows, width), -1, np.int64)
    hpos = np.zeros((rows, width), np.int64)
    sidp = np.zeros((rows, width), np.int64)
    valid = np.zeros((rows, width), bool)
    labels = np.full((rows, width), IGNORE, np.int64) if targets is not None else None
    for i, ((toks, sl, ps, sd), tail) in enumerate(zip(prefix, tails)):
        lo = tp - len(toks)
        tokens[i, lo:tp], slot[i, lo:tp], hpos[i, lo:tp], sidp[i, lo:tp] = toks, sl, ps, sd
        valid[i, lo:tp] = True
        if tail:
            m = len(tail) - 1
            tokens[i, tp: tp + m] = tail[:-1]
            sidp[i, tp: tp + m] = np.arange(1, m + 1)
            valid[i, tp: tp + m] = True
            labels[i, tp - 1: tp + m] = tail
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    t = torch.as_tensor
    return Batch(tokens=t(tokens), hist_slot=t(slot), hist_pos=t(hpos), unique=t(unique), positions=t(positions),
                 sid_pos=t(sidp), key_valid=t(valid), labels=None if labels is None else t(labels), prefix_len=tp)


def embed_batch(model, inputs, batch: Batch) -> Tensor:
    """Input embeddings [B, T, h]: hard E[token] everywhere, history tokens from `inputs.rows`."""
    emb = model.embed(batch.tokens)
    if batch.unique.numel() == 0:
        return emb
    rows = inputs.rows(model.tok.weight, batch.unique)  # [U, P, h]
    hist = rows[batch.hist_slot.clamp(min=0), batch.hist_pos]
    return torch.where((batch.hist_slot >= 0)[..., None], hist, emb)
