"""Routing benchmarks: eager reference, torch.compile(eager), the fair anchor, Triton, CUDA C++; the whole tokenizer.

    python bench/routing.py --out bench/results            # the full suite (GPU)
    python bench/routing.py --quick                        # N = 16384 and 65536 only
    python bench/routing.py --sweep                        # Triton tile configurations, bf16 default
    python bench/routing.py --sweep --groups 2,4,8         # ... for each CAPSID_TRITON_GROUP (the default)
    python bench/routing.py --train                        # training step of one layer (fwd + bwd)
    python bench/routing.py --train --train-stack          # ... and of the whole stack with Stage 1's loss
    python bench/routing.py --fair                         # bf16 forward + training step vs the fair anchor

Backends (``--backends``, ``--train-backends``): ``eager`` (``route_reference``), ``compile``
(``torch.compile`` of it), ``fair`` and ``fair_compile`` (the fair anchor, ``anchors.route_fair_anchor``,
eager and ``torch.compile``d: the reference's math with the vote GEMM on bf16 tensor cores and float32
votes, softmax and accumulation, KERNELS.md "Fair anchors": our Triton kernel's precision of work),
``fair_bf16`` and ``fair_bf16_compile`` (``anchors.route_fair_bf16``: the votes stored in bf16 and every
contraction over them a bf16 tensor-core bmm with float32 accumulation; less precise work than the Triton
kernel, so the stronger, faster anchor), ``triton`` and ``cuda`` (forward only). The fair rows exist for
bf16 only: for fp32 and tf32 both anchors are the reference's own math, so those dtypes take the
``compile`` row as their fair compiled anchor. ``speedup_vs_fair_compile`` (and, for training,
``peak_vs_fair_compile``) is every row against the precision-matched anchor of its (dtype, shapes) case,
``fair_anchor`` names the row it was taken from; ``speedup_vs_fastest_fair`` / ``peak_vs_fastest_fair``
are against the fastest fair compiled anchor of the case (bf16: ``fair_compile`` or ``fair_bf16_compile``,
whichever ran faster), named in ``fastest_fair_anchor``: the ratio to quote.
``speedup_vs_eager``/``speedup_vs_compile`` are against the reference.
``--fair`` runs only that comparison: bf16, default preset, N in ``--fair-ns``, forward rows (``--backends``)
then the one-layer training step (``--train-backends``), to ``<out>/<tag>_fair.json``.

One row per (preset, precision, N, backend): median ms, ns per item-layer, TFLOP/s, peak memory.
TFLOP/s counts the Triton schedule's tensor-core work, T vote GEMMs of 2·N·K·d_c·d each (round 1
is a mean-vote GEMM, K times smaller, not counted), for every backend alike, so the column is a
rate of useful-equivalent work. Inputs: fresh unit residuals; several input sets rotated so the
residuals are not served from L2 (W, b, D stay fixed, as in the tokenizer). Eager, compile and
the fair anchor are skipped where their [N, K, d_c] votes would not fit (the row says so). The tokenizer row
runs L_max = 6 depths with early exit on ``synthetic_item_vectors`` (default 35.8M items).
Rows go to ``<out>/routing.json`` and a plot to ``<out>/routing.png``.
Training rows (``--train``, ``--train-stack``, issue 7) go to ``<out>/routing_train.json``
(``routing_train_stack.json`` for ``--train-stack`` alone), one PNG per op beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "python"))

from harness import Timing, bench, env_info, make_row, plot_rows, print_table, rotation_count, write_rows  # noqa: E402

PRESETS = {"default": dict(K=256, dc=64, d=128), "industrial": dict(K=1024, dc=96, d=128)}
PRECS = {"fp32": (torch.float32, "exact"), "tf32": (torch.float32, "tf32"), "bf16": (torch.bfloat16, "exact")}
ROUNDS = 3
EAGER_BYTES_LIMIT = 40 * 2**30  # eager peaks at ~2.5 live [N, K, d_c] float32 tensors (measured)
FAIR_ROWS = ("fair", "fair_compile", "fair_bf16", "fair_bf16_compile")
FORWARD_BACKENDS = ("eager", "compile", *FAIR_ROWS, "triton", "cuda")
TRAIN_BACKENDS = ("eager", "compile", *FAIR_ROWS, "triton")
VOTES_IN_MEMORY = ("eager", "compile", *FAIR_ROWS)  # they hold [N, K, d_c] votes (float32; bf16 for fair_bf16*)
COMPILED = ("compile", "fair_compile", "fair_bf16_compile")
# The fair compiled anchor of each dtype, precision-matched: where the reference already does the kernel's
# precision of work (fp32, tf32), it is the compiled reference itself.
FAIR_ANCHOR = {"bf16": "fair_compile", "fp32": "compile", "tf32": "compile"}
# Every fair compiled anchor of each dtype; the fastest of a case is the one to quote (add_ratios).
FAIR_COMPILED = {"bf16": ("fair_compile", "fair_bf16_compile"), "fp32": ("compile",), "tf32": ("compile",)}


def runs_for(backend: str, prec: str) -> bool:
    """Whether ``backend`` has a row at ``prec``: the fair anchors only where they differ from the reference."""
    return backend not in FAIR_ROWS or FAIR_ANCHOR[prec] == "fair_compile"


def make_layer(K, dc, d, dtype, seed, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    W = torch.randn(K, dc, d, generator=g, device=device) * (2.0 / dc ** 0.5)
    b = torch.randn(K, dc, generator=g, device=device) * (2.0 / dc ** 0.5)
    D = torch.randn(d, dc, generator=g, device=device) / dc ** 0.5
    return W.to(dtype), b.to(dtype), D.to(dtype)


def unit_rows(n, d, dtype, seed, device="cuda"):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device)
    return (x / x.norm(dim=1, keepdim=True)).to(dtype)


def matmul_ceiling(env) -> list[dict]:
    """The device's measured matmul rates (bf16, tf32, fp32) on 8192³, for the TFLOP/s column."""
    rows = []
    from capsid_kernels.ops._precision import matmul_precision

    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                              ("fp32", torch.float32, False)):
        n = 8192
        a, b = torch.randn(n, n, device="cuda").to(dtype), torch.randn(n, n, device="cuda").to(dtype)
        with matmul_precision(tf32):
            t = bench(lambda x: x @ b, [a], warmup=3, repeats=10, measure_memory=False)
        rows.append(make_row(op="matmul_ceiling", backend="cublas", dtype=name, shapes={"M": n, "N": n, "K": n},
                             timing=t, flops=2 * n ** 3, env=env))
        del a, b
    return rows


def layer_fns(W, b, D, precision: str, *, compiled: Callable[..., Any], fair_compiled: Callable[..., Any],
              fair_bf16_compiled: Callable[..., Any]) -> dict[str, Callable[[torch.Tensor], Any]]:
    """One routing layer ``r -> RouteOutput`` (T = ROUNDS, soft) on fixed W, b, D for every backend name;
    ``compiled``/``fair_compiled``/``fair_bf16_compiled`` are the caller's ``torch.compile`` of the
    reference and of the two fair anchors."""
    import capsid_kernels as ck
    from anchors import route_fair_anchor, route_fair_bf16
    from capsid_kernels.reference import route_reference

    return {
        "eager": lambda r: route_reference(r, W, b, D, rounds=ROUNDS),
        "compile": lambda r: compiled(r, W, b, D, rounds=ROUNDS),
        "fair": lambda r: route_fair_anchor(r, W, b, D, rounds=ROUNDS),
        "fair_compile": lambda r: fair_compiled(r, W, b, D, rounds=ROUNDS),
        "fair_bf16": lambda r: route_fair_bf16(r, W, b, D, rounds=ROUNDS),
        "fair_bf16_compile": lambda r: fair_bf16_compiled(r, W, b, D, rounds=ROUNDS),
        "triton": lambda r: ck.route(r, W, b, D, rounds=ROUNDS, precision=precision, backend="triton"),
        "cuda": lambda r: ck.route(r, W, b, D, rounds=ROUNDS, precision=precision, backend="cuda"),
    }


def route_rows(presets, ns, precs, backends, env, max_time_ms, compile_cases, out, tag,
               device: str = "cuda") -> list[dict]:
    """Forward of one layer: one row per (preset, precision, N, backend), in the order of ``backends``.

    The fair rows only at bf16 (``runs_for``); the ``COMPILED`` rows only for the ``compile_cases``. Out of memory and a backend that cannot run these inputs (``device="cpu"``,
    for the CPU tests: Triton and CUDA) become a row with ``error``. Ratios are added by ``route_ratios``.
    """
    import capsid_kernels as ck
    from anchors import route_fair_anchor, route_fair_bf16
    from capsid_kernels.ops._precision import matmul_precision
    from capsid_kernels.reference import route_reference

    rows = []
    for preset in presets:
        K, dc, d = (PRESETS[preset][k] for k in ("K", "dc", "d"))
        for prec in precs:
            dtype, precision = PRECS[prec]
            W, b, D = make_layer(K, dc, d, dtype, seed=1, device=device)
            tf32 = precision == "tf32"
            fns = layer_fns(W, b, D, precision, compiled=torch.compile(route_reference, dynamic=True),
                            fair_compiled=torch.compile(route_fair_anchor, dynamic=True),
                            fair_bf16_compiled=torch.compile(route_fair_bf16, dynamic=True))
            for n in ns:
                rsize = n * d * W.element_size()
                inputs = [unit_rows(n, d, dtype, seed=100 + i, device=device) for i in range(rotation_count(rsize))]
                shapes = {"N": n, "K": K, "d_c": dc, "d": d, "T": ROUNDS, "mode": "soft", "preset": preset}
                flops = 2.0 * n * K * dc * d * ROUNDS
                for backend in backends:
                    if not runs_for(backend, prec):
                        continue
                    if backend in COMPILED and compile_cases != "all" and f"{preset}:{prec}" not in compile_cases:
                        continue
                    fn = fns[backend]
                    err = None
                    if backend in VOTES_IN_MEMORY and n * K * dc * 4 * 2.5 > EAGER_BYTES_LIMIT:  # fp32 bound
                        err = f"skipped: eager votes [N, K, d_c] need {n * K * dc * 4 / 2**30:.1f} GiB each"
                    timing = None
                    if err is None:
                        try:
                            with matmul_precision(tf32), torch.no_grad():
                                timing = bench(fn, inputs, warmup=2, repeats=15, max_time_ms=max_time_ms)
                        except torch.OutOfMemoryError as e:  # noqa: PERF203
                            err = f"out of memory: {str(e)[:120]}"
                            torch.cuda.empty_cache()
                        except ck.BackendUnavailable as e:
                            err = f"unavailable: {e}"
                    rows.append(make_row(op="route", backend=backend, dtype=prec, shapes=shapes, timing=timing,
                                         items=n, flops=flops, env=env, **({"error": err} if err else {})))
                    r = rows[-1]
                    print(f"{preset:10s} {prec:5s} N={n:7d} {backend:12s} "
                          + (f"{r['ns_per_item_layer']:9.2f} ns/item-layer {r.get('tflops', 0):7.1f} TFLOP/s "
                             f"peak {r.get('peak_mib', 0):9.1f} MiB" if timing else err), flush=True)
                del inputs
            del W, b, D, fns
            torch.cuda.empty_cache()
            write_rows(rows, out / f"{tag}_partial.json")
    return rows


def route_ratios(route: Sequence[dict]) -> None:
    """``add_ratios`` on every (preset, dtype, N) case of the forward rows, and ``speedup_vs_triton``
    on the CUDA C++ rows (the two fast backends against each other, same run)."""
    cases: dict[tuple, list[dict]] = {}
    for r in route:
        cases.setdefault((r["dtype"], json.dumps(r["shapes"], sort_keys=True)), []).append(r)
    for case in cases.values():
        add_ratios(case)
        t = next((x for x in case if x["backend"] == "triton" and "median_ms" in x), None)
        for r in case:
            if r["backend"] == "cuda" and "median_ms" in r:
                r["speedup_vs_triton"] = round(t["median_ms"] / r["median_ms"], 3) if t else None


# The whole tokenizer's modes: what ck.tokenize keeps and where x and the results live.
# "all" is the default call (every output, x and results on the GPU); the bounded modes keep what a
# catalogue job needs (SIDs, lengths, stop reasons) in pinned host memory, with x on the GPU or on the host.
TOKENIZER_MODES = {
    "all": {},
    "bounded_x_device": dict(outputs=("sids", "lengths", "stop_reason"), out_device="cpu"),
    "bounded_x_host": dict(outputs=("sids", "lengths", "stop_reason"), out_device="cpu", device="cuda"),
}


def tokenizer_rows(n, prec, env, chunk, repeats, backend="triton", modes=("all",)) -> list[dict]:
    """One row per mode of TOKENIZER_MODES: median time over ``repeats`` calls, peak GPU memory beyond
    what was allocated before the call (``peak_mib``) and in all (``peak_total_mib``, x included when it
    lives on the GPU)."""
    import capsid_kernels as ck
    from capsid_gr.data.synthetic import synthetic_item_vectors

    dtype, precision = PRECS[prec]
    K, dc, d = 256, 64, 128
    layers = [make_layer(K, dc, d, dtype, seed=10 + i) for i in range(6)]
    pin_s = None
    t0 = time.perf_counter()
    x = synthetic_item_vectors(n, d, seed=0, device="cuda", dtype=dtype)
    torch.cuda.synchronize()
    gen_s = time.perf_counter() - t0
    x_host = None
    if "bounded_x_host" in modes:
        t0 = time.perf_counter()
        x_host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True).copy_(x)
        pin_s = time.perf_counter() - t0
    rows = []
    for mode in sorted(modes, key=lambda m: m == "bounded_x_host"):  # x leaves the GPU for the host mode, last
        if mode == "bounded_x_host":
            del x
            torch.cuda.empty_cache()
            x = x_host
        rows.append(_tokenizer_row(ck, x, layers, mode, n=n, prec=prec, precision=precision, env=env, chunk=chunk,
                                   repeats=repeats, backend=backend, gen_s=gen_s,
                                   extra={"pin_s": round(pin_s, 3)} if mode == "bounded_x_host" else {}))
    del x, x_host
    torch.cuda.empty_cache()
    return rows


def _tokenizer_row(ck, x, layers, mode, *, n, prec, precision, env, chunk, repeats, backend, gen_s, extra) -> dict:
    from capsid_kernels.reference.stack import STACK_OUTPUTS

    options = TOKENIZER_MODES[mode]
    kw = dict(rounds=ROUNDS, precision=precision, backend=backend, batch_size=chunk, **options)
    ck.tokenize(x[: 2 * chunk], layers, **kw)  # compile and warm up
    torch.cuda.synchronize()
    samples, walls, stats, peak, peak_total = [], [], None, 0, 0
    for _ in range(repeats):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        w0 = time.perf_counter()
        s.record()
        out = ck.tokenize(x, layers, **kw)
        e.record()
        e.synchronize()
        walls.append(time.perf_counter() - w0)
        samples.append(s.elapsed_time(e))
        peak_total = torch.cuda.max_memory_allocated()
        peak = peak_total - base
        item_layers = int(out.lengths.sum())  # each item routes through L_i depths
        kept = [t for t in (out.sids, out.lengths, out.stop_reason, out.recon, out.residual) if t is not None]
        out_bytes = sum(t.numel() * t.element_size() for t in kept if t.is_cuda)
        rec_bytes = sum(t.numel() * t.element_size() for rec in out.depths for t in rec if t is not None and t.is_cuda)
        stats = {"mean_length": float(out.lengths.double().mean()), "item_layers": item_layers,
                 "stops": {name: int((out.stop_reason == code).sum()) for code, name in
                           ((ck.STOP_CONF, "conf"), (ck.STOP_RESID, "resid"), (ck.STOP_CAP, "cap"))},
                 "outputs_mib": round(out_bytes / 2**20, 1), "depth_records_mib": round(rec_bytes / 2**20, 1),
                 "host_outputs_mib": round(sum(t.numel() * t.element_size() for t in kept if not t.is_cuda) / 2**20, 1)}
        del out
        torch.cuda.empty_cache()
    samples.sort()
    med = samples[len(samples) // 2]
    timing = Timing(med, samples[0], samples[-1], len(samples), peak, samples)
    shapes = {"N": n, "K": layers[0][0].shape[0], "d_c": layers[0][0].shape[1], "d": layers[0][0].shape[2],
              "T": ROUNDS, "L_max": len(layers), "chunk": chunk, "preset": "default"}
    row = make_row(op="tokenize", backend=backend, dtype=prec, shapes=shapes, timing=timing, env=env,
                   seconds=round(med / 1e3, 3), wall_s=sorted(walls)[len(walls) // 2], synthetic_gen_s=round(gen_s, 3),
                   mode=mode, outputs=list(options.get("outputs", STACK_OUTPUTS)),
                   x_on="cuda" if x.is_cuda else "cpu (pinned)", results_on=options.get("out_device", "cuda"),
                   peak_total_mib=round(peak_total / 2**20, 1),
                   ns_per_item_layer_measured=round(med * 1e6 / stats["item_layers"], 3),
                   peak_beyond_outputs_mib=round((peak - stats["outputs_mib"] * 2**20 - stats["depth_records_mib"] * 2**20)
                                                 / 2**20, 1),
                   **stats, **extra)
    print(f"tokenize {backend} {prec} {mode} N={n}: {med / 1e3:.3f} s (runs {[round(s_ / 1e3, 3) for s_ in samples]}), "
          f"{row['ns_per_item_layer_measured']} ns per item-layer, mean length {stats['mean_length']:.3f}, "
          f"peak {peak / 2**30:.2f} GiB beyond the call's inputs, {peak_total / 2**30:.2f} GiB in all "
          f"({row['peak_beyond_outputs_mib']} MiB beyond outputs)", flush=True)
    return row


def fresh_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` on an emptied dynamo cache. The cache is per code object, so the compiled
    variants of every earlier case count towards ``recompile_limit``; past it dynamo would quietly run
    the eager code and a "compile" row would time eager. The training benches also set
    ``fail_on_recompile_limit_hit``, so that fails the row instead of passing unnoticed."""
    torch._dynamo.reset()
    return torch.compile(fn)


def train_case(step, inputs, *, op: str, backend: str, prec: str, shapes: dict, env: dict, max_time_ms: float,
               tf32: bool, items: int, layers: int = 1, flops: Optional[float] = None) -> dict:
    """Time one training step ``step(inp)`` (forward + backward) with the harness -> one row.

    Out of memory and a backend that cannot run these inputs become a row with ``error`` (the run
    goes on); so does a ``torch.compile`` failure on the compile backend. Any other error raises.
    """
    import capsid_kernels as ck
    from capsid_kernels.ops._precision import matmul_precision

    err, timing = None, None
    try:
        with matmul_precision(tf32):
            timing = bench(step, inputs, warmup=3, repeats=15, max_time_ms=max_time_ms)
    except torch.OutOfMemoryError as e:
        err = f"out of memory: {str(e)[:120]}"
    except ck.BackendUnavailable as e:
        err = f"unavailable: {e}"
    except Exception as e:  # noqa: BLE001  inductor/dynamo failures are a data point of the compile rows
        if backend not in COMPILED:
            raise
        err = f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}"
    torch.cuda.empty_cache()
    extra = {"error": err} if err else {}
    if timing is not None and layers > 1:
        extra["ns_per_item"] = round(timing.median_ms * 1e6 / items, 4)  # the whole stack per item
    row = make_row(op=op, backend=backend, dtype=prec, shapes=shapes, timing=timing, items=items, layers=layers,
                   flops=flops, env=env, **extra)
    per = f"{row['ns_per_item']:10.2f} ns/item " if "ns_per_item" in row else ""
    peak = f" peak {row['peak_mib']:9.1f} MiB" if "peak_mib" in row else ""
    print(f"{op} {prec:5s} N={items:7d} {backend:8s} "
          + (f"{per}{row['ns_per_item_layer']:9.2f} ns/item-layer{peak}" if timing else err), flush=True)
    return row


def add_ratios(case: list[dict]) -> None:
    """Ratios on the rows of one (dtype, shapes) case: ``speedup_vs_eager``, ``speedup_vs_compile`` and
    ``speedup_vs_fair_compile`` (its time over the row's), ``peak_vs_eager`` and ``peak_vs_fair_compile``
    (the row's peak over its). The fair compiled anchor is the ``FAIR_ANCHOR`` row of the case's dtype
    (precision-matched), named in ``fair_anchor`` on every row that got a ratio against it.
    ``speedup_vs_fastest_fair`` and ``peak_vs_fastest_fair`` are against the fastest of the case's
    ``FAIR_COMPILED`` rows that ran (bf16: ``fair_compile`` or ``fair_bf16_compile``), named in
    ``fastest_fair_anchor`` on every row that got a ratio against it."""
    base = {r["backend"]: r for r in case if "median_ms" in r}
    for r in case:
        fair = FAIR_ANCHOR.get(r["dtype"], "compile")
        for name, other in (("eager", "eager"), ("compile", "compile"), ("fair_compile", fair)):
            if "median_ms" in r and other in base:
                r[f"speedup_vs_{name}"] = round(base[other]["median_ms"] / r["median_ms"], 2)
        for name, other in (("eager", "eager"), ("fair_compile", fair)):
            if r.get("peak_mib") and other in base and base[other].get("peak_mib"):
                r[f"peak_vs_{name}"] = round(r["peak_mib"] / base[other]["peak_mib"], 4)
        if "speedup_vs_fair_compile" in r:
            r["fair_anchor"] = fair
        ran = [base[name] for name in FAIR_COMPILED.get(r["dtype"], ("compile",)) if name in base]
        fastest = min(ran, key=lambda x: x["median_ms"]) if ran else None
        if fastest is not None and "median_ms" in r:
            r["speedup_vs_fastest_fair"] = round(fastest["median_ms"] / r["median_ms"], 2)
            r["fastest_fair_anchor"] = fastest["backend"]
            if r.get("peak_mib") and fastest.get("peak_mib"):
                r["peak_vs_fastest_fair"] = round(r["peak_mib"] / fastest["peak_mib"], 4)


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)  # see fresh_compile
def train_rows(ns, precs, env, max_time_ms, on_case: Optional[Callable[[list[dict]], None]] = None, *,
               backends: Sequence[str] = TRAIN_BACKENDS, dims: Optional[dict] = None,
               device: str = "cuda") -> list[dict]:
    """Training step of one layer (issue 7): forward + backward to r, W, b and D, default preset.

    The loss takes r' and q (upstream gradients fixed random tensors, never zeros). Backends: eager
    autograd of the reference, torch.compile of it (forward and backward compiled), the two fair anchors
    eager and compiled (bf16 only, ``runs_for``; issue 20) and the Triton backend (fused forward that
    saves O(N·T·d_c), fused backward). Ratios and peak memory from this run.
    ``on_case(rows)`` is called with the rows so far after every (dtype, N) case. ``dims`` (K, dc, d)
    defaults to the default preset; small ones and ``device="cpu"`` serve the CPU tests.
    """
    from anchors import route_fair_anchor, route_fair_bf16
    from capsid_kernels.reference import route_reference

    unknown = sorted(set(backends) - set(TRAIN_BACKENDS))
    if unknown:
        raise ValueError(f"backends: unknown {unknown}; expected a subset of {TRAIN_BACKENDS}")
    K, dc, d = ((dims or PRESETS["default"])[k] for k in ("K", "dc", "d"))
    rows = []
    for prec in precs:
        dtype, precision = PRECS[prec]
        tf32 = precision == "tf32"
        W, b, D = (t.requires_grad_() for t in make_layer(K, dc, d, dtype, seed=1, device=device))
        fwd = layer_fns(W, b, D, precision, compiled=fresh_compile(route_reference),
                        fair_compiled=fresh_compile(route_fair_anchor),
                        fair_bf16_compiled=fresh_compile(route_fair_bf16))
        for n in ns:
            g = torch.Generator(device=device).manual_seed(7)
            g_res = torch.randn(n, d, device=device, generator=g).to(dtype)
            g_q = torch.randn(n, device=device, generator=g)
            inputs = [unit_rows(n, d, dtype, seed=200 + i, device=device).requires_grad_()
                      for i in range(rotation_count(n * d * W.element_size()))]
            shapes = {"N": n, "K": K, "d_c": dc, "d": d, "T": ROUNDS, "mode": "soft",
                      "preset": "default" if dims is None else "custom"}
            case = []
            for backend in backends:
                if not runs_for(backend, prec):
                    continue

                def step(r, f=fwd[backend]):
                    out = f(r)
                    return torch.autograd.grad([out.residual, out.confidence], [r, W, b, D], [g_res, g_q])

                case.append(train_case(step, inputs, op="route_train", backend=backend, prec=prec, shapes=shapes,
                                       env=env, max_time_ms=max_time_ms, tf32=tf32, items=n,
                                       flops=2.0 * n * K * dc * d * ROUNDS))
            add_ratios(case)
            rows += case
            if on_case is not None:
                on_case(rows)
            del inputs, g_res, g_q
        del W, b, D, fwd
        torch.cuda.empty_cache()
    return rows


STACK_BACKENDS = ("eager", "compile", "triton")


def stack_loss(route_fn: Callable[..., Any], x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stage 1's tokenizer loss (SPEC §4) over the whole stack, as ``capsid_gr.stage1.train`` forms it:
    every depth on every item (``forward_all_depths``: the residual of depth l feeds depth l + 1),
    lambda_r L_route (hard-stop reconstruction) + lambda_s L_spread (centres and the routing weights
    of the items that reach each depth) + lambda_l L_len (confidence and residual norms). L_BPE is
    left out: it is a loss over merge candidates with no routing in it.

    ``route_fn(r, W, b, D, last=, need_weights=)`` is one routing layer; ``params`` is
    (W, b, D) of every depth, flat.
    """
    from capsid_gr.stage1 import Stage1Config
    from capsid_gr.tokenizer import losses
    from capsid_gr.tokenizer.forward import forward_all_depths
    from capsid_kernels import CapsIDConfig, codebook_centres

    s1, tok = Stage1Config(), CapsIDConfig()
    layers = [params[i:i + 3] for i in range(0, len(params), 3)]

    def route_depth(depth, r, **kw):  # the call forward_all_depths makes on a CapsIDTokenizer
        W, b, D = layers[depth]
        return route_fn(r, W, b, D, last=depth == len(layers) - 1, **kw)

    a = forward_all_depths(SimpleNamespace(layers=layers, route_depth=route_depth), x, need_weights=True)
    centres = [codebook_centres(b, D) for _, b, D in layers]
    l_spread = losses.spread_loss(centres, [w[a.reached[:, j]] for j, w in enumerate(a.weights)], s1.margin_start)
    return (s1.lambda_route * losses.route_loss(a.x0, a.x_hat) + s1.lambda_spread * l_spread
            + s1.lambda_len * losses.length_loss(a.confidence, a.residual_norm, tok.tau, tok.eps))


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)  # see fresh_compile
def train_stack_rows(ns, precs, env, max_time_ms, *, backends: Sequence[str] = STACK_BACKENDS,
                     dims: Optional[dict] = None, depths: int = 6, device: str = "cuda",
                     on_case: Optional[Callable[[list[dict]], None]] = None) -> list[dict]:
    """Training step of the whole stack (issue 7): Stage 1's loss (``stack_loss``) forward + backward
    to W, b and D of all ``depths`` = L_max depths, one row per (dtype, N, backend).

    The backends differ only in the routing layer: eager autograd of the reference, the reference
    under ``torch.compile`` (one compiled layer called at every depth, forward and backward compiled,
    as in the one-layer rows) and the Triton backend (fused forward and backward). Item vectors are
    frozen, as in Stage 1. ``ns_per_item`` is the whole stack per item; ``ns_per_item_layer`` divides
    by the depths. ``dims`` (K, dc, d) defaults to the default preset; small ones and ``device="cpu"``
    serve the CPU smoke test (Triton then records why it cannot run). ``on_case`` as in ``train_rows``.
    """
    import capsid_kernels as ck
    from capsid_kernels.reference import route_reference

    unknown = sorted(set(backends) - set(STACK_BACKENDS))
    if unknown:
        raise ValueError(f"backends: unknown {unknown}; expected a subset of {STACK_BACKENDS}")
    K, dc, d = ((dims or PRESETS["default"])[k] for k in ("K", "dc", "d"))
    rows = []
    for prec in precs:
        dtype, precision = PRECS[prec]
        tf32 = precision == "tf32"
        params = [t.requires_grad_() for i in range(depths)
                  for t in make_layer(K, dc, d, dtype, seed=10 + i, device=device)]
        compiled = fresh_compile(route_reference)  # 3 variants per N: depth 1 (r without grad), middle, last
        route_fns = {
            "eager": lambda r, W, b, D, **kw: route_reference(r, W, b, D, rounds=ROUNDS, **kw),
            "compile": lambda r, W, b, D, **kw: compiled(r, W, b, D, rounds=ROUNDS, **kw),
            "triton": lambda r, W, b, D, **kw: ck.route(r, W, b, D, rounds=ROUNDS, precision=precision,
                                                        backend="triton", **kw),
        }
        for n in ns:
            inputs = [unit_rows(n, d, dtype, seed=300 + i, device=device)
                      for i in range(rotation_count(n * d * params[0].element_size()))]
            shapes = {"N": n, "K": K, "d_c": dc, "d": d, "T": ROUNDS, "L_max": depths, "mode": "soft",
                      "preset": "default" if dims is None else "custom", "loss": "route+spread+len"}
            case = []
            for backend in backends:
                def step(x, f=route_fns[backend]):
                    return torch.autograd.grad(stack_loss(f, x, params), params)

                case.append(train_case(step, inputs, op="route_train_stack", backend=backend, prec=prec,
                                       shapes=shapes, env=env, max_time_ms=max_time_ms, tf32=tf32, items=n,
                                       layers=depths, flops=2.0 * n * K * dc * d * ROUNDS * depths))
            add_ratios(case)
            rows += case
            if on_case is not None:
                on_case(rows)
            del inputs
        del params, compiled, route_fns
        torch.cuda.empty_cache()
    return rows


def report_train(rows: Sequence[dict], op: str, path: pathlib.Path, y: str, title: str) -> None:
    """Print the table of one training op's rows and plot ``y`` against N (one panel per dtype)."""
    sub = [r for r in rows if r["op"] == op]
    print_table(sub, ["op", "backend", "dtype", "shapes", y, "peak_mib", "speedup_vs_eager", "speedup_vs_compile",
                      "speedup_vs_fair_compile", "speedup_vs_fastest_fair", "fastest_fair_anchor", "peak_vs_eager",
                      "peak_vs_fair_compile", "peak_vs_fastest_fair", "error"])
    plot_rows(sub, path, x="shapes.N", y=y, series=lambda r: f"{r['backend']} {r['dtype']}",
              panel=lambda r: r["dtype"], title=title)


SWEEP_ENV = ("CAPSID_TRITON_BM", "CAPSID_TRITON_WARPS", "CAPSID_TRITON_STAGES", "CAPSID_TRITON_GROUP")


def sweep(env, groups: Sequence[int] = (2, 4, 8)) -> list[dict]:
    """Tile configurations of the Triton kernel (bf16 default and industrial presets, tf32 default;
    N = 65536) for each schedule in ``groups`` (CAPSID_TRITON_GROUP: capsules per vote GEMM; 2 is
    route_fwd_kernel, the others route_fwd_grouped.py; issue 20).

    Each row's ``launched`` is the configuration that ran: ``tile_config`` trims stages and BM to the
    shared-memory estimate and the launch falls back to smaller ones on OutOfResources. The launch
    cache is emptied before each configuration, else every one would reuse the first that launched.
    """
    import capsid_kernels as ck
    from capsid_kernels.triton import route_fwd

    rows = []
    try:
        for preset, prec in (("default", "bf16"), ("industrial", "bf16"), ("default", "tf32")):
            K, dc, d = (PRESETS[preset][k] for k in ("K", "dc", "d"))
            dtype, precision = PRECS[prec]
            W, b, D = make_layer(K, dc, d, dtype, seed=1)
            n = 65536
            inputs = [unit_rows(n, d, dtype, seed=100 + i) for i in range(4)]
            for group in groups:
                for bm, warps, stages in ((128, 8, 3), (128, 8, 2), (64, 4, 3), (64, 4, 2), (64, 8, 3)):
                    os.environ.update(CAPSID_TRITON_BM=str(bm), CAPSID_TRITON_WARPS=str(warps),
                                      CAPSID_TRITON_STAGES=str(stages), CAPSID_TRITON_GROUP=str(group))
                    route_fwd._WORKING.clear()
                    try:
                        t = bench(lambda r: ck.route(r, W, b, D, rounds=ROUNDS, precision=precision, backend="triton"),
                                  inputs, warmup=2, repeats=10, max_time_ms=500)
                        err = None
                    except Exception as e:  # noqa: BLE001  a config that does not compile is a data point
                        t, err = None, f"{type(e).__name__}: {str(e)[:100]}"
                    launched = next((c for key, c in route_fwd._WORKING.items() if key[0] == "forward"), None)
                    rows.append(make_row(op="route_sweep", backend="triton", dtype=prec,
                                         shapes={"N": n, "K": K, "d_c": dc, "d": d, "T": ROUNDS, "preset": preset,
                                                 "BM": bm, "warps": warps, "stages": stages},
                                         timing=t, items=n, flops=2.0 * n * K * dc * d * ROUNDS, env=env, group=group,
                                         launched=launched, **({"error": err} if err else {})))
                    r = rows[-1]
                    print(f"sweep {preset} {prec} GROUP={group} BM={bm} warps={warps} stages={stages}: "
                          + (f"{r['ns_per_item_layer']:.2f} ns/item-layer {r['tflops']:.1f} TFLOP/s, ran {launched}"
                             if t else err), flush=True)
    finally:
        for k in SWEEP_ENV:
            os.environ.pop(k, None)
    return rows


def _ints(p: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """Comma-separated integers >= 1, or p.error naming ``flag``."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        p.error(f"{flag}: expected comma-separated integers, got {text!r}")
    if any(v < 1 for v in values):
        p.error(f"{flag}: every N must be >= 1, got {text!r}")
    return values


def _names(p: argparse.ArgumentParser, flag: str, text: str, known: Sequence[str]) -> list[str]:
    """Comma-separated names from ``known``, or p.error naming ``flag`` and the unknown ones."""
    names = text.split(",")
    if bad := [v for v in names if v not in known]:
        p.error(f"{flag}: unknown {bad}; expected names from {', '.join(known)}")
    return names


def _checked_args(p: argparse.ArgumentParser, args) -> SimpleNamespace:
    """The comma-separated flags parsed and checked before anything runs (p.error names the bad one)."""
    return SimpleNamespace(
        ns=_ints(p, "--ns", args.ns),
        presets=_names(p, "--presets", args.presets, tuple(PRESETS)),
        precs=_names(p, "--precs", args.precs, tuple(PRECS)),
        backends=_names(p, "--backends", args.backends, FORWARD_BACKENDS),
        train_ns=_ints(p, "--train-ns", args.train_ns),
        train_precs=_names(p, "--train-precs", args.train_precs, tuple(PRECS)),
        train_backends=_names(p, "--train-backends", args.train_backends, TRAIN_BACKENDS),
        stack_backends=_names(p, "--train-stack-backends", args.train_stack_backends, STACK_BACKENDS),
        fair_ns=_ints(p, "--fair-ns", args.fair_ns),
        tokenizer_modes=_names(p, "--tokenizer-modes", args.tokenizer_modes, tuple(TOKENIZER_MODES)),
        groups=[int(g) for g in _names(p, "--groups", args.groups, ("1", "2", "4", "8"))],
    )


def report_route(route: Sequence[dict], path: pathlib.Path, title: str) -> None:
    """Print the table of the forward rows and plot ns per item-layer against N (one panel per preset)."""
    print_table(route, ["backend", "dtype", "shapes", "ns_per_item_layer", "tflops", "peak_mib", "speedup_vs_compile",
                        "speedup_vs_fair_compile", "speedup_vs_fastest_fair", "fastest_fair_anchor", "speedup_vs_triton",
                        "error"])
    plot_rows(route, path, x="shapes.N", y="ns_per_item_layer", series=lambda r: f"{r['backend']} {r['dtype']}",
              panel=lambda r: r["shapes"]["preset"], title=title)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--ns", default="4096,16384,65536,262144")
    p.add_argument("--presets", default="default,industrial")
    p.add_argument("--precs", default="fp32,tf32,bf16")
    p.add_argument("--backends", default=",".join(FORWARD_BACKENDS), help="of the forward rows")
    p.add_argument("--quick", action="store_true", help="N = 16384, 65536 only")
    p.add_argument("--sweep", action="store_true", help="only the Triton tile-configuration sweep")
    p.add_argument("--groups", default="2,4,8",
                   help="of the sweep: CAPSID_TRITON_GROUP values (capsules per vote GEMM: 1, 2, 4 or 8)")
    p.add_argument("--tokenizer-n", type=int, default=35_800_000, help="0 skips the whole-tokenizer row")
    p.add_argument("--tokenizer-precs", default="bf16")
    p.add_argument("--tokenizer-backends", default="triton,cuda",
                   help="cuda runs the reference stack with every depth on the C++ kernel")
    p.add_argument("--tokenizer-repeats", type=int, default=3)
    p.add_argument("--tokenizer-modes", default=",".join(TOKENIZER_MODES),
                   help="all: the default call; bounded_x_device / bounded_x_host: SIDs, lengths and stop reasons "
                        "only, results in pinned host memory, x on the GPU / in pinned host memory")
    p.add_argument("--chunk", type=int, default=1 << 21)
    p.add_argument("--max-time-ms", type=float, default=1500.0, help="time budget per case")
    p.add_argument("--tag", default="routing", help="file stem of the JSON and PNG")
    p.add_argument("--compile-cases", default="default:fp32,default:tf32,default:bf16,industrial:bf16",
                   help="preset:precision pairs that get a torch.compile row ('all' for every one)")
    p.add_argument("--skip-route", action="store_true", help="only the tokenizer row")
    p.add_argument("--train", action="store_true", help="only the training step of one layer (fwd + bwd)")
    p.add_argument("--train-stack", action="store_true",
                   help="only the training step of the whole L_max = 6 stack with Stage 1's loss (fwd + bwd); "
                        "with --train, both in one run and one JSON")
    p.add_argument("--train-ns", default="16384,65536")
    p.add_argument("--train-precs", default="bf16,fp32")
    p.add_argument("--train-backends", default=",".join(TRAIN_BACKENDS), help="of the one-layer training rows")
    p.add_argument("--train-stack-backends", default=",".join(STACK_BACKENDS))
    p.add_argument("--fair", action="store_true",
                   help="only the comparison with the fair anchors (fair*, fair_bf16*): bf16, default preset, forward (--backends) and "
                        "one-layer training step (--train-backends) at N in --fair-ns, to <tag>_fair.json")
    p.add_argument("--fair-ns", default="65536")
    args = p.parse_args(argv)
    lists = _checked_args(p, args)
    if not torch.cuda.is_available():
        print("bench/routing.py needs a CUDA GPU", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    env = env_info()
    print(env, flush=True)
    rows = matmul_ceiling(env)
    print_table(rows, ["op", "dtype", "median_ms", "tflops"])
    if args.sweep:
        rows += sweep(env, lists.groups)
        write_rows(rows, out / f"{args.tag}_sweep.json")
        return 0
    when = f"{env['gpu']} ({env['date'][:10]})"
    if args.fair:
        tag = f"{args.tag}_fair"
        partial = out / f"{tag}_partial.json"  # route_rows writes it too
        rows += route_rows(["default"], lists.fair_ns, ["bf16"], lists.backends, env, args.max_time_ms, "all",
                           out, tag)
        route = [r for r in rows if r["op"] == "route"]
        route_ratios(route)
        rows += train_rows(lists.fair_ns, ["bf16"], env, args.max_time_ms, backends=lists.train_backends,
                           on_case=lambda new: write_rows(rows + new, partial))
        write_rows(rows, out / f"{tag}.json")
        partial.unlink(missing_ok=True)
        report_route(route, out / f"{tag}.png", f"routing forward, T={ROUNDS}, {when}")
        report_train(rows, "route_train", out / f"{tag}_train.png", "ns_per_item_layer",
                     f"routing training step (fwd + bwd), T={ROUNDS}, {when}")
        return 0
    if args.train or args.train_stack:
        partial = out / f"{args.tag}_train_partial.json"  # what a run cut short leaves behind
        if args.train:
            rows += train_rows(lists.train_ns, lists.train_precs, env, args.max_time_ms, backends=lists.train_backends,
                               on_case=lambda new: write_rows(rows + new, partial))
        if args.train_stack:
            rows += train_stack_rows(lists.train_ns, lists.train_precs, env, args.max_time_ms,
                                     backends=lists.stack_backends, on_case=lambda new: write_rows(rows + new, partial))
        write_rows(rows, out / f"{args.tag}_train{'' if args.train else '_stack'}.json")
        partial.unlink(missing_ok=True)
        if args.train:
            report_train(rows, "route_train", out / f"{args.tag}_train.png", "ns_per_item_layer",
                         f"routing training step (fwd + bwd), T={ROUNDS}, {when}")
        if args.train_stack:
            report_train(rows, "route_train_stack", out / f"{args.tag}_train_stack.png", "ns_per_item",
                         f"Stage 1 loss over the L_max = 6 stack (fwd + bwd), T={ROUNDS}, {when}")
        return 0
    ns = [16384, 65536] if args.quick else lists.ns
    if args.tokenizer_n:
        for prec in args.tokenizer_precs.split(","):
            for tok_backend in args.tokenizer_backends.split(","):
                rows += tokenizer_rows(args.tokenizer_n, prec, env, args.chunk, args.tokenizer_repeats, tok_backend,
                                       lists.tokenizer_modes)
            write_rows(rows, out / f"{args.tag}.json")
    if not args.skip_route:
        rows += route_rows(lists.presets, ns, lists.precs, lists.backends, env, args.max_time_ms, args.compile_cases,
                           out, args.tag)
        (out / f"{args.tag}_partial.json").unlink(missing_ok=True)
    route = [r for r in rows if r["op"] == "route"]
    route_ratios(route)  # from this run
    write_rows(rows, out / f"{args.tag}.json")
    report_route(route, out / f"{args.tag}.png", f"routing forward, T={ROUNDS}, {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
