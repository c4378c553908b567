"""The eager reference of one routing layer against hand-worked numbers and SPEC §2 invariants."""

import pytest
import torch

from capsid_kernels.reference import (
    CONTINUE, STOP_CAP, STOP_CONF, STOP_RESID, codebook_centres, route_reference, squash,
)
from conftest import make_layer, unit_rows

F64 = torch.float64


def hand_layer():
    """K = 2, d = d_c = 2, r = e1: u_1 = (1, 0) from W_1 = I; u_2 = (0, 0.5) from W_2 = 0, b_2 = (0, 0.5)."""
    r = torch.tensor([[1.0, 0.0]], dtype=F64)
    W = torch.stack([torch.eye(2, dtype=F64), torch.zeros(2, 2, dtype=F64)])
    b = torch.tensor([[0.0, 0.0], [0.0, 0.5]], dtype=F64)
    D = torch.eye(2, dtype=F64)
    return r, W, b, D


# Worked by hand (see the docstring of hand_layer): T = 1 gives v = (0.5, 0.25), ||v||^2 = 0.3125,
# o = v * 0.559017/0.8125, a = (u_1.o, u_2.o) = (0.344010, 0.086003), c* = softmax(a).
HAND = {
    1: dict(cstar=(0.5641465127189548, 0.43585348728104534), q=0.21697942796882877, onorm=0.38461538461538464,
            z=(0.3760976751459698, 0.14528449576034844)),
    2: dict(cstar=(0.6401413835602514, 0.35985861643974854), q=0.27043944648931223, onorm=0.4224683068999833,
            z=(0.42676092237350094, 0.11995287214658285)),
}


@pytest.mark.parametrize("rounds", [1, 2])
def test_hand_computed_soft(rounds):
    r, W, b, D = hand_layer()
    out = route_reference(r, W, b, D, rounds=rounds, need_weights=True, need_onorm=True, tau=0.99, eps=0.0)
    h = HAND[rounds]
    assert out.token.tolist() == [0]
    torch.testing.assert_close(out.weights[0], torch.tensor(h["cstar"], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(out.confidence[0], torch.tensor(h["q"], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(out.onorm[0], torch.tensor(h["onorm"], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(out.recon[0], torch.tensor(h["z"], dtype=F64), rtol=0, atol=1e-14)
    torch.testing.assert_close(out.residual[0], r[0] - torch.tensor(h["z"], dtype=F64), rtol=0, atol=1e-14)
    assert out.stop_reason.tolist() == [CONTINUE]


def test_hand_computed_hard_subtracts_winner():
    r, W, b, D = hand_layer()
    out = route_reference(r, W, b, D, rounds=2, mode="hard")
    # the winner is capsule 0 with u_0 = (1, 0): squash gives (2/3, 0)
    torch.testing.assert_close(out.recon[0], torch.tensor([2 / 3, 0.0], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(out.residual[0], torch.tensor([1 / 3, 0.0], dtype=F64), rtol=0, atol=1e-15)


def test_tie_picks_lowest_capsule():
    # two identical capsules: c* = (1/2, 1/2) exactly, token must be 0
    r = torch.tensor([[1.0, 0.0]], dtype=F64)
    W = torch.stack([torch.eye(2, dtype=F64)] * 2)
    b = torch.zeros(2, 2, dtype=F64)
    out = route_reference(r, W, b, torch.eye(2, dtype=F64), rounds=3, need_weights=True)
    assert out.weights[0, 0] == out.weights[0, 1]
    assert out.token.tolist() == [0]
    # and a tie among the later capsules picks the lowest of them
    W3 = torch.stack([torch.zeros(2, 2, dtype=F64), torch.eye(2, dtype=F64), torch.eye(2, dtype=F64)])
    out3 = route_reference(r, W3, torch.zeros(3, 2, dtype=F64), torch.eye(2, dtype=F64), rounds=2)
    assert out3.token.tolist() == [1]


def unrolled_float64(r, W, b, D, rounds, eta):
    """SPEC §2 with explicit Python loops over items and capsules: no einsum, no batching."""
    tokens, qs, zs = [], [], []
    K = W.shape[0]
    for i in range(r.shape[0]):
        u = [W[k] @ r[i] + b[k] for k in range(K)]
        a = [torch.tensor(0.0, dtype=F64)] * K
        for _ in range(rounds):
            e = torch.stack(a).exp()
            c = e / e.sum()
            v = sum(c[k] * u[k] for k in range(K))
            o = v * v.norm() / (0.5 + v.norm() ** 2)
            a = [a[k] + u[k] @ o for k in range(K)]
        e = torch.stack(a).exp()
        cs = e / e.sum()
        s = int(torch.argmax(cs))
        tokens.append(s)
        qs.append(cs[s] * o.norm())
        rec = sum(cs[k] * (u[k] * u[k].norm() / (0.5 + u[k].norm() ** 2)) for k in range(K))
        zs.append(D @ rec)
    z = torch.stack(zs)
    return torch.tensor(tokens), torch.stack(qs), z, r - eta * z


@pytest.mark.parametrize("rounds", [1, 2, 3, 5])
def test_loop_matches_unrolled_float64(rounds):
    W, b, D = make_layer(5, 7, 6, seed=rounds)
    r = unit_rows(9, 6, seed=rounds)
    tok, q, z, r_new = unrolled_float64(r, W, b, D, rounds, eta=0.7)
    out = route_reference(r, W, b, D, rounds=rounds, eta=0.7)
    assert torch.equal(out.token, tok)
    torch.testing.assert_close(out.confidence, q, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.recon, z, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.residual, r_new, rtol=1e-12, atol=1e-14)


def test_invariants_random():
    W, b, D = make_layer(11, 5, 8, seed=3)
    r = unit_rows(50, 8, seed=4)
    out = route_reference(r, W, b, D, rounds=3, eta=0.5, need_weights=True, need_onorm=True)
    torch.testing.assert_close(out.weights.sum(1), torch.ones(50, dtype=F64), rtol=0, atol=1e-14)
    assert (out.weights >= 0).all()
    assert (out.onorm < 1).all()
    torch.testing.assert_close(out.residual, r - 0.5 * out.recon, rtol=0, atol=1e-15)
    assert torch.equal(out.token, out.weights.argmax(1))
    torch.testing.assert_close(out.confidence, out.weights.max(1).values * out.onorm, rtol=0, atol=1e-15)
    hard = route_reference(r, W, b, D, rounds=3, mode="hard")
    assert torch.equal(hard.token, out.token)  # the mode changes the reconstruction only
    win = squash(torch.einsum("ncd,nd->nc", W[out.token], r) + b[out.token]) @ D.T
    torch.testing.assert_close(hard.recon, win, rtol=0, atol=1e-14)


def _stop_case(q_target_high: bool, small_residual: bool, last: bool):
    """One item whose q is high (a dominant capsule) or low, and whose residual is tiny or not."""
    d = 4
    r = torch.zeros(1, d, dtype=F64)
    r[0, 0] = 1.0
    K = 3
    W = torch.zeros(K, d, d, dtype=F64)
    b = torch.zeros(K, d, dtype=F64)
    if q_target_high:
        W[0] = torch.eye(d, dtype=F64) * 40.0  # one capsule with a huge, agreeing vote
    else:
        for k in range(K):
            W[k] = torch.eye(d, dtype=F64) * 0.3
    # the decoder maps the routed output exactly onto r when asked for a small residual
    D = torch.eye(d, dtype=F64)
    out = route_reference(r, W, b, D, rounds=3, need_weights=True)
    if small_residual:
        D = D * (1.0 / out.recon[0, 0].item())
    return route_reference(r, W, b, D, rounds=3, tau=0.82, eps=0.08, last=last)


def test_each_stop_rule_fires_only_on_its_input():
    conf = _stop_case(True, False, last=False)
    assert conf.confidence.item() >= 0.82 and conf.stop_reason.tolist() == [STOP_CONF]
    resid = _stop_case(False, True, last=False)
    assert resid.confidence.item() < 0.82
    assert resid.residual.norm().item() <= 0.08 and resid.stop_reason.tolist() == [STOP_RESID]
    neither = _stop_case(False, False, last=False)
    assert neither.confidence.item() < 0.82 and neither.residual.norm().item() > 0.08
    assert neither.stop_reason.tolist() == [CONTINUE]
    cap = _stop_case(False, False, last=True)
    assert cap.stop_reason.tolist() == [STOP_CAP]
    # CONF wins over RESID when both hold
    both = _stop_case(True, True, last=True)
    assert both.residual.norm().item() <= 0.08 and both.stop_reason.tolist() == [STOP_CONF]


def test_gradcheck_layer_all_outputs():
    W, b, D = make_layer(4, 3, 5, seed=7)
    r = unit_rows(6, 5, seed=8)
    leaves = [t.clone().requires_grad_() for t in (r, W, b, D)]

    def f(r, W, b, D):
        out = route_reference(r, W, b, D, rounds=3, need_weights=True, need_onorm=True)
        return out.confidence, out.residual, out.recon, out.weights, out.onorm

    assert torch.autograd.gradcheck(f, leaves)
    assert torch.autograd.gradcheck(
        lambda r, W, b, D: route_reference(r, W, b, D, rounds=2, mode="hard").residual, leaves)


def test_centres_are_zero_residual_outputs():
    W, b, D = make_layer(6, 4, 5, seed=9)
    out = route_reference(torch.zeros(1, 5, dtype=F64), W, b, D, mode="hard", rounds=1)
    C = codebook_centres(b, D)
    torch.testing.assert_close(out.recon[0], C[out.token[0]], rtol=0, atol=1e-15)
    assert C.shape == (6, 5)


def test_float32_and_bfloat16_close_to_float64():
    W, b, D = make_layer(16, 8, 12, seed=10)
    r = unit_rows(40, 12, seed=11)
    ref = route_reference(r, W, b, D)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
        out = route_reference(*(t.to(dtype) for t in (r, W, b, D)))
        assert out.residual.dtype == dtype and out.confidence.dtype == torch.float32
        err = (out.residual.double() - ref.residual).norm() / ref.residual.norm()
        assert err < tol
