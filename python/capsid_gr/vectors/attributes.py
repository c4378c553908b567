"""Attribute vectors: idf-weighted multi-hot of each item's attribute ids (brand, categories)."""

from __future__ import annotations

import numpy as np


def attribute_vectors(attributes: list[np.ndarray]) -> np.ndarray:
    """[N, A] float32; rows of items without attributes are zero. idf = log(N / df) + 1, so
    a rare attribute (a small brand) weighs more than a catalogue-wide category."""
    n = len(attributes)
    width = 1 + max((int(a.max()) for a in attributes if len(a)), default=-1)
    out = np.zeros((n, max(width, 1)), dtype=np.float32)
    for i, a in enumerate(attributes):
        out[i, np.asarray(a, dtype=np.int64)] = 1.0
    df = out.sum(axis=0)
    idf = np.where(df > 0, np.log(n / np.maximum(df, 1)) + 1.0, 0.0).astype(np.float32)
    return out * idf[None, :]
