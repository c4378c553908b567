"""The item tokenization the generator is trained on: one record, whatever tokenizer made it.

`ItemTokenization` holds, per item, its token path (SPEC §6 ids: merged tokens then EOS),
the vocabulary size, warm-start rows for the tied embeddings, and, for CAPSID, what Stage 2
needs to build soft history inputs: the frozen capsule layers, the item vectors, the base
(unmerged) SIDs and the merge vocabulary with the frozen gate's logits. Baselines such as
RQ-KMeans fill only the paths and warm-start rows (`from_paths`); their history items then
enter as hard embeddings. Converters from Stage 1's outputs live here too (`from_capsid`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from capsid_kernels import PAD_TOKEN as NO_TOKEN, RoutingParams
from capsid_kernels.decode import BOS, EOS, FIRST_CODE, PAD  # the one home of the token-id layout


@dataclass
class RoutingSource:
    """Frozen CAPSID stack for soft history inputs (SPEC §6): per depth (W, b, D), the tokenizer's
    RoutingParams, and the item vectors x [N, d] the stack routes."""

    layers: list[tuple[Tensor, Tensor, Tensor]]
    x: Tensor
    routing: RoutingParams = field(default_factory=RoutingParams)


@dataclass
class ItemTokenization:
    """Per-item token paths plus what the generator needs around them.

    paths[i]: item i's tokens (global ids >= 3) followed by EOS.
    vocab_size: ids are < vocab_size.
    token_init [V, d] / has_init [V]: warm-start rows for the tied embeddings (codebook centres;
        merged tokens: the mean of their parts); rows without init are drawn at random.
    capsules: K per depth (global id of depth-l code k = 3 + sum_{j<l} K_j + k); empty for
        tokenizers whose tokens have no depth structure.
    base_sids [N, L]: unmerged global ids per depth, NO_TOKEN padded (soft inputs need them).
    merges: (a, b) base ids per merge m, merged id = base_vocab + m.
    merge_logit [M]: logit pi_1 of the frozen gate per merge (g = sigmoid(logit + beta)).
    routing: the frozen stack; None = history items enter as hard embeddings.
    n_dedup: ids [base_vocab + len(merges), + n_dedup) are disambiguation tokens (TIGER's extra
        position, `from_capsid(disambiguate=True)`): they cover no depth and always enter hard.
    """

    paths: list[list[int]]
    vocab_size: int
    token_init: Optional[Tensor] = None
    has_init: Optional[Tensor] = None
    capsules: tuple[int, ...] = ()
    base_sids: Optional[np.ndarray] = None
    merges: list[tuple[int, int]] = field(default_factory=list)
    merge_logit: Optional[np.ndarray] = None
    routing: Optional[RoutingSource] = None
    name: str = "items"
    n_dedup: int = 0

    def __post_init__(self) -> None:
        for i, p in enumerate(self.paths):
            if len(p) < 2 or p[-1] != EOS or any(t < FIRST_CODE or t >= self.vocab_size for t in p[:-1]):
                raise ValueError(f"{self.name}: item {i} path {p} is not codes in [3, {self.vocab_size}) then EOS")
        if self.routing is not None and (self.base_sids is None or not self.capsules):
            raise ValueError(f"{self.name}: soft inputs (routing) need base_sids and capsules")

    @property
    def n_items(self) -> int:
        return len(self.paths)

    @property
    def base_vocab(self) -> int:
        return FIRST_CODE + int(sum(self.capsules))

    @property
    def max_path(self) -> int:
        """Longest path including EOS."""
        return max(len(p) for p in self.paths)

    def path_matrix(self) -> np.ndarray:
        """[N, max_path] PAD-filled paths (what build_trie takes)."""
        out = np.zeros((self.n_items, self.max_path), dtype=np.int64)
        for i, p in enumerate(self.paths):
            out[i, : len(p)] = p
        return out

    def depth_offsets(self) -> np.ndarray:
        return FIRST_CODE + np.concatenate([[0], np.cumsum(self.capsules)[:-1]]).astype(np.int64)

    def layout(self) -> dict[str, np.ndarray]:
        """Per item and path position [N, P]: the depth(s) a token covers and its merge index.

        depth_a = first depth covered (-1 at EOS / padding), depth_b = second depth of a merged
        token (else -1), merge = merge index (else -1). Merges always join consecutive depths,
        because a merge pairs adjacent tokens of one SID.
        """
        n, p = self.n_items, self.max_path
        depth_a = np.full((n, p), -1, np.int64)
        depth_b = np.full((n, p), -1, np.int64)
        merge = np.full((n, p), -1, np.int64)
        base = self.base_vocab
        dedup = base + len(self.merges)
        for i, path in enumerate(self.paths):
            d = 0
            for j, t in enumerate(path[:-1]):
                if t >= dedup:  # a disambiguation token: no depth, enters hard
                    continue
                depth_a[i, j] = d
                if t >= base:
                    depth_b[i, j], merge[i, j] = d + 1, t - base
                    d += 2
                else:
                    d += 1
        return {"depth_a": depth_a, "depth_b": depth_b, "merge": merge}


def from_paths(paths: Sequence[Sequence[int]], vocab_size: int, token_init: Optional[Tensor] = None,
               has_init: Optional[Tensor] = None, name: str = "items") -> ItemTokenization:
    """A hard-input tokenization (baselines): paths must already end with EOS."""
    return ItemTokenization(paths=[list(map(int, p)) for p in paths], vocab_size=vocab_size,
                            token_init=token_init, has_init=has_init, name=name)


def merged_init(base_rows: Tensor, merges: Sequence[tuple[int, int]]) -> Tensor:
    """Rows for merged tokens: the mean of their two parts (SPEC §6)."""
    if not merges:
        return base_rows.new_zeros(0, base_rows.shape[1])
    idx = torch.as_tensor(merges, dtype=torch.int64)
    return 0.5 * (base_rows[idx[:, 0]] + base_rows[idx[:, 1]])


@torch.no_grad()
def from_capsid(tokenizer, x: Tensor, sids: Tensor, merges=None, merge_logit: Optional[np.ndarray] = None,
                soft_inputs: bool = True, name: str = "capsid", disambiguate: bool = False,
                popularity: Optional[np.ndarray] = None) -> ItemTokenization:
    """Convert Stage 1's outputs: a CapsIDTokenizer, item vectors x [N, d], its inference SIDs
    [N, L_max] (per-depth codes, -1 padded, e.g. `tokenize_items(...).sids`), and optionally a
    `capsid_gr.bpe.MergeTable` with the frozen gate's merge logits (`merge_gate_logits`).

    disambiguate: items whose (merged) paths are identical get one more token before EOS, the
        j-th item of a group (by `popularity` descending, then item id) the j-th disambiguation
        token, as TIGER does for RQ collisions, so every item has its own trie leaf. Items with
        a unique path keep it. The Stage-1 SIDs, merges and diagnostics are unchanged."""
    ks = tuple(tokenizer.config.capsules_per_depth)
    codes = sids.detach().cpu().numpy().astype(np.int64)
    offsets = FIRST_CODE + np.concatenate([[0], np.cumsum(ks)[:-1]]).astype(np.int64)
    base = np.where(codes >= 0, codes + offsets[None, : codes.shape[1]], NO_TOKEN)
    pairs = [] if merges is None else [tuple(map(int, p)) for p in merges.pairs]
    base_vocab = FIRST_CODE + sum(ks)
    pair_id = {p: base_vocab + m for m, p in enumerate(pairs)}
    paths = []
    for row in base:
        toks = [int(t) for t in row if t != NO_TOKEN]
        out, j = [], 0
        while j < len(toks):  # one greedy left-to-right pass, as MergeTable.encode_item
            m = pair_id.get((toks[j], toks[j + 1])) if j + 1 < len(toks) else None
            if m is not None:
                out.append(m)
                j += 2
            else:
                out.append(toks[j])
                j += 1
        paths.append(out + [EOS])
    n_dedup = _disambiguate(paths, popularity, base_vocab + len(pairs)) if disambiguate else 0
    centres = torch.cat([c.detach().float().cpu() for c in tokenizer.centres()], dim=0)
    d = centres.shape[1]
    init = torch.cat([torch.zeros(FIRST_CODE, d), centres, merged_init(
        torch.cat([torch.zeros(FIRST_CODE, d), centres]), pairs)])
    init = torch.cat([init, torch.zeros(n_dedup, d)])
    has = torch.ones(init.shape[0], dtype=torch.bool)
    has[:FIRST_CODE] = False
    has[init.shape[0] - n_dedup:] = False  # disambiguation rows start random
    routing = None
    if soft_inputs:
        c = tokenizer.config
        routing = RoutingSource(layers=[(m.W.detach().float().cpu().clone(), m.b.detach().float().cpu().clone(),
                                         m.D.detach().float().cpu().clone()) for m in tokenizer.layers],
                                x=x.detach().float().cpu(), routing=c.routing)
    logit = np.zeros(len(pairs)) if merge_logit is None else np.asarray(merge_logit, dtype=np.float64)
    return ItemTokenization(paths=paths, vocab_size=base_vocab + len(pairs) + n_dedup, token_init=init,
                            has_init=has, capsules=ks, base_sids=base, merges=pairs, merge_logit=logit,
                            routing=routing, name=name, n_dedup=n_dedup)


def _disambiguate(paths: list[list[int]], popularity: Optional[np.ndarray], start: int) -> int:
    """Insert (in place) disambiguation token `start + j` before the EOS of the j-th item of every
    group of identical paths; returns how many such tokens there are (the largest group)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(tuple(p), []).append(i)
    shared = [g for g in groups.values() if len(g) > 1]
    if not shared:
        return 0
    pop = np.zeros(len(paths)) if popularity is None else np.asarray(popularity, dtype=np.float64)
    if pop.shape != (len(paths),):
        raise ValueError(f"popularity: expected shape ({len(paths)},), got {pop.shape}")
    for g in shared:
        for j, i in enumerate(sorted(g, key=lambda i: (-pop[i], i))):
            paths[i].insert(len(paths[i]) - 1, start + j)
    return max(len(g) for g in shared)


@torch.no_grad()
def merge_gate_logits(gate, emb: Tensor, candidates, merges) -> np.ndarray:
    """logit pi_1 = l_1 - l_0 of the frozen gate for each merge of `merges` (a MergeTable),
    read from the Stage-1 candidates that produced it."""
    if len(merges.pairs) == 0:
        return np.zeros(0)
    where = {tuple(map(int, p)): i for i, p in enumerate(candidates.pairs)}
    idx = np.array([where[tuple(p)] for p in merges.pairs])
    logits = gate(gate.features(emb, candidates.pairs[idx], candidates.freq_hat[idx]))
    return (logits[:, 1] - logits[:, 0]).double().cpu().numpy()
