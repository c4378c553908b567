"""The op/backend registry on CPU: records, every reason, the priority walk, the fallback warning,
and ``info --json``. CUDA requests are made by name (device_type="cuda"): no tensors, no GPU."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels import _ext, info, registry
from capsid_kernels.registry import dispatch, not_supported_reasons, select

F32, BF16, F64, F16 = torch.float32, torch.bfloat16, torch.float64, torch.float16
ROUTE = {"K": 256, "d_c": 64, "d": 128, "rounds": 3}  # the default preset: within every limit
NO_EXTENSION = "the C++/CUDA extension capsid_kernels._C is not built (simulated)"


@pytest.fixture
def fresh_warnings():
    registry.reset_fallback_warnings()
    yield
    registry.reset_fallback_warnings()


@pytest.fixture
def everything_built(monkeypatch):
    """Triton installed and the extension built with every op, whatever this machine has."""
    monkeypatch.setattr(registry, "need_reason", lambda needs: None)


@pytest.fixture
def nothing_built(monkeypatch):
    """Neither Triton nor the extension, through the same checks the registry makes."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    monkeypatch.setitem(_ext._state, "tried", True)
    monkeypatch.setitem(_ext._state, "module", None)
    monkeypatch.setitem(_ext._state, "error", NO_EXTENSION)


def test_one_record_per_op_and_backend_with_a_kernel():
    keys = [(k.op, k.backend) for k in registry.KERNELS]
    assert len(keys) == len(set(keys))
    for op in registry.OPS:
        for backend in ("triton", "cuda"):
            no_kernel = "no Triton kernel" in (registry.unsupported_reason(op, backend, "cuda", F32) or "") or \
                "no CUDA C++ kernel" in (registry.unsupported_reason(op, backend, "cuda", F32) or "")
            assert ((op, backend) in keys) != no_kernel, (op, backend)
    rec = registry.kernel("route", "triton")
    assert rec.limits == {"d": 256, "d_c": 128, "rounds": 16} and rec.dtypes == (F32, BF16)
    with pytest.raises(TypeError):
        rec.limits["d"] = 512  # the records are frozen, limits included
    assert registry.kernel("beam_step", "cuda").limits["num_beams"] == 128


def test_info_json_lists_every_record(capsys):
    assert info.main(["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    got = {(r["op"], r["backend"]): r for r in rep["kernels"]}
    assert set(got) == {(k.op, k.backend) for k in registry.KERNELS}
    for (op, backend), r in got.items():
        assert r["dtypes"] and r["device_type"] == "cuda" and r["note"]
        assert set(r["why_not"]) == set(r["dtypes"])
        if rep["device"] == "cpu":
            assert all(any("needs CUDA tensors" in why for why in reasons) for reasons in r["why_not"].values())
    assert got[("route", "cuda")]["limits"] == {"d": 128, "d_c": 128, "rounds": 64}
    assert rep["rules"][0]["when"] == ["K >= 1024", "d_c > 64"] and rep["rules"][0]["prefer"] == "cuda"


def test_info_text_prints_the_records(capsys):
    assert info.main([]) == 0
    text = capsys.readouterr().out
    for rec in registry.KERNELS:
        assert rec.note in text
    assert "limits: d <= 256, d_c <= 128, rounds <= 16" in text and "limits: num_beams <= 128" in text


def test_cpu_tensors_list_the_device_reason():
    for rec in registry.KERNELS:
        reasons = not_supported_reasons(rec.op, rec.backend, device_type="cpu", dtype=F32)
        assert f"the {rec.backend} backend needs CUDA tensors, got tensors on 'cpu'" in reasons
    assert not_supported_reasons("route", "eager", device_type="cpu", dtype=F16) == []


def test_every_reason_is_listed(nothing_built):
    for backend, missing in (("cuda", NO_EXTENSION), ("triton", "Triton is not installed (pip install triton)")):
        reasons = not_supported_reasons("route", backend, device_type="cuda", dtype=F16, d_c=200)
        assert reasons[0] == f"the {backend} backend supports float32 and bfloat16, got torch.float16"
        assert reasons[1] == missing
        assert reasons[2].startswith("capsule dim d_c=200 exceeds the ")
        assert len(reasons) == 3
    reasons = not_supported_reasons("beam_step", "cuda", device_type="cpu", dtype=F16, num_beams=129)
    assert len(reasons) == 4 and reasons[-1] == "num_beams=129 exceeds the CUDA kernel's limit 128 (use backend='eager')"
    with pytest.raises(ck.BackendUnavailable, match="needs CUDA tensors.*float32 and bfloat16.*not built"):
        select("route", "cuda", "cpu", F16)
    with pytest.raises(ValueError, match="sizes: expected names from"):
        not_supported_reasons("route", "cuda", device_type="cuda", dtype=F32, dc=3)


def test_limit_hints_name_the_backends_that_take_the_size():
    assert registry.limit_reasons("route", "cuda", d=200) == [
        "item dim d=200 exceeds the CUDA kernel's limit 128 (use backend='triton' or 'eager')"]
    assert registry.limit_reasons("route", "triton", rounds=20) == [
        "rounds=20 exceeds the Triton kernel's limit 16 (use backend='cuda' or 'eager')"]
    assert registry.limit_reasons("route", "cuda", rounds=70, d=300) == [
        "item dim d=300 exceeds the CUDA kernel's limit 128 (use backend='eager')",
        "rounds=70 exceeds the CUDA kernel's limit 64 (use backend='eager')"]


@pytest.mark.parametrize("op, dtype, sizes, want", [
    ("route", F32, ROUTE, "triton"),
    ("route", BF16, ROUTE, "triton"),
    ("route", F32, {**ROUTE, "K": 1024, "d_c": 96}, "cuda"),   # the measured exception
    ("route", BF16, {**ROUTE, "K": 1024, "d_c": 96}, "triton"),
    ("route", F32, {**ROUTE, "K": 1024, "d_c": 64}, "triton"),
    ("route", F32, {**ROUTE, "K": 1024, "d_c": 96, "d": 200}, "triton"),  # past cuda's d: the rule steps aside
    ("route", F32, {**ROUTE, "d_c": 200}, "eager"),
    ("route", F32, {**ROUTE, "rounds": 20}, "eager"),  # past triton's limit: eager, as before the registry
    ("route", F64, ROUTE, "eager"),
    ("squash", F64, {}, "cuda"),
    ("squash", F32, {}, "cuda"),
    ("beam_step", F32, {"num_beams": 128}, "cuda"),
    ("beam_step", F32, {"num_beams": 129}, "eager"),
    ("beam_step", F64, {"num_beams": 4}, "eager"),
])
def test_auto_walk(everything_built, fresh_warnings, op, dtype, sizes, want):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.BackendFallbackWarning)
        assert dispatch(op, "auto", "cuda", dtype, **sizes) == want
    assert dispatch(op, "auto", "cpu", dtype, **sizes) == "eager"


def test_auto_walk_without_triton(monkeypatch, fresh_warnings):
    monkeypatch.setattr(registry, "need_reason", lambda needs: "Triton is not installed" if needs == "triton" else None)
    assert dispatch("route", "auto", "cuda", BF16, **ROUTE) == "cuda"
    assert dispatch("route", "auto", "cuda", F32, **{**ROUTE, "rounds": 20}) == "cuda"
    with pytest.warns(registry.BackendFallbackWarning):
        assert dispatch("route", "auto", "cuda", F32, **{**ROUTE, "d": 200}) == "eager"


def test_named_backends_raise_with_every_reason(everything_built):
    with pytest.raises(registry.BackendLimitExceeded, match="backend='triton' cannot run op 'route': capsule dim d_c=200"):
        dispatch("route", "triton", "cuda", F32, **{**ROUTE, "d_c": 200})
    with pytest.raises(ValueError, match="num_beams=129 exceeds the CUDA kernel's limit 128"):
        dispatch("beam_step", "cuda", "cuda", F32, num_beams=129)  # a ValueError, as before the registry
    with pytest.raises(ck.BackendUnavailable) as e:
        dispatch("route", "cuda", "cpu", F32, **{**ROUTE, "d": 200})
    assert not isinstance(e.value, ValueError)  # the device is wrong: not a size refusal
    assert "needs CUDA tensors" in str(e.value) and "d=200 exceeds" in str(e.value)
    assert dispatch("route", "eager", "cuda", F16, d=10_000) == "eager"
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        dispatch("route", "fast", "cuda", F32)


def test_auto_fallback_warns_once_naming_the_reasons(nothing_built, fresh_warnings):
    with pytest.warns(ck.BackendFallbackWarning) as got:
        assert dispatch("route", "auto", "cuda", F32, **ROUTE) == "eager"
    assert len(got) == 1
    msg = str(got[0].message)
    assert "backend='auto' runs 'route' on the eager reference" in msg
    assert "triton: Triton is not installed (pip install triton)" in msg and f"cuda: {NO_EXTENSION}" in msg
    assert got[0].filename == __file__  # points at the caller outside the package
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch("route", "auto", "cuda", F32, **ROUTE) == "eager"  # same (op, reasons): silent
        assert dispatch("route", "auto", "cpu", F16, **ROUTE) == "eager"  # CPU: eager is the only path
        assert select("route", "auto", "cuda", F16) == "eager"  # select is a query: it never warns
    with pytest.warns(ck.BackendFallbackWarning, match="float16"):
        dispatch("route", "auto", "cuda", F16, **ROUTE)  # other reasons: warned again
    with pytest.warns(ck.BackendFallbackWarning, match="'squash'"):
        dispatch("squash", "auto", "cuda", F32)


def test_fallback_past_the_limits_names_them(everything_built, fresh_warnings):
    with pytest.warns(ck.BackendFallbackWarning) as got:
        dispatch("route", "auto", "cuda", F32, **{**ROUTE, "rounds": 20})
    msg = str(got[0].message)
    assert "triton: rounds=20 exceeds the Triton kernel's limit 16" in msg
    assert "cuda: not tried: auto stops at triton" in msg
    with pytest.warns(ck.BackendFallbackWarning, match="cuda: num_beams=200 exceeds the CUDA kernel's limit 128"):
        dispatch("beam_step", "auto", "cuda", F32, num_beams=200)


def test_wrappers_keep_their_answers():
    from capsid_kernels import backends
    from capsid_kernels.ops import route_cuda
    from capsid_kernels.triton import support

    assert backends.select is select and backends.BackendUnavailable is ck.BackendUnavailable
    assert (support.MAX_D, support.MAX_DC, support.MAX_ROUNDS) == (256, 128, 16)
    assert (route_cuda.MAX_D, route_cuda.MAX_DC, route_cuda.MAX_ROUNDS) == (128, 128, 64)
    assert support.shape_reason(300, 64, 3) == "item dim d=300 exceeds the Triton kernel's limit 256 (use backend='eager')"
    assert route_cuda.shape_reason(128, 128, 64) is None
    assert issubclass(ck.BackendFallbackWarning, RuntimeWarning)
