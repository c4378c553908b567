"""RQ-VAE (TIGER) on a small clustered synthetic catalogue, CPU, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capsid_gr.baselines.rqvae import RQVAEConfig, fit_rqvae, kmeans
from capsid_gr.data import SyntheticConfig, make_synthetic
from capsid_gr.metrics import collision_rate, tokenizer_metrics
from capsid_gr.tokenizer.hamr import HaMRConfig

SMALL = RQVAEConfig(hidden=(64,), latent=16, levels=2, codes=8, epochs=40, batch_size=200, seed=0)
"""8 codes per level on a catalogue of 8 top facets: collapse would show as few used codes."""


# Tiny models: one intra-op thread avoids oversubscribing shared 2-core runners (conftest).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def items():
    return make_synthetic(SyntheticConfig(n_items=600, n_users=60)).item_vectors


def test_reconstruction_falls_and_codebooks_do_not_collapse(items):
    res = fit_rqvae(items, SMALL)
    first, last = res.history[0]["recon"], res.history[-1]["recon"]
    assert last < 0.5 * first, f"reconstruction {first:.3f} -> {last:.3f}"
    m = tokenizer_metrics(res.codes, (8, 8), items)
    # Stated bound: >= 75% of all codes used, and >= 5 of 8 at every level (measured 0.81-1.0
    # over seeds 0-2; a collapsed codebook uses 1-2 codes).
    assert m["code_utilisation"] >= 0.75
    assert min(m["codes_used_per_position"]) >= 5
    recon_err = ((items / np.linalg.norm(items, axis=1, keepdims=True) - res.recon) ** 2).sum(1).mean()
    assert recon_err == pytest.approx(last, rel=0.5)


def test_disambiguation_and_shapes(items):
    res = fit_rqvae(items, SMALL)
    assert res.codes.shape == (600, 2) and res.sids.shape == (600, 3) and res.latent.shape == (600, 16)
    assert collision_rate(res.codes) > 0 and collision_rate(res.sids) == 0.0
    assert res.capsules == (8, 8, max(8, int(res.sids[:, 2].max()) + 1))
    assert [c.shape for c in res.centres] == [(8, 16), (8, 16)]
    plain = fit_rqvae(items, RQVAEConfig(**{**SMALL.to_dict(), "disambiguate": False, "epochs": 2}))
    assert plain.sids.shape == (600, 2)


def test_seeded():
    x = make_synthetic(SyntheticConfig(n_items=200, n_users=30)).item_vectors
    cfg = RQVAEConfig(hidden=(32,), latent=8, levels=2, codes=4, epochs=3, batch_size=64, seed=7)
    a, b = fit_rqvae(x, cfg), fit_rqvae(x, cfg)
    assert np.array_equal(a.sids, b.sids) and np.allclose(a.recon, b.recon)


def test_hamr_option_repels_collisions(items):
    base = fit_rqvae(items, SMALL)
    rep = fit_rqvae(items, RQVAEConfig(**{**SMALL.to_dict(), "hamr": HaMRConfig(weight=0.5)}))
    assert base.history[-1]["hamr"] == 0.0 and rep.history[-1]["hamr"] > 0.0
    # Measured 0.972 -> 0.917 at seed 0 (600 items on 64 code pairs: collisions are unavoidable).
    assert collision_rate(rep.codes) < collision_rate(base.codes)


def test_kmeans_init_with_fewer_points_than_codes():
    g = torch.Generator().manual_seed(0)
    c = kmeans(torch.randn(3, 4, generator=g), 5, 5, g)
    assert c.shape == (5, 4) and torch.isfinite(c).all()
