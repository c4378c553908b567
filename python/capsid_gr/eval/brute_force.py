"""Exhaustive scoring of every item path, the test oracle for the beam (SPEC §7).

Score of item i for a query = sum of full-vocabulary log-softmax of i's path tokens (EOS
included) under teacher forcing, computed with the uncached forward. Items are ranked by
score, then popularity (higher first), then id, the trie's collision order.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..generator import embed_batch, make_batch


@torch.no_grad()
def path_scores(model, inputs, items, history: np.ndarray, max_history: int = 50) -> np.ndarray:
    """[N] log-probability of each item's path after `history` (float64)."""
    model.eval()
    device = model.tok.weight.device
    n = items.n_items
    b = make_batch(items.paths, [history] * n, np.arange(n), max_history).to(device)
    logp = torch.log_softmax(model(embed_batch(model, inputs, b), b.positions, b.sid_pos, b.key_valid).double(), -1)
    lab = b.labels
    picked = logp.gather(-1, lab.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(lab >= 0, picked, 0.0).sum(1).cpu().numpy()


def brute_force_topk(model, inputs, items, histories: Sequence[np.ndarray], k: int,
                     popularity: Optional[np.ndarray] = None, max_history: int = 50) -> np.ndarray:
    n = items.n_items
    pop = np.zeros(n) if popularity is None else np.asarray(popularity, dtype=np.float64)
    out = np.full((len(histories), k), -1, np.int64)
    # items with the same path share one score (the trie's leaf), not n float-noisy copies
    _, first = np.unique(items.path_matrix(), axis=0, return_inverse=True)
    rep = np.zeros(first.max() + 1, np.int64)
    rep[first[::-1]] = np.arange(n)[::-1]
    for q, h in enumerate(histories):
        s = path_scores(model, inputs, items, h, max_history)[rep[first]]
        order = np.lexsort((np.arange(n), -pop, -s))
        out[q, : min(k, n)] = order[:k]
    return out
