"""Token ids of SPEC §6: PAD 0, BOS 1, EOS 2, depth-l code k -> 3 + sum_{j<l} K_j + k, then merges."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from capsid_kernels import PAD_TOKEN as NO_TOKEN  # fills SID tables after an item's last code
from capsid_kernels.decode import BOS, EOS, FIRST_CODE, PAD  # the one home of the token-id layout


def depth_offsets(capsules: Sequence[int]) -> np.ndarray:
    """Global id of code 0 at each depth."""
    return FIRST_CODE + np.concatenate([[0], np.cumsum(capsules)[:-1]]).astype(np.int64)


def base_vocab_size(capsules: Sequence[int]) -> int:
    """Ids below this are specials and codes; merges start here."""
    return FIRST_CODE + int(sum(capsules))


def to_global(codes: np.ndarray, capsules: Sequence[int]) -> np.ndarray:
    """Per-depth codes [N, L] (NO_TOKEN padded) -> global token ids, NO_TOKEN kept."""
    codes = np.asarray(codes, dtype=np.int64)
    off = depth_offsets(capsules)[: codes.shape[1]]
    return np.where(codes >= 0, codes + off[None, :], NO_TOKEN)


def to_codes(ids: np.ndarray, capsules: Sequence[int]) -> np.ndarray:
    """Inverse of `to_global` for tables of base tokens in depth order."""
    ids = np.asarray(ids, dtype=np.int64)
    off = depth_offsets(capsules)[: ids.shape[1]]
    return np.where(ids >= 0, ids - off[None, :], NO_TOKEN)


def item_space_embeddings(ids: np.ndarray, x: Tensor, vocab_size: int) -> Tensor:
    """SPEC §5's token embedding: row t is the mean of the l2-normalised item vectors x [N, d] of the
    items whose SID carries token t (global ids [N, L], NO_TOKEN padded; a depth's codes have their
    own ids), float64 [vocab_size, d]; zeros for a token no item carries (cos = 0 with anything).

    Codebook centres of adjacent depths live in near-orthogonal residual spaces (their cosine is
    about 0 for any residual quantiser), so they cannot say whether two tokens mean alike; the
    items that carry them can."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"ids: expected [N = {x.shape[0]}, L] global token ids, got shape {ids.shape}")
    valid = ids != NO_TOKEN
    if valid.any() and (ids[valid].min() < 0 or ids[valid].max() >= vocab_size):
        raise ValueError(f"ids: expected token ids in [0, {vocab_size}) or {NO_TOKEN}, got "
                         f"{int(ids[valid].min())}..{int(ids[valid].max())}")
    xu = x.detach().double()
    xu = xu / torch.linalg.vector_norm(xu, dim=1, keepdim=True).clamp_min(1e-30)
    rows, cols = np.nonzero(valid)
    tok = torch.as_tensor(ids[rows, cols], device=xu.device)
    sums = torch.zeros(vocab_size, xu.shape[1], dtype=torch.float64, device=xu.device)
    sums.index_add_(0, tok, xu[torch.as_tensor(rows, device=xu.device)])
    counts = torch.bincount(tok, minlength=vocab_size).to(torch.float64)
    return sums / counts.clamp_min(1.0)[:, None]

