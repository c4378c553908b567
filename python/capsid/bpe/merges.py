"""The merge vocabulary and its invertible encode/decode (SPEC §5 step 5).

One greedy left-to-right pass over each item's SID: a pair in the vocabulary merges into its
new id and both of its tokens are then used, so the next pair considered starts after it.
Items are encoded one at a time, so a merge never crosses an item boundary; a history is the
items' encodings, each followed by EOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .vocab import EOS, NO_TOKEN


@dataclass
class MergeTable:
    """pair (a, b) of base token ids -> merged id; merged ids are base_vocab, base_vocab + 1, ..."""

    base_vocab: int
    pairs: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._id = {}
        for m, (a, b) in enumerate(self.pairs):
            a, b = int(a), int(b)
            if not (0 <= a < self.base_vocab and 0 <= b < self.base_vocab):
                raise ValueError(f"merge {m}: pair ({a}, {b}) is not two base tokens (< {self.base_vocab})")
            if (a, b) in self._id:
                raise ValueError(f"merge {m}: pair ({a}, {b}) is already merge {self._id[(a, b)] - self.base_vocab}")
            self._id[(a, b)] = self.base_vocab + m
        self.pairs = [(int(a), int(b)) for a, b in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def vocab_size(self) -> int:
        return self.base_vocab + len(self.pairs)

    def encode_item(self, tokens: Sequence[int]) -> list[int]:
        out, j, n = [], 0, len(tokens)
        while j < n:
            if j + 1 < n:
                merged = self._id.get((int(tokens[j]), int(tokens[j + 1])))
                if merged is not None:
                    out.append(merged)
                    j += 2
                    continue
            out.append(int(tokens[j]))
            j += 1
        return out

    def decode_item(self, tokens: Sequence[int]) -> list[int]:
        out = []
        for t in tokens:
            t = int(t)
            if t >= self.base_vocab:
                if t >= self.vocab_size:
                    raise ValueError(f"token {t} is outside the vocabulary (size {self.vocab_size})")
                out.extend(self.pairs[t - self.base_vocab])
            else:
                out.append(t)
        return out

    def encode_history(self, items: Iterable[Sequence[int]]) -> list[int]:
        """Concatenate each item's merged tokens followed by EOS."""
        out = []
        for sid in items:
            out.extend(self.encode_item(sid))
            out.append(EOS)
        return out

    def decode_history(self, tokens: Sequence[int]) -> list[list[int]]:
        items, cur = [], []
        for t in tokens:
            if int(t) == EOS:
                items.append(self.decode_item(cur))
                cur = []
            else:
                cur.append(int(t))
        if cur:
            raise ValueError("history does not end with EOS")
        return items

    def encode_table(self, ids: np.ndarray) -> list[list[int]]:
        """Every row of a padded SID table [N, L] (NO_TOKEN padded) as merged tokens."""
        return [self.encode_item([t for t in row if t != NO_TOKEN]) for row in np.asarray(ids)]

    def to_json(self) -> str:
        return json.dumps({"base_vocab": self.base_vocab, "pairs": self.pairs})

    @classmethod
    def from_json(cls, text: str) -> "MergeTable":
        raw = json.loads(text)
        return cls(int(raw["base_vocab"]), [tuple(p) for p in raw["pairs"]])
