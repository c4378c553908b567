"""The item trie: level-order CSR of sorted children, EOS as a node flag, leaves -> item lists.

Layout (SPEC §6-7). Node 0 is the root; nodes are numbered level by level, and inside a level
in lexicographic order of their prefixes, so the children of a node are contiguous, sorted by
token, and node ``m``'s parent edge carries ``token[m]``. Children of node ``n`` are the nodes
``child_start[n] .. child_start[n+1]-1``; nodes of the deepest level have no children and no
``child_start`` entry (that is most of the nodes, so the row array stops before them).

EOS is not stored as a node: a node that ends an item has its bit set in ``end_bits``. Taking
EOS there finishes the beam, which stays on that node; the node's rank among end nodes
(``end_rank`` per 32-bit word plus a popcount) is its leaf id, and ``leaf_start`` /
``items`` list the items with that exact SID, most popular first, then by id.

Bytes per item at 35M items with 4-token SIDs: tokens int16 (2 per node), ``child_start``
int32 for the upper levels only, 2 bits per node for the end flags, 4 for ``leaf_start`` and
4 for the item id: about 12-13 bytes per item (bench/decode.py reports the measured value).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

PAD, BOS, EOS = 0, 1, 2
FIRST_CODE = 3
FORMAT_VERSION = 1

PathsLike = Union[Tensor, Sequence[Sequence[int]]]


class TrieError(ValueError):
    """The item paths cannot form a trie; the message names the item and the fix."""


@dataclass
class Trie:
    """Immutable index; build with :func:`build_trie`, move with :meth:`to`."""

    child_start: Tensor   # int32 [num_inner + 1]
    token: Tensor         # int16 (vocab <= 32767) or int32 [num_nodes]; token[0] = PAD (root)
    end_bits: Tensor      # int32 [ceil(num_nodes / 32)], bit n % 32 of word n // 32: node n ends an item
    end_rank: Tensor      # int32 [ceil(num_nodes / 32)], end nodes before word w
    leaf_start: Tensor    # int32 [num_leaves + 1]
    items: Tensor         # int32 or int64 [num_items], grouped by leaf, popularity desc then id asc
    vocab_size: int
    max_len: int          # longest SID in tokens, EOS excluded; a search takes max_len + 1 steps
    max_fanout: int       # most children of one node, EOS counted

    @property
    def num_nodes(self) -> int:
        return self.token.numel()

    @property
    def num_inner(self) -> int:
        return self.child_start.numel() - 1

    @property
    def num_leaves(self) -> int:
        return self.leaf_start.numel() - 1

    @property
    def num_items(self) -> int:
        return self.items.numel()

    @property
    def device(self) -> torch.device:
        return self.token.device

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in _TENSORS}

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, "vocab_size": self.vocab_size, "max_len": self.max_len,
                "max_fanout": self.max_fanout}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "Trie":
        return Trie(**{k: v.to(device) for k, v in self.tensors().items()}, **_meta_fields(self.meta()))

    # ------------------------------------------------------------------ lookups (vectorised)

    def is_end(self, node: Tensor) -> Tensor:
        """Whether each node (>= 0) ends an item."""
        n = node.long()
        return ((self.end_bits.long()[n >> 5] >> (n & 31)) & 1).bool()

    def leaf_of(self, node: Tensor) -> Tensor:
        """Leaf id of each end node (garbage for other nodes)."""
        n = node.long()
        word = self.end_bits.long()[n >> 5] & 0xFFFFFFFF
        below = word & ((1 << (n & 31)) - 1)
        return self.end_rank.long()[n >> 5] + _popcount32(below)

    def children(self, node: int) -> tuple[list[int], list[int]]:
        """(tokens, child nodes) of one node, EOS first when the node ends an item (host, for tests)."""
        toks, kids = [], []
        if bool(self.is_end(torch.tensor([node], device=self.device))[0]):
            toks.append(EOS)
            kids.append(node)
        if node < self.num_inner:
            lo, hi = int(self.child_start[node]), int(self.child_start[node + 1])
            toks += [int(t) for t in self.token[lo:hi].tolist()]
            kids += list(range(lo, hi))
        return toks, kids

    def leaf_items(self, leaf: int) -> list[int]:
        lo, hi = int(self.leaf_start[leaf]), int(self.leaf_start[leaf + 1])
        return [int(i) for i in self.items[lo:hi].tolist()]

    # ------------------------------------------------------------------ persistence

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file of plain tensors and JSON metadata, written atomically (temp file + os.replace)."""
        path = os.fspath(path)
        payload = {"meta_json": json.dumps(self.meta()), **{k: v.cpu() for k, v in self.tensors().items()}}
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".trie-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None) -> "Trie":
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        meta = json.loads(payload.pop("meta_json"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise TrieError(f"{path}: trie format {meta.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
        missing = [k for k in _TENSORS if k not in payload]
        if missing:
            raise TrieError(f"{path}: missing tensors {missing}; the file is not a saved Trie")
        trie = cls(**{k: payload[k] for k in _TENSORS}, **_meta_fields(meta))
        validate_trie(trie)
        return trie if device is None else trie.to(device)


_TENSORS = ("child_start", "token", "end_bits", "end_rank", "leaf_start", "items")


def _meta_fields(meta: dict) -> dict:
    return {"vocab_size": int(meta["vocab_size"]), "max_len": int(meta["max_len"]),
            "max_fanout": int(meta["max_fanout"])}


def _popcount32(x: Tensor) -> Tensor:
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) & 0xFFFFFFFF) >> 24


def _to_int32_bits(words: Tensor) -> Tensor:
    """uint32 values held in int64 -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def paths_to_tensor(paths: Sequence[Sequence[int]]) -> Tensor:
    """Python token lists (each ending with EOS) -> a PAD-filled int64 matrix."""
    width = max((len(p) for p in paths), default=1)
    out = torch.zeros(len(paths), max(width, 1), dtype=torch.int64)
    for i, p in enumerate(paths):
        if len(p):
            out[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.int64)
    return out


def _check_paths(paths: Tensor, vocab_size: int) -> Tensor:
    """Validate [N, W] rows `codes..., EOS, PAD...`; return the SID lengths (EOS excluded)."""
    n, w = paths.shape
    is_eos = paths == EOS
    has_eos = is_eos.any(dim=1)
    if not bool(has_eos.all()):
        i = int((~has_eos).nonzero()[0, 0])
        raise TrieError(f"paths: item row {i} has no EOS ({EOS}); write each item as its tokens followed by EOS")
    lengths = is_eos.int().argmax(dim=1)
    if bool((lengths == 0).any()):
        i = int((lengths == 0).nonzero()[0, 0])
        raise TrieError(f"paths: item row {i} is empty (EOS first); every item needs at least one code token")
    col = torch.arange(w, device=paths.device)
    inside = col[None, :] < lengths[:, None]
    after = col[None, :] > lengths[:, None]
    bad_code = inside & ((paths < FIRST_CODE) | (paths >= vocab_size))
    if bool(bad_code.any()):
        i, j = (int(v) for v in bad_code.nonzero()[0])
        raise TrieError(f"paths: item row {i} position {j} holds token {int(paths[i, j])}; SID tokens must lie in "
                        f"[{FIRST_CODE}, vocab_size={vocab_size}) (PAD/BOS/EOS are reserved)")
    bad_tail = after & (paths != PAD)
    if bool(bad_tail.any()):
        i, j = (int(v) for v in bad_tail.nonzero()[0])
        raise TrieError(f"paths: item row {i} has token {int(paths[i, j])} at position {j} after its EOS; "
                        f"only PAD ({PAD}) may follow EOS")
    return lengths


def build_trie(paths: PathsLike, vocab_size: int, *, item_ids: Optional[Tensor] = None,
               popularity: Optional[Tensor] = None, device=None) -> Trie:
    """Build the trie of ``paths`` (row i: item i's tokens, then EOS, then PAD), vectorised.

    ``item_ids`` (default ``arange(N)``) must be distinct and >= 0; items with the same SID
    (collisions) share a leaf and are listed by ``popularity`` (higher first), then by id.
    Runs on ``device`` (default: where ``paths`` lives); errors name the offending row.
    """
    if not isinstance(paths, Tensor):
        paths = paths_to_tensor(paths)
    if paths.dim() != 2 or paths.shape[0] == 0:
        raise TrieError(f"paths: expected a non-empty [N, L] matrix, got shape {tuple(paths.shape)}")
    if paths.dtype.is_floating_point or paths.dtype == torch.bool:
        raise TrieError(f"paths: expected an integer tensor, got {paths.dtype}")
    if not FIRST_CODE < vocab_size < 2**31:
        raise TrieError(f"vocab_size: expected {FIRST_CODE} < vocab_size < 2**31, got {vocab_size}")
    device = torch.device(device) if device is not None else paths.device
    paths = paths.to(device=device, dtype=torch.int64)
    n = paths.shape[0]
    lengths = _check_paths(paths, vocab_size)
    item_ids = torch.arange(n, device=device) if item_ids is None else item_ids.to(device=device, dtype=torch.int64)
    if item_ids.shape != (n,):
        raise TrieError(f"item_ids: expected shape ({n},), got {tuple(item_ids.shape)}")
    if n and int(item_ids.min()) < 0:
        raise TrieError("item_ids: ids must be >= 0")
    sorted_ids = item_ids.sort().values
    if n > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        dup = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
        raise TrieError(f"item_ids: id {dup} appears more than once; give each item one path")
    popularity = (torch.zeros(n, device=device) if popularity is None
                  else popularity.to(device=device, dtype=torch.float64))
    if popularity.shape != (n,) or not bool(torch.isfinite(popularity).all()):
        raise TrieError(f"popularity: expected {n} finite values")

    max_len = int(lengths.max())
    codes = paths[:, :max_len].clone()
    codes[torch.arange(max_len, device=device)[None, :] >= lengths[:, None]] = PAD
    # Lexicographic order of the code rows (PAD < codes, so a prefix sorts before its extensions).
    order = torch.arange(n, device=device)
    for col in range(max_len - 1, -1, -1):
        order = order[torch.sort(codes[order, col], stable=True).indices]
    s = codes[order]
    slen = lengths[order]
    if n > 1:
        diff = s[1:] != s[:-1]
        first_diff = torch.where(diff.any(dim=1), diff.int().argmax(dim=1), torch.full_like(slen[1:], max_len))
        first_diff = torch.cat([torch.zeros(1, dtype=first_diff.dtype, device=device), first_diff])
    else:
        first_diff = torch.zeros(1, dtype=torch.int64, device=device)

    # Node ids per level: a row opens a new depth-d node when it is long enough and differs
    # from the previous row within its first d tokens.
    node_of = torch.zeros(n, max_len + 1, dtype=torch.int64, device=device)  # [:, 0] = root
    level_tok, level_parent = [], []
    offset = 1
    for d in range(1, max_len + 1):
        new = (slen >= d) & (first_diff < d)
        ids = torch.cumsum(new.long(), 0) - 1 + offset
        node_of[:, d] = torch.where(slen >= d, ids, -1)
        level_tok.append(s[new, d - 1])
        level_parent.append(node_of[new, d - 1])
        offset += int(new.sum())
    num_nodes = offset
    deepest_first = num_nodes - level_tok[-1].numel()
    tok_all = torch.cat([torch.zeros(1, dtype=torch.int64, device=device)] + level_tok)
    parent_all = torch.cat(level_parent)
    counts = torch.bincount(parent_all, minlength=num_nodes)
    child_start = torch.cat([torch.ones(1, dtype=torch.int64, device=device), 1 + torch.cumsum(counts, 0)])
    child_start = child_start[: deepest_first + 1]
    max_children = int(counts.max())

    end_node = node_of.gather(1, slen[:, None]).squeeze(1)      # per sorted row
    is_end = torch.zeros(num_nodes, dtype=torch.bool, device=device)
    is_end[end_node] = True
    max_fanout = max(max_children, int((counts + is_end.long()).max()))
    words = (num_nodes + 31) // 32
    flags = torch.zeros(words * 32, dtype=torch.int64, device=device)
    flags[:num_nodes] = is_end.long()
    flags = flags.view(words, 32)
    end_bits = (flags << torch.arange(32, device=device)).sum(dim=1)
    per_word = flags.sum(dim=1)
    end_rank = torch.cumsum(per_word, 0) - per_word
    leaf_rank = torch.cumsum(is_end.long(), 0) - 1
    num_leaves = int(is_end.sum())
    leaf = leaf_rank[end_node]                                   # per sorted row

    ids = item_ids[order]
    pop = popularity[order]
    # Items by leaf, then popularity (desc), then id (asc): stable sorts, least significant first.
    perm = torch.sort(ids, stable=True).indices
    perm = perm[torch.sort(-pop[perm], stable=True).indices]
    perm = perm[torch.sort(leaf[perm], stable=True).indices]
    items_sorted = ids[perm]
    leaf_counts = torch.bincount(leaf, minlength=num_leaves)
    leaf_start = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(leaf_counts, 0)])

    tok_dtype = torch.int16 if vocab_size <= 2**15 - 1 else torch.int32
    item_dtype = torch.int32 if int(item_ids.max()) < 2**31 else torch.int64
    if num_nodes >= 2**31 or n >= 2**31:
        raise TrieError(f"the trie has {num_nodes} nodes; int32 node ids allow fewer than 2**31")
    return Trie(
        child_start=child_start.to(torch.int32), token=tok_all.to(tok_dtype), end_bits=_to_int32_bits(end_bits),
        end_rank=end_rank.to(torch.int32), leaf_start=leaf_start.to(torch.int32), items=items_sorted.to(item_dtype),
        vocab_size=int(vocab_size), max_len=max_len, max_fanout=max_fanout,
    )


def validate_trie(trie: Trie) -> None:
    """Structural checks of a loaded trie (sizes and monotone offsets); raises TrieError."""
    nn_, ni = trie.num_nodes, trie.num_inner
    if not 1 <= ni + 1 <= nn_ + 1 or trie.end_bits.numel() != (nn_ + 31) // 32 or trie.end_rank.numel() != trie.end_bits.numel():
        raise TrieError("trie: inconsistent node counts between child_start, token and end_bits")
    cs = trie.child_start.long()
    if int(cs[0]) != 1 or int(cs[-1]) > nn_ or bool((cs[1:] < cs[:-1]).any()):
        raise TrieError("trie: child_start is not a monotone CSR row array starting at 1")
    ls = trie.leaf_start.long()
    if int(ls[0]) != 0 or int(ls[-1]) != trie.num_items or bool((ls[1:] < ls[:-1]).any()):
        raise TrieError("trie: leaf_start does not cover the item list")
    if trie.num_nodes > 1 and (int(trie.token[1:].min()) < FIRST_CODE or int(trie.token.max()) >= trie.vocab_size):
        raise TrieError("trie: node tokens outside [3, vocab_size)")
