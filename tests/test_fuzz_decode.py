"""Property tests of the decode path (issue 10): trie build and beam search against brute force
written from the raw paths (not from the trie), and saved tries that are corrupted byte by byte.

Budgets are small (max_examples <= 40, deadline=None) so the file runs in seconds on one core.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import capsid_kernels as ck
from capsid_kernels.decode.trie import EOS, FIRST_CODE, Trie, TrieError, build_trie

V = 10
codes = st.integers(FIRST_CODE, V - 1)
paths_st = st.lists(st.lists(codes, min_size=1, max_size=4), min_size=1, max_size=16)


def prefix_logits(prefix: tuple, seed: int) -> torch.Tensor:
    """A 'model': logits [V] that depend only on the prefix (seeded by it, deterministic)."""
    g = torch.Generator().manual_seed(hash((seed,) + prefix) % (2**31))
    return torch.randn(V, generator=g, dtype=torch.float64) * 3.0


def brute_force(paths, popularity, seed):
    """(score, -popularity, id) of every item from its path alone, best first."""
    out = []
    for i, p in enumerate(paths):
        s = 0.0
        for t, tok in enumerate(list(p) + [EOS]):
            s += float(torch.log_softmax(prefix_logits(tuple(p[:t]), seed), 0)[tok])
        out.append((s, -popularity[i], i))
    return sorted(out, key=lambda x: (-x[0], x[1], x[2]))


def prefix_step_fn(seed, num_rows):
    """step_fn that tracks each beam's token prefix through parent/token (no trie internals)."""
    prefixes = [()] * num_rows

    def step(beams):
        nonlocal prefixes
        if beams.step > 0:
            prefixes = [prefixes[int(p)] + (int(t),) for p, t in zip(beams.parent, beams.tokens)]
        return torch.stack([prefix_logits(p, seed) for p in prefixes]).float()

    return step


@settings(max_examples=40, deadline=None)
@given(paths_st, st.integers(0, 10**6), st.data())
def test_trie_matches_its_paths(paths, seed, data):
    """Nodes = distinct prefixes, leaves = distinct paths, items of a leaf = popularity then id."""
    pop = data.draw(st.lists(st.integers(0, 3), min_size=len(paths), max_size=len(paths)))
    trie = build_trie([p + [EOS] for p in paths], V, popularity=torch.tensor(pop, dtype=torch.float64))
    prefixes = {tuple(p[:t]) for p in paths for t in range(len(p) + 1)}
    assert trie.num_nodes == len(prefixes)
    assert trie.num_leaves == len({tuple(p) for p in paths})
    assert trie.max_len == max(len(p) for p in paths)
    # Walk every distinct path down the children lists; the end node's leaf lists its items.
    for path in {tuple(p) for p in paths}:
        node = 0
        for tok in path:
            toks, kids = trie.children(node)
            assert toks == sorted(toks) and len(set(toks)) == len(toks)
            node = kids[toks.index(tok)]
        assert EOS in trie.children(node)[0]
        leaf = int(trie.leaf_of(torch.tensor([node]))[0])
        want = sorted((i for i, p in enumerate(paths) if tuple(p) == path), key=lambda i: (-pop[i], i))
        assert trie.leaf_items(leaf) == want
    fanouts = [len(trie.children(n)[0]) for n in range(trie.num_nodes)]
    assert trie.max_fanout == max(fanouts)


@settings(max_examples=40, deadline=None)
@given(paths_st, st.integers(0, 10**6), st.integers(0, 2), st.data())
def test_beam_search_items_equal_brute_force(paths, seed, extra_beams, data):
    """With at least one beam per distinct path the search is exact: its top-K items, expanded
    from leaves by popularity then id, are the brute-force ranking of the items themselves."""
    pop = data.draw(st.lists(st.integers(0, 3), min_size=len(paths), max_size=len(paths)))
    trie = build_trie([p + [EOS] for p in paths], V, popularity=torch.tensor(pop, dtype=torch.float64))
    b = trie.num_leaves + extra_beams
    q = 2
    k = data.draw(st.integers(1, len(paths) + 2))
    res = ck.beam_search(prefix_step_fn(seed, q * b), trie, b, q, top_k=k, backend="eager")
    truth = brute_force(paths, pop, seed)
    for row in range(q):
        got_items = res.items[row].tolist()
        got_scores = res.item_scores[row].tolist()
        n = min(k, len(paths))
        assert got_items[n:] == [-1] * (k - n) and all(s == -math.inf for s in got_scores[n:])
        for j in range(n):
            assert got_scores[j] == pytest.approx(truth[j][0], abs=1e-4)
            if got_items[j] != truth[j][2]:  # only a tie in score (within float32) may reorder
                mine = next(t for t in truth if t[2] == got_items[j])
                assert abs(mine[0] - truth[j][0]) < 1e-4
        assert len(set(got_items[:n])) == n  # each item once


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4))
def test_equal_logits_and_all_items_at_depth_one(num_items, b):
    """Every item stops at depth 1 and every logit is equal: the tie order is the spec's
    (lower beam, then lower token), so the items come back in token order, all with log(1/V)*2."""
    paths = [[FIRST_CODE + i] for i in range(num_items)]
    trie = build_trie([p + [EOS] for p in paths], V)
    res = ck.beam_search(lambda beams: torch.zeros(beams.node.numel(), V), trie, b, 1, backend="eager")
    n = min(b, num_items)
    assert res.items[0, :n].tolist() == list(range(n))
    assert res.item_scores[0, :n].tolist() == pytest.approx([2 * math.log(1 / V)] * n, abs=1e-5)
    assert trie.max_len == 1


@settings(max_examples=30, deadline=None)
@given(paths_st, st.integers(0, 2**32 - 1), st.integers(1, 8))
def test_corrupted_trie_file_is_refused_never_crashes(tmp_path_factory, paths, seed, flips):
    """Random byte flips in a saved trie: load raises TrieError or returns the same trie."""
    trie = build_trie([p + [EOS] for p in paths], V)
    path = tmp_path_factory.mktemp("trie") / "t.pt"
    trie.save(path)
    blob = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(flips):
        blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(blob))
    try:
        back = Trie.load(path)
    except TrieError as exc:
        assert str(path) in str(exc)
        return
    assert back.fingerprint() == trie.fingerprint()
    for name, t in trie.tensors().items():
        assert torch.equal(getattr(back, name), t)
