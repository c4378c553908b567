"""Shared test helpers. GPU-marked tests skip without CUDA; nothing here touches the GPU at import."""

from __future__ import annotations

import pytest
import torch


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
