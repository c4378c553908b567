"""The item trie: structure against the item paths, validation errors, save/load."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from capsid_kernels.decode.trie import EOS, Trie, TrieError, build_trie

V = 12


def walk(trie: Trie, path):
    """Follow code tokens from the root; the node reached, or None."""
    node = 0
    for tok in path:
        toks, kids = trie.children(node)
        if tok not in toks:
            return None
        node = kids[toks.index(tok)]
    return node


def all_paths(trie: Trie):
    """Every root-to-EOS path as (codes tuple, leaf id)."""
    out, stack = [], [(0, ())]
    while stack:
        node, prefix = stack.pop()
        toks, kids = trie.children(node)
        for tok, kid in zip(toks, kids):
            if tok == EOS:
                out.append((prefix, int(trie.leaf_of(torch.tensor([node]))[0])))
            else:
                stack.append((kid, prefix + (tok,)))
    return sorted(out)


sids = st.lists(st.lists(st.integers(3, V - 1), min_size=1, max_size=4), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None)
@given(sids, st.integers(0, 2**31 - 1))
def test_trie_holds_exactly_the_item_paths(paths, seed):
    g = torch.Generator().manual_seed(seed)
    pop = torch.randint(0, 3, (len(paths),), generator=g).double()
    ids = torch.randperm(1000, generator=g)[: len(paths)]
    trie = build_trie([p + [EOS] for p in paths], V, item_ids=ids, popularity=pop)
    unique = sorted({tuple(p) for p in paths})
    found = all_paths(trie)
    assert [p for p, _ in found] == unique
    assert sorted(leaf for _, leaf in found) == list(range(len(unique)))
    assert trie.max_len == max(len(p) for p in paths)
    for codes, leaf in found:
        expect = sorted((-float(pop[i]), int(ids[i])) for i, p in enumerate(paths) if tuple(p) == codes)
        assert trie.leaf_items(leaf) == [i for _, i in expect]
    # Level order with sorted children: children rows are contiguous and increasing in token.
    for n in range(trie.num_inner):
        lo, hi = int(trie.child_start[n]), int(trie.child_start[n + 1])
        assert trie.token[lo:hi].tolist() == sorted(set(trie.token[lo:hi].tolist()))
    fan = max(len(trie.children(n)[0]) for n in range(trie.num_nodes))
    assert trie.max_fanout == fan


def test_prefix_items_and_collisions():
    paths = [[3, 4, EOS], [3, 4, 5, EOS], [3, 4, EOS], [6, EOS]]
    trie = build_trie(paths, V, popularity=torch.tensor([1.0, 0.0, 5.0, 0.0]))
    n34 = walk(trie, [3, 4])
    toks, _ = trie.children(n34)
    assert toks == [EOS, 5]  # an item ends here and a longer one continues
    assert trie.leaf_items(int(trie.leaf_of(torch.tensor([n34]))[0])) == [2, 0]
    assert trie.num_items == 4 and trie.num_leaves == 3


def test_single_item_trie():
    trie = build_trie([[5, EOS]], V)
    assert all_paths(trie) == [((5,), 0)]
    assert trie.max_fanout == 1 and trie.num_nodes == 2


def test_padded_tensor_input_matches_lists():
    paths = [[3, 4, EOS, 0], [5, EOS, 0, 0], [3, 4, 6, EOS]]
    a = build_trie(torch.tensor(paths), V)
    b = build_trie([[3, 4, EOS], [5, EOS], [3, 4, 6, EOS]], V)
    for k, t in a.tensors().items():
        assert torch.equal(t, b.tensors()[k]), k


@pytest.mark.parametrize("paths, match", [
    ([[3, 4]], "no EOS"),
    ([[EOS]], "empty"),
    ([[3, V, EOS]], "must lie in"),
    ([[3, 1, EOS]], "must lie in"),
    ([[3, 0, 4, EOS]], "must lie in"),
    ([[3, EOS, 4]], "after its EOS"),
])
def test_bad_paths_are_errors(paths, match):
    with pytest.raises(TrieError, match=match):
        build_trie(paths, V)


def test_duplicate_item_ids_are_errors():
    with pytest.raises(TrieError, match="more than once"):
        build_trie([[3, EOS], [4, EOS]], V, item_ids=torch.tensor([7, 7]))


def test_save_load_roundtrip(tmp_path):
    trie = build_trie([[3, 4, EOS], [3, 5, EOS], [6, EOS]], V, item_ids=torch.tensor([10, 11, 12]))
    path = tmp_path / "trie.pt"
    trie.save(path)
    back = Trie.load(path)
    assert back.meta() == trie.meta()
    for k, t in trie.tensors().items():
        assert torch.equal(t, back.tensors()[k]) and t.dtype == back.tensors()[k].dtype
    assert [f for f in os.listdir(tmp_path) if f.startswith(".trie-")] == []  # no temp file left


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"meta_json": '{"format_version": 99}'}, path)
    with pytest.raises(TrieError, match="format"):
        Trie.load(path)


def test_bytes_per_item_4_token_sids():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    codes = torch.randint(3, 3 + 64, (n, 4), generator=g)
    paths = torch.cat([codes, torch.full((n, 1), EOS)], dim=1)
    trie = build_trie(paths, 3 + 64)
    assert trie.token.dtype == torch.int16
    # int16 tokens, int32 rows for the upper levels only, 2 bits of end flags per node,
    # leaf offsets and item ids: under 16 bytes per item.
    assert trie.nbytes() / n < 16
