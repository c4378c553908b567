"""Synthetic catalogues built from hierarchical facets (SPEC §10), the embedded default data.

Items sit in leaf facets of a tree (e.g. 8 top facets × 6 × 4). An item vector is the sum
of its facet offsets, one per level with falling scale, plus noise, so nearest-neighbour
structure is hierarchical, which is what residual semantic IDs should recover. Boundary
items mix two sibling leaves, the ambiguous case soft routing is meant for. Users walk
a Markov chain over facets and pick items inside a facet by Zipf popularity.

numpy only at import; torch is imported inside `synthetic_item_vectors`, the one function
that needs it (kernel-scale vectors made on the GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dataset import SequenceDataset
from ..checks import check_config, short

_BLOCK = 1 << 14
"""Items per random stream in synthetic_item_vectors. Fixed, not a parameter: the vectors are
a function of (seed, block), which is what makes them independent of the chunk size."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic catalogue and its users.

    n_items, n_users, d: catalogue size, user count, item vector dimension (SPEC §1: 128).
    branching: children per facet level; 8 × 6 × 4 = 192 leaf facets.
    level_scales: length of each level's offset; falling, so top facets separate most.
    item_noise: length of an item's own noise around its facet centre.
    boundary_fraction: share of items that mix their leaf with a sibling leaf (weight
        0.3..0.7); they can be drawn from either leaf.
    zipf_exponent: item popularity ∝ rank^-s over a random ranking.
    min_len / mean_len / max_len: sequence lengths, min + geometric, clipped at max; min 5
        matches the 5-core filtering of the Amazon data.
    p_same_leaf / p_same_parent / p_same_top: next-facet probabilities (stay in the leaf,
        move to a sibling, move within the top facet); the rest jumps to any leaf by
        popularity.
    brands_per_facet: brands available under each parent facet (for item text).
    seed: everything is drawn from numpy.random.default_rng(seed).
    """

    n_items: int = 4000
    n_users: int = 3000
    d: int = 128
    branching: tuple[int, ...] = (8, 6, 4)
    level_scales: tuple[float, ...] = (1.0, 0.6, 0.35)
    item_noise: float = 0.25
    boundary_fraction: float = 0.1
    zipf_exponent: float = 1.1
    min_len: int = 5
    mean_len: float = 9.0
    max_len: int = 50
    p_same_leaf: float = 0.45
    p_same_parent: float = 0.25
    p_same_top: float = 0.15
    brands_per_facet: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        n_leaves = math.prod(self.branching)
        checks = [  # (holds, the rule, the fields it reads)
            (len(self.branching) >= 1 and min(self.branching) >= 1, "branching entries >= 1", ("branching",)),
            (len(self.level_scales) == len(self.branching), "one level_scale per level",
             ("level_scales", "branching")),
            (self.n_items >= n_leaves, f"n_items >= {n_leaves} leaf facets", ("n_items", "branching")),
            (self.n_users >= 1 and self.d >= 1, "n_users >= 1 and d >= 1", ("n_users", "d")),
            (3 <= self.min_len <= self.mean_len <= self.max_len, "3 <= min <= mean <= max len",
             ("min_len", "mean_len", "max_len")),
            (0 <= self.boundary_fraction <= 1, "0 <= boundary_fraction <= 1", ("boundary_fraction",)),
            (min(self.p_same_leaf, self.p_same_parent, self.p_same_top) >= 0
             and self.p_same_leaf + self.p_same_parent + self.p_same_top <= 1,
             "transition probabilities >= 0 summing to at most 1", ("p_same_leaf", "p_same_parent", "p_same_top")),
            (self.brands_per_facet >= 1, "brands_per_facet >= 1", ("brands_per_facet",)),
        ]
        for ok, need, fields in checks:
            if not ok:
                got = ", ".join(f"{f}={short(getattr(self, f))}" for f in fields)
                raise ValueError(f"SyntheticConfig: expected {need}, got {got}")


def facet_centres(rng: np.random.Generator, branching, d: int, level_scales) -> np.ndarray:
    """Leaf centres [prod(branching), d]: Σ_level scale · (random unit-ish offset of the node)."""
    n_leaves = math.prod(branching)
    leaf = np.arange(n_leaves)
    centres = np.zeros((n_leaves, d))
    for level, scale in enumerate(level_scales):
        n_nodes = math.prod(branching[: level + 1])
        offsets = rng.standard_normal((n_nodes, d)) / math.sqrt(d)
        centres += scale * offsets[leaf // (n_leaves // n_nodes)]
    return centres


def make_synthetic(cfg: SyntheticConfig = SyntheticConfig()) -> SequenceDataset:
    """Catalogue, item vectors, item text and user sequences; same cfg -> identical output."""
    rng = np.random.default_rng(cfg.seed)
    b_last, n_leaves = cfg.branching[-1], math.prod(cfg.branching)
    parent_span, top_span = b_last, n_leaves // cfg.branching[0]

    # Every leaf gets at least one item, so every facet the walk can reach has something.
    extra = rng.integers(n_leaves, size=cfg.n_items - n_leaves)
    leaf = np.concatenate([np.arange(n_leaves), extra])
    rng.shuffle(leaf)
    boundary = (rng.random(cfg.n_items) < cfg.boundary_fraction) & (b_last > 1)
    step = rng.integers(1, max(b_last, 2), size=cfg.n_items)
    partner = np.where(boundary, leaf - leaf % b_last + (leaf % b_last + step) % b_last, leaf)
    mix = np.where(boundary, rng.uniform(0.3, 0.7, size=cfg.n_items), 1.0)

    centres = facet_centres(rng, cfg.branching, cfg.d, cfg.level_scales)
    vectors = _unit_rows(
        rng,
        mix[:, None] * centres[leaf] + (1 - mix[:, None]) * centres[partner],
        cfg.item_noise / math.sqrt(cfg.d),
    )

    weight = (rng.permutation(cfg.n_items) + 1.0) ** -cfg.zipf_exponent
    sample_item, leaf_cdf = _leaf_samplers(leaf, partner, boundary, weight, n_leaves)

    lengths = cfg.min_len - 1 + rng.geometric(1 / (cfg.mean_len - cfg.min_len + 1), cfg.n_users)
    lengths = np.minimum(lengths, cfg.max_len)
    # Cumulative thresholds of the facet transition: stay, sibling, same top facet, jump.
    t1 = cfg.p_same_leaf
    t2, t3 = t1 + cfg.p_same_parent, t1 + cfg.p_same_parent + cfg.p_same_top
    walk = np.empty((cfg.n_users, int(lengths.max())), dtype=np.int64)
    walk[:, 0] = np.searchsorted(leaf_cdf, rng.random(cfg.n_users), side="right")
    for t in range(1, walk.shape[1]):
        cur, u = walk[:, t - 1], rng.random(cfg.n_users)
        sibling = cur - cur % parent_span + rng.integers(parent_span, size=cfg.n_users)
        same_top = cur - cur % top_span + rng.integers(top_span, size=cfg.n_users)
        jump = np.searchsorted(leaf_cdf, rng.random(cfg.n_users), side="right")
        walk[:, t] = np.select([u < t1, u < t2, u < t3], [cur, sibling, same_top], jump)
    items = sample_item(walk, rng.random(walk.shape))
    sequences = [items[i, : lengths[i]].tolist() for i in range(cfg.n_users)]
    walks = [walk[i, : lengths[i]].tolist() for i in range(cfg.n_users)]
    _make_reachable(rng, sequences, walks, leaf, cfg.max_len)

    return SequenceDataset(
        n_items=cfg.n_items,
        sequences=[np.array(s, dtype=np.int64) for s in sequences],
        item_text=_item_text(rng, cfg, leaf, partner, boundary),
        item_attributes=_item_attributes(cfg, leaf),
        item_vectors=vectors.astype(np.float32),
        name=f"synthetic-{cfg.n_items}x{cfg.n_users}-seed{cfg.seed}",
    )


def _unit_rows(rng: np.random.Generator, centre: np.ndarray, noise: float) -> np.ndarray:
    """ℓ2-normalised centre + noise; rows that come out (near) zero are redrawn, because
    SPEC §3 treats a zero item vector as an error."""
    v = centre + noise * rng.standard_normal(centre.shape)
    norm = np.linalg.norm(v, axis=1)
    while (bad := ~(norm > 1e-6) | ~np.isfinite(norm)).any():
        redraw = rng.standard_normal((int(bad.sum()), v.shape[1]))
        v[bad] = centre[bad] + max(noise, 1e-3) * redraw
        norm = np.linalg.norm(v, axis=1)
    return v / norm[:, None]


def _leaf_samplers(leaf, partner, boundary, weight, n_leaves):
    """Item-within-leaf sampler by popularity, and the leaf CDF used for starts and jumps.

    All leaves share one sorted table whose values are `leaf + within-leaf CDF`, so one
    searchsorted of `leaf + u` draws an item for any number of (leaf, u) pairs at once.
    """
    member_leaf = np.concatenate([leaf, partner[boundary]])
    member_item = np.concatenate([np.arange(len(leaf)), np.flatnonzero(boundary)])
    member_w = weight[member_item]
    order = np.lexsort((member_item, member_leaf))
    member_leaf, member_item, member_w = member_leaf[order], member_item[order], member_w[order]
    leaf_w = np.bincount(member_leaf, weights=member_w, minlength=n_leaves)
    within = np.cumsum(member_w) - (np.cumsum(leaf_w) - leaf_w)[member_leaf]
    table = member_leaf + within / leaf_w[member_leaf]
    last = np.searchsorted(member_leaf, np.arange(n_leaves), side="right") - 1
    table[last] = np.arange(n_leaves) + 1.0  # exact segment ends: no u can fall past a leaf

    def sample_item(leaves: np.ndarray, u: np.ndarray) -> np.ndarray:
        return member_item[np.searchsorted(table, leaves + u, side="right")]

    leaf_cdf = np.cumsum(leaf_w) / leaf_w.sum()
    leaf_cdf[-1] = 1.0
    return sample_item, leaf_cdf


def _make_reachable(rng, sequences, walks, leaf, max_len) -> None:
    """Insert every never-drawn item once into a training prefix, next to an item of the same
    facet where possible, so that every item has training interactions and a trie path."""
    seen = np.zeros(len(leaf), dtype=bool)
    for s in sequences:
        seen[s[:-2]] = True
    users_by_leaf: dict[int, list[int]] = {}
    for u, w in enumerate(walks):
        for f in set(w[:-2]):
            users_by_leaf.setdefault(f, []).append(u)
    for item in np.flatnonzero(~seen):
        f = int(leaf[item])
        users = [u for u in users_by_leaf.get(f, []) if len(sequences[u]) < max_len]
        if users:
            u = users[rng.integers(len(users))]
            spots = [t for t, g in enumerate(walks[u][:-2]) if g == f]
            at = spots[rng.integers(len(spots))] + 1
        else:
            open_users = [u for u in range(len(sequences)) if len(sequences[u]) < max_len]
            if not open_users:
                raise ValueError(
                    f"SyntheticConfig: {len(sequences)} users of at most {max_len} items cannot "
                    f"hold all {len(leaf)} items in training; raise n_users or max_len"
                )
            u = open_users[rng.integers(len(open_users))]
            at = int(rng.integers(len(sequences[u]) - 1))
        sequences[u].insert(at, int(item))
        walks[u].insert(at, f)


def _item_text(rng, cfg, leaf, partner, boundary) -> list[str]:
    """"item 17; brand b3; facet 2 > 5 > 1; price 12.50": the fields of the Amazon text, so
    the content-embedding path runs unchanged on synthetic data."""
    brand = (leaf // cfg.branching[-1]) * cfg.brands_per_facet + rng.integers(
        cfg.brands_per_facet, size=cfg.n_items
    )
    top_price = rng.uniform(math.log(5), math.log(50), size=cfg.branching[0])
    top = leaf // (math.prod(cfg.branching) // cfg.branching[0])
    price = np.exp(top_price[top] + 0.4 * rng.standard_normal(cfg.n_items))
    out = []
    for i in range(cfg.n_items):
        facet = " > ".join(map(str, _path(int(leaf[i]), cfg.branching)))
        if boundary[i]:
            facet += " | " + " > ".join(map(str, _path(int(partner[i]), cfg.branching)))
        out.append(f"item {i}; brand b{brand[i]}; facet {facet}; price {price[i]:.2f}")
    return out


def _item_attributes(cfg, leaf) -> list[np.ndarray]:
    """One attribute per facet level: the global id of the item's node at that level, with
    levels stacked into one id space (0-based, like the Amazon loader's attributes)."""
    n_leaves = math.prod(cfg.branching)
    cols, base = [], 0
    for level in range(len(cfg.branching)):
        n_nodes = math.prod(cfg.branching[: level + 1])
        cols.append(base + leaf // (n_leaves // n_nodes))
        base += n_nodes
    return list(np.stack(cols, axis=1).astype(np.int64))


def _path(leaf: int, branching) -> list[int]:
    digits = []
    for b in reversed(branching):
        leaf, r = divmod(leaf, b)
        digits.append(r)
    return digits[::-1]


def synthetic_item_vectors(
    n: int,
    d: int = 128,
    seed: int = 0,
    chunk: int = 1 << 20,
    device=None,
    *,
    branching: tuple[int, ...] = (32, 32, 32),
    level_scales: tuple[float, ...] = (1.0, 0.6, 0.35),
    item_noise: float = 0.25,
    boundary_fraction: float = 0.1,
    dtype=None,
):
    """Kernel-scale item vectors [n, d] (up to 35.8M), ℓ2-normalised, as a torch tensor.

    Same facet geometry as make_synthetic (32³ = 32768 leaves by default, items uniform over
    leaves) but no sequences or text. Random draws come from one torch generator per fixed
    block of _BLOCK items seeded from (seed, block), so the result depends only on
    (n, d, seed, geometry, device type), never on `chunk`, and a smaller n gives a prefix of
    a larger one. `chunk` bounds the temporary memory beside the output; CPU and CUDA
    generators differ, so the device type is part of the seed. dtype defaults to float32.
    """
    import torch

    if n < 0 or d < 1 or chunk < 1:
        raise ValueError(
            f"synthetic_item_vectors: need n >= 0, d >= 1, chunk >= 1; got {n}, {d}, {chunk}"
        )
    if len(level_scales) != len(branching):
        raise ValueError(
            f"level_scales {level_scales} needs one entry per branching level {branching}"
        )
    device = torch.device(device if device is not None else "cpu")
    dtype = dtype if dtype is not None else torch.float32
    n_leaves, b_last = math.prod(branching), branching[-1]
    centres = facet_centres(np.random.default_rng(seed), branching, d, level_scales)
    centres = torch.from_numpy(centres).to(device=device, dtype=torch.float32)
    out = torch.empty((n, d), device=device, dtype=dtype)

    def draw(block: int):
        g = torch.Generator(device=device)
        g.manual_seed(int(np.random.SeedSequence([seed, block]).generate_state(1, np.uint64)[0]))
        kw = dict(generator=g, device=device)
        return (
            torch.randint(n_leaves, (_BLOCK,), **kw),
            torch.rand(_BLOCK, **kw) < boundary_fraction,
            torch.randint(1, max(b_last, 2), (_BLOCK,), **kw),
            0.3 + 0.4 * torch.rand(_BLOCK, **kw),
            torch.randn(_BLOCK, d, **kw),
        )

    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        first, last = start // _BLOCK, (stop - 1) // _BLOCK
        parts = [draw(b) for b in range(first, last + 1)]
        lo = start - first * _BLOCK
        leaf, boundary, step, w, noise = (
            torch.cat(p)[lo : lo + stop - start] for p in zip(*parts)
        )
        boundary &= b_last > 1
        partner = leaf - leaf % b_last + (leaf % b_last + step) % b_last
        w = torch.where(boundary, w, torch.ones_like(w))[:, None]
        v = w * centres[leaf] + (1 - w) * centres[partner] + (item_noise / math.sqrt(d)) * noise
        out[start:stop] = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(dtype)
    return out
