"""Training samples of Stage 2: every (prefix of a training sequence -> next item).

Only `Split.train` is read (each user's sequence without its validation and test items), so
no sample can contain or predict a held-out interaction.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def training_samples(train: Sequence[np.ndarray], per_user: Optional[int] = None) -> np.ndarray:
    """[S, 2] (user, t): history = train[user][:t], target = train[user][t], t >= 1."""
    rows = []
    for u, seq in enumerate(train):
        ts = np.arange(1, len(seq))
        if per_user is not None:
            ts = ts[-per_user:]
        rows.append(np.stack([np.full(len(ts), u), ts], 1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def sample_batch(train: Sequence[np.ndarray], samples: np.ndarray, max_history: int):
    hist = [train[u][max(0, t - max_history): t] for u, t in samples]
    target = np.array([train[u][t] for u, t in samples], dtype=np.int64)
    return hist, target
