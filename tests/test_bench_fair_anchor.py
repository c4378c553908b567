"""CPU tests of the fair anchors (bench/anchors.py; issue 20, item 1) and of bench/routing.py's rows and
ratios built on them. The bf16-vote anchor (``route_fair_bf16``) has its own section below.

The anchor must compute what ``route_reference`` computes: bit for bit in float32 (it runs the same
ops in the same order there), and within KERNELS.md's rule in bf16 (error against the float64
reference at most 2x the bf16 reference's own error, plus 1e-6), forward and gradients. The CUDA call
(``torch.mm(out_dtype=)``) is checked on the meta device; its values need a GPU. Inputs as the bench
draws them (``make_layer``, unit residuals), seeded. No timing is asserted.
"""

from __future__ import annotations

import json
import math
import pathlib
import inspect
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import routing  # noqa: E402  (puts python/ on sys.path too, as when run as a script)
import anchors  # noqa: E402
from capsid_kernels.reference import CONTINUE, STOP_CONF, STOP_RESID, route_reference, route_votes, squash  # noqa: E402
from harness import env_info  # noqa: E402

# (N, K, d_c, d): K and d_c not powers of two, one item, an empty batch, and the default preset's layer.
SHAPES = [(37, 5, 7, 16), (64, 12, 8, 32), (129, 33, 16, 24), (1, 3, 4, 8), (0, 6, 5, 8), (16, 256, 64, 128)]
FLOOR = 1e-6  # KERNELS.md's floor of the 2x rule


def _layer(n, k, dc, d, dtype, seed):
    W, b, D = routing.make_layer(k, dc, d, dtype, seed=seed, device="cpu")
    return routing.unit_rows(n, d, dtype, seed=seed + 1, device="cpu"), W, b, D


def _run(fn, inputs, upstream, **kw):
    """fn's outputs (weights and ||o|| requested) and the gradients of sum(upstream * outputs) w.r.t.
    r, W, b, D. ``upstream`` holds one tensor per float output, cast here to that output's dtype."""
    params = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*params, need_weights=True, need_onorm=True, **kw)
    floats = [getattr(out, name) for name in upstream]
    grads = torch.autograd.grad(floats, params, [u.to(f.dtype) for u, f in zip(upstream.values(), floats)],
                                allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _upstream(n, k, d, seed):
    """Fixed random upstream gradients, bf16-valued so every dtype's run sees the same values."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"confidence": (n,), "residual": (n, d), "recon": (n, d), "weights": (n, k), "onorm": (n,)}
    return {name: torch.randn(*s, generator=g).bfloat16().double() for name, s in shapes.items()}


def _assert_identical(got, got_g, want, want_g):
    """Outputs (dtypes too) and gradients bit for bit."""
    for name in want._fields:
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name)
    for name, g, w in zip("rWbD", got_g, want_g):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"grad of {name}")


def _max_err(x, ref):
    return (x.double() - ref).abs().max().item() if ref.numel() else 0.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode,rounds,last", [("soft", 3, False), ("hard", 3, True), ("soft", 1, True)])
def test_fp32_is_the_reference_bit_for_bit(shape, mode, rounds, last, one_torch_thread):
    n, k, dc, d = shape
    inputs = _layer(n, k, dc, d, torch.float32, seed=10 + n)
    up = _upstream(n, k, d, seed=3)
    got, got_g = _run(anchors.route_fair_anchor, inputs, up, mode=mode, rounds=rounds, last=last)
    want, want_g = _run(route_reference, inputs, up, mode=mode, rounds=rounds, last=last)
    _assert_identical(got, got_g, want, want_g)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] >= 16])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_bf16_within_twice_the_reference_error(shape, mode, one_torch_thread):
    """Every float output and every gradient: anchor error vs float64 <= 2x the bf16 reference's + 1e-6.
    Tokens may differ only at near ties, stop reasons only at their thresholds (set to medians of q and
    of ||r'|| below it, so that every reason occurs)."""
    n, k, dc, d = shape
    inputs = _layer(n, k, dc, d, torch.bfloat16, seed=20 + n)
    exact = [t.double() for t in inputs]  # the bf16 values, exactly
    up = _upstream(n, k, d, seed=4)
    probe = route_reference(*exact, mode=mode)
    tau = probe.confidence.median().item()
    eps = torch.linalg.vector_norm(probe.residual, dim=1)[probe.confidence < tau].median().item()
    kw = dict(mode=mode, tau=tau, eps=eps)
    x64, x64_g = _run(route_reference, exact, up, **kw)
    ref, ref_g = _run(route_reference, inputs, up, **kw)
    got, got_g = _run(anchors.route_fair_anchor, inputs, up, **kw)

    for name in ("confidence", "residual", "recon", "weights", "onorm"):
        g, r, w = (getattr(o, name) for o in (got, ref, x64))
        assert g.dtype == r.dtype, name
        e_got, e_ref = _max_err(g, w), _max_err(r, w)
        assert e_got <= 2 * e_ref + FLOOR, (name, e_got, e_ref)
    for name, g, r, w in zip("rWbD", got_g, ref_g, x64_g):
        assert g.dtype == r.dtype == torch.bfloat16, name
        e_got, e_ref = _max_err(g, w), _max_err(r, w)
        assert e_got <= 2 * e_ref + FLOOR, (f"grad of {name}", e_got, e_ref)

    top2 = x64.weights.topk(2, dim=1).values
    tie = (top2[:, 0] - top2[:, 1]) < 1e-3
    assert torch.equal(got.token[~tie], x64.token[~tie])
    # Near a threshold: q within the 2x rule's band of tau; ||r'|| (float32 of values ~1 before
    # rounding to bf16, unseen here) within 1e-5 of eps.
    band = 2 * _max_err(ref.confidence, x64.confidence) + FLOOR
    near = ((x64.confidence - tau).abs() <= band) | ((torch.linalg.vector_norm(x64.residual, dim=1) - eps).abs() < 1e-5)
    assert torch.equal(got.stop_reason[~near], x64.stop_reason[~near])
    assert set(x64.stop_reason[~near].tolist()) == {CONTINUE, STOP_CONF, STOP_RESID}  # not a vacuous comparison


def test_bf16_votes_gradient_keeps_16_bits(one_torch_thread):
    """Bf16Votes against float64 with the error bound its precision implies: hi + lo carries g_u to
    2^-18 relative, products of bf16 values are exact in float32, and m float32 additions add at most
    (m + 2) 2^-24 of sum |terms| (bounds doubled for the (1 + u) factors). dW is returned in bf16, so
    its bound adds bf16's rounding, 2^-9 relative (doubled too). A backward that dropped ``lo`` would
    break the dr bound (checked)."""
    g = torch.Generator().manual_seed(5)
    n, kc, d = 300, 77, 48
    r = torch.randn(n, d, generator=g).bfloat16().float().requires_grad_()
    w = torch.randn(kc, d, generator=g).bfloat16().requires_grad_()
    up = torch.randn(n, kc, generator=g)
    u = anchors.Bf16Votes.apply(r, w)
    assert u.dtype == torch.float32
    r64, w64, up64 = r.detach().double(), w.detach().double(), up.double()
    assert ((u.detach().double() - r64 @ w64.T).abs() <= (d + 2) * 2**-23 * (r64.abs() @ w64.abs().T)).all()

    dr, dw = torch.autograd.grad(u, [r, w], up)
    assert dr.dtype == torch.float32 and dw.dtype == torch.bfloat16
    bound_r = (2**-17 + (kc + 2) * 2**-23) * (up64.abs() @ w64.abs())
    assert ((dr.double() - up64 @ w64).abs() <= bound_r).all()
    exact_w = up64.T @ r64
    bound_w = (2**-17 + (n + 2) * 2**-23) * (up64.abs().T @ r64.abs()) + 2**-8 * exact_w.abs()
    assert ((dw.double() - exact_w).abs() <= bound_w).all()

    hi_only = anchors.mm_f32(up.bfloat16(), w.detach()).double()
    assert ((hi_only - up64 @ w64).abs() > bound_r).any()


def test_cuda_call_on_meta(one_torch_thread):
    """The CUDA branch (torch.mm with out_dtype, the Function's backward) on meta tensors, eager and under
    torch.compile with fullgraph (dynamo + AOTAutograd): the reference's output dtypes and shapes."""
    inputs = [t.to("meta") for t in _layer(40, 6, 5, 16, torch.bfloat16, seed=7)]
    up = {name: t.to("meta") for name, t in _upstream(40, 6, 16, seed=8).items()}
    want, want_g = _run(route_reference, inputs, up)
    compiled = torch.compile(anchors.route_fair_anchor, backend="aot_eager", fullgraph=True)
    for fn in (anchors.route_fair_anchor, compiled):
        got, got_g = _run(fn, inputs, up)
        for name in want._fields:
            a, b = getattr(got, name), getattr(want, name)
            assert a.device.type == "meta" and (a.dtype, a.shape) == (b.dtype, b.shape), name
        assert [(g.dtype, g.shape) for g in got_g] == [(g.dtype, g.shape) for g in want_g]


def test_compiled_anchor_is_the_eager_anchor(one_torch_thread):
    """One graph (fullgraph) forward and backward through dynamo and AOTAutograd, bf16 on CPU: the same
    values as eager (the ops are the same; only the graph capture differs)."""
    inputs = _layer(50, 7, 6, 16, torch.bfloat16, seed=9)
    up = _upstream(50, 7, 16, seed=10)
    compiled = torch.compile(anchors.route_fair_anchor, backend="aot_eager", fullgraph=True)
    got, got_g = _run(compiled, inputs, up, mode="hard")
    want, want_g = _run(anchors.route_fair_anchor, inputs, up, mode="hard")
    for name in want._fields:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name)
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("anchor", ["route_fair_anchor", "route_fair_bf16"])
def test_anchor_names_a_bad_argument(anchor):
    fn = getattr(anchors, anchor)
    r, W, b, D = _layer(4, 3, 5, 8, torch.bfloat16, seed=11)
    with pytest.raises(ValueError, match="^D: expected shape"):
        fn(r, W, b, D.T)
    with pytest.raises(TypeError, match="^W: expected the dtype of r"):
        fn(r, W.float(), b, D)
    with pytest.raises(TypeError, match="unexpected keyword argument 'round'"):
        fn(r, W, b, D, round=2)


# --------------------------------------------------------------------------- route_fair_bf16
# The bf16-vote anchor rounds, by design, the votes u, the weights c and c*, the capsule outputs o and
# squash(u) to bf16 (the module docstring). Its error against the float64 reference is therefore not
# held to the 2x rule; it is held to the error of exactly those roundings: ``_bf16_model`` performs them
# in float64 (all else exact), so its distance to the float64 reference is the error the documented
# precision implies, propagated through the routing exactly. What the anchor adds on top is float32
# arithmetic (~2^-24 relative, orders below a bf16 rounding) and, rarely, a bf16 rounding that float32
# noise tips to the other neighbour (the same size as the rounding it replaces). Hence the bound
#     err(anchor) <= MODEL_FACTOR * err(model) + 2 * err(bf16 reference) + FLOOR,
# the middle term for the rounding of r' and z to bf16 that every bf16 path (the model excepted) does.
# Measured over these shapes and seeds: err(anchor) / err(model) <= 1.0 (r' and z: within the middle term).
# Mutations (softmax in bf16, agreement against v or squash(u), reconstruction from u, bf16 logits) break
# this bound on at least one of the shapes below (test_bf16_bounds_catch_mutations).
MODEL_FACTOR = 1.25
BENCH_SHAPES = [s for s in SHAPES if s[0] >= 16] + [(256, 256, 64, 128)]


def _rb(x):
    return x.to(torch.bfloat16).double()


def _bf16_model(r, W, b, D, mode, rounds=3, eta=1.0):
    """route_fair_bf16's documented roundings, in float64: token, q, r', z, c*, ||o||."""
    r, W, b, D = (t.double() for t in (r, W, b, D))
    u = _rb(route_votes(r, W, b))
    n, k, _ = u.shape
    a = r.new_zeros(n, k)
    for _ in range(rounds):
        o = squash(torch.einsum("nk,nkc->nc", _rb(torch.softmax(a, -1)), u))
        a = a + torch.einsum("nkc,nc->nk", u, _rb(o))
    cstar = torch.softmax(a, -1)
    token = cstar.argmax(-1)
    onorm = torch.linalg.vector_norm(o, dim=-1)
    if mode == "soft":
        rec = torch.einsum("nk,nkc->nc", _rb(cstar), _rb(squash(u)))
    else:
        rec = squash(u[torch.arange(n), token])
    z = rec @ D.T
    return dict(token=token, confidence=cstar.gather(1, token[:, None])[:, 0] * onorm, residual=r - eta * z,
                recon=z, weights=cstar, onorm=onorm)


FLOATS = ("confidence", "residual", "recon", "weights", "onorm")


def _masked_err(x, ref, mask):
    d = (x.double() - ref).abs()[mask]
    return d.max().item() if d.numel() else 0.0


def _bf16_case(shape, mode, seed):
    n, k, dc, d = shape
    inputs = _layer(n, k, dc, d, torch.bfloat16, seed=seed)
    kw = dict(mode=mode, need_weights=True, need_onorm=True)
    x64 = route_reference(*[t.double() for t in inputs], **kw)
    ref = route_reference(*inputs, **kw)
    return inputs, x64, ref, _bf16_model(*inputs, mode)


def _model_bound_breaches(got, x64, ref, model) -> list:
    """The outputs (name, error, bound) of ``got`` outside the bound above; items whose token differs
    from the float64 reference's in the anchor or in the model are left out (asserted near ties apart)."""
    same = (got.token == x64.token) & (model["token"] == x64.token)
    out = []
    for name in FLOATS:
        e_got = _masked_err(getattr(got, name), getattr(x64, name), same)
        bound = (MODEL_FACTOR * _masked_err(model[name], getattr(x64, name), same)
                 + 2 * _masked_err(getattr(ref, name), getattr(x64, name), same) + FLOOR)
        if not e_got <= bound:
            out.append((name, e_got, bound))
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,rounds,last", [("soft", 3, False), ("hard", 2, True)])
def test_bf16_votes_anchor_is_the_reference_off_bf16(shape, dtype, mode, rounds, last, one_torch_thread):
    """fp32 and fp64: route_fair_bf16 takes the reference path, bit for bit, outputs and gradients."""
    n, k, dc, d = shape
    inputs = [t.to(dtype) for t in _layer(n, k, dc, d, torch.float32, seed=30 + n)]
    up = _upstream(n, k, d, seed=6)
    got, got_g = _run(anchors.route_fair_bf16, inputs, up, mode=mode, rounds=rounds, last=last)
    want, want_g = _run(route_reference, inputs, up, mode=mode, rounds=rounds, last=last)
    _assert_identical(got, got_g, want, want_g)


@pytest.mark.parametrize("shape", BENCH_SHAPES)
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_bf16_votes_within_their_rounding_error(shape, mode, one_torch_thread):
    """Every float output within the bound above (documented roundings, propagated exactly in float64);
    tokens differ from the float64 reference's only at near ties (top-2 gap of c* within 4x the model's
    error of c* plus 1e-6); the stop reason is a function of q and r' and is checked by the reference tests."""
    inputs, x64, ref, model = _bf16_case(shape, mode, seed=40 + shape[0])
    got = anchors.route_fair_bf16(*inputs, mode=mode, need_weights=True, need_onorm=True)
    for name in FLOATS:
        assert getattr(got, name).dtype == getattr(ref, name).dtype, name
    assert _model_bound_breaches(got, x64, ref, model) == []
    top2 = x64.weights.topk(min(2, shape[1]), dim=1).values
    gap = top2[:, 0] - top2[:, -1]
    tie = gap <= 4 * _masked_err(model["weights"], x64.weights, torch.ones_like(gap, dtype=torch.bool)) + FLOOR
    assert torch.equal(got.token[~tie], x64.token[~tie])
    assert (~tie).float().mean() > 0.5  # not a vacuous comparison


# Source mutations of route_from_bf16_votes that the bound must catch (old -> new text).
MUTATIONS = {
    "softmax in bf16": ("c = torch.softmax(a, dim=-1)", "c = torch.softmax(a.to(BF16), dim=-1).float()"),
    "c* in bf16": ("cstar = torch.softmax(a, dim=-1)", "cstar = torch.softmax(a.to(BF16), dim=-1).float()"),
    "logits a in bf16": ("a = a + Bf16Bmm", "a = a.to(BF16).float() + Bf16Bmm"),
    "agreement u.v": ("Bf16Bmm.apply(u, o[:, :, None])", "Bf16Bmm.apply(u, v[:, :, None])"),
    "agreement squash(u).o": ("Bf16Bmm.apply(u, o[:, :, None])", "Bf16Bmm.apply(squash(u), o[:, :, None])"),
    "reconstruction from u": ("Bf16Bmm.apply(cstar[:, None, :], squash(u))", "Bf16Bmm.apply(cstar[:, None, :], u)"),
}


def _mutant(old: str, new: str):
    src = textwrap.dedent(inspect.getsource(anchors.route_from_bf16_votes))
    assert src.count(old) == 1, old  # the mutation still applies to the code under test
    namespace = dict(vars(anchors))
    exec(src.replace(old, new), namespace)  # noqa: S102  a test-local variant of the function
    return namespace["route_from_bf16_votes"]


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_bf16_bounds_catch_mutations(mutation, one_torch_thread):
    """The bound is not vacuous: each mutation of the anchor's code breaks it on at least one (shape, mode)
    of test_bf16_votes_within_their_rounding_error (the same inputs)."""
    fn = _mutant(*MUTATIONS[mutation])
    caught = []
    for shape in BENCH_SHAPES:
        for mode in ("soft", "hard"):
            inputs, x64, ref, model = _bf16_case(shape, mode, seed=40 + shape[0])
            r, W, b, D = inputs
            got = fn(anchors.bf16_votes(r, W, b), r.float(), D.float(), mode, 1.0, 0.5, 0.0, 3,
                     need_weights=True, need_onorm=True)
            if _model_bound_breaches(got, x64, ref, model):
                caught.append((shape, mode))
    assert caught, mutation


@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_bf16_votes_gradients(shape, one_torch_thread):
    """Soft mode (continuous in the inputs): every gradient's error vs float64 <= 32x the bf16 reference's
    + 1e-6. The reference rounds each gradient to bf16 once; this anchor also rounds the votes, c, o, c*
    and squash(u) in the forward, every contraction's incoming gradient in the backward, and sums the
    votes' gradient over its 2T + 1 uses in bf16: measured <= 16x here, the bound doubles it. Hard mode:
    the reference's dtypes and finite values (its gradient jumps where a token flips)."""
    n, k, dc, d = shape
    inputs = _layer(n, k, dc, d, torch.bfloat16, seed=20 + n)
    up = _upstream(n, k, d, seed=4)
    _, x64_g = _run(route_reference, [t.double() for t in inputs], up, mode="soft")
    _, ref_g = _run(route_reference, inputs, up, mode="soft")
    _, got_g = _run(anchors.route_fair_bf16, inputs, up, mode="soft")
    for name, g, r, w in zip("rWbD", got_g, ref_g, x64_g):
        assert g.dtype == r.dtype == torch.bfloat16, name
        e_got, e_ref = _max_err(g, w), _max_err(r, w)
        assert e_got <= 32 * e_ref + FLOOR, (f"grad of {name}", e_got, e_ref)
    _, hard_g = _run(anchors.route_fair_bf16, inputs, up, mode="hard")
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in hard_g)


def test_bf16_bmm_rounds_operands_once(one_torch_thread):
    """Bf16Bmm: forward = float64 product of the bf16-rounded operands, within float32 summation
    ((k + 2) 2^-23 of sum |terms|, doubled); gradients in each operand's dtype, equal to the float64
    products with the bf16-rounded upstream gradient within the same float32 bound plus, for the bf16
    operand, its one rounding (2^-8 relative)."""
    g = torch.Generator().manual_seed(12)
    bsz, m, kk, nn = 7, 1, 45, 9
    x = torch.randn(bsz, m, kk, generator=g).requires_grad_()  # float32: rounded inside
    y = torch.randn(bsz, kk, nn, generator=g).bfloat16().requires_grad_()
    out = anchors.Bf16Bmm.apply(x, y)
    assert out.dtype == torch.float32
    xb, y64 = _rb(x.detach()), y.detach().double()
    assert ((out.detach().double() - xb @ y64).abs() <= (kk + 2) * 2**-22 * (xb.abs() @ y64.abs())).all()
    up = torch.randn(bsz, m, nn, generator=g)
    gx, gy = torch.autograd.grad(out, [x, y], up)
    assert gx.dtype == torch.float32 and gy.dtype == torch.bfloat16
    ub = _rb(up)
    want_x, want_y = ub @ y64.transpose(1, 2), xb.transpose(1, 2) @ ub
    assert ((gx.double() - want_x).abs() <= (nn + 2) * 2**-22 * (ub.abs() @ y64.abs().transpose(1, 2))).all()
    assert ((gy.double() - want_y).abs() <= 2**-8 * want_y.abs() + 2**-22 * (xb.abs().transpose(1, 2) @ ub.abs())).all()


def test_bf16_votes_are_rounded_once(one_torch_thread):
    """bf16_votes: W r + b in float32, rounded to bf16 once: within one bf16 rounding (2^-8 relative) of
    the float64 votes plus the float32 sum's bound."""
    r, W, b, _ = _layer(33, 6, 7, 40, torch.bfloat16, seed=13)
    u = anchors.bf16_votes(r, W, b)
    assert u.dtype == torch.bfloat16 and u.shape == (33, 6, 7)
    exact = route_votes(r.double(), W.double(), b.double())
    scale = torch.einsum("kcd,nd->nkc", W.double().abs(), r.double().abs()) + b.double().abs()
    assert ((u.double() - exact).abs() <= 2**-8 * exact.abs() + 44 * 2**-22 * scale).all()


def test_bf16_votes_cuda_call_on_meta(one_torch_thread):
    """The CUDA branch (linear, torch.bmm with out_dtype, Bf16Bmm's backward) on meta tensors, eager and
    under torch.compile with fullgraph (dynamo + AOTAutograd), soft and hard: the reference's dtypes and shapes."""
    inputs = [t.to("meta") for t in _layer(40, 6, 5, 16, torch.bfloat16, seed=7)]
    up = {name: t.to("meta") for name, t in _upstream(40, 6, 16, seed=8).items()}
    compiled = torch.compile(anchors.route_fair_bf16, backend="aot_eager", fullgraph=True)
    for mode in ("soft", "hard"):
        want, want_g = _run(route_reference, inputs, up, mode=mode)
        for fn in (anchors.route_fair_bf16, compiled):
            got, got_g = _run(fn, inputs, up, mode=mode)
            for name in want._fields:
                a, b = getattr(got, name), getattr(want, name)
                assert a.device.type == "meta" and (a.dtype, a.shape) == (b.dtype, b.shape), name
            assert [(g.dtype, g.shape) for g in got_g] == [(g.dtype, g.shape) for g in want_g]


def test_compiled_bf16_votes_anchor_is_eager(one_torch_thread):
    """One graph (fullgraph), forward and backward, bf16 on CPU: the same values as eager."""
    inputs = _layer(50, 7, 6, 16, torch.bfloat16, seed=9)
    up = _upstream(50, 7, 16, seed=10)
    compiled = torch.compile(anchors.route_fair_bf16, backend="aot_eager", fullgraph=True)
    got, got_g = _run(compiled, inputs, up)
    want, want_g = _run(anchors.route_fair_bf16, inputs, up)
    for name in want._fields:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name)
    for g, w in zip(got_g, want_g):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


# --------------------------------------------------------------------------- bench/routing.py

def _row(backend, dtype, ms, peak=None, n=8):
    row = {"op": "route_train", "backend": backend, "dtype": dtype, "shapes": {"N": n}, "median_ms": ms}
    return row if peak is None else {**row, "peak_mib": peak}


def test_ratios_against_the_fair_anchor():
    bf16 = [_row("eager", "bf16", 8.0, 400.0), _row("compile", "bf16", 4.0, 200.0),
            _row("fair", "bf16", 2.0, 100.0), _row("fair_compile", "bf16", 1.0, 50.0),
            _row("fair_bf16", "bf16", 1.5, 60.0), _row("fair_bf16_compile", "bf16", 0.8, 40.0),
            _row("triton", "bf16", 0.5, 5.0)]
    fp32 = [_row("eager", "fp32", 8.0, 400.0), _row("compile", "fp32", 4.0, 200.0), _row("triton", "fp32", 2.0, 10.0)]
    for case in (bf16, fp32):
        routing.add_ratios(case)
    tri = bf16[-1]
    assert (tri["speedup_vs_eager"], tri["speedup_vs_compile"], tri["speedup_vs_fair_compile"]) == (16.0, 8.0, 2.0)
    assert (tri["peak_vs_eager"], tri["peak_vs_fair_compile"], tri["fair_anchor"]) == (0.0125, 0.1, "fair_compile")
    assert bf16[3]["speedup_vs_fair_compile"] == 1.0 and bf16[2]["speedup_vs_fair_compile"] == 0.5
    # the fastest fair compiled anchor: here the bf16-vote one, named on the row
    assert (tri["speedup_vs_fastest_fair"], tri["peak_vs_fastest_fair"], tri["fastest_fair_anchor"]) == (
        1.6, 0.125, "fair_bf16_compile")
    assert bf16[5]["speedup_vs_fastest_fair"] == 1.0 and bf16[3]["speedup_vs_fastest_fair"] == 0.8
    tri = fp32[-1]  # fp32: the compiled reference is the fair anchor
    assert (tri["speedup_vs_fair_compile"], tri["peak_vs_fair_compile"], tri["fair_anchor"]) == (2.0, 0.05, "compile")
    assert (tri["speedup_vs_fastest_fair"], tri["fastest_fair_anchor"]) == (2.0, "compile")

    slow = [_row("fair_compile", "bf16", 1.0), _row("fair_bf16_compile", "bf16", 3.0), _row("triton", "bf16", 0.5)]
    routing.add_ratios(slow)  # the precision-matched anchor ran faster: it is the fastest one
    assert (slow[2]["speedup_vs_fastest_fair"], slow[2]["fastest_fair_anchor"]) == (2.0, "fair_compile")
    assert "peak_vs_fastest_fair" not in slow[2]  # no peaks in these rows

    failed = [_row("fair_compile", "bf16", 1.0), _row("triton", "bf16", 0.5)]
    del failed[0]["median_ms"]  # a row that could not run gives no ratio
    routing.add_ratios(failed)
    assert "speedup_vs_fair_compile" not in failed[1] and "fair_anchor" not in failed[1]
    assert "speedup_vs_fastest_fair" not in failed[1] and "fastest_fair_anchor" not in failed[1]

    route = [{**_row(b, "bf16", ms, n=n), "op": "route"} for n in (8, 16)
             for b, ms in (("fair_compile", 2.0 * n), ("triton", 1.0), ("cuda", 2.0))]
    routing.route_ratios(route)
    assert [r["speedup_vs_fair_compile"] for r in route if r["backend"] == "triton"] == [16.0, 32.0]
    assert [r["speedup_vs_triton"] for r in route if r["backend"] == "cuda"] == [0.5, 0.5]


TINY = dict(K=5, dc=7, d=16)


def _timed(row):
    assert "error" not in row, row
    for key in ("median_ms", "min_ms", "max_ms", "ns_per_item_layer"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)


def test_route_rows_cpu(tmp_path, monkeypatch, one_torch_thread):
    """The forward rows with the fair anchor, on CPU: fair rows at bf16 only, ratios against it."""
    monkeypatch.setitem(routing.PRESETS, "tiny", TINY)
    rows = routing.route_rows(["tiny"], [24], ["bf16", "fp32"],
                              ["eager", "fair", "fair_compile", "fair_bf16", "fair_bf16_compile", "triton"],
                              env_info(), 50.0, "all", tmp_path, "t", device="cpu")
    assert [(r["dtype"], r["backend"]) for r in rows] == [
        ("bf16", "eager"), ("bf16", "fair"), ("bf16", "fair_compile"), ("bf16", "fair_bf16"),
        ("bf16", "fair_bf16_compile"), ("bf16", "triton"), ("fp32", "eager"), ("fp32", "triton")]
    assert json.loads((tmp_path / "t_partial.json").read_text())[-1]["backend"] == "triton"
    for r in rows:
        assert r["op"] == "route" and r["shapes"]["preset"] == "tiny" and r["shapes"]["N"] == 24
        if r["backend"] == "triton":
            assert r["error"].startswith("unavailable:") and "median_ms" not in r
        else:
            _timed(r)
    routing.route_ratios(rows)
    assert rows[1]["fair_anchor"] == "fair_compile" and rows[2]["speedup_vs_fair_compile"] == 1.0
    fastest = min(rows[2], rows[4], key=lambda r: r["median_ms"])["backend"]
    assert all(r["fastest_fair_anchor"] == fastest for r in rows[:5])
    assert "speedup_vs_fair_compile" not in rows[6]  # fp32 without a compile row: no fair anchor in this run
    assert "speedup_vs_fastest_fair" not in rows[6]


def test_train_rows_cpu(one_torch_thread):
    """The one-layer training rows with the fair anchor eager and compiled (inductor, forward and backward)."""
    rows = routing.train_rows([24], ["bf16", "fp32"], env_info(), 50.0,
                              backends=("eager", "fair", "fair_compile", "fair_bf16", "fair_bf16_compile"),
                              dims=TINY, device="cpu")
    assert [(r["dtype"], r["backend"]) for r in rows] == [
        ("bf16", "eager"), ("bf16", "fair"), ("bf16", "fair_compile"), ("bf16", "fair_bf16"),
        ("bf16", "fair_bf16_compile"), ("fp32", "eager")]
    for r in rows:
        assert r["op"] == "route_train" and r["shapes"]["preset"] == "custom"
        _timed(r)
    assert rows[2]["speedup_vs_fair_compile"] == 1.0 and rows[0]["fair_anchor"] == "fair_compile"
    assert rows[0]["fastest_fair_anchor"] in ("fair_compile", "fair_bf16_compile") and "peak_vs_fastest_fair" not in rows[5]
    with pytest.raises(ValueError, match="^backends: unknown"):
        routing.train_rows([8], ["bf16"], env_info(), 10.0, backends=("cuda",), dims=TINY, device="cpu")


@pytest.mark.parametrize("flag,value", [("--backends", "eager,fast"), ("--train-backends", "eager,cuda"),
                                        ("--fair-ns", "0"), ("--fair-ns", "64k"), ("--precs", "fp16")])
def test_routing_rejects_bad_flags(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        routing.main(["--fair", flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_routing_help_names_the_fair_anchor(capsys):
    with pytest.raises(SystemExit) as e:
        routing.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--fair" in out and "fair_compile" in out and "fair_bf16_compile" in out
