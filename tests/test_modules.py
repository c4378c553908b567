"""Config dataclass, presets and the nn.Modules."""

import dataclasses

import pytest
import torch

import capsid_kernels as ck


def test_defaults_follow_spec():
    c = ck.CapsIDConfig()
    assert (c.d, c.capsules, c.capsule_dim, c.rounds, c.max_length) == (128, 256, 64, 3, 6)
    assert (c.tau, c.eps, c.eta, c.mode) == (0.82, 0.08, 1.0, "soft")
    ind = ck.CapsIDConfig.preset("industrial")
    assert (ind.capsules, ind.capsule_dim) == (1024, 96)
    assert ck.CapsIDConfig.preset("industrial", rounds=1).rounds == 1


@pytest.mark.parametrize("kw, pattern", [
    (dict(capsules=(4, 4)), r"capsules: expected an int >= 1 or 6 ints"),
    (dict(rounds=0), r"rounds: expected an integer >= 1"),
    (dict(mode="x"), r"mode: expected one of"),
])
def test_config_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        ck.CapsIDConfig(**kw)
    with pytest.raises(ValueError, match=r"name: expected one of \['default', 'industrial'\]"):
        ck.CapsIDConfig.preset("huge")


def test_tokenizer_module_end_to_end():
    cfg = ck.CapsIDConfig(d=16, capsules=(8, 6, 5), capsule_dim=4, max_length=3)
    tok = ck.CapsIDTokenizer(cfg, seed=0, dtype=torch.float64)
    x = torch.randn(30, 16, dtype=torch.float64)
    out = tok.tokenize(x)
    assert out.sids.shape == (30, 3)
    for depth, k in enumerate((8, 6, 5)):
        col = out.sids[:, depth]
        assert (col[col >= 0] < k).all()
    diag = tok.diagnostics(out)
    assert [len(d["code_usage"]) for d in diag["depths"]] == [8, 6, 5][: len(diag["depths"])]
    centres = tok.centres()
    assert [c.shape for c in centres] == [(8, 16), (6, 16), (5, 16)]
    # gradients reach every parameter through the reconstruction
    loss = (out.recon - x / x.norm(dim=1, keepdim=True)).pow(2).sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tok.parameters())
    with pytest.raises(ValueError, match=r"x: expected shape \[N, d=16\], got \(30, 8\)"):
        tok.tokenize(torch.randn(30, 8, dtype=torch.float64))


def test_same_seed_same_parameters_and_sids():
    cfg = ck.CapsIDConfig(d=12, capsules=10, capsule_dim=6, max_length=3)
    a, b = ck.CapsIDTokenizer(cfg, seed=3), ck.CapsIDTokenizer(cfg, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(20, 12)
    assert torch.equal(a.tokenize(x).sids, b.tokenize(x).sids)
    assert not torch.equal(ck.CapsIDTokenizer(cfg, seed=4).layers[0].W, a.layers[0].W)


def test_decoder_is_identity_when_dc_equals_d():
    layer = ck.CapsuleLayer(8, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(layer.D.T @ layer.D, torch.eye(8, dtype=torch.float64))
    out = layer(torch.randn(4, 8, dtype=torch.float64), need_onorm=True)
    assert out.onorm.shape == (4,)


def test_config_is_frozen_and_serialisable():
    c = ck.CapsIDConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rounds = 5
    assert ck.CapsIDConfig(**c.to_dict()) == c


def test_config_rejects_non_finite_stop_rules_and_bad_step():
    with pytest.raises(ValueError, match=r"tau: expected a finite number, got nan"):
        ck.CapsIDConfig(tau=float("nan"))
    with pytest.raises(ValueError, match=r"eta: expected a residual step > 0, got 0.0"):
        ck.CapsIDConfig(eta=0.0)
    assert ck.CapsIDConfig(tau=2.0, eps=-1.0).tau == 2.0  # rules switched off: the fixed-length ablation


def test_capsule_layer_rejects_non_finite_residuals_unless_told_not_to():
    layer = ck.CapsuleLayer(6, 4, 3, dtype=torch.float64)
    r = torch.randn(5, 6, dtype=torch.float64)
    r[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"r: row 3 has a non-finite value"):
        layer(r)
    layer.execution = ck.ExecutionOptions(check_inputs=False)
    out = layer(r)  # the hot path skips the check; the non-finite row propagates
    assert not torch.isfinite(out.residual[3]).all()
