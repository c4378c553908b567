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
    layer.execution = ck.ExecutionOptions(check_inputs=False)
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


@pytest.mark.parametrize("name, value, what", [("eta", float("nan"), "eta: expected a finite number"),
                                               ("tau", float("nan"), "tau: expected a finite number"),
                                               ("eps", float("inf"), "eps: expected a finite number"),
                                               ("eta", True, "eta: expected a finite number, got True"),
                                               ("eta", 0.0, "eta: expected a residual step > 0")])
def test_route_refuses_bad_scalars(name, value, what):
    """A NaN tau or eps fails every comparison of the stop rule, and a NaN eta gives NaN residuals."""
    W, b, D = make_layer(4, 3, 6)
    with pytest.raises(ValueError, match=what):
        ck.route(unit_rows(5, 6), W, b, D, **{name: value})


def test_tokenizer_refuses_non_finite_weights_before_tokenizing():
    """A NaN weight once gave all-zero SIDs without an error."""
    tok = ck.CapsIDTokenizer(ck.CapsIDConfig(d=8, capsules=4, capsule_dim=4, max_length=3)).double()
    x = unit_rows(6, 8)
    tok.tokenize(x)
    with torch.no_grad():
        tok.layers[1].D[5, 2] = float("nan")
    with pytest.raises(ValueError, match=r"layers\[1\].D: row 5 has a non-finite value"):
        tok.tokenize(x)


@pytest.mark.parametrize("field, value", [("d", True), ("rounds", True), ("capsules", True), ("capsules", 2.5),
                                          ("max_length", 3.0), ("check_inputs", "yes")])
def test_config_refuses_booleans_and_fractions(field, value):
    with pytest.raises(ValueError, match=rf"{field}: expected"):
        ck.CapsIDConfig(**{field: value})


def test_squash_refuses_an_empty_vector_axis():
    with pytest.raises(ValueError, match=r"z: expected a non-empty last axis .* got shape \(3, 0\)"):
        ck.squash(torch.ones(3, 0))
