"""Eager reference of the squash non-linearity (SPEC §2).

``squash(z) = z * ||z|| / (0.5 + ||z||^2)``: the paper's form, written so that it is
defined at ``z = 0`` without dividing by ``||z||``. The analytic backward lives here too,
because the fused kernels implement that formula and the tests compare against it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and accumulation run in float32 for every input dtype except float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def squash(z: Tensor, dim: int = -1) -> Tensor:
    """Squash along ``dim`` in float32 (float64 for float64 input); returns ``z``'s dtype."""
    zc = z.to(compute_dtype(z.dtype))
    # vector_norm's backward is zero at the origin, so the gradient exists everywhere.
    n = torch.linalg.vector_norm(zc, dim=dim, keepdim=True)
    return (zc * (n / (0.5 + n * n))).to(z.dtype)


def squash_backward(grad: Tensor, z: Tensor, dim: int = -1) -> Tensor:
    """Gradient of ``sum(grad * squash(z))`` with respect to ``z``.

    With ``n = ||z||`` and ``f(n) = n / (0.5 + n^2)``:
    ``dL/dz = f(n) g + z (z . g) f'(n) / n`` where ``f'(n) = (0.5 - n^2) / (0.5 + n^2)^2``.
    The second term vanishes as ``z -> 0`` (it is O(||z||)), so it is set to 0 there.
    """
    cd = compute_dtype(z.dtype)
    zc, gc = z.to(cd), grad.to(cd)
    n = torch.linalg.vector_norm(zc, dim=dim, keepdim=True)
    den = 0.5 + n * n
    f = n / den
    safe_n = torch.where(n > 0, n, torch.ones_like(n))
    coef = torch.where(n > 0, (0.5 - n * n) / (den * den * safe_n), torch.zeros_like(n))
    zg = (zc * gc).sum(dim=dim, keepdim=True)
    return (f * gc + coef * zg * zc).to(z.dtype)
