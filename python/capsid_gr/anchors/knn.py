"""The item-kNN anchor: the nearest neighbours of a user's last item by the item vectors the
tokenizers read (cosine, the item itself left out, popularity breaking exact ties).

It needs no training and reads no transitions: it measures how much next-item signal the
vectors alone carry, the neighbourhood a generator over SIDs built from them should at least
recover (`capsid_gr.vectors.diagnostics.last_item_nn_recall` counts the same hits).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..checks import short


class ItemKNNRecommender:
    def __init__(self, vectors, popularity: np.ndarray, device="cpu") -> None:
        v = torch.as_tensor(np.asarray(vectors, np.float32), device=device)
        pop = np.asarray(popularity, np.float64)
        if v.ndim != 2 or v.shape[0] != len(pop) or v.shape[0] < 2:
            raise ValueError(f"ItemKNNRecommender: expected vectors [N >= 2, d] with one row per item of the "
                             f"popularity ({len(pop)} items), got {short(list(v.shape))}")
        if not bool(torch.isfinite(v).all()) or not bool((v.norm(dim=1) > 0).all()):
            raise ValueError("ItemKNNRecommender: vectors must be finite and non-zero (cosine needs a direction)")
        self.vectors = v / v.norm(dim=1, keepdim=True)
        self.n_items = v.shape[0]
        # a tie-break: cosines within ~1e-7 of each other (exact ties, near-duplicate vectors) go to the
        # more popular item; larger gaps are untouched
        self.tie = torch.as_tensor(1e-7 * pop / max(pop.max(), 1.0), dtype=torch.float32, device=device)

    @torch.no_grad()
    def recommend(self, histories: Sequence[np.ndarray], num_beams: int = 50, top_k: Optional[int] = None,
                  batch_size: int = 2048, backend: str = "auto") -> tuple[np.ndarray, dict]:
        top_k = min(top_k or num_beams, self.n_items - 1)
        out = np.empty((len(histories), top_k), np.int64)
        start = time.perf_counter()
        for lo in range(0, len(histories), batch_size):
            chunk = histories[lo: lo + batch_size]
            last = torch.as_tensor([int(h[-1]) if len(h) else -1 for h in chunk], device=self.vectors.device)
            s = self.vectors[last.clamp(min=0)] @ self.vectors.T + self.tie
            s[last < 0] = self.tie  # an empty history: popularity
            rows = torch.arange(len(chunk), device=s.device)
            s[rows[last >= 0], last[last >= 0]] = -torch.inf
            out[lo: lo + len(chunk)] = s.topk(top_k, dim=1).indices.cpu().numpy()
        sec = time.perf_counter() - start
        return out, {"decode_seconds": sec, "latency_ms_per_query": 1e3 * sec / max(len(histories), 1)}
