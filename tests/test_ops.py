"""The op layer: custom ops equal the reference, opcheck, torch.compile, argument errors, backends."""

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.ops.route import route_eager
from capsid_kernels.reference import route_reference
from conftest import make_layer, unit_rows

F64 = torch.float64


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_op_equals_reference(mode):
    W, b, D = make_layer(7, 5, 9, seed=1, dtype=torch.float32)
    r = unit_rows(33, 9, seed=2, dtype=torch.float32)
    ref = route_reference(r, W, b, D, rounds=3, mode=mode, need_weights=True, need_onorm=True, last=True)
    out = ck.route(r, W, b, D, rounds=3, mode=mode, need_weights=True, need_onorm=True, last=True, backend="eager")
    for a, e in zip(out, ref):
        assert torch.equal(a, e)


def test_optional_outputs_are_none_when_not_asked():
    W, b, D = make_layer(3, 2, 4, seed=1)
    out = ck.route(unit_rows(5, 4), W, b, D)
    assert out.weights is None and out.onorm is None


def test_route_gradcheck_through_op():
    W, b, D = make_layer(4, 3, 5, seed=3)
    leaves = [t.clone().requires_grad_() for t in (unit_rows(7, 5, seed=4), W, b, D)]

    def f(r, W, b, D):
        out = ck.route(r, W, b, D, rounds=3, need_weights=True, need_onorm=True)
        return out.confidence, out.residual, out.recon, out.weights, out.onorm

    assert torch.autograd.gradcheck(f, leaves)
    # a loss that uses one output only (the others get no gradient)
    assert torch.autograd.gradcheck(lambda *a: ck.route(*a, mode="hard").residual, leaves)


@pytest.mark.parametrize("need", [(False, False), (True, True)])
def test_opcheck_route(need):
    W, b, D = make_layer(5, 4, 6, seed=5)
    args = (unit_rows(8, 6, seed=6), W, b, D)
    args = tuple(t.clone().requires_grad_() for t in args)
    torch.library.opcheck(route_eager, (*args, 3, False, 1.0, 0.82, 0.08, False, need[0], need[1], False))


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    W, b, D = make_layer(6, 4, 8, seed=7, dtype=torch.float32)
    r = unit_rows(16, 8, seed=8, dtype=torch.float32)

    def loss(r, W, b, D):
        out = ck.route(r, W, b, D, rounds=3, need_weights=True)
        s = ck.squash(out.residual)
        return (s ** 2).sum() + out.confidence.sum() + (out.weights ** 2).sum()

    leaves = [t.clone().requires_grad_() for t in (r, W, b, D)]
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    val = compiled(*leaves)
    grads = torch.autograd.grad(val, leaves)
    leaves2 = [t.clone().requires_grad_() for t in (r, W, b, D)]
    val2 = loss(*leaves2)
    grads2 = torch.autograd.grad(val2, leaves2)
    torch.testing.assert_close(val, val2)
    for g, g2 in zip(grads, grads2):
        torch.testing.assert_close(g, g2)


@pytest.mark.parametrize(
    "change, exc, pattern",
    [
        (dict(r=torch.ones(3, 5, 1)), ValueError, r"r: expected shape \[N, d\], got \(3, 5, 1\)"),
        (dict(W=torch.ones(4, 3, 7)), ValueError, r"W: expected shape \[K, d_c, d=5\]"),
        (dict(b=torch.ones(4, 2)), ValueError, r"b: expected shape \[K=4, d_c=3\], got \(4, 2\)"),
        (dict(D=torch.ones(3, 5)), ValueError, r"D: expected shape \[d=5, d_c=3\], got \(3, 5\)"),
        (dict(W=torch.ones(4, 3, 5, dtype=F64)), TypeError, r"W: expected the dtype of r \(torch.float32\), got torch.float64"),
        (dict(r=torch.ones(3, 5, dtype=torch.int32)), TypeError, r"r: expected dtype float64, float32 or bfloat16"),
        (dict(D=torch.ones(5, 3, device="meta")), ValueError, r"D: expected the device of r \(cpu\), got meta"),
        (dict(rounds=0), ValueError, r"rounds: expected an integer >= 1, got 0"),
        (dict(mode="winner"), ValueError, r"mode: expected one of \('soft', 'hard'\), got 'winner'"),
        (dict(precision="fp8"), ValueError, r"precision: expected one of"),
        (dict(backend="fast"), ValueError, r"backend: expected 'auto' or one of"),
    ],
)
def test_route_bad_arguments(change, exc, pattern):
    args = dict(r=torch.ones(3, 5), W=torch.ones(4, 3, 5), b=torch.ones(4, 3), D=torch.ones(5, 3))
    kw = {}
    for key, value in change.items():
        (args if key in args else kw)[key] = value
    with pytest.raises(exc, match=pattern):
        ck.route(args["r"], args["W"], args["b"], args["D"], **kw)


def test_named_backend_that_cannot_run_says_why():
    W, b, D = make_layer(3, 2, 4, dtype=torch.float32)
    r = unit_rows(2, 4, dtype=torch.float32)
    with pytest.raises(ck.BackendUnavailable, match=r"backend='triton' cannot run op 'route': the triton backend needs CUDA tensors"):
        ck.route(r, W, b, D, backend="triton")
    with pytest.raises(ck.BackendUnavailable, match=r"backend='cuda' cannot run op 'squash'"):
        ck.squash(r, backend="cuda")  # CPU tensors: the cuda backend needs CUDA tensors


def test_auto_serves_every_op_on_cpu_with_eager():
    from capsid_kernels.backends import OPS, select

    for op in OPS:
        for dtype in (torch.float32, torch.bfloat16, F64):
            assert select(op, "auto", "cpu", dtype) == "eager"


def test_route_under_autocast_matches_route_outside_it():
    """An enclosing autocast region (a generator trained in mixed precision) leaves routing in
    the inputs' dtype: same outputs, float32 weights."""
    import capsid_kernels as ck

    g = torch.Generator().manual_seed(11)
    r = torch.nn.functional.normalize(torch.randn(33, 12, generator=g), dim=1)
    W, b, D = torch.randn(5, 6, 12, generator=g), torch.randn(5, 6, generator=g), torch.randn(12, 6, generator=g)
    plain = ck.route(r, W, b, D, need_weights=True, backend="eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ck.route(r, W, b, D, need_weights=True, backend="eager")
    assert mixed.weights.dtype == torch.float32 and mixed.residual.dtype == torch.float32
    assert torch.equal(plain.token, mixed.token)
    torch.testing.assert_close(mixed.residual, plain.residual, rtol=0, atol=0)
