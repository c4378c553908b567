"""Opt-in non-finite checks and int32 limits of route/squash, and the module default (issue 10)."""

from __future__ import annotations

import pytest
import torch

import capsid_kernels as ck
from conftest import make_layer, unit_rows


def test_route_check_finite_names_argument_and_row():
    W, b, D = make_layer(4, 3, 6)
    r = unit_rows(5, 6)
    W = W.clone()
    W[2, 1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"W: row 2 has a non-finite value \(NaN or Inf\), expected finite values "
                                         r"\(1 such rows along dim 0\)"):
        ck.route(r, W, b, D, check_finite=True)
    out = ck.route(r, W, b, D)  # off by default in the functional op: the NaN flows through
    assert torch.isnan(out.confidence).any()
    r = r.clone()
    r[4, 2] = float("inf")
    with pytest.raises(ValueError, match=r"r: row 4 has a non-finite value"):  # r is checked first
        ck.route(r, W, b, D, check_finite=True)


def test_capsule_layer_checks_parameters_by_default():
    layer = ck.CapsuleLayer(6, 4, 3).double()
    with torch.no_grad():
        layer.b[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"b: row 3 has a non-finite value"):
        layer(unit_rows(5, 6))
    layer.check_finite = False
    layer(unit_rows(5, 6))  # the hot path skips it


def test_squash_check_finite():
    z = torch.ones(3, 4)
    z[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"z: row 1 has a non-finite value"):
        ck.squash(z, check_finite=True)
    assert torch.isnan(ck.squash(z)).any()


def test_int32_limits_are_refused_from_metadata_alone():
    """Meta tensors: no memory is allocated, the check reads shapes only."""
    n = 2**31
    r = torch.empty(n, 4, device="meta")
    W, b, D = torch.empty(2, 3, 4, device="meta"), torch.empty(2, 3, device="meta"), torch.empty(4, 3, device="meta")
    with pytest.raises(ValueError, match=rf"r: expected at most 2\*\*31 - 1 = 2147483647 rows .* got N = {n}; split"):
        ck.route(r, W, b, D)
    k, dc, d = 2**16, 2**8, 2**8  # K * d_c * d = 2**32
    W = torch.empty(k, dc, d, device="meta")
    with pytest.raises(ValueError, match=r"W: expected K \* d_c \* d <= 2\*\*31 - 1 = 2147483647 elements .* got "
                                         r"65536 \* 256 \* 256 = 4294967296"):
        ck.route(torch.empty(3, d, device="meta"), W, torch.empty(k, dc, device="meta"),
                 torch.empty(d, dc, device="meta"))
