"""Shared test helpers. GPU-marked tests skip without CUDA; nothing here touches the GPU at import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tests of tiny models: two threads on a busy 2-core runner were
    measured 30-40x slower. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_layer(k: int, dc: int, d: int, *, dtype=torch.float64, device="cpu", seed: int = 0, scale: float = 1.0):
    """Random (W, b, D) with votes of norm about ``scale`` for unit residuals: never zeros."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, dc, d, generator=g, dtype=torch.float64) * (scale / dc ** 0.5)
    b = torch.randn(k, dc, generator=g, dtype=torch.float64) * (scale / dc ** 0.5)
    D = torch.randn(d, dc, generator=g, dtype=torch.float64) / dc ** 0.5
    return tuple(t.to(dtype=dtype, device=device) for t in (W, b, D))


def unit_rows(n: int, d: int, *, dtype=torch.float64, device="cpu", seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def poison_cuda_cache(nbytes: int = 1 << 26) -> None:
    """Fill freed blocks of the caching allocator with NaN so unwritten outputs show up."""
    block = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del block


def child_env(**extra: str) -> dict:
    """This process's environment with the repository first on PYTHONPATH, plus ``extra``: for a
    test's child process."""
    return dict(os.environ, **extra, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))


def run_under_interpreter(test_file: str, *, timeout: int = 600, **env: str) -> dict:
    """Run ``test_file --interpret`` in a child process with TRITON_INTERPRET=1 (it must be set before
    Triton is imported, and this pytest process may already have imported it) and ``env``; return the
    JSON report the child prints as its last line. Skips when Triton is not installed."""
    pytest.importorskip("triton")
    res = subprocess.run([sys.executable, os.path.abspath(test_file), "--interpret"],
                         env=child_env(TRITON_INTERPRET="1", **env), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def triton_tokenize(x, layers, routing, *, need_weights: bool = False, chunk=None, keep=None,
                    int_dtype=torch.int64):
    """``tokenize``'s chunk loop with the Triton stack on x's device, results there too: the Triton
    stack on CPU tensors under TRITON_INTERPRET=1, where ``tokenize`` itself would run the eager one.
    ``keep``: the outputs kept (default all); ``chunk``: items per chunk (default the op's)."""
    from capsid_kernels.ops.stack_chunks import StackResults, run_stack
    from capsid_kernels.reference.stack import STACK_OUTPUTS
    from capsid_kernels.triton.stack import DEFAULT_CHUNK, TritonStack

    results = StackResults(x.shape[0], x.shape[1], len(layers), device=x.device, float_dtype=torch.float32,
                           keep=STACK_OUTPUTS if keep is None else keep, int_dtype=int_dtype)
    return run_stack(x, TritonStack(layers, routing, need_weights=need_weights), results, chunk or DEFAULT_CHUNK)
