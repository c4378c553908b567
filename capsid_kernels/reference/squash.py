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


def _norm(zc: Tensor, dim: int) -> Tensor:
    """||z|| without overflow or underflow of the squared norm: max|z_i| * ||z / max|z_i|||.
    (float32's sum of squares is inf past ||z|| ~ 1.8e19 and 0 below ~1e-23.)"""
    s = zc.abs().amax(dim=dim, keepdim=True)
    return s * torch.linalg.vector_norm(zc / torch.where(s > 0, s, torch.ones_like(s)), dim=dim, keepdim=True)


def _scale(n: Tensor) -> Tensor:
    """f(n) = n / (0.5 + n^2), written as 1 / (n + 0.5 / n) above n = 1 so that n^2 never
    overflows; both branches take safe inputs, so autograd through torch.where stays finite."""
    big = n > 1
    hi = torch.where(big, n, torch.ones_like(n))
    lo = torch.where(big, torch.ones_like(n), n)
    return torch.where(big, torch.reciprocal(hi + 0.5 / hi), lo / (0.5 + lo * lo))


def squash(z: Tensor, dim: int = -1) -> Tensor:
    """Squash along ``dim`` in float32 (float64 for float64 input); returns ``z``'s dtype.
    Finite for every finite z (no squared norm is formed)."""
    zc = z.to(compute_dtype(z.dtype))
    # the norm's backward is zero at the origin, so the gradient exists everywhere.
    return (zc * _scale(_norm(zc, dim))).to(z.dtype)


def squash_backward(grad: Tensor, z: Tensor, dim: int = -1) -> Tensor:
    """Gradient of ``sum(grad * squash(z))`` with respect to ``z``.

    With ``n = ||z||``, ``u = z / n`` and ``f(n) = n / (0.5 + n^2)``:
    ``dL/dz = f(n) g + n f'(n) (u . g) u``, ``n f'(n) = n (0.5 - n^2) / (0.5 + n^2)^2``
    (written with t = 1/n above n = 1, so nothing overflows). The second term is 0 at z = 0.
    """
    cd = compute_dtype(z.dtype)
    zc, gc = z.to(cd), grad.to(cd)
    n = _norm(zc, dim)
    u = zc / torch.where(n > 0, n, torch.ones_like(n))
    big = n > 1
    t = 1.0 / torch.where(big, n, torch.ones_like(n))
    lo = torch.where(big, torch.ones_like(n), n)
    nfp = torch.where(big, (0.5 * t * t - 1.0) * t / (0.5 * t * t + 1.0) ** 2,
                      (0.5 - lo * lo) * lo / (0.5 + lo * lo) ** 2)
    ug = (u * gc).sum(dim=dim, keepdim=True)
    return (_scale(n) * gc + nfp * ug * u).to(z.dtype)
