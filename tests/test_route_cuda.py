"""The CUDA C++ routing forward (csrc/route_fwd.cu, backend "cuda") against the reference.

CPU (CI): the extension, when built, exposes ``capsid_C::route_forward`` and refuses CPU tensors
with an error that names the fix; ``backend="cuda"`` on CPU tensors says why it cannot run;
"auto" keeps Triton ahead of "cuda" for routing except the measured float32 wide-layer case
(csrc/ROUTE_CUDA.md).
GPU (``-m gpu``): KERNELS.md tolerances and the token-agreement rule (``compare`` from the Triton
tests), soft and hard, fp32/tf32/bf16, default and industrial shapes, awkward shapes, poisoned
outputs, non-contiguous inputs, N = 0, opcheck, torch.compile, gradients and the tokenizer stack.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from conftest import make_layer, poison_cuda_cache, unit_rows  # noqa: E402
from test_route_triton import PRECS, SHAPES, _rel, compare  # noqa: E402


def _extension_or_skip():
    from capsid_kernels import _ext

    if _ext.load() is None:
        pytest.skip(f"extension not built here: {_ext.error()}")


# ----------------------------------------------------------------------------- CPU

def test_extension_exposes_route_forward_and_refuses_cpu():
    _extension_or_skip()
    assert hasattr(torch.ops.capsid_C, "route_forward"), "the built extension lacks capsid_C::route_forward"
    from capsid_kernels import _ext

    assert "route_forward" in _ext.build_info()["ops"]
    W, b, D = make_layer(5, 7, 24, dtype=torch.float32, seed=1)
    r = unit_rows(3, 24, dtype=torch.float32, seed=2)
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got r on cpu"):
        torch.ops.capsid_C.route_forward(r, W, b, D, 3, False, 1.0, 0.82, 0.08, False, False, False, False)


def test_cuda_backend_refusals_on_cpu():
    import capsid_kernels as ck
    from capsid_kernels.backends import unsupported_reason
    from capsid_kernels.ops.route_cuda import shape_reason

    W, b, D = make_layer(3, 2, 4, dtype=torch.float32)
    r = unit_rows(2, 4, dtype=torch.float32)
    with pytest.raises(ck.BackendUnavailable, match="cuda backend needs CUDA tensors"):
        ck.route(r, W, b, D, backend="cuda")
    assert "float32 and bfloat16" in unsupported_reason("route", "cuda", "cuda", torch.float64)
    assert "d=200" in shape_reason(200, 64, 3) and "d_c=160" in shape_reason(128, 160, 3)
    assert shape_reason(128, 96, 3) is None and shape_reason(24, 7, 1) is None


def test_auto_order_for_routing_is_documented():
    """"auto" for route/tokenize tries Triton before the CUDA kernel (measured faster, see
    csrc/ROUTE_CUDA.md); ``info`` prints the order, so the choice is never silent."""
    from capsid_kernels import info
    from capsid_kernels.backends import auto_order, select

    for op in ("route", "tokenize"):
        for dtype in (torch.float32, torch.bfloat16):
            assert auto_order(op, dtype) == ("triton", "cuda")
    assert auto_order("squash", torch.float32)[0] == "cuda"  # other ops keep the global preference
    if importlib_find("triton"):
        assert select("route", "auto", "cuda", torch.bfloat16) == "triton"
    rep = info.report()
    assert rep["ops"]["route"]["bfloat16"]["auto_order"] == ["triton", "cuda"]
    assert any("K >= 1024" in rule for rule in rep["auto_rules"])


def test_auto_shape_rule_puts_cuda_first_only_where_measured_faster():
    """float32 with K >= 1024 and d_c > 64 (the industrial preset) was measured faster on the CUDA
    kernel; bf16, narrower layers and CPU tensors stay off it."""
    _extension_or_skip()
    from capsid_kernels.ops.route_cuda import auto_prefers_cuda

    f32, bf16 = torch.float32, torch.bfloat16
    assert auto_prefers_cuda("cuda", f32, 1024, 96, 128, 3)
    assert not auto_prefers_cuda("cuda", bf16, 1024, 96, 128, 3)
    assert not auto_prefers_cuda("cuda", f32, 256, 64, 128, 3)
    assert not auto_prefers_cuda("cuda", f32, 1024, 64, 128, 3)
    assert not auto_prefers_cuda("cuda", f32, 1024, 96, 200, 3)  # past the kernel's d limit
    assert not auto_prefers_cuda("cpu", f32, 1024, 96, 128, 3)


def importlib_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------------------- GPU

def _route_cuda(r, W, b, D, **kw):
    import capsid_kernels as ck

    poison_cuda_cache()
    return ck.route(r, W, b, D, need_weights=True, need_onorm=True, backend="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", list(SHAPES))
@pytest.mark.parametrize("prec", list(PRECS))
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_cuda_gpu(preset, prec, mode):
    k, dc, d = SHAPES[preset]
    dtype, precision = PRECS[prec]
    n = 4099 if preset == "default" else 2053
    W, b, D = make_layer(k, dc, d, dtype=dtype, device="cuda", seed=5, scale=2.0)
    r = unit_rows(n, d, dtype=dtype, device="cuda", seed=6)
    out = _route_cuda(r, W, b, D, rounds=3, mode=mode, precision=precision, last=True)
    s = compare(out, r, W, b, D, rounds=3, mode=mode, prec=prec, last=True)
    print(preset, prec, mode, s)


AWKWARD = [  # (N, K, d_c, d, rounds): N off the 128-item tile, K = 1, odd sizes, T = 1 and 2
    (1, 1, 7, 24, 1), (129, 5, 7, 24, 2), (300, 17, 24, 72, 3), (1000, 37, 65, 127, 3), (257, 3, 100, 128, 2),
    (130, 9, 128, 40, 3),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", AWKWARD, ids=lambda c: "N{}-K{}-dc{}-d{}-T{}".format(*c))
@pytest.mark.parametrize("prec", list(PRECS))
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_cuda_awkward_shapes(case, prec, mode):
    n, k, dc, d, rounds = case
    if prec == "tf32" and n == 1:
        pytest.skip("cuBLAS computes a one-row product without tf32, so the eager error is no tf32 yardstick")
    dtype, precision = PRECS[prec]
    W, b, D = make_layer(k, dc, d, dtype=dtype, device="cuda", seed=n + k, scale=2.0)
    r = unit_rows(n, d, dtype=dtype, device="cuda", seed=n) * 0.9
    tau, eps = 0.3, 0.97  # thresholds so CONF, RESID and CONTINUE all occur
    out = _route_cuda(r, W, b, D, rounds=rounds, mode=mode, precision=precision, eta=0.9, tau=tau, eps=eps)
    compare(out, r, W, b, D, rounds=rounds, mode=mode, prec=prec, eta=0.9, tau=tau, eps=eps)


@pytest.mark.gpu
def test_route_cuda_matches_triton_tokens():
    """Same inputs, both fast backends: the tokens agree except at reference near-ties."""
    import capsid_kernels as ck

    W, b, D = make_layer(256, 64, 128, dtype=torch.bfloat16, device="cuda", seed=31, scale=2.0)
    r = unit_rows(20000, 128, dtype=torch.bfloat16, device="cuda", seed=32)
    a = _route_cuda(r, W, b, D)
    t = ck.route(r, W, b, D, need_weights=True, backend="triton")
    assert (a.token == t.token).double().mean().item() >= 0.99
    assert _rel(a.residual, t.residual) < 2e-2


@pytest.mark.gpu
def test_route_cuda_noncontiguous_and_empty():
    import capsid_kernels as ck

    k, dc, d = 37, 24, 72
    W, b, D = make_layer(k, dc, d, dtype=torch.float32, device="cuda", seed=8)
    big = unit_rows(2 * 301, d, dtype=torch.float32, device="cuda", seed=9)
    r = big[::2]
    Wt = W.transpose(1, 2).contiguous().transpose(1, 2)
    assert not r.is_contiguous() and not Wt.is_contiguous()
    out = _route_cuda(r, Wt, b, D, rounds=2)
    compare(out, r.contiguous(), W, b, D, rounds=2, mode="soft", prec="fp32")
    empty = ck.route(r[:0], W, b, D, need_weights=True, need_onorm=True, backend="cuda")
    assert empty.token.shape == (0,) and empty.residual.shape == (0, d) and empty.weights.shape == (0, k)


@pytest.mark.gpu
def test_route_cuda_refuses_large_shapes_and_auto_keeps_triton():
    import capsid_kernels as ck
    from capsid_kernels.ops.route import resolve_backend

    W, b, D = make_layer(4, 8, 160, dtype=torch.float32, device="cuda")
    r = unit_rows(5, 160, dtype=torch.float32, device="cuda")
    with pytest.raises(ck.BackendUnavailable, match="d=160 exceeds the CUDA kernel's limit 128"):
        ck.route(r, W, b, D, backend="cuda")
    W2, _, _ = make_layer(4, 8, 64, dtype=torch.bfloat16, device="cuda")
    r2 = unit_rows(5, 64, dtype=torch.bfloat16, device="cuda")
    assert resolve_backend("auto", r2, W2, 3) == "triton"
    assert resolve_backend("cuda", r2, W2, 3) == "cuda"
    # The measured exception (registry.AUTO_RULES): float32 industrial layers go to cuda.
    W3 = torch.randn(1024, 96, 128, device="cuda")
    r3 = unit_rows(5, 128, dtype=torch.float32, device="cuda")
    assert resolve_backend("auto", r3, W3, 3) == "cuda"
    assert resolve_backend("auto", r3.bfloat16(), W3.bfloat16(), 3) == "triton"


@pytest.mark.gpu
def test_route_cuda_compile_opcheck_and_grad():
    import capsid_kernels as ck

    W, b, D = make_layer(19, 16, 40, dtype=torch.float32, device="cuda", seed=11)
    r = unit_rows(77, 40, dtype=torch.float32, device="cuda", seed=12)
    args = (r, W, b, D, 3, False, 1.0, 0.82, 0.08, False, True, True, False)
    torch.library.opcheck(torch.ops.capsid.route_cuda.default, args)
    f = torch.compile(lambda *t: ck.route(*t, need_weights=True, backend="cuda"), fullgraph=True)
    got, eager = f(r, W, b, D), ck.route(r, W, b, D, need_weights=True, backend="cuda")
    assert torch.equal(got.token, eager.token) and torch.allclose(got.residual, eager.residual)
    leaves = [t.clone().requires_grad_() for t in (r, W, b, D)]
    ck.route(*leaves, backend="cuda").residual.square().sum().backward()
    leaves_e = [t.clone().requires_grad_() for t in (r, W, b, D)]
    ck.route(*leaves_e, backend="eager").residual.square().sum().backward()
    for a, e in zip(leaves, leaves_e):
        assert torch.allclose(a.grad, e.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
def test_route_cuda_is_deterministic():
    """Two runs on the same inputs give bit-identical outputs (no races between warps)."""
    W, b, D = make_layer(256, 64, 128, dtype=torch.bfloat16, device="cuda", seed=41, scale=2.0)
    r = unit_rows(5000, 128, dtype=torch.bfloat16, device="cuda", seed=42)
    a, c = _route_cuda(r, W, b, D), _route_cuda(r, W, b, D)
    for name in ("token", "confidence", "residual", "recon", "weights", "onorm", "stop_reason"):
        assert torch.equal(getattr(a, name), getattr(c, name)), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tokenize_cuda_stack_gpu(dtype):
    import capsid_kernels as ck

    layers = [make_layer(256, 64, 128, dtype=dtype, device="cuda", seed=20 + i, scale=2.0) for i in range(6)]
    x = unit_rows(6001, 128, dtype=dtype, device="cuda", seed=21)
    kw = dict(rounds=3, tau=0.3, eps=0.5)
    poison_cuda_cache()
    got = ck.tokenize(x, layers, backend="cuda", **kw)
    ref = ck.tokenize(x, layers, backend="eager", **kw)
    same = (got.sids == ref.sids).all(dim=1)
    assert same.double().mean().item() >= (0.999 if dtype == torch.float32 else 0.98)
    assert torch.equal(got.lengths[same], ref.lengths[same])
    assert torch.isfinite(got.recon).all() and torch.isfinite(got.residual).all()
    assert _rel(got.recon[same], ref.recon[same]) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_cuda_exact_ties_go_to_the_lowest_capsule(mode):
    """Blocks visit the capsules from different offsets; a duplicated capsule (bit-identical
    logits) must still lose to its lower-index twin, as torch.argmax decides."""
    W, b, D = make_layer(8, 16, 32, dtype=torch.bfloat16, device="cuda", seed=51, scale=2.0)
    W[5], b[5] = W[2], b[2]
    r = unit_rows(3000, 32, dtype=torch.bfloat16, device="cuda", seed=52)  # 24 blocks, 8 offsets
    out = _route_cuda(r, W, b, D, mode=mode)
    assert int((out.token == 2).sum()) > 0, "the duplicated capsule should win some items"
    assert not bool((out.token == 5).any()), "an exact tie went to the higher capsule index"


@pytest.mark.gpu
@pytest.mark.parametrize("prec", list(PRECS))
@pytest.mark.parametrize("variant", [4, 8, 12], ids=["in-order", "16-row-warps", "both"])
def test_route_cuda_schedule_variants(prec, variant):
    """The kernel's other valid schedules (stage_skip bits 4 and 8: capsules in order in every
    block, one 16-row tile per warp) meet the same rule as the default one."""
    from capsid_kernels.ops.route_cuda import forward
    from capsid_kernels.reference.routing import RouteOutput

    dtype, precision = PRECS[prec]
    W, b, D = make_layer(256, 64, 128, dtype=dtype, device="cuda", seed=61, scale=2.0)
    r = unit_rows(3001, 128, dtype=dtype, device="cuda", seed=62)
    poison_cuda_cache()
    q, rp, z, w, on, tok, rea = forward(r, W, b, D, 3, False, 1.0, 0.82, 0.08, False, True, True,
                                        precision == "tf32", variant)
    compare(RouteOutput(tok, q, rp, z, rea, w, on), r, W, b, D, rounds=3, mode="soft", prec=prec)
