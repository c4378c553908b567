"""How much next-item signal an item-vector block carries (issue 16): recommend the nearest
neighbours (cosine, the item itself excluded) of each user's last history item and count
test hits. A block that does not beat popularity adds noise to every SID built on it."""

from __future__ import annotations

import numpy as np

from ..data.dataset import SequenceDataset


QUERIES = ("test", "valid")


def _queries(data: SequenceDataset, queries: str):
    if queries not in QUERIES:
        raise ValueError(f"queries: expected one of {QUERIES}, got {queries!r}")
    split = data.split()
    return split.test if queries == "test" else split.valid


def last_item_nn_recall(vectors: np.ndarray, data: SequenceDataset, k: int = 10, batch: int = 4096,
                        queries: str = "test") -> float:
    """Recall@k on the leave-one-out test (or validation) queries of the nearest neighbours of the
    last history item. Choose anything tuned by it (block weights) on "valid"."""
    q_all = _queries(data, queries)
    v = np.asarray(vectors, np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    last = q_all.history[np.arange(len(q_all.length)), np.maximum(q_all.length - 1, 0)]
    hits = 0
    for lo in range(0, len(last), batch):
        q = last[lo: lo + batch]
        s = v[q] @ v.T
        s[np.arange(len(q)), q] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        hits += int((top == q_all.target[lo: lo + batch, None]).any(1).sum())
    return hits / max(len(last), 1)


def popularity_recall(data: SequenceDataset, k: int = 10, queries: str = "test") -> float:
    top = np.argsort(-data.popularity(), kind="stable")[:k]
    return float(np.isin(_queries(data, queries).target, top).mean())
