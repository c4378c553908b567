"""The fused routing backward (triton/route_bwd.py) against eager autograd of the reference.

CPU: the kernels run under TRITON_INTERPRET=1 in one child process (the variable must be set
before Triton is imported) in float64 on small awkward shapes (N not a multiple of the tile,
K = 5 and K = 1, d_c = 7, d = 24), to 1e-8 relative; the gradients of every input through every
output (q, r', z, c*, ||o||) alone and together; gradcheck and opcheck of the custom ops in float64;
N = 0; and float32 / bfloat16 once each with KERNELS.md's rule. GPU (``-m gpu``): the default preset
in fp32, tf32 and bf16 with the rule (error at most 2x the eager reference's own error against
float64, plus 1e-6), bit-identical gradients run to run, torch.compile, and the LoRA path of Stage 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import child_env, make_layer, poison_cuda_cache, run_under_interpreter, unit_rows  # noqa: E402

OUTPUTS = ("confidence", "residual", "recon", "weights", "onorm")
INPUTS = ("r", "W", "b", "D")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double(), ref.double()
    den = ref.norm().item()
    return (a - ref).norm().item() / den if den > 0 else (a - ref).norm().item()


def upstream(n: int, k: int, d: int, which, *, seed: int, device="cpu") -> dict:
    """Random upstream gradients (float64) for the outputs named in ``which``; never zeros."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"confidence": (n,), "residual": (n, d), "recon": (n, d), "weights": (n, k), "onorm": (n,)}
    return {name: torch.randn(shapes[name], generator=g, dtype=torch.float64).to(device) for name in which}


def reference_grads(r, W, b, D, grads: dict, *, rounds, mode, tf32=False, upcast=False):
    """Eager autograd of the reference: in float64 (``upcast``) or at the inputs' dtype."""
    from capsid_kernels.ops._precision import matmul_precision
    from capsid_kernels.reference import route_reference

    leaves = [(t.double() if upcast else t).detach().clone().requires_grad_() for t in (r, W, b, D)]
    with matmul_precision(tf32):
        out = route_reference(*leaves, rounds=rounds, mode=mode, need_weights=True, need_onorm=True)
        outs = [getattr(out, name) for name in grads]
        gs = [g.to(o.dtype) for g, o in zip(grads.values(), outs)]
        got = torch.autograd.grad(outs, leaves, gs, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves)], out


def kernel_grads(r, W, b, D, grads: dict, *, rounds, mode, tf32=False, op=None):
    """Gradients through the Triton training op (``route_triton_train`` unless ``op`` is given)."""
    from capsid_kernels.ops.route import route_triton_train

    op = op or route_triton_train
    leaves = [t.detach().clone().requires_grad_() for t in (r, W, b, D)]
    outs = op(*leaves, rounds, mode == "hard", 1.0, 0.82, 0.08, False, True, True, tf32)
    named = dict(zip(OUTPUTS, outs[:5]))
    sel = [named[name] for name in grads]
    gs = [g.to(o.dtype) for g, o in zip(grads.values(), sel)]
    got = torch.autograd.grad(sel, leaves, gs, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves)], outs


# ----------------------------------------------------------------------------- CPU (interpreter)

def _interpret_main() -> None:
    """Child process: every small case; prints one JSON line of results and failures."""
    import itertools

    from capsid_kernels.ops.route import route_triton, route_triton_backward, route_triton_train

    results, failures = [], []

    def check(case, fn):
        try:
            results.append((case, fn()))
        except Exception as e:  # noqa: BLE001  every failure is reported by case name
            failures.append(f"{case}: {type(e).__name__}: {e}")

    def f64_case(n, k, rounds, mode, which, seed):
        W, b, D = make_layer(k, 7, 24, seed=seed, scale=1.5)
        r = unit_rows(n, 24, seed=seed + 1)
        grads = upstream(n, k, 24, which, seed=seed + 2)
        ref, _ = reference_grads(r, W, b, D, grads, rounds=rounds, mode=mode)
        got, _ = kernel_grads(r, W, b, D, grads, rounds=rounds, mode=mode)
        errs = {}
        for name, a, e in zip(INPUTS, got, ref):
            assert a.dtype == e.dtype and a.shape == e.shape, f"d{name}: {a.dtype} {tuple(a.shape)} vs {e.dtype} {tuple(e.shape)}"
            errs[name] = _rel(a, e)
            assert errs[name] <= 1e-8, f"d{name}: relative error {errs[name]:.3g} > 1e-8 (expected float64 agreement)"
        return errs

    # Every output's gradient path together, over T, mode and N (1, a partial tile, several tiles).
    ns = itertools.cycle((1, 37, 130))
    for rounds, mode, k in itertools.product((1, 2, 3), ("soft", "hard"), (5, 1)):
        n = next(ns)
        check(f"f64 N={n} K={k} T={rounds} {mode} all", lambda: f64_case(n, k, rounds, mode, OUTPUTS, 10 * rounds + k))
    # One output at a time: each optional output's path alone (q, c*, ||o||), and r' / z alone.
    for name, mode in itertools.product(OUTPUTS, ("soft", "hard")):
        check(f"f64 N=37 K=5 T=3 {mode} only {name}", lambda: f64_case(37, 5, 3, mode, (name,), 7))

    # gradcheck of the custom ops in float64 (fast mode: random projections of the Jacobian).
    def gradcheck_case(mode, op):
        W, b, D = make_layer(3, 4, 5, seed=3, scale=1.5)
        leaves = [t.clone().requires_grad_() for t in (unit_rows(6, 5, seed=4), W, b, D)]

        def f(*t):
            return op(*t, 3, mode == "hard", 0.9, 0.82, 0.08, False, True, True, False)[:5]

        assert torch.autograd.gradcheck(f, leaves, fast_mode=True), "gradcheck failed"
        return "ok"

    for mode in ("soft", "hard"):
        check(f"gradcheck route_triton_train {mode}", lambda: gradcheck_case(mode, route_triton_train))
    check("gradcheck route_triton (recompute path) soft", lambda: gradcheck_case("soft", route_triton))

    def opcheck_case():
        W, b, D = make_layer(5, 7, 24, seed=5)
        args = [t.clone().requires_grad_() for t in (unit_rows(19, 24, seed=6), W, b, D)]
        torch.library.opcheck(route_triton_train, (*args, 2, False, 1.0, 0.82, 0.08, False, True, True, False))
        outs = route_triton_train(*[a.detach() for a in args], 2, False, 1.0, 0.82, 0.08, False, True, True, False)
        g = upstream(19, 5, 24, OUTPUTS, seed=8)
        torch.library.opcheck(route_triton_backward, (*[a.detach() for a in args], outs[7], outs[8], outs[9], outs[5],
                                                      outs[3], g["confidence"], g["residual"], g["recon"],
                                                      g["weights"], g["onorm"], 2, False, 1.0, False))
        return "ok"

    check("opcheck", opcheck_case)

    def empty_case():
        W, b, D = make_layer(5, 7, 24, seed=9)
        r = unit_rows(4, 24, seed=9)[:0]
        got, outs = kernel_grads(r, W, b, D, upstream(0, 5, 24, OUTPUTS, seed=1), rounds=3, mode="soft")
        assert outs[7].shape == (0, 3, 7), f"saved v: expected shape (0, 3, 7), got {tuple(outs[7].shape)}"
        for name, g, t in zip(INPUTS, got, (r, W, b, D)):
            assert g.shape == t.shape and not g.any(), f"d{name}: expected zeros of shape {tuple(t.shape)}"
        return "ok"

    check("N=0", empty_case)

    def repeat_case():
        W, b, D = make_layer(5, 7, 24, seed=11)
        r = unit_rows(37, 24, seed=12)
        g = upstream(37, 5, 24, OUTPUTS, seed=13)
        a, _ = kernel_grads(r, W, b, D, g, rounds=3, mode="soft")
        c, _ = kernel_grads(r, W, b, D, g, rounds=3, mode="soft")
        assert all(torch.equal(x, y) for x, y in zip(a, c)), "gradients differ between two runs"
        return "ok"

    check("bit-identical twice", repeat_case)

    # float32 and bfloat16 code paths once each, with KERNELS.md's rule against float64.
    def low_case(dtype):
        W, b, D = make_layer(5, 7, 24, seed=14, dtype=dtype, scale=1.5)
        r = unit_rows(37, 24, seed=15, dtype=dtype)
        g = upstream(37, 5, 24, OUTPUTS, seed=16)
        ref, _ = reference_grads(r, W, b, D, g, rounds=3, mode="soft", upcast=True)
        eager, _ = reference_grads(r, W, b, D, g, rounds=3, mode="soft")
        got, _ = kernel_grads(r, W, b, D, g, rounds=3, mode="soft")
        errs = {}
        for name, a, e, x in zip(INPUTS, got, eager, ref):
            assert a.dtype == dtype, f"d{name}: expected dtype {dtype}, got {a.dtype}"
            k_err, e_err = _rel(a, x), _rel(e, x)
            errs[name] = (k_err, e_err)
            assert k_err <= 2 * e_err + 1e-6, f"d{name}: kernel error {k_err:.3g} > 2 x eager {e_err:.3g} + 1e-6"
        return errs

    check("float32", lambda: low_case(torch.float32))
    check("bfloat16", lambda: low_case(torch.bfloat16))
    print(json.dumps({"results": results, "failures": failures}))


def test_route_backward_under_interpreter():
    report = run_under_interpreter(__file__, timeout=900, OMP_NUM_THREADS="1")
    assert not report["failures"], "\n".join(report["failures"])
    assert len(report["results"]) == 12 + 10 + 3 + 1 + 1 + 1 + 2, [r[0] for r in report["results"]]


def test_training_ops_registered_without_cuda():
    """Importing the op layer initialises no CUDA and registers the training ops."""
    code = ("import sys, torch, capsid_kernels.ops.route as m; "
            "assert not torch.cuda.is_initialized(); "
            "assert hasattr(torch.ops.capsid, 'route_triton_train') and hasattr(torch.ops.capsid, 'route_triton_backward')")
    res = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


# ----------------------------------------------------------------------------- GPU

PRECS = {"fp32": (torch.float32, "exact"), "tf32": (torch.float32, "tf32"), "bf16": (torch.bfloat16, "exact")}


def _route_grads(r, W, b, D, grads: dict, *, rounds, mode, precision, backend):
    import capsid_kernels as ck

    leaves = [t.detach().clone().requires_grad_() for t in (r, W, b, D)]
    out = ck.route(*leaves, rounds=rounds, mode=mode, need_weights=True, need_onorm=True, precision=precision,
                   backend=backend)
    outs = [getattr(out, name) for name in grads]
    got = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(grads.values(), outs)], allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(got, leaves)], out


@pytest.mark.gpu
@pytest.mark.parametrize("prec", list(PRECS))
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_backward_gpu(prec, mode):
    """Default preset: every input's gradient through every output, within 2x eager's own error."""
    from capsid_kernels.reference import route_reference

    k, dc, d, n = 256, 64, 128, 4099
    dtype, precision = PRECS[prec]
    W, b, D = make_layer(k, dc, d, dtype=dtype, device="cuda", seed=5, scale=2.0)
    r = unit_rows(n, d, dtype=dtype, device="cuda", seed=6)
    grads = upstream(n, k, d, OUTPUTS, seed=7, device="cuda")
    # Rows whose token the kernel picks differently from float64 (near ties) carry no upstream
    # gradient: there the function itself jumps (q, hard r'), so no gradient is comparable.
    ref_tok = route_reference(*(t.double() for t in (r, W, b, D)), rounds=3, mode=mode).token
    fwd = torch.ops.capsid.route_triton(r, W, b, D, 3, mode == "hard", 1.0, 0.82, 0.08, False, False, False,
                                        precision == "tf32")
    same = fwd[5] == ref_tok
    assert same.double().mean().item() >= 0.99
    grads = {name: g * same.view(-1, *([1] * (g.dim() - 1))) for name, g in grads.items()}
    ref, _ = reference_grads(r, W, b, D, grads, rounds=3, mode=mode, upcast=True)
    eager, _ = reference_grads(r, W, b, D, grads, rounds=3, mode=mode, tf32=precision == "tf32")
    poison_cuda_cache()
    got, _ = _route_grads(r, W, b, D, grads, rounds=3, mode=mode, precision=precision, backend="triton")
    errs = {}
    for name, a, e, x in zip(INPUTS, got, eager, ref):
        assert a.dtype == dtype and torch.isfinite(a).all(), f"d{name}: dtype {a.dtype} or NaN/Inf"
        k_err, e_err = _rel(a, x), _rel(e, x)
        errs[name] = (k_err, e_err)
        assert k_err <= 2 * e_err + 1e-6, f"d{name}: kernel error {k_err:.3g} > 2 x eager {e_err:.3g} + 1e-6"
    print(prec, mode, {k_: (f"{a:.2e}", f"{b_:.2e}") for k_, (a, b_) in errs.items()})


@pytest.mark.gpu
@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_route_backward_gpu_bit_identical(prec):
    """The only mode is deterministic: two runs on the same inputs give the same bits."""
    dtype, precision = PRECS[prec]
    W, b, D = make_layer(256, 64, 128, dtype=dtype, device="cuda", seed=8, scale=2.0)
    r = unit_rows(20011, 128, dtype=dtype, device="cuda", seed=9)
    grads = upstream(20011, 256, 128, OUTPUTS, seed=10, device="cuda")
    first, _ = _route_grads(r, W, b, D, grads, rounds=3, mode="soft", precision=precision, backend="triton")
    poison_cuda_cache()
    second, _ = _route_grads(r, W, b, D, grads, rounds=3, mode="soft", precision=precision, backend="triton")
    for name, a, c in zip(INPUTS, first, second):
        assert torch.equal(a, c), f"d{name}: differs between two runs ({(a - c).abs().max().item():.3g})"


@pytest.mark.gpu
def test_route_backward_gpu_awkward_empty_and_recompute_path():
    from capsid_kernels.ops.route import route_triton

    k, dc, d, n = 37, 24, 72, 301
    W, b, D = make_layer(k, dc, d, dtype=torch.float32, device="cuda", seed=11, scale=1.5)
    r = unit_rows(n, d, dtype=torch.float32, device="cuda", seed=12)
    grads = upstream(n, k, d, OUTPUTS, seed=13, device="cuda")
    ref, _ = reference_grads(r, W, b, D, grads, rounds=2, mode="soft", upcast=True)
    eager, _ = reference_grads(r, W, b, D, grads, rounds=2, mode="soft")
    got, _ = _route_grads(r, W, b, D, grads, rounds=2, mode="soft", precision="exact", backend="triton")
    for name, a, e, x in zip(INPUTS, got, eager, ref):
        assert _rel(a, x) <= 2 * _rel(e, x) + 1e-6, f"d{name}: {_rel(a, x):.3g} vs eager {_rel(e, x):.3g}"
    # route_triton called directly with grad recomputes the saved state: the same bits.
    direct, _ = kernel_grads(r, W, b, D, grads, rounds=2, mode="soft", op=route_triton)
    for name, a, c in zip(INPUTS, got, direct):
        assert torch.equal(a, c), f"d{name}: the recompute path differs from the training op"
    empty, _ = _route_grads(r[:0], W, b, D, upstream(0, k, d, OUTPUTS, seed=1, device="cuda"), rounds=3,
                            mode="soft", precision="exact", backend="triton")
    for name, g, t in zip(INPUTS, empty, (r[:0], W, b, D)):
        assert g.shape == t.shape and not g.any(), f"d{name}: expected zeros of shape {tuple(t.shape)}"


@pytest.mark.gpu
def test_route_backward_gpu_compile_opcheck_and_lora():
    import capsid_kernels as ck
    from capsid_kernels.ops.route import route_triton_backward, route_triton_train

    W, b, D = make_layer(19, 16, 40, dtype=torch.float32, device="cuda", seed=14)
    r = unit_rows(77, 40, dtype=torch.float32, device="cuda", seed=15)
    args = [t.clone().requires_grad_() for t in (r, W, b, D)]
    torch.library.opcheck(route_triton_train, (*args, 3, False, 1.0, 0.82, 0.08, False, True, True, False))
    outs = route_triton_train(r, W, b, D, 3, False, 1.0, 0.82, 0.08, False, True, True, False)
    g = upstream(77, 19, 40, OUTPUTS, seed=16, device="cuda")
    torch.library.opcheck(route_triton_backward, (r, W, b, D, outs[7], outs[8], outs[9], outs[5], outs[3],
                                                  *(g[name].float() for name in OUTPUTS), 3, False, 1.0, False))

    def loss(r, W, b, D):
        out = ck.route(r, W, b, D, rounds=3, need_weights=True, backend="triton")
        return out.residual.square().sum() + out.confidence.sum() + out.weights.square().sum()

    torch._dynamo.reset()
    leaves = [t.clone().requires_grad_() for t in (r, W, b, D)]
    got = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*leaves), leaves)
    leaves2 = [t.clone().requires_grad_() for t in (r, W, b, D)]
    want = torch.autograd.grad(loss(*leaves2), leaves2)
    for name, a, e in zip(INPUTS, got, want):
        assert torch.allclose(a, e, rtol=1e-5, atol=1e-6), f"d{name}: compiled differs from eager mode"

    # Stage 2's LoRA adapters: the gradient reaches U, V through W_eff = W + U Vᵀ.
    gen = torch.Generator(device="cuda").manual_seed(17)
    U = (0.1 * torch.randn(19 * 16, 4, device="cuda", generator=gen)).requires_grad_()
    V = (0.1 * torch.randn(40, 4, device="cuda", generator=gen)).requires_grad_()

    def lora_grads(backend):
        W_eff = W + (U @ V.t()).view(19, 16, 40)
        out = ck.route(r, W_eff, b, D, rounds=3, need_weights=True, backend=backend)
        soft = out.weights @ torch.arange(19.0, device="cuda")
        return torch.autograd.grad(soft.square().sum() + out.residual.square().sum(), [U, V])

    for name, a, e in zip("UV", lora_grads("triton"), lora_grads("eager")):
        assert _rel(a, e) < 1e-5, f"d{name}: LoRA gradient differs from eager ({_rel(a, e):.3g})"


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpret_main()
