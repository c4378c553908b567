"""From (history, target) item lists to the generator's token layout (SPEC §6).

Row layout, left-padded so every prompt ends at the same column:
    PAD ... | BOS | item_1 tokens EOS | ... | item_n tokens EOS | t_1 ... t_m | PAD ...
Labels (training) sit on the prompt's last token (item_n's EOS, or BOS for an empty history)
and t_1 .. t_m, and are t_1 .. t_m, EOS: next-token cross entropy on the target item's tokens
only. History tokens remember (item, position in path) so that soft inputs can replace their
embeddings; the target's tokens always enter hard.

BOS opens the row rather than closing the prompt, so a whole sequence
`BOS item_1 EOS ... item_k EOS` holds every prefix prompt of it: `make_sequence_batch` trains
on all its items at once (labels on items 2..k) with, under causal attention, the same logits
as the k - 1 prefix rows of `make_batch` (test).
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
    prefix_len: int     # columns of the prompt (BOS and the history); labels start at prefix_len - 1

    def to(self, device) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})


def as_path_matrix(paths) -> np.ndarray:
    """[N, P] PAD-filled, EOS-terminated paths from a matrix or a list of token lists."""
    if isinstance(paths, np.ndarray):
        return paths
    out = np.full((len(paths), max((len(p) for p in paths), default=1)), PAD, np.int64)
    for i, p in enumerate(paths):
        out[i, : len(p)] = p
    return out


def _path_lengths(pm: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return (pm[ids] != PAD).sum(1).astype(np.int64) if len(ids) else np.zeros(0, np.int64)


def _item_tokens(pm: np.ndarray, item_lists: Sequence[np.ndarray]):
    """The tokens of each row's items laid end to end, flattened over rows.

    Returns occ (item ids), per-row token counts, and per token: its occurrence index, its
    position inside its item's path, its row, and its position inside its row. Only the rows
    of `pm` that are used are read (a whole-catalogue count costs ~50 ms at 2M items)."""
    rows = len(item_lists)
    n_items = np.array([len(h) for h in item_lists], np.int64)
    occ = np.concatenate(item_lists).astype(np.int64) if rows else np.zeros(0, np.int64)
    occ_row = np.repeat(np.arange(rows), n_items)
    per_occ = _path_lengths(pm, occ)
    row_tok = np.bincount(occ_row, weights=per_occ, minlength=rows).astype(np.int64)
    tok_occ = np.repeat(np.arange(len(occ)), per_occ)
    within = np.arange(len(tok_occ)) - np.repeat(np.cumsum(per_occ) - per_occ, per_occ)
    r = occ_row[tok_occ]
    in_row = np.arange(len(tok_occ)) - (np.cumsum(row_tok) - row_tok)[r]
    return occ, row_tok, tok_occ, within, r, in_row


def make_batch(paths, histories: Sequence[np.ndarray], targets: Optional[Sequence[int]] = None,
               max_history: int = 50) -> Batch:
    """Vectorised over rows: `paths` is a PAD-filled path matrix (pass one built once; a list of
    token lists also works, converted on each call)."""
    pm = as_path_matrix(paths)
    rows = len(histories)
    hists = [np.asarray(h, dtype=np.int64)[-max_history:] if max_history else np.zeros(0, np.int64)
             for h in histories]
    occ, hist_tok, tok_occ, within, r, in_row = _item_tokens(pm, hists)
    unique, inverse = np.unique(occ, return_inverse=True)
    tp = int(hist_tok.max(initial=0)) + 1  # + BOS (first column of each row's prompt)
    tgt = pm[np.asarray(targets, np.int64)] if targets is not None else np.zeros((rows, 0), np.int64)
    tlen = _path_lengths(pm, np.asarray(targets, np.int64)) if targets is not None else np.zeros(rows, np.int64)
    tt = int(max(tlen.max(initial=0) - 1, 0))  # target inputs: path without its EOS
    width = tp + tt
    tokens = np.full((rows, width), PAD, np.int64)
    slot = np.full((rows, width), -1, np.int64)
    hpos = np.zeros((rows, width), np.int64)
    sidp = np.zeros((rows, width), np.int64)
    valid = np.zeros((rows, width), bool)
    # BOS, then the history tokens right-aligned so the prompt ends at column tp - 1
    col = tp - hist_tok[r] + in_row
    tokens[r, col], slot[r, col], hpos[r, col], sidp[r, col] = pm[occ[tok_occ], within], inverse[tok_occ], within, \
        within + 1
    valid[r, col] = True
    bos = tp - 1 - hist_tok
    tokens[np.arange(rows), bos], valid[np.arange(rows), bos] = BOS, True
    labels = None
    if targets is not None:
        j = np.arange(tt)
        inp = j[None] < (tlen - 1)[:, None]
        tokens[:, tp:] = np.where(inp, tgt[:, :tt], PAD)
        sidp[:, tp:] = np.where(inp, j + 1, 0)
        valid[:, tp:] = inp
        labels = np.full((rows, width), IGNORE, np.int64)
        lab = np.arange(tt + 1)[None] < tlen[:, None]
        labels[:, tp - 1:] = np.where(lab, tgt[:, : tt + 1], IGNORE)
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


def make_sequence_batch(paths, sequences: Sequence[np.ndarray]) -> Batch:
    """Whole sequences, every item after the first a target: rows `BOS item_1 EOS ... item_k EOS`
    (left-padded), labels on the tokens of items 2..k (each predicted from the one before it:
    item_j's first token from item_{j-1}'s EOS), IGNORE elsewhere. All tokens enter hard (no
    history slots), so this is Stage 2's fast path for hard inputs. `prefix_len` is 1: the
    loss reads every column."""
    pm = as_path_matrix(paths)
    rows = len(sequences)
    seqs = [np.asarray(q, dtype=np.int64) for q in sequences]
    n_items = np.array([len(q) for q in seqs], np.int64)
    occ, item_tok, tok_occ, within, r, in_row = _item_tokens(pm, seqs)
    first = np.zeros(len(occ), bool)
    first[np.cumsum(n_items)[n_items > 0] - n_items[n_items > 0]] = True
    row_tok = item_tok + 1  # + BOS
    width = int(row_tok.max(initial=1))
    tokens = np.full((rows, width), PAD, np.int64)
    sidp = np.zeros((rows, width), np.int64)
    valid = np.zeros((rows, width), bool)
    labels = np.full((rows, width), IGNORE, np.int64)
    col = width - item_tok[r] + in_row
    tok = pm[occ[tok_occ], within]
    tokens[r, col], sidp[r, col], valid[r, col] = tok, within + 1, True
    bos = width - row_tok
    tokens[np.arange(rows), bos], valid[np.arange(rows), bos] = BOS, True
    target = ~first[tok_occ]
    labels[r[target], col[target] - 1] = tok[target]
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    t = torch.as_tensor
    empty = t(np.full((rows, width), -1, np.int64))
    return Batch(tokens=t(tokens), hist_slot=empty, hist_pos=t(np.zeros((rows, width), np.int64)),
                 unique=t(np.zeros(0, np.int64)), positions=t(positions), sid_pos=t(sidp), key_valid=t(valid),
                 labels=t(labels), prefix_len=1)
