"""Issue 16 probes: the encoder-decoder's beam re-ranked by item similarity to the query's last
history item (`EncDecRecommender.sim_beta`), chosen on validation by the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capsid_gr.data import SyntheticConfig, make_synthetic
from capsid_gr.eval import build_item_trie
from capsid_gr.generator.seq import EncDecConfig, EncDecGenerator, EncDecRecommender
from capsid_gr.pipeline import choose_sim_beta, fit_baseline
from capsid_gr.stage2.fit import FitConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup():
    data = make_synthetic(SyntheticConfig(n_items=300, n_users=500, branching=(4, 4, 2), mean_len=8.0, seed=5))
    items, _ = fit_baseline("rqkmeans", data.item_vectors, {"rqkmeans": {"levels": 2, "codes": 8, "n_init": 1}}, 0)
    model = EncDecGenerator(items, EncDecConfig(hidden=32, heads=2, enc_layers=1, dec_layers=1, ffn=64, max_len=20),
                            seed=3)
    rec = EncDecRecommender(model, build_item_trie(items, data.popularity(), "cpu"), 20,
                            popularity=data.popularity(), similarity=data.item_vectors)
    return data, rec


def test_similarity_term_adds_beta_cos_to_the_last_item(setup):
    data, rec = setup
    x = data.item_vectors / np.linalg.norm(data.item_vectors, axis=1, keepdims=True)
    it = torch.tensor([[5, 9, 2, -1], [7, 1, 4, 3]])
    sc = torch.tensor([[-1.0, -1.2, -1.4, -np.inf], [-2.0, -2.0, -2.5, -3.0]])
    last = torch.tensor([9, -1])  # the second query has no history: no similarity term
    rec.prior_alpha, rec.sim_beta = 0.0, 3.0
    want = []
    for q, (r_it, r_sc) in enumerate(zip(it.tolist(), sc.tolist())):
        adj = []
        for k, (i, s) in enumerate(zip(r_it, r_sc)):
            cos = float(x[i] @ x[int(last[q])]) if i >= 0 and last[q] >= 0 else 0.0
            adj.append((s + 3.0 * cos if i >= 0 else -np.inf, k))
        want.append([r_it[k] for _, k in sorted(adj, key=lambda t: (-t[0], t[1]))][:3])
    assert rec._rerank(it, sc, 3, last).tolist() == want
    assert want[0][0] == 9  # the last item itself gains the full beta
    rec.sim_beta = 0.0


def test_decoding_with_similarity_reorders_the_plain_beam(setup):
    data, rec = setup
    split = data.split(max_history=20)
    hist = split.test.histories()[:25]
    rec.prior_alpha, rec.sim_beta = 0.0, 0.0
    plain, _ = rec.recommend(hist, num_beams=20, top_k=20)
    rec.sim_beta = 5.0
    near, _ = rec.recommend(hist, num_beams=20, top_k=10)
    rec.sim_beta = 0.0
    assert all(set(n.tolist()) <= set(p.tolist()) for n, p in zip(near, plain))
    x = data.item_vectors / np.linalg.norm(data.item_vectors, axis=1, keepdims=True)
    last = np.array([h[-1] for h in hist])
    cos = lambda r: np.einsum("qkd,qd->qk", x[r], x[last]).mean()
    assert cos(near) > cos(plain[:, :10])  # the re-ranked top 10 sit closer to the last item
    bare = EncDecRecommender(rec.model, rec.trie, 20, sim_beta=1.0)
    with pytest.raises(ValueError, match="similarity="):
        bare.recommend(hist[:2], num_beams=20, top_k=10)


def test_choose_sim_beta_takes_the_best_validation_ndcg_and_leaves_it_set(setup):
    data, rec = setup
    split = data.split(max_history=20)
    cfg = FitConfig(val_users=200, num_beams=20, eval_batch_size=128, max_history=20)
    beta, table = choose_sim_beta(rec, split, cfg, [0.0, 1.0, 4.0])
    assert set(table) == {"0.0", "1.0", "4.0"} and rec.sim_beta == beta and rec.prior_alpha == 0.0
    assert table[str(beta)]["ndcg@10"] == max(m["ndcg@10"] for m in table.values())
    assert len({m["ndcg@10"] for m in table.values()}) > 1
    assert choose_sim_beta(rec, split, cfg, [0.0]) == (0.0, {}) and rec.sim_beta == 0.0
