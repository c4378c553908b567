"""The tokenizer stack (SPEC §3): compaction, stop bookkeeping, chunking, errors, gradients."""

import pytest
import torch

import capsid_kernels as ck
from capsid_kernels.reference import (
    CONTINUE, PAD_TOKEN, STOP_CAP, route_reference, stack_diagnostics, tokenize_stack,
)
from conftest import make_layer

F64 = torch.float64


def layers(n_depth=4, k=6, dc=4, d=5, dtype=F64, scale=1.0):
    return [make_layer(k, dc, d, seed=10 + i, dtype=dtype, scale=scale) for i in range(n_depth)]


def test_stack_matches_masked_dense_loop():
    """Compaction must equal running every depth on every item and reading off each item's stop."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=F64)
    ls = layers(scale=2.0)
    tau, eps = 0.9, 0.8
    out = tokenize_stack(x, ls, rounds=2, tau=tau, eps=eps)
    r = x / x.norm(dim=1, keepdim=True)
    alive = torch.ones(64, dtype=torch.bool)
    recon = torch.zeros_like(r)
    for depth, (W, b, D) in enumerate(ls):
        o = route_reference(r, W, b, D, rounds=2, tau=tau, eps=eps, last=depth == len(ls) - 1)
        expect_tok = torch.where(alive, o.token, torch.full_like(o.token, PAD_TOKEN))
        assert torch.equal(out.sids[:, depth], expect_tok)
        recon = recon + torch.where(alive[:, None], o.recon, torch.zeros_like(o.recon))
        stopping = alive & (o.stop_reason != CONTINUE)
        assert torch.equal(out.lengths[stopping], torch.full((int(stopping.sum()),), depth + 1))
        assert torch.equal(out.stop_reason[stopping], o.stop_reason[stopping])
        alive = alive & ~stopping
        r = o.residual
    assert not alive.any()
    torch.testing.assert_close(out.recon, recon, rtol=0, atol=1e-14)
    torch.testing.assert_close(out.residual, x / x.norm(dim=1, keepdim=True) - recon, rtol=0, atol=1e-13)
    # this case exercises variable length and every stop reason
    assert len(set(out.lengths.tolist())) > 1
    assert set(out.stop_reason.tolist()) == {1, 2, 3}


def test_lengths_and_padding_are_consistent():
    x = torch.randn(40, 5, dtype=F64)
    out = tokenize_stack(x, layers(scale=2.0), rounds=2, tau=0.9, eps=0.8)
    for i in range(40):
        L = int(out.lengths[i])
        assert 1 <= L <= 4
        assert (out.sids[i, :L] >= 0).all() and (out.sids[i, L:] == PAD_TOKEN).all()
    assert ((out.lengths == 4) == (out.stop_reason == STOP_CAP)).all() or (out.stop_reason[out.lengths < 4] != STOP_CAP).all()


@pytest.mark.parametrize("bad, pattern", [
    (float("nan"), r"x: item 3 has a non-finite value"),
    (float("inf"), r"x: item 3 has a non-finite value"),
    (0.0, r"x: item 3 is the zero vector"),
])
def test_bad_item_vectors_name_the_item(bad, pattern):
    x = torch.randn(6, 5, dtype=F64)
    x[3] = bad if bad == 0.0 else x[3]
    if bad != 0.0:
        x[3, 2] = bad
    with pytest.raises(ValueError, match=pattern):
        ck.tokenize(x, layers())
    with pytest.raises(ValueError, match=pattern):  # the index is the item's, also when chunked
        ck.tokenize(x, layers(), batch_size=2)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[N, d\], got shape \(5,\)"):
        ck.tokenize(torch.randn(5, dtype=F64), layers())
    with pytest.raises(ValueError, match="layers: expected at least one depth"):
        ck.tokenize(torch.randn(3, 5, dtype=F64), [])
    with pytest.raises(ValueError, match=r"batch_size: expected None or an integer >= 1, got 0"):
        ck.tokenize(torch.randn(3, 5, dtype=F64), layers(), batch_size=0)


def test_chunked_equals_one_call():
    x = torch.randn(37, 5, dtype=F64)
    ls = layers(scale=2.0)
    one = ck.tokenize(x, ls, rounds=2, tau=0.9, eps=0.8)
    seen = []
    many = ck.tokenize(x, ls, rounds=2, tau=0.9, eps=0.8, batch_size=8, progress=seen.append)
    assert seen == [8, 8, 8, 8, 5]
    for name in ("sids", "lengths", "stop_reason", "recon", "residual"):
        torch.testing.assert_close(getattr(one, name), getattr(many, name), rtol=0, atol=1e-14)
    for a, b in zip(one.depths, many.depths):
        assert torch.equal(torch.sort(a.index).values, torch.sort(b.index).values)
    assert _rounded(stack_diagnostics(one, [6] * 4)) == _rounded(stack_diagnostics(many, [6] * 4))


def _rounded(obj):
    """Means over chunks differ from one-pass means in the last bits: compare to 12 digits."""
    if isinstance(obj, float):
        return round(obj, 12)
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def test_empty_batch_and_single_item():
    empty = ck.tokenize(torch.zeros(0, 5, dtype=F64), layers())
    assert empty.sids.shape == (0, 4) and empty.lengths.shape == (0,)
    one = ck.tokenize(torch.randn(1, 5, dtype=F64), layers())
    assert one.sids.shape == (1, 4) and 1 <= int(one.lengths[0]) <= 4


def test_gradcheck_through_stack():
    x = torch.randn(10, 5, dtype=F64)
    ls = layers(n_depth=3, scale=2.0)
    flat = [t.clone().requires_grad_() for layer in ls for t in layer]
    xr = x.clone().requires_grad_()

    def f(x, *p):
        grouped = [tuple(p[i:i + 3]) for i in range(0, len(p), 3)]
        out = ck.tokenize(x, grouped, rounds=2, tau=0.9, eps=0.8)
        return out.recon, out.residual, torch.cat([d.confidence for d in out.depths])

    assert torch.autograd.gradcheck(f, (xr, *flat))


def test_diagnostics_fields():
    x = torch.randn(50, 5, dtype=F64)
    out = tokenize_stack(x, layers(scale=2.0), rounds=2, tau=0.9, eps=0.8)
    diag = stack_diagnostics(out, [6] * 4)
    assert diag["items"] == 50
    assert sum(diag["length_histogram"].values()) == 50
    assert abs(sum(diag["stop_fractions"].values()) - 1.0) < 1e-12
    assert 0.0 <= diag["collision_rate"] < 1.0
    assert diag["depths"][0]["active"] == 50
    for d in diag["depths"]:
        assert sum(d["code_usage"]) == d["active"]
        assert sum(d["stops"].values()) <= d["active"]
    assert diag["mean_length"] == pytest.approx(out.lengths.double().mean().item())


def test_item_check_is_chunked_and_still_names_the_item(monkeypatch):
    import capsid_kernels.reference.stack as stack

    monkeypatch.setattr(stack, "CHECK_CHUNK", 4)
    x = torch.randn(11, 5, dtype=F64)
    x[9] = 0.0
    with pytest.raises(ValueError, match=r"x: item 9 is the zero vector"):
        stack.check_item_vectors(x)
    x[9, 0], x[6, 1] = 1.0, float("nan")
    with pytest.raises(ValueError, match=r"x: item 6 has a non-finite value"):
        stack.check_item_vectors(x)
