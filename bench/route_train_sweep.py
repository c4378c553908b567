"""Tile sweep of the fused routing backward (issue 7): one layer's training step per tile config.

    python bench/route_train_sweep.py --prec fp32            # times configs, prints the best as exports
    python bench/route_train_sweep.py --small 64 8 1 fp32    # one small awkward case (a crash check)

Each config is timed in a child process (a config that fails to compile or faults costs only itself).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CONFIGS = [(64, 8, 1, 0), (64, 8, 2, 0), (64, 4, 1, 0), (32, 4, 1, 0), (32, 4, 2, 0), (64, 8, 1, 1), (128, 8, 1, 0)]


def one(prec: str, n: int, small: bool) -> None:
    import torch

    import capsid_kernels as ck
    from capsid_kernels.triton import route_bwd
    from harness import bench

    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    K, dc, d = (19, 16, 40) if small else (256, 64, 128)
    g = torch.Generator(device="cuda").manual_seed(1)
    W, b, D = (torch.randn(*s, device="cuda", generator=g).mul(0.25).to(dtype).requires_grad_()
               for s in ((K, dc, d), (K, dc), (d, dc)))
    rs = [torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(dtype)
          .requires_grad_() for _ in range(3)]
    gw = torch.randn(n, K, device="cuda", generator=g)

    def step(r):
        out = ck.route(r, W, b, D, rounds=3, need_weights=True, backend="triton")
        return torch.autograd.grad([out.residual, out.confidence, out.weights], [r, W, b, D],
                                   [torch.ones_like(out.residual), torch.ones_like(out.confidence), gw])

    t = bench(step, rs, warmup=2, repeats=8, max_time_ms=600)
    torch.cuda.synchronize()
    print(f"RESULT {t.median_ms * 1e6 / n:.1f} ns/item-layer  used {dict(route_bwd._WORKING)}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--prec", default="fp32")
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--small", nargs=4, metavar=("BM", "WARPS", "STAGES", "PREC"))
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        one(a.prec, a.n, small=bool(os.environ.get("SWEEP_SMALL")))
        return 0
    env = dict(os.environ)
    cases = [tuple(int(v) for v in a.small[:3]) + (0,)] if a.small else CONFIGS
    prec = a.small[3] if a.small else a.prec
    best = None
    for bm, warps, stages, pair in cases:
        env.update(CAPSID_BWD_BM=str(bm), CAPSID_BWD_WARPS=str(warps), CAPSID_BWD_STAGES=str(stages),
                   CAPSID_BWD_PAIR=str(pair), CUDA_LAUNCH_BLOCKING="1" if a.small else "0")
        if a.small:
            env["SWEEP_SMALL"] = "1"
        res = subprocess.run([sys.executable, __file__, "--child", "--prec", prec, "--n", str(77 if a.small else a.n)],
                             env=env, capture_output=True, text=True, timeout=120)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT")), None)
        err = (res.stderr.strip().splitlines() or ["?"])[-1][:160]
        print(f"{prec} BM={bm} warps={warps} stages={stages} pair={pair}: {line or 'FAILED ' + err}", flush=True)
        if line:
            ns = float(line.split()[1])
            if best is None or ns < best[0]:
                best = (ns, bm, warps, stages, pair)
    if best and not a.small:
        tag = "BF16" if prec == "bf16" else "F32"
        print(f"BEST export CAPSID_BWD_BM_{tag}={best[1]} CAPSID_BWD_WARPS_{tag}={best[2]} "
              f"CAPSID_BWD_STAGES_{tag}={best[3]} CAPSID_BWD_PAIR_{tag}={best[4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
