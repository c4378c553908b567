"""HaMR (QuaSID): Hamming-guided margin repulsion, by hand on tiny batches."""

from __future__ import annotations

import pytest
import torch

from capsid_gr.tokenizer.hamr import (
    HaMRConfig,
    hamming,
    hamr_loss,
    hamr_terms,
    routing_embedding,
    sids_from_tokens,
)

# e0 = e1 (cos 1), cos(e0, e2) = 0.6, e3 orthogonal to e0 and at cos 0.8 with e2.
EMB = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
# s0 = s1 (H = 0); s2 differs from both in one place (H = 1); s3 is 2 away from everyone.
SIDS = torch.tensor([[1, 2], [1, 2], [1, 3], [5, 6]])


def test_hand_computed_loss():
    t = hamr_terms(EMB, SIDS)
    # full: (0,1) relu(1 - 0.2) = 0.8; partial: (0,2), (1,2) relu(0.6 - 0.5) = 0.1 each.
    assert (t.n_full, t.n_partial) == (1, 2)
    assert float(t.full) == pytest.approx(0.8)
    assert float(t.partial) == pytest.approx(0.1)
    assert float(t.loss) == pytest.approx(0.9)
    # R = 2 adds (0,3), (1,3) at cos 0 (clear) and (2,3) at cos 0.8: partial = 0.3 * 1 / 5 + 0.2 / 5 ...
    t2 = hamr_terms(EMB, SIDS, radius=2)
    assert t2.n_partial == 5
    assert float(t2.partial) == pytest.approx((0.1 + 0.1 + 0.0 + 0.0 + 0.3) / 5)


def test_gradient_pushes_colliding_pairs_apart():
    emb = EMB.clone().requires_grad_(True)
    hamr_loss(emb, SIDS).backward()
    assert emb.grad[3].abs().max() == 0  # collides with nobody
    step = emb.detach() - 0.1 * emb.grad
    before = torch.nn.functional.cosine_similarity(EMB[0], EMB[2], dim=0)
    after = torch.nn.functional.cosine_similarity(step[0], step[2], dim=0)
    assert after < before


def test_masks_exclude_same_item_and_positive_pairs():
    same_item = hamr_terms(EMB, SIDS, item_ids=torch.tensor([7, 7, 8, 9]))
    assert (same_item.n_full, same_item.n_partial) == (0, 2)
    assert float(same_item.loss) == pytest.approx(0.1)
    positives = torch.zeros(4, 4, dtype=torch.bool)
    positives[2, 0] = True  # one direction is enough
    pos = hamr_terms(EMB, SIDS, positives=positives)
    assert (pos.n_full, pos.n_partial) == (1, 1)
    assert float(pos.loss) == pytest.approx(0.8 + 0.1)


def test_zero_when_all_pairs_clear_their_margins():
    # cos: (0,1) 0.1 <= 0.2 (full); (0,2) 0, (1,2) 0, (0,3) 0.4, (1,3) 0.04 <= 0.5 (partial).
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.1, 0.994987, 0.0], [0.0, 0.0, 1.0], [0.4, 0.0, 0.916515]],
                       dtype=torch.float64, requires_grad=True)
    sids = torch.tensor([[4, 4], [4, 4], [4, 9], [0, 4]])
    t = hamr_terms(emb, sids)
    assert t.n_full == 1 and t.n_partial == 4
    assert float(t.loss.detach()) == 0.0
    t.loss.backward()
    assert emb.grad.abs().max() == 0


def test_variable_length_hamming_counts_missing_positions():
    a = torch.tensor([[3, 7, -1], [3, 7, 1], [3, -1, -1]])
    assert hamming(a, a).tolist() == [[0, 1, 1], [1, 0, 2], [1, 2, 0]]
    assert hamming(torch.tensor([[3, 7]]), torch.tensor([[3, 7, -1, -1]])).item() == 0
    assert hamming(torch.tensor([[3, 7]]), torch.tensor([[3, 7, 2]])).item() == 1


def test_empty_and_single_batches_and_config():
    one = hamr_terms(EMB[:1], SIDS[:1])
    assert float(one.loss) == 0.0 and one.n_full == 0
    none = hamr_terms(EMB[2:], SIDS[2:])
    assert float(none.loss) == 0.0 and (none.n_full, none.n_partial) == (0, 0)
    with pytest.raises(ValueError, match="m_partial <= m_full"):
        HaMRConfig(m_full=0.3, m_partial=0.5)
    with pytest.raises(ValueError, match="positives"):
        hamr_terms(EMB, SIDS, positives=torch.zeros(3, 3, dtype=torch.bool))


def test_capsid_helpers():
    tokens = torch.tensor([[2, 0], [2, 1]])
    reached = torch.tensor([[True, False], [True, True]])
    assert sids_from_tokens(tokens, reached).tolist() == [[2, -1], [2, 1]]
    w = (torch.tensor([[0.1, 0.9], [0.2, 0.8]], dtype=torch.float64),
         torch.tensor([[0.5, 0.5], [0.3, 0.7]], dtype=torch.float64))
    assert routing_embedding(w, reached).tolist() == [[0.1, 0.9, 0.0, 0.0], [0.2, 0.8, 0.3, 0.7]]
