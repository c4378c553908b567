"""Tokenizer metrics of SPEC §8, the same function for every tokenizer.

Input is a padded SID table [N, L] (-1 after an item's end), the codebook size at each
position and the item vectors; CAPSID adds its stop reasons and per-depth records.
numpy only: the metrics must not depend on how the SIDs were made.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

STOP_NAMES = {1: "conf", 2: "resid", 3: "cap"}


def collision_rate(sids: np.ndarray) -> float:
    """1 - |unique SIDs| / N (a padded row is its own SID; -1 cannot equal a code)."""
    n = sids.shape[0]
    return 1.0 - np.unique(sids, axis=0).shape[0] / n if n else float("nan")


def code_usage(sids: np.ndarray, capsules: Sequence[int]) -> list[np.ndarray]:
    """Per position, how many items use each code."""
    return [np.bincount(col[col >= 0], minlength=k) for col, k in zip(sids.T, capsules)]


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = uniform, -> 1 = all mass on one)."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = c.size, c.sum()
    if n == 0 or total == 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float((2.0 * (ranks * c).sum()) / (n * total) - (n + 1.0) / n)


def intra_code_similarity(sids: np.ndarray, x: np.ndarray, *, n_pairs: int = 20000, seed: int = 0) -> float:
    """mean cos(x_i, x_j) over sampled pairs i != j that share the first token.

    Pairs are drawn uniformly over all such pairs: first a group with probability ~ its pair
    count, then two distinct members.
    """
    first = sids[:, 0]
    groups, inverse, sizes = np.unique(first, return_inverse=True, return_counts=True)
    weights = sizes * (sizes - 1.0)
    if weights.sum() == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    members = np.argsort(inverse, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    g = rng.choice(len(groups), size=n_pairs, p=weights / weights.sum())
    a = rng.integers(0, sizes[g])
    b = (a + rng.integers(1, sizes[g])) % sizes[g]
    i, j = members[starts[g] + a], members[starts[g] + b]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.einsum("nd,nd->n", xn[i], xn[j]).mean())


def random_pair_similarity(x: np.ndarray, *, n_pairs: int = 20000, seed: int = 0) -> float:
    """The same mean cosine over random pairs: the floor intra-code similarity is read against."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, max(2, n), n_pairs)) % n
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.einsum("nd,nd->n", xn[i], xn[j]).mean())


def tokenizer_metrics(
    sids: np.ndarray,
    capsules: Sequence[int],
    x: np.ndarray,
    *,
    stop_reason: Optional[np.ndarray] = None,
    merged_lengths: Optional[np.ndarray] = None,
    n_pairs: int = 20000,
    seed: int = 0,
) -> dict:
    """Collision rate, code utilisation (over every position's codebook, as the paper
    defines it, and over the positions some item reaches), Gini of code usage, intra-code
    similarity (and the random-pair floor), mean length, length histogram, stop fractions."""
    sids = np.asarray(sids, dtype=np.int64)
    n = sids.shape[0]
    lengths = (sids >= 0).sum(axis=1)
    usage = code_usage(sids, capsules)
    all_counts = np.concatenate(usage)
    reached = [u for u in usage if u.sum() > 0]
    out = {
        "items": int(n),
        "collision_rate": collision_rate(sids),
        "code_utilisation": float((all_counts > 0).sum() / max(1, sum(capsules))),
        "code_utilisation_reached": float(sum((u > 0).sum() for u in reached) / max(1, sum(len(u) for u in reached))),
        "gini": gini(all_counts),
        "gini_reached": gini(np.concatenate(reached)) if reached else float("nan"),
        "intra_code_similarity": intra_code_similarity(sids, x, n_pairs=n_pairs, seed=seed),
        "random_pair_similarity": random_pair_similarity(x, n_pairs=n_pairs, seed=seed),
        "mean_length": float(lengths.mean()) if n else float("nan"),
        "length_histogram": {int(k): int(v) for k, v in enumerate(np.bincount(lengths)) if k > 0 and v > 0},
        "codes_used_per_position": [int((u > 0).sum()) for u in usage],
    }
    if stop_reason is not None:
        sr = np.asarray(stop_reason)
        out["stop_fractions"] = {name: float((sr == code).mean()) for code, name in STOP_NAMES.items()}
    if merged_lengths is not None:
        ml = np.asarray(merged_lengths)
        out["mean_merged_length"] = float(ml.mean()) if n else float("nan")
        out["items_with_a_merge"] = float((ml < lengths).mean()) if n else float("nan")
    return out
