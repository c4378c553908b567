"""Property tests of the routing op on the eager reference (CPU): random shapes and magnitudes,
and the numerical edge cases of issue 10 (near-zero residuals, equal logits, K = 1, every item
stopping at depth 1, N not a multiple of any chunk). Budgets: max_examples <= 40, deadline=None.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import capsid_kernels as ck
from capsid_kernels.reference import STOP_CONF
from conftest import make_layer, unit_rows

FIELDS = ("confidence", "residual", "recon", "weights", "onorm")


def assert_no_nan(out):
    for name in FIELDS:
        t = getattr(out, name)
        if t is None:  # not asked for
            continue
        assert not torch.isnan(t.float()).any(), f"{name} has NaN"
    assert (out.token >= 0).all()


@st.composite
def routing_case(draw):
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    n, d = draw(st.integers(1, 37)), draw(st.integers(1, 19))
    k, dc = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    # Magnitudes over many decades, inside the range where a vote's squared norm is finite in
    # the compute dtype (see test_float32_votes_past_1e19_overflow_to_nan for the edge).
    if dtype == torch.float64:
        er, ew = draw(st.integers(-100, 100)), draw(st.integers(-50, 50))
    else:
        er, ew = draw(st.integers(-30, 8)), draw(st.integers(-8, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    return dtype, n, d, k, dc, 10.0 ** er, 10.0 ** ew, seed


@settings(max_examples=40, deadline=None)
@given(routing_case(), st.sampled_from(["soft", "hard"]), st.integers(1, 4))
def test_route_never_returns_nan_on_random_shapes_and_magnitudes(case, mode, rounds):
    dtype, n, d, k, dc, r_scale, w_scale, seed = case
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(n, d, generator=g, dtype=torch.float64) * r_scale
    W = torch.randn(k, dc, d, generator=g, dtype=torch.float64) * w_scale
    b = torch.randn(k, dc, generator=g, dtype=torch.float64)
    D = torch.randn(d, dc, generator=g, dtype=torch.float64)
    r, W, b, D = (t.to(dtype) for t in (r, W, b, D))
    out = ck.route(r, W, b, D, rounds=rounds, mode=mode, need_weights=True, need_onorm=True,
                   backend="eager", check_finite=True)
    assert_no_nan(out)
    assert (out.token < k).all()
    if mode == "soft":
        assert torch.allclose(out.weights.sum(1).double(), torch.ones(n, dtype=torch.float64), atol=1e-4)


def test_float32_votes_past_1e19_route_without_nan():
    """The reference squash forms no squared norm, so votes past float32's sqrt(max) still
    squash to unit length (the Triton and CUDA kernels keep n*n: inputs there are item
    residuals of norm ~1, far from 1.8e19)."""
    W, b, D = make_layer(3, 4, 7, dtype=torch.float32)
    r = unit_rows(5, 7, dtype=torch.float32) * 1e20
    out = ck.route(r, W, b, D, need_weights=True, need_onorm=True, backend="eager")
    assert_no_nan(out)
    assert torch.allclose(out.onorm.double(), torch.ones(5, dtype=torch.float64), atol=1e-6)
    for scale, expect in ((1e20, 1.0), (1e-30, 0.0)):
        z = torch.randn(4, 9, generator=torch.Generator().manual_seed(2)) * scale
        got = torch.linalg.vector_norm(ck.squash(z, backend="eager").double(), dim=-1)
        assert torch.isfinite(got).all() and torch.allclose(got, torch.full_like(got, expect), atol=1e-6)


def test_near_zero_residuals_are_routed_without_nan():
    W, b, D = make_layer(4, 3, 6)
    for scale in (1e-300, 1e-30, 1e-12, 0.0):
        out = ck.route(unit_rows(9, 6) * scale, W, b, D, need_weights=True, need_onorm=True, backend="eager")
        assert_no_nan(out)
        # r -> 0: votes -> b, so the route equals the one of the zero residual
        zero = ck.route(torch.zeros(9, 6, dtype=torch.float64), W, b, D, backend="eager")
        assert torch.equal(out.token, zero.token)


@pytest.mark.parametrize("dc", [1, 4])
def test_equal_capsules_give_uniform_weights_and_the_first_token(dc):
    """Identical capsules: c* is uniform. With d_c = 1 each agreement logit is one product, so the
    logits are bit-equal and the tie must go to capsule 0 (with d_c > 1 the per-capsule sums may
    round in different orders, so only the weights are compared)."""
    W1, b1, D = make_layer(1, dc, 6)
    k = 5
    W, b = W1.expand(k, -1, -1).contiguous(), b1.expand(k, -1).contiguous()
    out = ck.route(unit_rows(11, 6), W, b, D, mode="soft", need_weights=True, backend="eager")
    assert_no_nan(out)
    assert torch.allclose(out.weights, torch.full((11, k), 1.0 / k, dtype=torch.float64), rtol=0, atol=1e-12)
    if dc == 1:
        assert out.token.tolist() == [0] * 11
    zero = torch.zeros_like(W)  # all votes equal b exactly: the same tie through every round
    out = ck.route(unit_rows(11, 6), zero, b, D, mode="hard", backend="eager")
    assert out.token.tolist() == [0] * 11


def test_one_capsule_routes_everything_to_token_zero():
    W, b, D = make_layer(1, 3, 5)
    out = ck.route(unit_rows(13, 5), W, b, D, need_weights=True, need_onorm=True, backend="eager")
    assert_no_nan(out)
    assert out.token.tolist() == [0] * 13 and torch.equal(out.weights, torch.ones(13, 1, dtype=torch.float64))


def test_every_item_stops_at_depth_one():
    """tau = 0: every confidence passes, so each SID is one code long and nothing routes further."""
    layers = [make_layer(4, 3, 6, seed=s) for s in range(3)]
    out = ck.tokenize(unit_rows(17, 6), layers, tau=0.0, backend="eager")
    assert out.lengths.tolist() == [1] * 17
    assert out.stop_reason.tolist() == [STOP_CONF] * 17
    assert bool((out.sids[:, 1:] == ck.PAD_TOKEN).all())


@pytest.mark.parametrize("n, chunk", [(53, 7), (64, 13), (1, 5), (97, 32)])
def test_chunks_that_do_not_divide_n_give_the_whole_result(n, chunk):
    layers = [make_layer(5, 3, 6, seed=s) for s in range(3)]
    x = unit_rows(n, 6, seed=n)
    whole = ck.tokenize(x, layers, backend="eager")
    parts = ck.tokenize(x, layers, backend="eager", batch_size=chunk)
    assert torch.equal(whole.sids, parts.sids) and torch.equal(whole.lengths, parts.lengths)
    assert torch.allclose(whole.recon, parts.recon, rtol=0, atol=1e-12)
