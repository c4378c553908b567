"""The capsule warm-up of Stage 1 (capsid_gr.stage1.init): routing leaves the uniform regime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import capsid_kernels as ck
from capsid_gr.stage1.init import InitConfig, data_init


def clustered(n_clusters=12, per=40, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_clusters, d, generator=g), dim=1)
    x = centres.repeat_interleave(per, 0) + 0.05 * torch.randn(n_clusters * per, d, generator=g)
    return x, torch.arange(n_clusters).repeat_interleave(per)


def purity(tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of items whose token's majority cluster is their own."""
    hits = 0
    for t in tokens.unique():
        hits += torch.bincount(labels[tokens == t]).max().item()
    return hits / len(labels)


def test_warm_up_gives_confident_cluster_tokens_where_random_init_is_uniform():
    x, labels = clustered()
    cfg = ck.CapsIDConfig(d=32, capsules=16, capsule_dim=16, max_length=3)
    random_tok = ck.CapsIDTokenizer(cfg, seed=0)
    warm = ck.CapsIDTokenizer(cfg, seed=0)
    summary = data_init(warm, x, InitConfig(sharpness=(8.0,), gain=3.0), seed=0)
    x0 = torch.nn.functional.normalize(x, dim=1)
    with torch.no_grad():
        before = ck.route(x0, random_tok.layers[0].W, random_tok.layers[0].b, random_tok.layers[0].D, need_weights=True)
        after = ck.route(x0, warm.layers[0].W, warm.layers[0].b, warm.layers[0].D, need_weights=True)
    assert before.weights.max(1).values.mean() < 0.2
    assert after.weights.max(1).values.mean() > 0.5
    assert purity(after.token, labels) > 0.95
    assert purity(after.token, labels) > purity(before.token, labels) + 0.2
    # the least-squares decoder makes depth 1 reconstruct better than the random start
    err = lambda o: float(((o.residual) ** 2).sum(1).mean())  # noqa: E731
    assert err(after) < 0.5 * err(before)
    assert [d["depth"] for d in summary["depths"]][0] == 1
    assert summary["depths"][0]["items"] == len(x)


def test_warm_up_is_seeded_and_handles_fewer_items_than_capsules():
    x, _ = clustered(n_clusters=3, per=4)
    cfg = ck.CapsIDConfig(d=32, capsules=16, capsule_dim=8, max_length=2)
    a, b = ck.CapsIDTokenizer(cfg, seed=1), ck.CapsIDTokenizer(cfg, seed=2)
    data_init(a, x, seed=5)
    data_init(b, x, seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("kwargs, word", [({"sharpness": ()}, "sharpness"), ({"sharpness": (1.0, float("nan"))}, "sharpness"),
                                          ({"gain": 0.0}, "gain"), ({"sample": 0}, "sample")])
def test_init_config_rejects_bad_values_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        InitConfig(**kwargs)
