"""HaMR, Hamming-guided margin repulsion (QuaSID, "Stop Treating Collisions Equally", 2026).

A plug-in loss for a learned tokenizer. Among the pairs (i, j) of *distinct* items in a batch:
- full collisions, Hamming distance H(s_i, s_j) = 0 (identical SIDs), should sit at cosine
  distance 1 - cos(e_i, e_j) >= m_full in the encoder's space;
- partial collisions, 0 < H <= R, at cosine distance >= m_partial (m_full >= m_partial: the
  more severe the overlap, the wider the margin).
Each violated pair costs relu(cos(e_i, e_j) - (1 - m)); the two sets are averaged separately
(an empty set contributes 0) and summed:

    L_HaMR = mean_{full} relu(cos - (1 - m_full)) + mean_{partial} relu(cos - (1 - m_partial))

Pairs of the same item (two views of one item in a batch) and positive pairs of any
contrastive objective (`positives`) are masked out: pulling them together is that
objective's job.

Hamming distance of variable-length SIDs, padded with -1 after the end (CAPSID's table):
    H(a, b) = #{p < max(len a, len b) : a_p != b_p},
i.e. positions beyond the shorter SID count as mismatches, and positions beyond both count
as nothing. So (3, 7) vs (3, 7, 1) has H = 1 and is a partial collision, not a full one:
the trie keeps them apart only by the shorter one's EOS. On -1-padded rows this is plain
elementwise inequality, since -1 equals no code.

Use the SIDs *before* any disambiguation token: that token exists to hide the collisions
this loss is meant to see. SIDs carry no gradient; the embeddings do.

Where it plugs in:
- RQ-VAE (`capsid_gr.baselines.rqvae`, `RQVAEConfig(hamr=HaMRConfig())`): embeddings = the
  encoder output z, SIDs = the batch's hard codes.
- CAPSID Stage 1: there is no encoder (item vectors are frozen), so the tokenizer's own
  space is where it decides: `routing_embedding(a.weights, a.reached)` concatenates the
  per-depth routing weights c* of the depths an item reaches; SIDs =
  `sids_from_tokens(a.token, a.reached)`. Two items with cos = 1 there route identically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from ..checks import check_config


@dataclass(frozen=True)
class HaMRConfig:
    """radius R = 1, m_full = 0.8, m_partial = 0.5: QuaSID's published setting.
    weight: the loss's coefficient in the training objective; 0.1 is ours (QuaSID tunes
    it per dataset), chosen so that on our synthetic data RQ-VAE's reconstruction is not
    visibly hurt (docs/tokenizers.md)."""

    radius: int = 1
    m_full: float = 0.8
    m_partial: float = 0.5
    weight: float = 0.1

    def __post_init__(self) -> None:
        check_config(self)
        if self.radius < 0:
            raise ValueError(f"radius: expected R >= 0, got {self.radius}")
        if not 0.0 <= self.m_partial <= self.m_full <= 2.0:
            raise ValueError(f"margins: expected 0 <= m_partial <= m_full <= 2 (cosine distance), "
                             f"got m_partial={self.m_partial}, m_full={self.m_full}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class HaMRTerms(NamedTuple):
    loss: Tensor  # full + partial, scalar
    full: Tensor  # mean hinge over full collisions (0 when there are none)
    partial: Tensor  # mean hinge over partial collisions
    n_full: int  # pairs i < j in each set after masking
    n_partial: int


def hamming(sids_a: Tensor, sids_b: Tensor) -> Tensor:
    """Pairwise Hamming distances [A, B] of -1-padded SID tables [A, L], [B, L'].

    Positions beyond the shorter SID count as mismatches (see the module docstring).
    """
    la, lb = sids_a.shape[1], sids_b.shape[1]
    width = max(la, lb)
    a = F.pad(sids_a, (0, width - la), value=-1)
    b = F.pad(sids_b, (0, width - lb), value=-1)
    return (a[:, None, :] != b[None, :, :]).sum(dim=-1)


def hamr_terms(
    embeddings: Tensor,
    sids: Tensor,
    item_ids: Optional[Tensor] = None,
    positives: Optional[Tensor] = None,
    *,
    radius: int = 1,
    m_full: float = 0.8,
    m_partial: float = 0.5,
) -> HaMRTerms:
    """HaMR over a batch: embeddings [B, D] (encoder space), sids [B, L] (-1 padded),
    item_ids [B] (None: every row a distinct item), positives [B, B] bool (True = a positive
    pair of another objective, masked out; need not be symmetric, either direction masks)."""
    b = embeddings.shape[0]
    if sids.shape[0] != b:
        raise ValueError(f"sids: expected {b} rows (one per embedding), got {sids.shape[0]}")
    zero = embeddings.sum() * 0.0  # keeps the graph and dtype when nothing is repelled
    if b < 2:
        return HaMRTerms(zero, zero, zero, 0, 0)
    unit = F.normalize(embeddings, dim=-1, eps=1e-12)
    cos = unit @ unit.T
    h = hamming(sids, sids)
    valid = torch.triu(torch.ones(b, b, dtype=torch.bool, device=embeddings.device), diagonal=1)
    if item_ids is not None:
        if item_ids.shape != (b,):
            raise ValueError(f"item_ids: expected shape ({b},), got {tuple(item_ids.shape)}")
        valid &= item_ids[:, None] != item_ids[None, :]
    if positives is not None:
        if positives.shape != (b, b):
            raise ValueError(f"positives: expected a [{b}, {b}] mask, got {tuple(positives.shape)}")
        positives = positives.to(torch.bool)
        valid &= ~(positives | positives.T)
    full = valid & (h == 0)
    partial = valid & (h > 0) & (h <= radius)
    hinge_full = F.relu(cos[full] - (1.0 - m_full))
    hinge_partial = F.relu(cos[partial] - (1.0 - m_partial))
    l_full = hinge_full.mean() if hinge_full.numel() else zero
    l_partial = hinge_partial.mean() if hinge_partial.numel() else zero
    return HaMRTerms(l_full + l_partial, l_full, l_partial, int(full.sum()), int(partial.sum()))


def hamr_loss(embeddings: Tensor, sids: Tensor, item_ids: Optional[Tensor] = None,
              positives: Optional[Tensor] = None, *, radius: int = 1, m_full: float = 0.8,
              m_partial: float = 0.5) -> Tensor:
    """The scalar L_HaMR of `hamr_terms` (unweighted)."""
    return hamr_terms(embeddings, sids, item_ids, positives, radius=radius, m_full=m_full,
                      m_partial=m_partial).loss


def hamr_from_config(embeddings: Tensor, sids: Tensor, cfg: HaMRConfig, item_ids: Optional[Tensor] = None,
                     positives: Optional[Tensor] = None) -> HaMRTerms:
    """`hamr_terms` with R and the margins from a HaMRConfig (the weight is the caller's)."""
    return hamr_terms(embeddings, sids, item_ids, positives, radius=cfg.radius, m_full=cfg.m_full,
                      m_partial=cfg.m_partial)


def sids_from_tokens(tokens: Tensor, reached: Tensor) -> Tensor:
    """CAPSID's per-depth tokens [N, L] and reached mask [N, L] -> a -1-padded SID table."""
    return torch.where(reached, tokens, torch.full_like(tokens, -1))


def routing_embedding(weights: Sequence[Tensor], reached: Tensor) -> Tensor:
    """CAPSID's space for HaMR: the routing weights c* of every depth an item reaches,
    concatenated [N, sum K_l]; depths beyond an item's end contribute zeros."""
    parts = [w * reached[:, j:j + 1].to(w.dtype) for j, w in enumerate(weights)]
    return torch.cat(parts, dim=1)
