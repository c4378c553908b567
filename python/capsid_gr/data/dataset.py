"""In-memory sequential-recommendation data and the evaluation protocol of SPEC §8.

Imports numpy only: every later stage (item vectors, tokenizers, generator, metrics) reads
this file, and none of them should pay for torch just to load sequences.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

PAD_ITEM = -1
"""Fills padded history rows; -1 because item 0 is a real item (ids are 0-based)."""


class DataError(ValueError):
    """Input data that breaks the format or the protocol; the message says where and why."""


@dataclass(frozen=True)
class Queries:
    """One (history, target) pair per user, row i belonging to user i.

    Histories are padded into one array rather than kept as a list so that batching is a
    slice: row i holds the user's most recent items in chronological order in
    `history[i, :length[i]]`, followed by PAD_ITEM.
    """

    history: np.ndarray  # [n_users, H] int64
    length: np.ndarray  # [n_users] int64
    target: np.ndarray  # [n_users] int64

    def histories(self) -> list[np.ndarray]:
        return [row[:n] for row, n in zip(self.history, self.length)]


@dataclass(frozen=True)
class Split:
    """Leave-one-out split: training prefixes plus validation and test queries.

    Training prefixes are not truncated (training may window them as it likes); only the
    query histories are cut to the `max_history` most recent items, as SPEC §8 requires.
    """

    train: list[np.ndarray]
    valid: Queries
    test: Queries
    max_history: int

    @property
    def n_train_interactions(self) -> int:
        return int(sum(len(s) for s in self.train))


@dataclass(frozen=True)
class Tiers:
    """Boolean masks over items [n_items]; head, torso and tail partition the catalogue."""

    head: np.ndarray
    torso: np.ndarray
    tail: np.ndarray
    cold: np.ndarray


def popularity_tiers(
    counts: np.ndarray,
    head_fraction: float = 0.2,
    tail_fraction: float = 0.5,
    cold_below: int = 5,
) -> Tiers:
    """Split items into popularity tiers by training interaction counts (SPEC §8).

    Tier sizes are counted in items, not interactions: head = the `floor(head_fraction·N)`
    most popular items, tail = the `floor(tail_fraction·N)` least popular, torso = the rest.
    Equal counts are ordered by item id (a lower id counts as more popular), so tiers never
    depend on sort stability. cold = items with fewer than `cold_below` training interactions,
    which may overlap any tier.
    """
    counts = np.asarray(counts)
    n = counts.shape[0]
    if not (head_fraction >= 0 and tail_fraction >= 0 and head_fraction + tail_fraction <= 1):
        raise ValueError(
            f"tier fractions head={head_fraction}, tail={tail_fraction} must be >= 0 and sum "
            "to at most 1"
        )
    order = np.lexsort((np.arange(n), -counts.astype(np.int64)))  # most popular first
    n_head, n_tail = int(head_fraction * n), int(tail_fraction * n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    head = rank < n_head
    tail = rank >= n - n_tail
    return Tiers(head=head, torso=~head & ~tail, tail=tail, cold=counts < cold_below)


@dataclass
class SequenceDataset:
    """Chronological item sequences per user plus optional item side information.

    Items are 0-based ids 0..n_items-1 everywhere inside the package; loaders convert.
    `item_text` feeds the content embedding ("title; brand; categories; price"),
    `item_attributes` holds per-item attribute ids, `item_vectors` [n_items, d] float32 is
    set when the data comes with its own vectors (the synthetic generator).
    """

    n_items: int
    sequences: list[np.ndarray]
    item_text: list[str] | None = None
    item_attributes: list[np.ndarray] | None = None
    item_vectors: np.ndarray | None = None
    name: str = "dataset"
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)
    """(line, reason) of each input line a loader skipped (`load_amazon(skip_bad_lines=True)`);
    empty when every line was read. Not part of the fingerprint: only the kept data is."""

    def __post_init__(self) -> None:
        self.sequences = [np.asarray(s, dtype=np.int64).reshape(-1) for s in self.sequences]
        if self.n_items < 1:
            raise DataError(f"{self.name}: n_items={self.n_items}, need at least one item")
        if self.sequences:
            flat = np.concatenate(self.sequences)
            bad = (flat < 0) | (flat >= self.n_items)
            if bad.any():
                at = int(np.flatnonzero(bad)[0])
                user = int(np.searchsorted(np.cumsum(self.lengths()), at, side="right"))
                raise DataError(
                    f"{self.name}: user {user} has item id {int(flat[at])}, outside "
                    f"0..{self.n_items - 1}"
                )
        for attr in ("item_text", "item_attributes", "item_vectors"):
            value = getattr(self, attr)
            if value is not None and len(value) != self.n_items:
                raise DataError(
                    f"{self.name}: {attr} has {len(value)} rows for {self.n_items} items"
                )

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return int(self.lengths().sum())

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.sequences), dtype=np.int64, count=self.n_users)

    def _require_leave_one_out(self) -> None:
        short = np.flatnonzero(self.lengths() < 3)
        if short.size:
            u = int(short[0])
            raise DataError(
                f"{self.name}: user {u} (0-based) has {len(self.sequences[u])} items; "
                f"leave-one-out needs at least 3 (train, validation, test) "
                f"({short.size} such users); filter them out before splitting"
            )

    def split(self, max_history: int = 50) -> Split:
        """Leave-one-out (SPEC §8): last item = test target, second-to-last = validation.

        The test history includes the validation target, as in S3-Rec and P5: at test time
        the validation interaction has already happened.
        """
        if max_history < 1:
            raise ValueError(f"max_history={max_history}, need at least 1")
        self._require_leave_one_out()
        train = [s[:-2] for s in self.sequences]
        seqs = self.sequences
        valid = _queries([s[:-2] for s in seqs], [s[-2] for s in seqs], max_history)
        test = _queries([s[:-1] for s in seqs], [s[-1] for s in seqs], max_history)
        return Split(train=train, valid=valid, test=test, max_history=max_history)

    def popularity(self) -> np.ndarray:
        """Training interaction counts per item [n_items] int64 (validation/test excluded,
        so popularity never leaks the targets)."""
        self._require_leave_one_out()
        train = [s[:-2] for s in self.sequences]
        flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        return np.bincount(flat, minlength=self.n_items).astype(np.int64)

    def tiers(
        self, head_fraction: float = 0.2, tail_fraction: float = 0.5, cold_below: int = 5
    ) -> Tiers:
        return popularity_tiers(self.popularity(), head_fraction, tail_fraction, cold_below)

    def fingerprint(self) -> str:
        """sha256 hex of the content, for on-disk caches keyed by data (SPEC §10).

        `name` is left out on purpose: two datasets with the same content share cached item
        vectors. Every field is written with a tag, its length and a fixed byte order, so
        the hash is stable across runs and machines and no two layouts collide.
        """
        h = hashlib.sha256()

        def put(tag: str, payload: bytes) -> None:
            h.update(tag.encode() + len(payload).to_bytes(8, "little") + payload)

        put("n_items", self.n_items.to_bytes(8, "little"))
        put("lengths", self.lengths().astype("<i8").tobytes())
        put("items", b"".join(s.astype("<i8").tobytes() for s in self.sequences))
        if self.item_text is not None:
            encoded = [t.encode() for t in self.item_text]
            put("text", b"".join(len(b).to_bytes(8, "little") + b for b in encoded))
        if self.item_attributes is not None:
            attrs = [np.asarray(a, dtype="<i8") for a in self.item_attributes]
            put("attr_len", np.array([len(a) for a in attrs], dtype="<i8").tobytes())
            put("attrs", b"".join(a.tobytes() for a in attrs))
        if self.item_vectors is not None:
            v = np.ascontiguousarray(self.item_vectors, dtype="<f4")
            put("vec_shape", np.array(v.shape, dtype="<i8").tobytes())
            put("vectors", v.tobytes())
        return h.hexdigest()


def _queries(histories: list[np.ndarray], targets: list[np.int64], max_history: int) -> Queries:
    cut = [h[-max_history:] for h in histories]
    length = np.array([len(h) for h in cut], dtype=np.int64)
    width = int(length.max()) if length.size else 0
    history = np.full((len(cut), width), PAD_ITEM, dtype=np.int64)
    for row, h in zip(history, cut):
        row[: len(h)] = h
    return Queries(history=history, length=length, target=np.array(targets, dtype=np.int64))
