"""The merge vocabulary and its invertible encode/decode (SPEC §5 step 5).

One greedy left-to-right pass over each item's SID: a pair in the vocabulary merges into its
new id and both of its tokens are then used, so the next pair considered starts after it.
Items are encoded one at a time, so a merge never crosses an item boundary; a history is the
items' encodings, each followed by EOS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .vocab import EOS, FIRST_CODE, NO_TOKEN

FORMAT_VERSION = 1
"""merges.json layout: bump when the fields change; from_json refuses other versions."""


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
        """One item's base tokens (codes in [FIRST_CODE, base_vocab)) -> merged tokens.

        Specials are refused: an EOS inside an item would split it when a history is decoded,
        and an id outside the base vocabulary has no meaning here."""
        tokens = [self._base_token(t, j) for j, t in enumerate(tokens)]
        out, j, n = [], 0, len(tokens)
        while j < n:
            if j + 1 < n:
                merged = self._id.get((tokens[j], tokens[j + 1]))
                if merged is not None:
                    out.append(merged)
                    j += 2
                    continue
            out.append(tokens[j])
            j += 1
        return out

    def _base_token(self, t, j: int) -> int:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"tokens[{j}]: expected an integer token id, got {t!r} ({type(t).__name__})")
        t = int(t)
        if not FIRST_CODE <= t < self.base_vocab:
            raise ValueError(f"tokens[{j}]: expected a code token in [{FIRST_CODE}, base_vocab={self.base_vocab}), "
                             f"got {t}")
        return t

    def decode_item(self, tokens: Sequence[int]) -> list[int]:
        out = []
        for j, t in enumerate(tokens):
            t = int(t)
            if t < 0 or t >= self.vocab_size:
                raise ValueError(f"tokens[{j}]: token {t} is outside the vocabulary [0, {self.vocab_size})")
            if t >= self.base_vocab:
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

    def fingerprint(self) -> str:
        """sha256 hex of the vocabulary (base_vocab and the ordered pairs): merged ids depend on
        both, so a generator or trie built against another table can be refused."""
        canon = json.dumps({"base_vocab": self.base_vocab, "pairs": self.pairs}, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "base_vocab": self.base_vocab, "pairs": self.pairs,
                           "fingerprint": self.fingerprint()})

    @classmethod
    def from_json(cls, text: str, *, expect_fingerprint: str | None = None) -> "MergeTable":
        """Parse ``to_json``'s output. Checks the format version (files without one predate it
        and are read as version 1), the field types, the stored fingerprint against the pairs
        and, with ``expect_fingerprint``, that this is the vocabulary the caller expects."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"merges JSON: invalid JSON at line {exc.lineno} ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"merges JSON: expected an object, got {type(raw).__name__}")
        version = raw.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"merges JSON: format_version: expected {FORMAT_VERSION}, got {version!r}; "
                             "rebuild the merges with this version")
        base = raw.get("base_vocab")
        if not isinstance(base, int) or isinstance(base, bool) or base <= FIRST_CODE:
            raise ValueError(f"merges JSON: base_vocab: expected an integer > {FIRST_CODE}, got {base!r}")
        pairs = raw.get("pairs")
        if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p) for p in pairs):
            raise ValueError("merges JSON: pairs: expected a list of [a, b] integer pairs")
        table = cls(base, [tuple(p) for p in pairs])
        stored = raw.get("fingerprint")
        if stored is not None and stored != table.fingerprint():
            raise ValueError(f"merges JSON: fingerprint: stored {str(stored)[:16]}..., the pairs give "
                             f"{table.fingerprint()[:16]}...; the file is corrupt or was edited")
        if expect_fingerprint is not None and expect_fingerprint != table.fingerprint():
            raise ValueError(f"merges JSON: expected the vocabulary {expect_fingerprint[:16]}..., got "
                             f"{table.fingerprint()[:16]}...")
        return table
