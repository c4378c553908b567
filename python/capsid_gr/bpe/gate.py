"""The merge gate f_phi and L_BPE (SPEC §5 step 4, paper Eq. 16-17)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .pairs import pair_cosine


class MergeGate(nn.Module):
    """2-layer MLP over [e_a, e_b, freq_hat, cos] -> two logits (keep, merge)."""

    def __init__(self, d: int, hidden: int = 64, *, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(2 * d + 2, hidden)
        self.out = nn.Linear(hidden, 2)
        with torch.no_grad():  # seeded init, independent of the global RNG
            for lin in (self.hidden, self.out):
                bound = lin.in_features ** -0.5
                lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=g))
                lin.bias.copy_(torch.empty_like(lin.bias).uniform_(-bound, bound, generator=g))

    def features(self, emb: Tensor, pairs: np.ndarray, freq_hat: np.ndarray) -> Tensor:
        """[P, 2d + 2] inputs for global-id pairs against the token embeddings emb [V, d].

        The embeddings are detached: the gate learns to read the tokens' item-space embedding
        (SPEC §5), it must not move the items' SIDs to make its own labels easier.
        """
        emb = emb.detach().to(self.hidden.weight.dtype)
        idx = torch.as_tensor(pairs, dtype=torch.int64, device=emb.device)
        cos = pair_cosine(emb, pairs)
        fh = torch.as_tensor(freq_hat, dtype=emb.dtype, device=emb.device)
        return torch.cat([emb[idx[:, 0]], emb[idx[:, 1]], fh[:, None], cos[:, None]], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.out(F.gelu(self.hidden(features)))

    @torch.no_grad()
    def merge_probability(self, features: Tensor) -> Tensor:
        """pi_1, the inference-time merge probability (merge iff pi_1 > pi_0)."""
        return torch.softmax(self(features), dim=-1)[:, 1]


def relaxed_gate(logits: Tensor, tau_g: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """g~ = softmax((log pi + g) / tau_g)_1 with g ~ Gumbel(0, 1) (Eq. 17)."""
    log_pi = torch.log_softmax(logits, dim=-1)
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-10)))
    return torch.softmax((log_pi + gumbel) / tau_g, dim=-1)[:, 1]


def bpe_loss(logits: Tensor, labels: Tensor, *, tau_g: float = 1.0,
             generator: Optional[torch.Generator] = None, relaxed: bool = True) -> Tensor:
    """L_BPE = BCE(gate, 1[m >= m*]) over candidates.

    With `relaxed` the gate is the Gumbel-Softmax sample g~ (training, Eq. 17); without it
    the gate is pi_1 itself, which g~ equals in distribution's centre at tau_g = 1.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if relaxed:
        gate = relaxed_gate(logits, tau_g, generator)
        return F.binary_cross_entropy(gate.clamp(1e-6, 1.0 - 1e-6), labels.to(gate.dtype))
    # pi_1 = sigmoid(l_1 - l_0): the logit form is exact and stable.
    return F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], labels.to(logits.dtype))
