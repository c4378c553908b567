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


def token_embeddings(centres: Sequence[Tensor]) -> Tensor:
    """Rows indexed by global id: zeros for the specials, then every depth's codebook centres."""
    first = centres[0]
    specials = first.new_zeros(FIRST_CODE, first.shape[1])
    return torch.cat([specials, *centres], dim=0)
