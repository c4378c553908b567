"""The compiled extension: built wherever it can be, its C++ operators against the reference.

CPU tests run the C++ CPU kernels registered under the same operator names, which proves the
build, the registration, the fake implementations and the autograd wiring without a GPU.
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels import _ext
from capsid_kernels.reference import squash, squash_backward
from conftest import poison_cuda_cache


def _toolkit_present() -> bool:
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


def _should_be_built() -> bool:
    return (torch.version.cuda is not None and _toolkit_present()
            and os.environ.get("CAPSID_SKIP_CUDA_BUILD") != "1")


def test_extension_built_when_toolchain_present():
    if not _should_be_built():
        pytest.skip("CPU-only torch, no CUDA toolkit, or CAPSID_SKIP_CUDA_BUILD=1: the extension is optional here")
    assert importlib.util.find_spec("capsid_kernels._C") is not None, _ext.error()
    assert _ext.load() is not None, _ext.error()
    info = _ext.build_info()
    assert "9.0" in info["arch_list"] or os.environ.get("TORCH_CUDA_ARCH_LIST")
    assert {"squash_forward", "squash_backward", "beam_step"} <= set(info["ops"])


needs_ext = pytest.mark.skipif(_ext.load() is None, reason="capsid_kernels._C not built")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (3, 4, 33), (130, 64), (2, 96), (0, 8)])
def test_cpp_cpu_squash_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    z = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    out = torch.ops.capsid_C.squash_forward(z)
    ref = squash(z.double())
    tol = {torch.float64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    grad = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    back = torch.ops.capsid_C.squash_backward(grad, z)
    torch.testing.assert_close(back.double(), squash_backward(grad.double(), z.double()), rtol=tol * 4, atol=tol * 4)


@needs_ext
def test_cpp_op_opcheck_and_gradcheck_cpu():
    z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.capsid_C.squash_forward.default, (z,))
    assert torch.autograd.gradcheck(torch.ops.capsid_C.squash_forward, (z,))
    assert torch.equal(torch.ops.capsid_C.squash_forward(torch.zeros(2, 3)), torch.zeros(2, 3))


@needs_ext
def test_cpp_op_argument_errors():
    # In a subprocess: an error path that crashed would otherwise take the whole suite down.
    code = (
        "import torch, capsid_kernels._ext as e; e.load()\n"
        "for args, want in (((torch.ones(3, dtype=torch.int64),), 'z: expected dtype float32, float64 or bfloat16, got Long'),\n"
        "                   ((torch.ones(3), torch.ones(4)), 'grad: expected the shape of z')):\n"
        "    op = torch.ops.capsid_C.squash_forward if len(args) == 1 else torch.ops.capsid_C.squash_backward\n"
        "    try:\n"
        "        op(*args)\n"
        "    except RuntimeError as exc:\n"
        "        assert want in str(exc), str(exc)\n"
        "    else:\n"
        "        raise AssertionError('no error for ' + want)\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout, res.stderr[-2000:])


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (1000, 64), (257, 96), (33, 7), (4, 3, 130), (70000, 64)])
def test_cuda_squash_against_reference(dtype, shape):
    g = torch.Generator().manual_seed(sum(shape))
    z64 = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    grad64 = torch.randn(shape, generator=g, dtype=torch.float64)
    z, grad = z64.to(dtype).cuda(), grad64.to(dtype).cuda()
    # the kernel's error against float64 must be at most twice the eager reference's own, plus 1e-6
    exact = squash(z.double())
    eager_err = (squash(z).double() - exact).abs().max().item()
    poison_cuda_cache()
    out = ck.squash(z, backend="cuda")
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.double() - exact).abs().max().item() <= 2 * eager_err + 1e-6
    exact_b = squash_backward(grad.double(), z.double())
    eager_err_b = (squash_backward(grad, z).double() - exact_b).abs().max().item()
    poison_cuda_cache()
    back = torch.ops.capsid_C.squash_backward(grad, z)
    assert torch.isfinite(back).all()
    assert (back.double() - exact_b).abs().max().item() <= 2 * eager_err_b + 1e-6


@pytest.mark.gpu
@needs_ext
def test_cuda_squash_autograd_and_auto_backend():
    from capsid_kernels.backends import select

    assert select("squash", "auto", "cuda", torch.float32) == "cuda"
    z = torch.randn(40, 64, device="cuda", dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ck.squash(t, backend="cuda"), (z,))
    torch.library.opcheck(torch.ops.capsid_C.squash_forward.default, (z,))
    compiled = torch.compile(lambda t: ck.squash(t).sum(), fullgraph=True)
    zz = torch.randn(64, 64, device="cuda", requires_grad=True)
    compiled(zz).backward()
    zz2 = zz.detach().clone().requires_grad_()
    squash(zz2).sum().backward()
    torch.testing.assert_close(zz.grad, zz2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_ext
def test_cuda_squash_non_contiguous_and_wrong_device():
    z = torch.randn(64, 128, device="cuda")[:, ::2]
    torch.testing.assert_close(ck.squash(z, backend="cuda"), squash(z), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="grad: expected the device of z"):
        torch.ops.capsid_C.squash_backward(torch.ones(3, 4), torch.ones(3, 4, device="cuda"))
