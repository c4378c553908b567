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

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ._atomic import write_atomic
from .._validate import short

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

    def fingerprint(self) -> str:
        """sha256 hex of the index's content: vocab_size and every tensor as little-endian int64.

        It hashes the SID table as the trie holds it (item paths, item ids and their order
        within leaves), independent of device and of the int16/int32 storage choice, so a
        generator checkpoint can store it and refuse a trie built from other SIDs or another
        vocabulary (``Trie.load(path, expect_fingerprint=...)``).
        """
        h = hashlib.sha256()
        h.update(json.dumps({"vocab_size": self.vocab_size, "max_len": self.max_len,
                             "max_fanout": self.max_fanout}, sort_keys=True).encode())
        for name in _TENSORS:
            data = getattr(self, name).detach().cpu().to(torch.int64).numpy().astype("<i8").tobytes()
            h.update(name.encode() + len(data).to_bytes(8, "little") + data)
        return h.hexdigest()

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file of plain tensors and JSON metadata (with the fingerprint), written atomically:
        temp file, fsync, os.replace, fsync of the folder."""
        meta = {**self.meta(), "fingerprint": self.fingerprint()}
        payload = {"meta_json": json.dumps(meta), **{k: v.cpu() for k, v in self.tensors().items()}}
        buf = io.BytesIO()
        torch.save(payload, buf)
        write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device=None, *, expect_fingerprint: Optional[str] = None) -> "Trie":
        """Load with ``weights_only=True`` (no code runs), then check format version, tensor
        dtypes and shapes, the structure (``validate_trie``) and the stored fingerprint; with
        ``expect_fingerprint`` also that it is the trie the caller was built against."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: trie file not found")
        try:
            payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an untrusted file may fail inside zip, pickle or storage code
            raise TrieError(f"{path}: not a readable trie file ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("meta_json"), str):
            raise TrieError(f"{path}: expected a saved Trie (a dict with 'meta_json'), got {type(payload).__name__}")
        try:
            meta = json.loads(payload.pop("meta_json"))
        except json.JSONDecodeError as exc:
            raise TrieError(f"{path}: meta_json is not valid JSON ({exc.msg})") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else meta
            raise TrieError(f"{path}: trie format {got} is not {FORMAT_VERSION}; rebuild it")
        missing = [k for k in _TENSORS if k not in payload]
        if missing:
            raise TrieError(f"{path}: missing tensors {missing}; the file is not a saved Trie")
        for name, dtypes in _DTYPES.items():
            t = payload[name]
            if not isinstance(t, Tensor) or t.dtype not in dtypes or t.dim() != 1:
                got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise TrieError(f"{path}: tensor {name}: expected a 1-D tensor of {' or '.join(map(str, dtypes))}, "
                                f"got {got}")
        for key in ("vocab_size", "max_len", "max_fanout"):
            if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
                raise TrieError(f"{path}: meta {key}: expected an integer >= 0, got {short(meta.get(key))}")
        trie = cls(**{k: payload[k] for k in _TENSORS}, **_meta_fields(meta))
        try:
            validate_trie(trie)
        except TrieError as exc:
            raise TrieError(f"{path}: {exc}") from None
        stored = meta.get("fingerprint")
        if stored is not None or expect_fingerprint is not None:
            actual = trie.fingerprint()
            if stored is not None and stored != actual:
                raise TrieError(f"{path}: content fingerprint {actual[:16]}... differs from the stored "
                                f"{str(stored)[:16]}...; the file is corrupt or was edited")
            if expect_fingerprint is not None and expect_fingerprint != actual:
                raise TrieError(f"{path}: expected the trie with fingerprint {expect_fingerprint[:16]}..., got "
                                f"{actual[:16]}...; this trie was built from other SIDs or another vocabulary")
        return trie if device is None else trie.to(device)


INDEX_LIMIT = 2**31
"""Node ids and leaf offsets are int32: a trie holds fewer nodes and items than this."""

_TENSORS = ("child_start", "token", "end_bits", "end_rank", "leaf_start", "items")
_DTYPES = {"child_start": (torch.int32,), "token": (torch.int16, torch.int32), "end_bits": (torch.int32,),
           "end_rank": (torch.int32,), "leaf_start": (torch.int32,), "items": (torch.int32, torch.int64)}


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
        bad = next((t for t in p if isinstance(t, bool) or not hasattr(t, "__index__")), None)  # ints, numpy ints
        if bad is not None:
            raise TrieError(f"paths: item row {i} holds {short(bad)} ({type(bad).__name__}); expected integer token ids")
        if len(p):
            out[i, : len(p)] = torch.as_tensor([int(t) for t in p], dtype=torch.int64)
    return out


def _as_1d(name: str, value, n: int, float_ok: bool) -> Tensor:
    """item_ids / popularity given as a tensor, array or list -> a tensor of shape (n,)."""
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TrieError(f"{name}: expected {n} {'numbers' if float_ok else 'integer ids'}, got "
                            f"{type(value).__name__} ({e})") from None
    if value.dtype == torch.bool or (value.dtype.is_floating_point and not float_ok) or value.is_complex():
        raise TrieError(f"{name}: expected {'real numbers' if float_ok else 'integer ids'}, got dtype {value.dtype}")
    if value.shape != (n,):
        raise TrieError(f"{name}: expected shape ({n},), got {tuple(value.shape)}")
    return value


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
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TrieError(f"vocab_size: expected an integer, got {short(vocab_size)} ({type(vocab_size).__name__})")
    if not FIRST_CODE < vocab_size < 2**31:
        raise TrieError(f"vocab_size: expected {FIRST_CODE} < vocab_size < 2**31, got {vocab_size}")
    device = torch.device(device) if device is not None else paths.device
    paths = paths.to(device=device, dtype=torch.int64)
    n = paths.shape[0]
    lengths = _check_paths(paths, vocab_size)
    item_ids = (torch.arange(n, device=device) if item_ids is None
                else _as_1d("item_ids", item_ids, n, False).to(device=device, dtype=torch.int64))
    if n and int(item_ids.min()) < 0:
        i = int((item_ids < 0).nonzero()[0, 0])
        raise TrieError(f"item_ids: expected ids >= 0, got {int(item_ids[i])} at row {i} "
                        f"({int((item_ids < 0).sum())} such rows)")
    sorted_ids = item_ids.sort().values
    if n > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        dup = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
        raise TrieError(f"item_ids: id {dup} appears more than once; give each item one path")
    popularity = (torch.zeros(n, device=device) if popularity is None
                  else _as_1d("popularity", popularity, n, True).to(device=device, dtype=torch.float64))
    if not bool(torch.isfinite(popularity).all()):  # the shape is _as_1d's
        i = int((~torch.isfinite(popularity)).nonzero()[0, 0])
        raise TrieError(f"popularity: expected finite values, got {float(popularity[i])} at row {i} "
                        f"({int((~torch.isfinite(popularity)).sum())} such rows)")

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
    if num_nodes >= INDEX_LIMIT:
        raise TrieError(f"paths: expected a trie of fewer than {INDEX_LIMIT} nodes (int32 node ids), got "
                        f"{num_nodes} nodes from {n} items")
    if n >= INDEX_LIMIT:
        raise TrieError(f"paths: expected fewer than {INDEX_LIMIT} items (int32 leaf offsets), got {n}")
    return Trie(
        child_start=child_start.to(torch.int32), token=tok_all.to(tok_dtype), end_bits=_to_int32_bits(end_bits),
        end_rank=end_rank.to(torch.int32), leaf_start=leaf_start.to(torch.int32), items=items_sorted.to(item_dtype),
        vocab_size=int(vocab_size), max_len=max_len, max_fanout=max_fanout,
    )


def validate_trie(trie: Trie) -> None:
    """Structural checks of a loaded (untrusted) trie; raises TrieError naming the field.

    After these pass, every index the beam step, the HF adapter and ``collect_items`` compute
    from in-trie node ids stays in bounds, and ``max_len`` / ``max_fanout`` are the true values
    (a smaller ``max_fanout`` would drop children; a smaller ``max_len`` would stop early).
    """
    nn_, ni = trie.num_nodes, trie.num_inner
    if nn_ < 1 or not 1 <= ni + 1 <= nn_ + 1 or trie.end_bits.numel() != (nn_ + 31) // 32 \
            or trie.end_rank.numel() != trie.end_bits.numel():
        raise TrieError("trie: inconsistent node counts between child_start, token and end_bits")
    if not FIRST_CODE < trie.vocab_size < 2**31:
        raise TrieError(f"trie: vocab_size: expected {FIRST_CODE} < vocab_size < 2**31, got {trie.vocab_size}")
    cs = trie.child_start.long()
    if int(cs[0]) != 1 or int(cs[-1]) > nn_ or bool((cs[1:] < cs[:-1]).any()):
        raise TrieError("trie: child_start is not a monotone CSR row array starting at 1")
    ls = trie.leaf_start.long()
    if int(ls[0]) != 0 or int(ls[-1]) != trie.num_items or bool((ls[1:] < ls[:-1]).any()):
        raise TrieError("trie: leaf_start does not cover the item list")
    if trie.num_items and int(trie.items.min()) < 0:
        raise TrieError(f"trie: items: expected ids >= 0, got {int(trie.items.min())}")
    if trie.num_nodes > 1 and (int(trie.token[1:].min()) < FIRST_CODE or int(trie.token.max()) >= trie.vocab_size):
        raise TrieError("trie: node tokens outside [3, vocab_size)")
    # Every non-root node has exactly one parent: the child ranges tile [1, num_nodes), and a
    # node's children come after it (no cycles: levels are numbered top-down) ...
    if int(cs[-1]) != nn_:
        raise TrieError(f"trie: child_start ends at {int(cs[-1])}, expected num_nodes = {nn_}")
    if bool((cs[:-1] <= torch.arange(ni)).any()):
        raise TrieError("trie: child_start: a node's children must come after the node")
    # ... and siblings are sorted by token, strictly (the HF adapter binary-searches them).
    if nn_ > 2:
        node = torch.arange(1, nn_ - 1)
        parent_here = torch.searchsorted(cs, node, right=True)
        parent_next = torch.searchsorted(cs, node + 1, right=True)
        tok = trie.token.long()
        siblings = parent_here == parent_next
        if bool((siblings & (tok[2:] <= tok[1:-1])).any()):
            raise TrieError("trie: token: the children of a node are not sorted by token without repeats")
    # End flags: popcount per word, the exclusive prefix in end_rank, one leaf per end node.
    words = trie.end_bits.long() & 0xFFFFFFFF
    per_word = _popcount32(words)
    if nn_ % 32 and bool((words[-1] >> (nn_ % 32)) != 0):
        raise TrieError("trie: end_bits has flags past the last node")
    if not torch.equal(trie.end_rank.long(), torch.cumsum(per_word, 0) - per_word):
        raise TrieError("trie: end_rank is not the running count of end_bits")
    if int(per_word.sum()) != trie.num_leaves:
        raise TrieError(f"trie: {int(per_word.sum())} end nodes but {trie.num_leaves} leaves in leaf_start")
    if trie.num_leaves and bool(((ls[1:] - ls[:-1]) < 1).any()):
        raise TrieError("trie: leaf_start has an empty leaf; every end node holds at least one item")
    flags = ((words[:, None] >> torch.arange(32)) & 1).reshape(-1)[:nn_]
    counts = torch.zeros(nn_, dtype=torch.int64)
    counts[:ni] = cs[1:] - cs[:-1]
    if bool(((counts + flags)[1:] < 1).any()):
        raise TrieError("trie: a node has no children and ends no item (a dead end)")
    fanout = int((counts + flags).max())
    if fanout != trie.max_fanout:
        raise TrieError(f"trie: max_fanout: stored {trie.max_fanout}, the children say {fanout}")
    depth, lo, hi = 0, 0, 1
    while hi <= ni and int(cs[hi]) > int(cs[lo]):
        lo, hi, depth = int(cs[lo]), int(cs[hi]), depth + 1
    if depth != trie.max_len:
        raise TrieError(f"trie: max_len: stored {trie.max_len}, the levels say {depth}")
