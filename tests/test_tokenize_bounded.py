"""``tokenize`` in bounded memory: outputs=, out_device=, device=, int_dtype= (issue 20, item 4).

Whatever is kept must equal the default call bit for bit, on every backend: the reference stack
on CPU here, the Triton stack under TRITON_INTERPRET=1 in a child process (the variable must be
set before Triton is imported), and on a GPU (``-m gpu``) x in pinned host memory with results
on the host against the all-on-GPU default, with peak device memory bounded by the chunk.
"""

from __future__ import annotations

import itertools
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import make_layer, run_under_interpreter, triton_tokenize, unit_rows  # noqa: E402

import capsid_kernels as ck  # noqa: E402
from capsid_kernels.ops.stack_chunks import item_chunks  # noqa: E402
from capsid_kernels.reference.stack import STACK_OUTPUTS  # noqa: E402

ROW_OUTPUTS = STACK_OUTPUTS[:5]


def random_case(seed: int, dtype=torch.float64):
    """Fresh random items and layers (K, d_c, depth count drawn too), thresholds that make every
    stop reason occur, and a chunk size that does not divide N."""
    g = torch.Generator().manual_seed(seed)
    n, d = int(torch.randint(20, 60, (1,), generator=g)), int(torch.randint(3, 9, (1,), generator=g))
    depths = int(torch.randint(2, 5, (1,), generator=g))
    layers = [make_layer(int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g)), d,
                         dtype=dtype, seed=seed * 10 + i, scale=2.0) for i in range(depths)]
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype) * 3.0
    routing = dict(rounds=2, tau=0.6, eps=0.7)
    return x, layers, routing, int(torch.randint(3, 11, (1,), generator=g))


def assert_same(got, ref, keep) -> None:
    """Bit for bit, on the host (a narrowed integer output compared after widening)."""
    for name in ROW_OUTPUTS:
        g = getattr(got, name)
        if name not in keep:
            assert g is None, f"{name} was not asked for and should be None"
            continue
        r = getattr(ref, name)
        assert g.shape == r.shape and g.device.type == "cpu", name
        assert torch.equal(g.to(r.dtype), r), f"{name} differs"
    if "depths" not in keep:
        assert got.depths == (), "depths were not asked for and should be ()"
        return
    assert len(got.depths) == len(ref.depths), "depth count"
    for a, b in zip(got.depths, ref.depths):
        for f, ta, tb in zip(a._fields, a, b):
            assert (ta is None) == (tb is None) and (ta is None or torch.equal(ta, tb)), f"depth record {f} differs"


@pytest.mark.parametrize("seed", [0, 1])
def test_every_output_subset_matches_default(seed, one_torch_thread):
    x, layers, routing, chunk = random_case(seed)
    subsets = [s for r in range(len(STACK_OUTPUTS) + 1) for s in itertools.combinations(STACK_OUTPUTS, r)]
    for batch in (None, chunk):
        ref = ck.tokenize(x, layers, batch_size=batch, **routing)
        for keep, out_device in itertools.product(subsets, (None, "cpu")):
            got = ck.tokenize(x, layers, batch_size=batch, outputs=keep, out_device=out_device, **routing)
            assert_same(got, ref, keep)
    # Chunked bounded against the unchunked default: the same items, up to float rounding.
    whole = ck.tokenize(x, layers, **routing)
    got = ck.tokenize(x, layers, batch_size=chunk, outputs=("sids", "lengths", "stop_reason", "recon"),
                      out_device="cpu", **routing)
    assert torch.equal(got.sids, whole.sids) and torch.equal(got.lengths, whole.lengths)
    torch.testing.assert_close(got.recon, whole.recon, rtol=0, atol=1e-14)


@pytest.mark.parametrize("int_dtype", [torch.int8, torch.int16, torch.int32, torch.int64])
def test_int_dtype_and_device(int_dtype):
    x, layers, routing, chunk = random_case(2, dtype=torch.float32)
    ref = ck.tokenize(x, layers, need_weights=True, batch_size=chunk, **routing)
    got = ck.tokenize(x, layers, need_weights=True, batch_size=chunk, int_dtype=int_dtype, device="cpu",
                      out_device=torch.device("cpu"), **routing)
    for name in ("sids", "lengths", "stop_reason"):
        assert getattr(got, name).dtype == int_dtype
    assert_same(got, ref, STACK_OUTPUTS)
    assert got.depths[0].weights is not None and got.depths[0].index.dtype == torch.int64


def test_empty_catalogue_and_one_item():
    _, layers, routing, _ = random_case(3)
    d = layers[0][0].shape[2]
    for n in (0, 1):
        x = torch.randn(n, d, dtype=torch.float64) + 0.5
        ref = ck.tokenize(x, layers, **routing)
        got = ck.tokenize(x, layers, outputs=("sids", "depths"), int_dtype=torch.int16, **routing)
        assert got.sids.shape == (n, len(layers)) and torch.equal(got.sids.long(), ref.sids)
        assert len(got.depths) == len(ref.depths)


def test_gradients_flow_through_kept_outputs():
    x, layers, routing, chunk = random_case(4)
    flat = [t.clone().requires_grad_() for layer in layers for t in layer]
    grouped = [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]
    out = ck.tokenize(x, grouped, batch_size=chunk, outputs="recon", **routing)
    out.recon.square().sum().backward()
    ref_flat = [t.detach().clone().requires_grad_() for t in flat]
    ref = ck.tokenize(x, [tuple(ref_flat[i:i + 3]) for i in range(0, len(flat), 3)], batch_size=chunk, **routing)
    ref.recon.square().sum().backward()
    for a, b in zip(flat, ref_flat):
        assert torch.equal(a.grad, b.grad)


def test_bad_arguments_name_the_argument():
    x, layers, routing, _ = random_case(5)
    with pytest.raises(ValueError, match=r"outputs: unknown name\(s\) \['sid'\]"):
        ck.tokenize(x, layers, outputs=("sid",))
    with pytest.raises(TypeError, match="outputs: expected None, a name or names"):
        ck.tokenize(x, layers, outputs=5)
    with pytest.raises(ValueError, match="outputs: need_weights=True .* add 'depths'"):
        ck.tokenize(x, layers, outputs=("sids",), need_weights=True)
    with pytest.raises(ValueError, match="out_device: expected a device"):
        ck.tokenize(x, layers, out_device="host")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="out_device: 'cuda' needs a CUDA GPU and none is available"):
            ck.tokenize(x, layers, out_device="cuda")
    with pytest.raises(ValueError, match="out_device: expected None, 'cpu' or the compute device cpu"):
        ck.tokenize(x, layers, out_device="meta")
    with pytest.raises(TypeError, match="device: expected None, a device name or a torch.device"):
        ck.tokenize(x, layers, device=0.5)
    with pytest.raises(ValueError, match="int_dtype: expected one of"):
        ck.tokenize(x, layers, int_dtype=torch.float32)
    wide = [make_layer(300, 3, x.shape[1], seed=1)]
    with pytest.raises(ValueError, match="int_dtype: int8 cannot hold token id 299"):
        ck.tokenize(x, wide, int_dtype=torch.int8)


def test_item_chunks_check_names_the_item_after_the_last_chunk():
    x = unit_rows(23, 4)
    x[17] = 0.0
    seen = []
    with pytest.raises(ValueError, match="x: item 17 is the zero vector"):
        for start, rows in item_chunks(x, 5, "cpu", check=True):
            seen.append((start, rows.shape[0]))
    assert seen == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 3)]
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x: item 3 has a non-finite value"):
        list(item_chunks(x, 5, "cpu", check=True))
    assert [s for s, _ in item_chunks(x[:0], 5, "cpu")] == [0]


# ----------------------------------------------------------------------------- CPU (interpreter)

def _interpret_main() -> None:
    """Child process: the Triton stack with each results layout against its default; one JSON line."""
    from capsid_kernels import RoutingParams

    failures, cases = [], 0
    g = torch.Generator().manual_seed(int(os.environ.get("BOUNDED_SEED", "0")))
    for mode, dtype in (("soft", torch.float32), ("hard", torch.bfloat16)):
        ks = [int(k) for k in torch.randint(2, 20, (3,), generator=g)]
        layers = [make_layer(k, 7, 24, dtype=dtype, seed=int(torch.randint(1 << 30, (1,), generator=g)))
                  for k in ks]
        n = int(torch.randint(90, 140, (1,), generator=g))
        x = unit_rows(n, 24, dtype=dtype, seed=int(torch.randint(1 << 30, (1,), generator=g))) * 3.0
        routing = RoutingParams(rounds=2, mode=mode, eta=0.9, tau=0.3, eps=0.6)
        # need_weights picks another kernel variant: each layout is compared with the default of its own
        refs = {w: (triton_tokenize(x, layers, routing, need_weights=w, chunk=50),
                    triton_tokenize(x, layers, routing, need_weights=w)) for w in (False, True)}
        layouts = [(STACK_OUTPUTS, torch.int64), (("sids", "lengths", "stop_reason"), torch.int16),
                   (("recon", "residual"), torch.int64), (("depths",), torch.int64), ((), torch.int64)]
        for keep, ints in layouts:
            for chunk in (50, None):
                cases += 1
                got = triton_tokenize(x, layers, routing, need_weights="depths" in keep, chunk=chunk, keep=keep,
                                      int_dtype=ints)
                try:
                    ref, whole = refs["depths" in keep]
                    assert_same(got, ref if chunk else whole, keep)
                except AssertionError as e:
                    failures.append(f"{mode} {keep} {ints} chunk={chunk}: {e}")
    print(json.dumps({"cases": cases, "failures": failures}))


def test_triton_stack_bounded_under_interpreter():
    report = run_under_interpreter(__file__)
    assert not report["failures"], "\n".join(report["failures"])
    assert report["cases"] == 20


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["triton", "eager"])
def test_host_items_and_host_results_match_gpu_default(dtype, backend):
    layers = [make_layer(256, 64, 128, dtype=dtype, device="cuda", seed=30 + i, scale=2.0) for i in range(6)]
    x = unit_rows(20011 if backend == "triton" else 3001, 128, dtype=dtype, device="cuda", seed=31)
    kw = dict(rounds=3, tau=0.3, eps=0.5, backend=backend, batch_size=4099)
    host_x = x.cpu().pin_memory()
    for keep in (STACK_OUTPUTS, ("sids", "lengths", "stop_reason")):
        ref = ck.tokenize(x, layers, need_weights="depths" in keep, **kw)
        for ints in (torch.int64, torch.int16):
            got = ck.tokenize(host_x, layers, device="cuda", outputs=keep, out_device="cpu", int_dtype=ints,
                              need_weights="depths" in keep, **kw)
            assert got.sids.device.type == "cpu" and got.sids.is_pinned() and got.sids.dtype == ints
            assert_same(got, ref._replace(**{f: getattr(ref, f).cpu() for f in ROW_OUTPUTS},
                                          depths=tuple(type(d)(*(None if t is None else t.cpu() for t in d))
                                                       for d in ref.depths)), keep)
            on_gpu = ck.tokenize(x, layers, outputs=keep, int_dtype=ints, need_weights="depths" in keep, **kw)
            assert torch.equal(on_gpu.sids.cpu(), got.sids) and on_gpu.sids.device.type == "cuda"


@pytest.mark.gpu
def test_host_items_check_names_the_item():
    layers = [make_layer(16, 8, 32, dtype=torch.float32, device="cuda", seed=40 + i) for i in range(3)]
    x = unit_rows(5000, 32, dtype=torch.float32, seed=41)
    x[3210] = 0.0
    with pytest.raises(ValueError, match="x: item 3210 is the zero vector"):
        ck.tokenize(x.pin_memory(), layers, device="cuda", batch_size=1000, outputs="sids", out_device="cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("on_host", [True, False])
def test_bounded_peak_memory_is_per_chunk(on_host):
    """SIDs, lengths and stop reasons to the host: the peak beyond x and the layers does not grow with N
    and stays far below the reconstruction the default call would allocate."""
    d, chunk = 128, 1 << 14
    layers = [make_layer(256, 64, d, dtype=torch.bfloat16, device="cuda", seed=50 + i) for i in range(6)]
    kw = dict(rounds=3, batch_size=chunk, device="cuda", outputs=("sids", "lengths", "stop_reason"), out_device="cpu")
    peaks = {}
    for n in (1 << 18, 1 << 20):
        x = unit_rows(n, d, dtype=torch.bfloat16, device="cuda", seed=51)
        x = x.cpu().pin_memory() if on_host else x
        ck.tokenize(x[: 2 * chunk], layers, **kw)  # compile
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = ck.tokenize(x, layers, **kw)
        peaks[n] = torch.cuda.max_memory_allocated() - base
        assert out.sids.shape == (n, 6) and out.recon is None and int(out.lengths.min()) >= 1
        del x, out
    recon_bytes = (1 << 20) * d * 4
    assert peaks[1 << 20] <= 1.25 * peaks[1 << 18] + (8 << 20), peaks
    assert peaks[1 << 20] < recon_bytes / 4, f"peak {peaks[1 << 20] / 2**20:.1f} MiB vs recon {recon_bytes / 2**20:.0f} MiB"


if __name__ == "__main__" and "--interpret" in sys.argv:
    _interpret_main()
