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


def training_windows(train: Sequence[np.ndarray], max_history: int) -> np.ndarray:
    """[S, 2] (user, end) for whole-sequence batches: window = train[user][start:end] with
    start = max(0, end - max_history - 1); its items after the first are the targets. Windows
    end at len, len - max_history, ... so every training item but each user's first is a
    target exactly once, with at most `max_history` items (of its window) before it: the same
    targets as `training_samples`, whose histories reach further back only for users with more
    than max_history + 1 training items."""
    if max_history < 1:
        raise ValueError(f"max_history: whole-sequence batches need >= 1, got {max_history}")
    rows = []
    for u, seq in enumerate(train):
        ends = np.arange(len(seq), 1, -max_history)
        rows.append(np.stack([np.full(len(ends), u), ends], 1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), np.int64)


def window_batch(train: Sequence[np.ndarray], windows: np.ndarray, max_history: int) -> list[np.ndarray]:
    return [train[u][max(0, e - max_history - 1): e] for u, e in windows]


def sample_batch(train: Sequence[np.ndarray], samples: np.ndarray, max_history: int):
    hist = [train[u][max(0, t - max_history): t] for u, t in samples]
    target = np.array([train[u][t] for u, t in samples], dtype=np.int64)
    return hist, target


def bucketed_batches(order: np.ndarray, batch_size: int, max_history: int, bucket: int,
                     rng: np.random.Generator, lengths: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Split shuffled samples into batches of similar history length.

    Batches are padded to their longest row, so a random batch pays for one 50-item history
    in every row (`lengths`: each row's length when it is not its history's, order[:, 1]). Each run of `bucket` consecutive batches of the shuffled order is sorted
    by history length, cut into batches, and the batch order is then shuffled with `rng`:
    the epoch still sees every sample exactly once, in batches of `batch_size` (the last
    one of each run may be shorter). bucket <= 1 keeps the plain shuffled order.
    """
    if bucket <= 1:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if lengths is not None:  # the row lengths of `order` (whole-sequence windows)
        hist_len = lengths
    else:
        hist_len = np.minimum(order[:, 1], max_history) if max_history else np.zeros(len(order), np.int64)
    out = []
    span = bucket * batch_size
    for lo in range(0, len(order), span):
        run = order[lo: lo + span]
        run = run[np.argsort(hist_len[lo: lo + span], kind="stable")]
        out += [run[i: i + batch_size] for i in range(0, len(run), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def batch_count(rows: np.ndarray, batch_size: int, max_history: int, bucket: int,
                lengths: Optional[np.ndarray] = None) -> int:
    """How many batches `bucketed_batches` cuts `rows` into: an epoch's optimizer steps, the same
    for every shuffle."""
    return len(bucketed_batches(rows, batch_size, max_history, bucket, np.random.default_rng(0), lengths))
