"""The grouped routing forward (triton/route_fwd_grouped.py, CAPSID_TRITON_GROUP = 1, 4, 8) against
today's pair kernel (GROUP = 2) and the reference.

CPU: the kernels run under TRITON_INTERPRET=1 in one child process (as in test_route_triton.py), on
small awkward shapes: K = 7 and 5 (pad capsules for every G) with N = 40 (not a multiple of the tile),
K = 256 (many groups) on one tile, d = 24, d_c = 7. Outputs are poisoned before every launch. Per case
and G:

* KERNELS.md's rule against the float64 reference (``test_route_triton.compare``);
* tokens equal to the pair kernel's wherever the reference is not a near tie;
* float64 inputs: every output, the saved state included, equal to the pair kernel's up to float64
  rounding (1e-12 relative: the two differ only in the order of sums of at most K terms);
* float32 and bfloat16: the saved state (SAVE, what the backward reads) no further from the pair
  kernel's float64 run than 2x the pair kernel's own float32 run, plus 1e-6;
* without c*, ||o|| and the saved state, the same bits for q, r', z, token and reason.

Then exact ties (two identical capsules, inside a group and across groups: the first one keeps the
token) and the tokenizer stack against the reference stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import make_layer, run_under_interpreter, triton_tokenize, unit_rows  # noqa: E402

GROUPS = (1, 4, 8)
NEAR_TIE = 1e-3
F64_AGREEMENT = 1e-12
SAVED = ("round_votes", "round_lse", "rec")  # route_forward(save=True)'s last three outputs
TIES = ((1, 2), (4, 5), (7, 8))  # G = 2: across, inside, across pairs; G = 4, 8: inside, inside, across


@contextlib.contextmanager
def poisoned_outputs():
    """While the kernel is set up and launched, torch.empty and torch.empty_like hand out NaN floats
    and -1 integers: an output element the kernel does not write fails every comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    torch.empty = lambda *a, **kw: poison(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: poison(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


@contextlib.contextmanager
def group_env(group: int):
    """CAPSID_TRITON_GROUP = ``group`` for the launches inside (``tile_config`` reads it per call)."""
    before = os.environ.get("CAPSID_TRITON_GROUP")
    os.environ["CAPSID_TRITON_GROUP"] = str(group)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CAPSID_TRITON_GROUP")
        else:
            os.environ["CAPSID_TRITON_GROUP"] = before


def forward(group, r, W, b, D, *, rounds, hard, full=True):
    """route_forward with GROUP = ``group`` on poisoned outputs, as a dict. ``full``: with c*, ||o||
    and the saved state; else without any of them."""
    from capsid_kernels.triton.route_fwd import route_forward

    with group_env(group), poisoned_outputs():
        outs = route_forward(r, W, b, D, rounds, hard, 0.9, 0.3, 0.97, False, full, full, False, save=full)
    names = ("confidence", "residual", "recon", "weights", "onorm", "token", "stop_reason") + (SAVED if full else ())
    return dict(zip(names, outs))


def check_case(r, W, b, D, *, rounds, mode, dtype, bits_check: bool) -> list[str]:
    """Every G against the pair kernel and the reference on one input set; returns the checks' names."""
    from test_route_triton import _rel, compare

    from capsid_kernels.reference import route_reference
    from capsid_kernels.reference.routing import RouteOutput

    hard = mode == "hard"
    f64 = tuple(t.double() for t in (r, W, b, D))
    ref = route_reference(*f64, rounds=rounds, mode=mode, eta=0.9, tau=0.3, eps=0.97, need_weights=True)
    top2 = ref.weights.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) >= NEAR_TIE
    pair = forward(2, r, W, b, D, rounds=rounds, hard=hard)
    pair64 = pair if dtype == torch.float64 else forward(2, *f64, rounds=rounds, hard=hard)
    done = []
    for group in GROUPS:
        got = forward(group, r, W, b, D, rounds=rounds, hard=hard)
        tag = f"G={group}"
        out = RouteOutput(got["token"], got["confidence"], got["residual"], got["recon"], got["stop_reason"],
                          got["weights"], got["onorm"])
        compare(out, r, W, b, D, rounds=rounds, mode=mode, prec="bf16" if dtype == torch.bfloat16 else "fp32",
                eta=0.9, tau=0.3, eps=0.97)
        assert set(got["stop_reason"].tolist()) <= {0, 1, 2}, f"{tag}: stop reason unwritten or out of range"
        assert torch.equal(got["token"][clear], pair["token"][clear]), f"{tag}: token differs from the pair kernel's"
        for name in SAVED:
            assert torch.isfinite(got[name]).all(), f"{tag}: saved {name} has NaN/Inf or is unwritten"
        if dtype == torch.float64:
            assert torch.equal(got["token"], pair["token"]) and torch.equal(got["stop_reason"], pair["stop_reason"]), \
                f"{tag}: float64 token or stop reason differs from the pair kernel's"
            for name in ("confidence", "residual", "recon", "weights", "onorm") + SAVED:
                err = _rel(got[name], pair[name])
                assert err <= F64_AGREEMENT, f"{tag}: float64 {name} differs from the pair kernel's by {err:.3g}"
        else:
            same = (got["token"] == pair["token"]) & (pair["token"] == pair64["token"])
            for name in SAVED:
                k_err = _rel(got[name][same], pair64[name][same])
                p_err = _rel(pair[name][same], pair64[name][same])
                assert k_err <= 2 * p_err + 1e-6, \
                    f"{tag}: saved {name} error {k_err:.3g} > 2 x the pair kernel's {p_err:.3g} + 1e-6"
        if bits_check:
            lean = forward(group, r, W, b, D, rounds=rounds, hard=hard, full=False)
            for name in ("confidence", "residual", "recon", "token", "stop_reason"):
                assert torch.equal(lean[name], got[name]), f"{tag}: {name} changes without c*, ||o|| and SAVE"
        done.append(tag)
    return done


def check_ties(dtype, mode) -> list[str]:
    """Capsules j = i + 1 copies of i for the pairs in TIES, made the strongest: the first keeps the token.

    r, W and b are multiples of 1/16 with a few bits, so every vote is exact in any summation order:
    the interpreter's float32 GEMM (OpenBLAS) rounds a column differently by its position, which would
    split the tie of two copies inside one group's GEMM; the tensor cores do not, but exact votes make
    the tie exact everywhere.
    """
    from capsid_kernels.reference import route_reference

    def dyadic(t):
        return torch.round(t * 16) / 16

    W, b, D = make_layer(13, 7, 24, dtype=torch.float64, seed=31)
    W, b = dyadic(W), dyadic(b)
    for i, j in TIES:
        W[i] *= 3.0
        b[i] *= 3.0
        W[j], b[j] = W[i], b[i]
    W, b, D = (t.to(dtype) for t in (W, b, D))
    r = dyadic(unit_rows(40, 24, dtype=torch.float64, seed=32)).to(dtype)
    ref = route_reference(*(t.double() for t in (r, W, b, D)), rounds=3, mode=mode, eta=0.9, tau=0.3, eps=0.97)
    wins = {i: int((ref.token == i).sum()) for i, _ in TIES}
    assert all(wins.values()), f"every tied pair should win some items, wins {wins}"
    assert not bool(torch.isin(ref.token, torch.tensor([j for _, j in TIES])).any()), "reference took a second copy"
    tied = torch.isin(ref.token, torch.tensor([i for i, _ in TIES]))
    done = []
    for group in (2,) + GROUPS:
        got = forward(group, r, W, b, D, rounds=3, hard=mode == "hard")
        for i, j in TIES:
            assert torch.equal(got["weights"][:, i], got["weights"][:, j]), f"G={group}: capsules {i}, {j} not tied"
        assert torch.equal(got["token"][tied], ref.token[tied]), f"G={group}: a tie went to the second copy"
        done.append(f"G={group}")
    return done


def check_stack(group, mode) -> None:
    """The tokenizer stack (compaction, in-place outputs, per-depth records) against the reference stack."""
    from test_route_triton import _rel

    from capsid_kernels import RoutingParams
    from capsid_kernels.reference import tokenize_stack

    layers = [make_layer(k, 7, 24, dtype=torch.float32, seed=10 + i) for i, k in enumerate((5, 17, 9))]
    x = unit_rows(130, 24, dtype=torch.float32, seed=7) * 3.0
    routing = RoutingParams(rounds=2, mode=mode, eta=0.9, tau=0.3, eps=0.6)
    ref = tokenize_stack(x, layers, routing, need_weights=True)
    with group_env(group), poisoned_outputs():
        got = triton_tokenize(x, layers, routing, need_weights=True, chunk=50)  # 130 = 50 + 50 + 30
    for name in ("sids", "lengths", "stop_reason"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), f"{name} differ"
    assert _rel(got.recon, ref.recon) < 1e-5 and _rel(got.residual, ref.residual) < 1e-5, "recon/residual"
    assert len(got.depths) == len(ref.depths), "depth count"
    for g, rr in zip(got.depths, ref.depths):
        assert torch.equal(g.index, rr.index) and torch.equal(g.token, rr.token), "depth record order"
        assert torch.equal(g.stop_reason, rr.stop_reason), "depth stop reasons"
        for f in ("confidence", "onorm", "residual_norm", "prev_residual_norm", "weights"):
            assert _rel(getattr(g, f), getattr(rr, f)) < 1e-5, f"depth record {f}"


# ----------------------------------------------------------------------------- CPU (interpreter)

def _interpret_main() -> None:
    """Child process: every case, the ties and the stack; prints one JSON line."""
    import itertools

    from capsid_kernels.triton import route_fwd

    results, failures = [], []
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
    # K = 256 on one tile and two rounds, once per dtype: the interpreter takes seconds per launch there.
    cases = [(k, 40, 3, mode, prec) for k, mode, prec in itertools.product((7, 5), ("soft", "hard"), dtypes)]
    cases += [(256, 16, 2, "soft", "fp32"), (256, 16, 2, "hard", "bf16")]
    for k, n, rounds, mode, prec in cases:
        dtype = dtypes[prec]
        case = f"N={n} K={k} T={rounds} {mode} {prec}"
        W, b, D = make_layer(k, 7, 24, dtype=dtype, seed=k + rounds)
        r = unit_rows(n, 24, dtype=dtype, seed=n + k)
        try:
            done = check_case(r, W, b, D, rounds=rounds, mode=mode, dtype=dtype, bits_check=prec == "fp32" and k < 256)
            results.append((case, done))
        except AssertionError as e:
            failures.append(f"{case}: {e}")
    for prec, mode in (("fp32", "soft"), ("fp32", "hard"), ("bf16", "soft")):
        case = f"ties {mode} {prec}"
        try:
            results.append((case, check_ties(dtypes[prec], mode)))
        except AssertionError as e:
            failures.append(f"{case}: {e}")
    for group, mode in itertools.product(GROUPS, ("soft", "hard")):
        case = f"stack G={group} {mode}"
        try:
            check_stack(group, mode)
            results.append((case, [f"G={group}"]))
        except AssertionError as e:
            failures.append(f"{case}: {e}")
    launched = sorted({key[1] for key in route_fwd._WORKING if key[0] == "forward"})
    print(json.dumps({"results": results, "failures": failures, "launched_groups": launched}))


def test_grouped_kernel_under_interpreter():
    report = run_under_interpreter(__file__, timeout=900)
    assert not report["failures"], "\n".join(report["failures"])
    assert len(report["results"]) == 14 + 3 + 6
    assert report["launched_groups"] == [1, 2, 4, 8], "every schedule should have been launched"


def test_group_setting_and_layout(monkeypatch):
    """CAPSID_TRITON_GROUP: default 2, a bad value or a group whose W tile cannot fit names the variable
    (``tile_config`` touches no GPU); ``group_layer``'s packing."""
    pytest.importorskip("triton")
    from capsid_kernels.triton.route_fwd import pack_layer, tile_config
    from capsid_kernels.triton.route_fwd_grouped import group_layer

    monkeypatch.delenv("CAPSID_TRITON_GROUP", raising=False)
    assert tile_config(24, 7, "cpu")["GROUP"] == 2
    monkeypatch.setenv("CAPSID_TRITON_GROUP", "8")
    assert tile_config(24, 7, "cpu")["GROUP"] == 8
    monkeypatch.setenv("CAPSID_TRITON_GROUP", "3")
    with pytest.raises(ValueError, match=r"CAPSID_TRITON_GROUP: expected one of 1, 2, 4, 8, got '3'"):
        tile_config(24, 7, "cpu")
    monkeypatch.setenv("CAPSID_TRITON_GROUP", "8")  # the industrial preset's group of 8: W alone is 256 KiB
    with pytest.raises(ValueError, match=r"CAPSID_TRITON_GROUP=8: one group's W tile \[128, 1024\] needs"):
        tile_config(128, 96, "cuda", 2)
    W, b, _ = make_layer(7, 7, 24, dtype=torch.float32)
    Wp, bp, _, _ = pack_layer(W, b, 16, 32)
    Wg, bg = group_layer(Wp, bp, 7, 4)
    assert Wg.shape == (2, 32, 64) and bg.shape == (2, 64) and Wg.is_contiguous()
    for k in range(8):
        g, i = divmod(k, 4)
        cols = slice(i * 16, i * 16 + 7)
        want_w, want_b = (W[k].t(), b[k]) if k < 7 else (torch.zeros(24, 7), torch.zeros(7))
        assert torch.equal(Wg[g, :24, cols], want_w) and torch.equal(bg[g, cols], want_b), f"capsule {k}"
    assert not Wg[:, 24:].any() and not Wg.view(2, 32, 4, 16)[..., 7:].any() and not bg.view(2, 4, 16)[..., 7:].any()


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpret_main()
