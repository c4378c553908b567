"""GPU checks of the CUDA routing kernel that are not tests (csrc/ROUTE_CUDA.md).

    compute-sanitizer --tool memcheck  python scripts/route_cuda_check.py sanitize
    compute-sanitizer --tool racecheck python scripts/route_cuda_check.py sanitize
    python scripts/route_cuda_check.py stages --out bench/results   # leave-one-stage-out timings

``sanitize`` runs small cases (partial tiles, every tile width, all precisions, soft and hard)
straight through ``capsid_C::route_forward`` and checks the outputs are finite. ``stages`` times
the full kernel, the kernel without the agreement/softmax work (stage_skip=1: tensor-core
products, W streaming and the epilogue only), without the products (stage_skip=2) and with
neither (3), each block visiting capsules from offset 0 instead of its own (4, and 7 = 3 + 4),
one 16-row tile per warp instead of two at d_c <= 64 (8, and 11 = 8 + 3),
beside the Triton forward, in one run; rows go to ``<out>/route_cuda_stages.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _layer(k, dc, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    W = torch.randn(k, dc, d, generator=g, device="cuda") * (2.0 / dc ** 0.5)
    b = torch.randn(k, dc, generator=g, device="cuda") * (2.0 / dc ** 0.5)
    D = torch.randn(d, dc, generator=g, device="cuda") / dc ** 0.5
    return W.to(dtype), b.to(dtype), D.to(dtype)


def _rows(n, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, d, generator=g, device="cuda")
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def sanitize() -> int:
    from capsid_kernels import _ext

    assert _ext.load() is not None, _ext.error()
    bad = 0
    for n, k, dc, d in ((300, 5, 7, 24), (130, 3, 100, 128), (129, 4, 70, 72)):
        for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False)):
            for hard in (False, True):
                W, b, D = _layer(k, dc, d, dtype, seed=n + k)
                r = _rows(n, d, dtype, seed=n)
                outs = torch.ops.capsid_C.route_forward(r, W, b, D, 3, hard, 1.0, 0.3, 0.9, True, True, True, tf32)
                torch.cuda.synchronize()
                finite = all(bool(torch.isfinite(t.float()).all()) for t in outs)
                print(f"N={n} K={k} dc={dc} d={d} {dtype} tf32={tf32} hard={hard}: finite={finite}", flush=True)
                bad += not finite
    print("sanitize cases:", "all finite" if bad == 0 else f"{bad} with NaN/Inf")
    return 1 if bad else 0


def stages(out: pathlib.Path) -> int:
    import capsid_kernels as ck
    from capsid_kernels.ops._route_common import op_scalars
    from capsid_kernels.ops.route_cuda import forward
    from harness import bench, env_info, make_row, write_rows

    env = env_info()
    rows = []
    scalars = op_scalars(ck.RoutingParams())  # the default routing, as the op's scalar arguments
    cases = (("default", (256, 64, 128), "bf16", 65536), ("default", (256, 64, 128), "bf16", 262144),
             ("default", (256, 64, 128), "tf32", 262144), ("industrial", (1024, 96, 128), "bf16", 65536))
    for preset, (k, dc, d), prec, n in cases:
        dtype, tf32 = (torch.bfloat16, False) if prec == "bf16" else (torch.float32, True)
        W, b, D = _layer(k, dc, d, dtype, seed=1)
        inputs = [_rows(n, d, dtype, seed=100 + i) for i in range(4)]
        variants = {
            "triton": lambda r: ck.route(r, W, b, D, precision="tf32" if tf32 else "exact", backend="triton"),
            **{name: (lambda r, skip=skip: forward(r, W, b, D, *scalars, False, False, False, tf32, skip))
               for name, skip in (("cuda", 0), ("cuda-no-softmax", 1), ("cuda-no-mma", 2), ("cuda-stream-only", 3),
                                  ("cuda-in-order", 4), ("cuda-stream-in-order", 7), ("cuda-16-rows", 8),
                                  ("cuda-16-rows-stream", 11))},
        }
        for name, fn in variants.items():
            with torch.no_grad():
                t = bench(fn, inputs, warmup=3, repeats=20, max_time_ms=1500, measure_memory=False)
            shapes = {"N": n, "K": k, "d_c": dc, "d": d, "T": 3, "preset": preset}
            rows.append(make_row(op="route_stage", backend=name, dtype=prec, shapes=shapes, timing=t,
                                 items=n, flops=2.0 * n * k * dc * d * 3, env=env))
            r = rows[-1]
            print(f"{preset:10s} {prec} N={n:7d} {name:17s} {r['ns_per_item_layer']:8.2f} ns/item-layer "
                  f"{r.get('tflops', 0):7.1f} TFLOP/s", flush=True)
        del inputs
    write_rows(rows, out / "route_cuda_stages.json")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("sanitize", "stages"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    return sanitize() if args.what == "sanitize" else stages(pathlib.Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
