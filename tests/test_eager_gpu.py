"""The eager reference and the op layer on CUDA tensors (GPU-marked)."""

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.reference import route_reference
from conftest import make_layer, unit_rows

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_route_cuda_matches_cpu_float64(dtype, mode):
    W, b, D = make_layer(64, 16, 32, seed=3)
    r = unit_rows(513, 32, seed=4)
    ref = route_reference(r, W, b, D, rounds=3, mode=mode, need_weights=True)
    out = ck.route(*(t.to("cuda", dtype) for t in (r, W, b, D)), rounds=3, mode=mode, need_weights=True,
                   backend="eager")
    agree = (out.token.cpu() == ref.token).double().mean().item()
    assert agree >= {torch.float64: 1.0, torch.float32: 0.999, torch.bfloat16: 0.99}[dtype]
    # continuous outputs compared where the token agrees (a flipped near-tie moves a hard residual)
    same = out.token.cpu() == ref.token
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    rel = (out.residual.double().cpu()[same] - ref.residual[same]).norm() / ref.residual[same].norm()
    assert rel < tol and torch.isfinite(out.residual).all()


def test_stack_and_gradients_on_cuda():
    cfg = ck.CapsIDConfig(d=32, capsules=48, capsule_dim=16, max_length=4, tau=0.3, eps=0.3)
    tok = ck.CapsIDTokenizer(cfg, seed=1).cuda()
    x = torch.randn(2000, 32, device="cuda")
    out = tok.tokenize(x)
    assert out.sids.is_cuda and out.sids.shape == (2000, 4)
    cpu = ck.CapsIDTokenizer(cfg, seed=1).tokenize(x.cpu())
    assert (out.sids.cpu() == cpu.sids).double().mean() > 0.99
    out.recon.pow(2).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tok.parameters())


def test_tf32_precision_is_close_to_exact():
    W, b, D = make_layer(256, 64, 128, seed=5, dtype=torch.float32, device="cuda")
    r = unit_rows(4096, 128, seed=6, dtype=torch.float32, device="cuda")
    before = torch.backends.cuda.matmul.allow_tf32
    exact = ck.route(r, W, b, D, precision="exact", backend="eager")
    tf32 = ck.route(r, W, b, D, precision="tf32", backend="eager")
    assert torch.backends.cuda.matmul.allow_tf32 == before  # the setting is restored
    assert (exact.token == tf32.token).double().mean() >= 0.995
    err = (tf32.residual - exact.residual).norm() / exact.residual.norm()
    assert 0 < err < 1e-2  # tf32 really ran (differs) and stays close
