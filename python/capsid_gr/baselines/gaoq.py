"""GAOQ (ReSID, "Rethinking Generative Recommender Tokenizer", 2026): globally aligned
orthogonal quantisation, a hierarchical balanced k-means whose code indices mean directions.

Level l splits every node of level l-1 (the root holds all items) into min(b_l, n) children
by balanced k-means: cluster sizes differ by at most one. A child is described by its
centroid *centred on its parent*, c_child - c_parent, i.e. the direction in which the child
leaves its parent. Level l then has one globally shared set of g_l >= b_l unit anchors, built
from all of that level's child directions and made (approximately) orthonormal; under each
parent the children are matched to anchors by the Hungarian algorithm on cosine similarity
(injective), and a child's code is its anchor's index. So code 5 at level 2 means "anchor 5's
direction" whichever level-1 prefix it follows, which is the property ReSID argues lowers the
prefix-conditional uncertainty of the generator.

Assignment solvers (balanced sizes are guaranteed by both):
- n <= `exact_limit`: exact, SciPy's `linear_sum_assignment` on a capacity-expanded cost
  matrix (each cluster has q mandatory slots and one optional slot carrying a penalty larger
  than any possible saving, so exactly n - kq clusters get q + 1 items).
- larger nodes: proposal rounds in which every unplaced item asks its cheapest cluster with
  room and each cluster keeps its cheapest askers (n // k places each), the n % k leftovers
  to distinct clusters by the Hungarian algorithm (see `_greedy_balanced`),
  then size-preserving pairwise swaps between clusters while any swap lowers the cost.

A node with one item ends that item's SID (the rest of its row is -1, as in CAPSID's
variable-length tables); it is already unique. Items still sharing a leaf after the last
level get a disambiguation column as in the RQ-KMeans baseline, only when there is such a leaf.

numpy and SciPy (`linear_sum_assignment`); k-means++ seeding is written out here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from .rqkmeans import disambiguation_column
from ..checks import check_config


@dataclass(frozen=True)
class GAOQConfig:
    """GAOQ settings.

    branching: b_l, children per node at each level (the number of levels is its length).
        Default 32 x 3: 32^3 = 32768 leaves, more than our catalogues (synthetic 4k, Beauty
        12k items), so balanced splitting alone makes every SID unique with no disambiguation
        token. Our choice, not the paper's: we could not confirm ReSID's per-dataset b_l.
    anchors: g_l >= b_l anchors per level; None means g_l = b_l (the smallest the method
        allows; every anchor is then used under every full parent).
    max_iter: balanced Lloyd iterations per node (assignment <-> centroid update); stops
        earlier when the assignment no longer changes. 25 is scikit-learn's/FAISS's usual
        order of magnitude; on our data assignments settle in < 15.
    exact_limit: nodes with at most this many items use the exact Hungarian balanced
        assignment (O(n^3), ~0.1 s at 1024); larger nodes the proposal rounds + swaps.
    swap_rounds: rounds of pairwise swaps after each proposal fill (large nodes only).
    anchor_iter: spherical k-means iterations that place a level's anchors on its child
        directions before they are orthonormalised.
    disambiguate: append the RQ-KMeans disambiguation column when some leaf holds > 1 item.
    seed: seeds k-means++ per node (seed, level, node) and the anchor initialisation.
    """

    branching: tuple[int, ...] = (32, 32, 32)
    anchors: Optional[tuple[int, ...]] = None
    max_iter: int = 25
    exact_limit: int = 1024
    swap_rounds: int = 2
    anchor_iter: int = 20
    disambiguate: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)
        if len(self.branching) < 1 or min(self.branching) < 1:
            raise ValueError(f"branching: expected one int >= 1 per level, got {self.branching}")
        g = self.anchors_per_level
        if len(g) != len(self.branching) or any(gl < bl for gl, bl in zip(g, self.branching)):
            raise ValueError(f"anchors: expected one g_l >= b_l per level (b = {self.branching}), got {self.anchors}")
        if self.max_iter < 1 or self.exact_limit < 1:
            raise ValueError(f"max_iter and exact_limit must be >= 1, got {self.max_iter}, {self.exact_limit}")

    @property
    def levels(self) -> int:
        return len(self.branching)

    @property
    def anchors_per_level(self) -> tuple[int, ...]:
        return tuple(self.anchors) if self.anchors is not None else tuple(self.branching)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class GAOQOutput(NamedTuple):
    codes: np.ndarray  # [N, levels] anchor indices, -1 after a SID that ended at a one-item node
    sids: np.ndarray  # codes, plus the disambiguation column when some leaf holds > 1 item
    anchors: list  # per level [g_l, d] unit anchors
    recon: np.ndarray  # [N, d] centroid of the deepest node holding the item
    capsules: tuple  # codes per position (g_l ...), the disambiguation position last
    sizes: list  # per level, the sizes of every node's children (balance diagnostics)


def fit_gaoq(x: np.ndarray, cfg: GAOQConfig = GAOQConfig()) -> GAOQOutput:
    """Fit GAOQ to item vectors x [N, d] (ell2-normalised here) and return every item's SID."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x: expected [N, d] with N >= 1, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        bad = int(np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))[0])
        raise ValueError(f"x: item {bad} is zero or non-finite; GAOQ needs a direction per item")
    x = x / norms
    n, d = x.shape
    codes = np.full((n, cfg.levels), -1, dtype=np.int64)
    recon = x.copy()
    # A node: (item indices, its centroid). Nodes with one item have left the tree.
    nodes = [(np.arange(n), x.mean(axis=0))]
    anchors_out, sizes_out = [], []
    for level, (b, g) in enumerate(zip(cfg.branching, cfg.anchors_per_level)):
        children = []  # per node: list of (member indices, centroid)
        for node_id, (members, centre) in enumerate(nodes):
            rng = np.random.default_rng([cfg.seed, level, node_id])
            labels, cents = balanced_kmeans(x[members], min(b, len(members)), cfg, rng)
            children.append([(members[labels == j], cents[j]) for j in range(cents.shape[0])])
        directions = [np.stack([c - centre for _, c in kids]) for (_, centre), kids in zip(nodes, children)]
        anchors = level_anchors(np.concatenate(directions), g, cfg.anchor_iter,
                                np.random.default_rng([cfg.seed, level, 1 << 20]))
        anchors_out.append(anchors)
        sizes_out.append([len(m) for kids in children for m, _ in kids])
        nodes = []
        for kids, dirs in zip(children, directions):
            slot = match_anchors(dirs, anchors)
            for (members, cent), code in zip(kids, slot):
                codes[members, level] = code
                recon[members] = cent
                if len(members) > 1:
                    nodes.append((members, cent))
        if not nodes:
            break
    capsules = cfg.anchors_per_level
    sids = codes
    if cfg.disambiguate and nodes:  # some leaf after the last level holds > 1 item
        extra = disambiguation_column(codes)
        sids = np.concatenate([codes, extra[:, None]], axis=1)
        capsules = capsules + (int(extra.max()) + 1,)
    return GAOQOutput(codes, sids, anchors_out, recon, capsules, sizes_out)


# --------------------------------------------------------------------------- balanced k-means

def balanced_kmeans(x: np.ndarray, k: int, cfg: GAOQConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels [n] in 0..k-1 with cluster sizes floor(n/k) or ceil(n/k), and centroids [k, d].

    k-means++ seeding, then Lloyd iterations whose assignment step is balanced. With k = n
    every item is its own cluster.
    """
    n = x.shape[0]
    if k >= n:
        return np.arange(n), x.copy()
    cents = kmeans_plusplus(x, k, rng)
    labels = None
    for _ in range(cfg.max_iter):
        cost = squared_distances(x, cents)
        new = balanced_assignment(cost, exact=n <= cfg.exact_limit, swap_rounds=cfg.swap_rounds)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        cents = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
    return labels, cents


def kmeans_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre is drawn with
    probability proportional to the squared distance to the nearest centre so far."""
    n = x.shape[0]
    picked = [int(rng.integers(n))]
    nearest = squared_distances(x, x[picked])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        i = int(rng.choice(n, p=nearest / total)) if total > 0 else int(rng.integers(n))
        picked.append(i)
        nearest = np.minimum(nearest, squared_distances(x, x[i:i + 1])[:, 0])
    return x[picked].copy()


def squared_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def balanced_assignment(cost: np.ndarray, *, exact: bool = True, swap_rounds: int = 2) -> np.ndarray:
    """Assign n items to k clusters (cost [n, k]) with sizes floor(n/k) or ceil(n/k)."""
    n, k = cost.shape
    if exact:
        return _hungarian_balanced(cost)
    labels = _greedy_balanced(cost)
    for _ in range(swap_rounds):
        if not _swap_pass(cost, labels):
            break
    return labels


def _hungarian_balanced(cost: np.ndarray) -> np.ndarray:
    """Exact minimum-cost balanced assignment via linear_sum_assignment.

    Each cluster gets q = n // k mandatory columns and, if r = n % k > 0, one optional column
    whose cost carries a penalty M > the largest possible saving; an optimum then fills every
    mandatory slot and exactly r optional ones, so sizes are q or q + 1.
    """
    from scipy.optimize import linear_sum_assignment

    n, k = cost.shape
    q, r = divmod(n, k)
    cols = [cost] * q
    if r:
        penalty = n * (float(cost.max()) - float(cost.min())) + 1.0
        cols.append(cost + penalty)
    expanded = np.concatenate(cols, axis=1)  # column c -> cluster c % k
    rows, picked = linear_sum_assignment(expanded)
    labels = np.empty(n, dtype=np.int64)
    labels[rows] = picked % k
    return labels


def _greedy_balanced(cost: np.ndarray) -> np.ndarray:
    """Balanced assignment for large nodes: proposal rounds, then the r = n % k leftovers.

    Phase 1 gives every cluster q = n // k places. Each round, every unplaced item proposes
    to its cheapest cluster that still has room and each cluster keeps its cheapest proposers
    up to its room; a round places at least one item, so after at most kq rounds all kq places
    are filled. Phase 2 places the r leftovers in r distinct clusters by the Hungarian
    algorithm (r < k). Sizes are then exactly q or q + 1.
    """
    from scipy.optimize import linear_sum_assignment

    n, k = cost.shape
    q = n // k
    labels = np.full(n, -1, dtype=np.int64)
    room = np.full(k, q, dtype=np.int64)
    while room.any():
        free = np.flatnonzero(labels < 0)
        masked = np.where(room[None, :] > 0, cost[free], np.inf)
        choice = np.argmin(masked, axis=1)
        best = masked[np.arange(len(free)), choice]
        order = np.lexsort((best, choice))  # by cluster, then cost
        chosen, ranked = choice[order], free[order]
        starts = np.searchsorted(chosen, np.arange(k))
        rank = np.arange(len(order)) - starts[chosen]
        keep = rank < room[chosen]
        labels[ranked[keep]] = chosen[keep]
        room -= np.bincount(chosen[keep], minlength=k)
    left = np.flatnonzero(labels < 0)
    if len(left):
        rows, cols = linear_sum_assignment(cost[left])
        labels[left[rows]] = cols
    return labels


def _swap_pass(cost: np.ndarray, labels: np.ndarray) -> bool:
    """Swap items between every pair of clusters while a swap lowers the total cost; sizes
    are unchanged. Returns whether anything moved."""
    k = cost.shape[1]
    moved = False
    current = cost[np.arange(len(labels)), labels]
    # A saving swap needs an item of a that prefers b or one of b that prefers a.
    prefers = _one_hot(labels, k).T @ (cost < current[:, None] - 1e-12).astype(np.float64)
    candidates = np.argwhere(np.triu(prefers + prefers.T, 1) > 0)
    for a, b in candidates:
        ia, ib = np.flatnonzero(labels == a), np.flatnonzero(labels == b)
        if not len(ia) or not len(ib):
            continue
        gain_a = cost[ia, b] - current[ia]  # cost change of moving a-items to b
        gain_b = cost[ib, a] - current[ib]
        sa, sb = np.argsort(gain_a, kind="stable"), np.argsort(gain_b, kind="stable")
        m = min(len(sa), len(sb))
        total = gain_a[sa[:m]] + gain_b[sb[:m]]
        # Both gain lists ascend, so does their pairwise sum: swap the negative prefix.
        t = int(np.searchsorted(total, -1e-12, side="left"))
        if t == 0:
            continue
        move_a, move_b = ia[sa[:t]], ib[sb[:t]]
        labels[move_a], labels[move_b] = b, a
        current[move_a], current[move_b] = cost[move_a, b], cost[move_b, a]
        moved = True
    return moved


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(labels), k))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# --------------------------------------------------------------------------- anchors

def level_anchors(directions: np.ndarray, g: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """g unit anchors [g, d], shared by every parent of one level.

    Spherical k-means places g anchors on the level's child directions (normalised), then
    the polar factor U V^T of the anchor matrix replaces them by the nearest matrix with
    orthonormal rows (g <= d), or with orthonormal columns (g > d: a tight frame, rows
    renormalised, which is as close to orthonormal as g > d unit vectors get). Directions
    that are (near) zero, e.g. identical items, carry no direction and are skipped; missing
    anchors are filled with random directions.
    """
    d = directions.shape[1]
    norms = np.linalg.norm(directions, axis=1)
    unit = directions[norms > 1e-12] / norms[norms > 1e-12, None]
    if len(unit) >= g:
        a = unit[rng.choice(len(unit), size=g, replace=False)]
        for _ in range(iters):
            nearest = np.argmax(unit @ a.T, axis=1)
            sums = _one_hot(nearest, g).T @ unit
            ns = np.linalg.norm(sums, axis=1)
            keep = ns > 1e-12  # an anchor no direction chose stays where it is
            a[keep] = sums[keep] / ns[keep, None]
    else:
        a = np.concatenate([unit, rng.standard_normal((g - len(unit), d))])
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    polar = u @ vt
    return polar / np.linalg.norm(polar, axis=1, keepdims=True)


def match_anchors(directions: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Injective child -> anchor map maximising the summed cosine (Hungarian on -cos)."""
    from scipy.optimize import linear_sum_assignment

    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    unit = np.divide(directions, norms, out=np.zeros_like(directions), where=norms > 1e-12)
    rows, cols = linear_sum_assignment(-(unit @ anchors.T))
    out = np.empty(len(directions), dtype=np.int64)
    out[rows] = cols
    return out
