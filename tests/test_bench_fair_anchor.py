"""CPU tests of the fair anchor (bench/anchors.py; issue 20, item 1) and of bench/routing.py's rows and
ratios built on it.

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
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import routing  # noqa: E402  (puts python/ on sys.path too, as when run as a script)
import anchors  # noqa: E402
from capsid_kernels.reference import CONTINUE, STOP_CONF, STOP_RESID, route_reference  # noqa: E402
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
    for name in want._fields:
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0, msg=name)
    for name, g, w in zip("rWbD", got_g, want_g):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"grad of {name}")


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


def test_anchor_names_a_bad_argument():
    r, W, b, D = _layer(4, 3, 5, 8, torch.bfloat16, seed=11)
    with pytest.raises(ValueError, match="^D: expected shape"):
        anchors.route_fair_anchor(r, W, b, D.T)
    with pytest.raises(TypeError, match="^W: expected the dtype of r"):
        anchors.route_fair_anchor(r, W.float(), b, D)
    with pytest.raises(TypeError, match="unexpected keyword argument 'round'"):
        anchors.route_fair_anchor(r, W, b, D, round=2)


# --------------------------------------------------------------------------- bench/routing.py

def _row(backend, dtype, ms, peak=None, n=8):
    row = {"op": "route_train", "backend": backend, "dtype": dtype, "shapes": {"N": n}, "median_ms": ms}
    return row if peak is None else {**row, "peak_mib": peak}


def test_ratios_against_the_fair_anchor():
    bf16 = [_row("eager", "bf16", 8.0, 400.0), _row("compile", "bf16", 4.0, 200.0),
            _row("fair", "bf16", 2.0, 100.0), _row("fair_compile", "bf16", 1.0, 50.0),
            _row("triton", "bf16", 0.5, 5.0)]
    fp32 = [_row("eager", "fp32", 8.0, 400.0), _row("compile", "fp32", 4.0, 200.0), _row("triton", "fp32", 2.0, 10.0)]
    for case in (bf16, fp32):
        routing.add_ratios(case)
    tri = bf16[-1]
    assert (tri["speedup_vs_eager"], tri["speedup_vs_compile"], tri["speedup_vs_fair_compile"]) == (16.0, 8.0, 2.0)
    assert (tri["peak_vs_eager"], tri["peak_vs_fair_compile"], tri["fair_anchor"]) == (0.0125, 0.1, "fair_compile")
    assert bf16[3]["speedup_vs_fair_compile"] == 1.0 and bf16[2]["speedup_vs_fair_compile"] == 0.5
    tri = fp32[-1]  # fp32: the compiled reference is the fair anchor
    assert (tri["speedup_vs_fair_compile"], tri["peak_vs_fair_compile"], tri["fair_anchor"]) == (2.0, 0.05, "compile")

    failed = [_row("fair_compile", "bf16", 1.0), _row("triton", "bf16", 0.5)]
    del failed[0]["median_ms"]  # a row that could not run gives no ratio
    routing.add_ratios(failed)
    assert "speedup_vs_fair_compile" not in failed[1] and "fair_anchor" not in failed[1]

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
    rows = routing.route_rows(["tiny"], [24], ["bf16", "fp32"], ["eager", "fair", "fair_compile", "triton"],
                              env_info(), 50.0, "all", tmp_path, "t", device="cpu")
    assert [(r["dtype"], r["backend"]) for r in rows] == [
        ("bf16", "eager"), ("bf16", "fair"), ("bf16", "fair_compile"), ("bf16", "triton"),
        ("fp32", "eager"), ("fp32", "triton")]
    assert json.loads((tmp_path / "t_partial.json").read_text())[-1]["backend"] == "triton"
    for r in rows:
        assert r["op"] == "route" and r["shapes"]["preset"] == "tiny" and r["shapes"]["N"] == 24
        if r["backend"] == "triton":
            assert r["error"].startswith("unavailable:") and "median_ms" not in r
        else:
            _timed(r)
    routing.route_ratios(rows)
    assert rows[1]["fair_anchor"] == "fair_compile" and rows[2]["speedup_vs_fair_compile"] == 1.0
    assert "speedup_vs_fair_compile" not in rows[4]  # fp32 without a compile row: no fair anchor in this run


def test_train_rows_cpu(one_torch_thread):
    """The one-layer training rows with the fair anchor eager and compiled (inductor, forward and backward)."""
    rows = routing.train_rows([24], ["bf16", "fp32"], env_info(), 50.0, backends=("eager", "fair", "fair_compile"),
                              dims=TINY, device="cpu")
    assert [(r["dtype"], r["backend"]) for r in rows] == [("bf16", "eager"), ("bf16", "fair"),
                                                         ("bf16", "fair_compile"), ("fp32", "eager")]
    for r in rows:
        assert r["op"] == "route_train" and r["shapes"]["preset"] == "custom"
        _timed(r)
    assert rows[2]["speedup_vs_fair_compile"] == 1.0 and rows[0]["fair_anchor"] == "fair_compile"
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
    assert e.value.code == 0 and "--fair" in out and "fair_compile" in out
