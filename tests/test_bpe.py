"""SemanticBPE: exact round trips (hypothesis), item boundaries, candidates, the gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from capsid_gr.bpe import (
    EOS,
    MergeGate,
    MergeTable,
    NO_TOKEN,
    base_vocab_size,
    bpe_loss,
    build_merge_table,
    count_pairs,
    relaxed_gate,
    select_candidates,
    to_codes,
    to_global,
)

CAPSULES = (5, 4, 3)
BASE = base_vocab_size(CAPSULES)  # 3 + 12 = 15


@st.composite
def tables_and_items(draw):
    codes = list(range(3, BASE))
    pairs = draw(st.lists(st.tuples(st.sampled_from(codes), st.sampled_from(codes)), max_size=20, unique=True))
    items = draw(st.lists(st.lists(st.sampled_from(codes), min_size=1, max_size=6), min_size=1, max_size=8))
    return MergeTable(BASE, pairs), items


@settings(max_examples=200, deadline=None)
@given(tables_and_items())
def test_encode_decode_round_trip_is_exact(case):
    table, items = case
    for sid in items:
        enc = table.encode_item(sid)
        assert table.decode_item(enc) == sid
        assert len(enc) <= len(sid)
    history = table.encode_history(items)
    assert table.decode_history(history) == items
    # merges never cross an item: the tokens between EOS marks decode to exactly that item
    segments, cur = [], []
    for t in history:
        if t == EOS:
            segments.append(cur)
            cur = []
        else:
            cur.append(t)
    assert [table.decode_item(s) for s in segments] == items


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=3), min_size=1, max_size=10))
def test_global_ids_round_trip(rows):
    codes = np.full((len(rows), 3), NO_TOKEN)
    for i, r in enumerate(rows):
        codes[i, :len(r)] = r
    ids = to_global(codes, CAPSULES)
    assert np.array_equal(to_codes(ids, CAPSULES), codes)
    assert ids[codes >= 0].min() >= 3 and ids.max() < BASE


def test_greedy_pass_skips_pairs_touching_a_merge():
    a, b, c = 3, 8, 12
    table = MergeTable(BASE, [(b, c), (a, b)])
    # (a, b) is met first left to right; (b, c) touches b and is skipped in this pass
    assert table.encode_item([a, b, c]) == [BASE + 1, c]
    assert table.encode_item([b, c, a]) == [BASE, a]


def test_merge_table_rejects_bad_pairs():
    with pytest.raises(ValueError, match="base tokens"):
        MergeTable(BASE, [(3, BASE)])
    with pytest.raises(ValueError, match="already"):
        MergeTable(BASE, [(3, 8), (3, 8)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MergeTable(BASE, [(3, 8)]).decode_item([BASE + 1])


def test_pairs_are_counted_inside_items_only():
    ids = np.array([[3, 8, 12], [4, 9, NO_TOKEN], [3, 8, NO_TOKEN]])
    pc = count_pairs(ids, np.array([2.0, 1.0, 5.0]))
    got = {tuple(p): c for p, c in zip(pc.pairs.tolist(), pc.counts.tolist())}
    assert got == {(3, 8): 7.0, (8, 12): 2.0, (4, 9): 1.0}  # no (12, 4): that spans two items


def _emb(vectors: dict[int, list[float]], d=4) -> torch.Tensor:
    emb = torch.zeros(BASE, d, dtype=torch.float64)
    for i, v in vectors.items():
        emb[i] = torch.tensor(v, dtype=torch.float64)
    return emb


def test_candidates_respect_n_min_and_theta():
    pairs = np.array([[3, 8], [4, 9], [5, 10]])
    counts = np.array([50.0, 10.0, 40.0])
    emb = _emb({3: [1, 0, 0, 0], 8: [1, 0.1, 0, 0], 4: [1, 0, 0, 0], 9: [1, 0, 0, 0], 5: [1, 0, 0, 0], 10: [0, 1, 0, 0]})
    from capsid_gr.bpe import PairCounts
    c = select_candidates(PairCounts(pairs, counts), emb, n_min=20, theta=0.5, alpha=0.6, max_merges=10)
    # (4, 9) is too rare, (5, 10) is orthogonal
    assert c.pairs.tolist() == [[3, 8]]
    assert c.freq_hat[0] == pytest.approx(1.0)  # count / max count over all pairs
    assert c.score[0] == pytest.approx(0.6 * 1.0 + 0.4 * c.cos[0])
    assert c.label.tolist() == [True]


def _train_gate(cands, emb, steps=300, seed=0):
    gate = MergeGate(emb.shape[1], 16, seed=seed).double()
    opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
    labels = torch.as_tensor(cands.label, dtype=torch.float64)
    for _ in range(steps):
        loss = bpe_loss(gate(gate.features(emb, cands.pairs, cands.freq_hat)), labels, relaxed=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return gate


def test_frequency_only_and_semantic_bpe_differ_on_a_frequent_unrelated_pair():
    # (3, 8): the most frequent pair, barely related (cos 0.6); (4, 9): 80% as frequent, near-identical
    # centres. Frequency alone picks (3, 8); Eq. 9 with alpha 0.6 scores 0.84 against 0.876.
    emb = _emb({3: [1, 0, 0, 0], 8: [0.6, 0.8, 0, 0], 4: [0, 0, 1, 0], 9: [0, 0, 0.99, 0.14]})
    ids = np.array([[3, 8], [4, 9]])
    weights = np.array([1000.0, 800.0])
    merged = {}
    for alpha in (1.0, 0.6):
        cands = select_candidates(count_pairs(ids, weights), emb, n_min=20, theta=0.55, alpha=alpha, max_merges=1)
        assert len(cands.pairs) == 2
        table = build_merge_table(cands, _train_gate(cands, emb), emb, BASE, max_merges=1)
        merged[alpha] = table.pairs
    assert merged[1.0] == [(3, 8)]
    assert merged[0.6] == [(4, 9)]


def test_bpe_loss_by_hand_and_gumbel_gate():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0], dtype=torch.float64)
    p1 = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    want = -(np.log(0.5) + np.log(1 - p1.item())) / 2
    assert bpe_loss(logits, labels, relaxed=False).item() == pytest.approx(want)
    g = torch.Generator().manual_seed(0)
    soft = relaxed_gate(logits.repeat(500, 1), 1.0, g)
    hard = relaxed_gate(logits.repeat(500, 1), 0.1, torch.Generator().manual_seed(0))
    assert ((soft > 0) & (soft < 1)).all()
    # low temperature: near one-hot samples; the merge rate follows pi_1 either way
    assert ((hard < 0.05) | (hard > 0.95)).double().mean() > 0.8
    assert hard[1::2].mean().item() == pytest.approx(p1.item(), abs=0.06)
    assert bpe_loss(logits[:0], labels[:0]).item() == 0.0


def test_item_space_embedding_is_the_mean_of_the_carrying_items():
    """SPEC §5: row t = mean of the unit vectors of the items whose SID carries t; zeros elsewhere."""
    from capsid_gr.bpe import item_space_embeddings

    g = np.random.default_rng(3)
    x = torch.as_tensor(g.normal(size=(40, 6)) * g.uniform(0.5, 3.0, size=(40, 1)))
    ids = g.integers(3, 20, size=(40, 4))
    ids[g.random(ids.shape) < 0.3] = NO_TOKEN
    emb = item_space_embeddings(ids, x, 24)
    unit = (x / x.norm(dim=1, keepdim=True)).numpy()
    for t in range(24):
        occ = [(i, j) for i in range(40) for j in range(4) if ids[i, j] == t]  # every occurrence counts once
        if not occ:
            assert torch.equal(emb[t], torch.zeros(6, dtype=torch.float64)), t
            continue
        want = np.mean([unit[i] for i, _ in occ], axis=0)
        np.testing.assert_allclose(emb[t].numpy(), want, rtol=0, atol=1e-12, err_msg=str(t))
    with pytest.raises(ValueError, match=r"ids: expected \[N = 40, L\]"):
        item_space_embeddings(ids[:5], x, 24)
    with pytest.raises(ValueError, match=r"ids: expected token ids in \[0, 10\)"):
        item_space_embeddings(ids, x, 10)


def test_item_space_cosine_finds_pairs_the_centres_cannot():
    """Two depths' tokens carried by the same items embed alike in item space (cos ~ 1), whatever
    the codebook centres are; tokens of unrelated items do not."""
    from capsid_gr.bpe import item_space_embeddings
    from capsid_gr.bpe.pairs import pair_cosine

    g = np.random.default_rng(0)
    centres = g.normal(size=(2, 6))
    x = torch.as_tensor(np.concatenate([centres[0] + 0.05 * g.normal(size=(20, 6)),
                                        centres[1] + 0.05 * g.normal(size=(20, 6))]))
    ids = np.zeros((40, 2), np.int64)
    ids[:20] = [3, 5]  # cluster 0: token 3 at depth 1, token 5 at depth 2
    ids[20:] = [4, 6]  # cluster 1: tokens 4 and 6
    cos = pair_cosine(item_space_embeddings(ids, x, 7), np.array([[3, 5], [4, 6], [3, 6]])).numpy()
    assert cos[0] > 0.99 and cos[1] > 0.99
    assert cos[2] < cos[0] - 0.1
