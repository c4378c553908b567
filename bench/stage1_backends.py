"""Stage 1 wall-clock per routing backend (issue 7), beside the RQ-KMeans baseline's fit.

    python bench/stage1_backends.py                          # .data/beauty_vectors.npy, eager/triton(/cuda)
    python bench/stage1_backends.py --synthetic 12101        # synthetic item vectors instead of a file
    python bench/stage1_backends.py --smoke --device cpu     # tiny shapes, one epoch (the CPU test)

Each backend runs the call the pipeline makes (``capsid_gr.pipeline.tokenize_catalogue``): a fresh
``CapsIDTokenizer`` of the ``capsid`` variant under the ``gpu`` preset (SPEC's tokenizer; Stage 1
with 8 epochs, patience 2 and the capsule warm-up init) with ``backend=`` set, trained by
``train_stage1`` with a checkpoint directory. ``eager`` is the reference custom op Stage 1 trains
through on that backend (its backward recomputes the forward); bench/routing.py --train-stack times
plain eager autograd and torch.compile on the stack itself. A one-epoch Stage 1 on the same vectors first
compiles and autotunes the kernels (reported as ``warmup_s``, not in ``seconds``). Item weights
(the BPE corpus counts) are 1 per item unless ``--item-weights`` names a .npy of them.

Per backend: total seconds, the init (``data_init``) and every epoch separately, the rest
(initial and final tokenization, merge table) as ``other_s``, peak GPU memory, the tokenizer's
best validation L_route and mean length (the backends should train equivalent tokenizers), and
ratios against eager and against RQ-KMeans (levels 3 x 256 codes, the gpu preset, on the CPU as
the pipeline fits it). Rows go to ``<out>/<tag>.json`` in bench/harness.py's row format.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from typing import Iterator, Optional

import numpy as np
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "python"))

from harness import REPO, Timing, env_info, make_row, print_table, write_rows  # noqa: E402

BACKENDS = ("auto", "eager", "triton", "cuda")
DEFAULT_VECTORS = REPO / ".data" / "beauty_vectors.npy"
PRESET, VARIANT = "gpu", "capsid"
# --smoke: shapes small enough for a CPU test (< 60 s with the warm-up and RQ-KMeans).
SMOKE_ITEMS = 512
SMOKE_TOKENIZER = {"capsules": 16, "capsule_dim": 8}
SMOKE_INIT = {"sample": SMOKE_ITEMS, "kmeans_iter": 5}
SMOKE_RQKMEANS = {"codes": 16, "n_init": 1, "max_iter": 20}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_vectors(path: Optional[str], synthetic: Optional[int], dim: int, seed: int,
                 limit: Optional[int] = None) -> tuple[np.ndarray, str]:
    """Item vectors [N, d] float32 and where they came from: the .npy file, else ``synthetic``
    ``synthetic_item_vectors`` (clustered, l2-normalised); ``limit`` keeps the first rows."""
    if synthetic is not None:
        from capsid_gr.data.synthetic import synthetic_item_vectors

        x = synthetic_item_vectors(synthetic, dim, seed=seed, device="cpu").numpy()
        source = f"synthetic_item_vectors(n={synthetic}, d={dim}, seed={seed})"
    else:
        x = np.load(path)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"{path}: expected item vectors [N >= 2, d], got shape {x.shape}")
        source = str(path)
    x = np.ascontiguousarray(x[:limit] if limit else x, dtype=np.float32)
    return x, source


def backend_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when Stage 1 can train on ``backend`` here (routing and the tokenize stack), else why not."""
    from capsid_kernels.backends import unsupported_reason

    if backend == "auto":
        return None
    for op in ("route", "tokenize"):
        reason = unsupported_reason(op, backend, device.type, torch.float32)
        if reason is not None:
            return reason
    return None


@contextlib.contextmanager
def timed_init(device: torch.device, into: dict) -> Iterator[None]:
    """Time the capsule warm-up inside ``train_stage1``: its module-level ``data_init`` is wrapped
    for the duration (seconds land in ``into["init_s"]``, its end time in ``into["init_end"]``)."""
    from capsid_gr.stage1 import train as train_mod

    original = train_mod.data_init

    def wrapped(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        _sync(device)
        into["init_end"] = time.perf_counter()
        into["init_s"] = into["init_end"] - t0
        return out

    train_mod.data_init = wrapped
    try:
        yield
    finally:
        train_mod.data_init = original


def configs(d: int, backend: str, seed: int, epochs: Optional[int], patience: Optional[int], smoke: bool):
    """(CapsIDConfig, Stage1Config) as ``tokenize_catalogue`` builds them for the capsid variant
    under the gpu preset, with ``backend`` and the --epochs/--patience/--smoke overrides."""
    import capsid_kernels as ck
    from capsid_gr.bpe import SemanticBPEConfig
    from capsid_gr.pipeline import PRESETS, variant_settings
    from capsid_gr.stage1 import Stage1Config
    from capsid_gr.stage1.init import InitConfig

    tok_o, st1_o, bpe_o, _ = variant_settings(VARIANT, PRESETS[PRESET])
    tok_o = {**tok_o, **(SMOKE_TOKENIZER if smoke else {}), "backend": backend}
    st1_o = dict(st1_o)
    if smoke:
        st1_o.update(epochs=1, patience=1, init=InitConfig(**SMOKE_INIT))
    if epochs is not None:
        st1_o["epochs"] = epochs
    if patience is not None:
        st1_o["patience"] = patience
    return ck.CapsIDConfig(d=d, **tok_o), Stage1Config(seed=seed, bpe=SemanticBPEConfig(**bpe_o), **st1_o)


def run_stage1(x: torch.Tensor, weights: np.ndarray, cfg, s1, seed: int, device: torch.device) -> dict:
    """One Stage 1 as the pipeline runs it (checkpoints in a temporary directory), timed."""
    import capsid_kernels as ck
    from capsid_gr.stage1 import train_stage1

    tokenizer = ck.CapsIDTokenizer(cfg, seed=seed)
    stamps: dict = {}
    epoch_ends: list[float] = []

    def on_epoch_end(_record: dict) -> None:
        _sync(device)
        epoch_ends.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="stage1_bench_") as run_dir, timed_init(device, stamps):
        _sync(device)
        t0 = time.perf_counter()
        res = train_stage1(tokenizer, x, weights, s1, out_dir=pathlib.Path(run_dir), resume=False,
                           show_progress=False, on_epoch_end=on_epoch_end)
        _sync(device)
        total = time.perf_counter() - t0
    starts = [stamps.get("init_end", t0)] + epoch_ends[:-1]
    epoch_s = [round(e - s, 4) for s, e in zip(starts, epoch_ends)]
    best = res.history[res.best_epoch] if 0 <= res.best_epoch < len(res.history) else {}
    return {
        "seconds": round(total, 4),
        "init_s": round(stamps["init_s"], 4) if "init_s" in stamps else None,
        "epoch_s": epoch_s,
        "mean_epoch_s": round(sum(epoch_s) / len(epoch_s), 4) if epoch_s else None,
        "other_s": round(total - stamps.get("init_s", 0.0) - sum(epoch_s), 4),
        "epochs_run": len(res.history),
        "stopped_early": res.stopped_early,
        "best_epoch": res.best_epoch,
        "best_val_route": res.best_val_route,
        "mean_length_at_best": best.get("mean_length"),
        "peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
    }


def stage1_rows(x_np: np.ndarray, weights: np.ndarray, backends: list[str], device: torch.device, env: dict, *,
                seed: int = 0, epochs: Optional[int] = None, patience: Optional[int] = None, smoke: bool = False,
                warmup: bool = True, source: str = "") -> list[dict]:
    """One ``op="stage1"`` row per backend (a backend that cannot run here: a row with ``error``)."""
    x = torch.as_tensor(x_np, dtype=torch.float32, device=device)
    rows = []
    for backend in backends:
        cfg, s1 = configs(x.shape[1], backend, seed, epochs, patience, smoke)
        shapes = {"N": x.shape[0], "d": cfg.d, "K": cfg.capsules_per_depth[0], "d_c": cfg.capsule_dim,
                  "T": cfg.rounds, "L_max": cfg.max_length, "batch": s1.batch_size, "epochs": s1.epochs,
                  "patience": s1.patience, "preset": "smoke" if smoke else PRESET}
        extra = {"device": str(device), "vectors": source, "precision": cfg.precision,
                 "init": s1.init is not None}
        reason = backend_reason(backend, device)
        if reason is not None:
            rows.append(make_row(op="stage1", backend=backend, dtype="fp32", shapes=shapes, timing=None, env=env,
                                 error=f"unavailable: {reason}", **extra))
            print(f"stage1 {backend:7s} skipped: {reason}", flush=True)
            continue
        warm_s = None
        if warmup:  # kernel compilation and autotuning, on the same vectors and shapes
            t0 = time.perf_counter()
            run_stage1(x, weights, cfg, dataclasses.replace(s1, epochs=1), seed, device)
            warm_s = round(time.perf_counter() - t0, 3)
        m = run_stage1(x, weights, cfg, s1, seed, device)
        ms = m.pop("seconds") * 1e3
        timing = Timing(ms, ms, ms, 1, m.pop("peak_bytes"), [ms])
        rows.append(make_row(op="stage1", backend=backend, dtype="fp32", shapes=shapes, timing=timing, env=env,
                             seconds=round(ms / 1e3, 4), warmup_s=warm_s, **m, **extra))
        print(f"stage1 {backend:7s} {ms / 1e3:8.2f} s (init {m['init_s']} s, {m['epochs_run']} epochs of "
              f"{m['mean_epoch_s']} s, other {m['other_s']} s; warm-up {warm_s} s), best val L_route "
              f"{m['best_val_route']:.5f}", flush=True)
    return rows


def rqkmeans_row(x_np: np.ndarray, env: dict, *, seed: int = 0, smoke: bool = False, source: str = "") -> dict:
    """The RQ-KMeans baseline's tokenizer fit (``fit_rqkmeans`` with the gpu preset), host wall-clock."""
    from capsid_gr.baselines import RQKMeansConfig, fit_rqkmeans
    from capsid_gr.pipeline import PRESETS

    cfg = RQKMeansConfig(seed=seed, **{**PRESETS[PRESET]["rqkmeans"], **(SMOKE_RQKMEANS if smoke else {})})
    t0 = time.perf_counter()
    fit_rqkmeans(x_np, cfg)
    sec = time.perf_counter() - t0
    shapes = {"N": x_np.shape[0], "d": x_np.shape[1], "levels": cfg.levels, "codes": cfg.codes,
              "n_init": cfg.n_init, "max_iter": cfg.max_iter}
    row = make_row(op="tokenizer_fit", backend="rqkmeans", dtype="fp64", shapes=shapes,
                   timing=Timing(sec * 1e3, sec * 1e3, sec * 1e3, 1, None, [sec * 1e3]), env=env,
                   seconds=round(sec, 4), device="cpu (scikit-learn)", cpu_count=os.cpu_count(), vectors=source)
    print(f"rqkmeans fit {sec:8.2f} s ({cfg.levels} levels x {cfg.codes} codes, {os.cpu_count()} CPUs)", flush=True)
    return row


def add_ratios(rows: list[dict]) -> None:
    """speedup_vs_eager and speedup_vs_rqkmeans (> 1: faster than it) on the stage1 rows."""
    ref = {r["backend"]: r["seconds"] for r in rows if "seconds" in r}
    eager, rq = ref.get("eager"), ref.get("rqkmeans")
    for r in rows:
        if r["op"] == "stage1" and "seconds" in r:
            r["speedup_vs_eager"] = round(eager / r["seconds"], 3) if eager else None
            r["speedup_vs_rqkmeans"] = round(rq / r["seconds"], 3) if rq else None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available here (use --device cpu)")
    return device


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", default=str(DEFAULT_VECTORS), help="item vectors, a float [N, d] .npy")
    p.add_argument("--synthetic", type=int, metavar="N", help="N synthetic item vectors instead of --vectors")
    p.add_argument("--dim", type=int, default=128, help="d of --synthetic vectors")
    p.add_argument("--item-weights", help="a .npy of N item occurrence counts (default: 1 per item)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated from {', '.join(BACKENDS)} (default: eager,triton and cuda where it can run)")
    p.add_argument("--epochs", type=int, help="Stage 1 epochs (default: the gpu preset's 8; 1 with --smoke)")
    p.add_argument("--patience", type=int, help="early-stopping patience (default: the gpu preset's 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true", help="skip the one-epoch warm-up run per backend")
    p.add_argument("--no-rqkmeans", action="store_true", help="skip the RQ-KMeans reference fit")
    p.add_argument("--smoke", action="store_true",
                   help=f"CPU-sized check: first {SMOKE_ITEMS} items, K=16, d_c=8, 1 epoch, small RQ-KMeans")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--tag", default=None, help="file stem of the JSON (default stage1_backends[_smoke])")
    args = p.parse_args(argv)

    for name in ("epochs", "patience", "synthetic"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "synthetic" else 1):
            p.error(f"--{name}: expected an integer >= {2 if name == 'synthetic' else 1}, got {value}")
    if args.dim < 1:
        p.error(f"--dim: expected an integer >= 1, got {args.dim}")
    try:
        device = _device(args.device)
    except (RuntimeError, ValueError) as e:
        p.error(f"--device {args.device!r}: {e}")
    if args.backends is None:
        backends = ["eager", "triton"] + (["cuda"] if backend_reason("cuda", device) is None else [])
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if not backends or (bad := [b for b in backends if b not in BACKENDS]):
            p.error(f"--backends: expected names from {', '.join(BACKENDS)}, got {args.backends!r}")
    if args.synthetic is None and not pathlib.Path(args.vectors).is_file():
        p.error(f"--vectors {args.vectors}: no such file; pass --vectors PATH or --synthetic N")

    x, source = load_vectors(None if args.synthetic else args.vectors, args.synthetic, args.dim, args.seed,
                             limit=SMOKE_ITEMS if args.smoke else None)
    if args.item_weights:
        weights = np.load(args.item_weights).astype(np.float64)
        if weights.shape != (x.shape[0],):
            p.error(f"--item-weights: expected shape ({x.shape[0]},) to match the vectors, got {weights.shape}")
    else:
        weights = np.ones(x.shape[0], dtype=np.float64)

    env = env_info()
    env["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} CPUs)"
    print(env, f"vectors {source} {x.shape}", flush=True)
    rows = stage1_rows(x, weights, backends, device, env, seed=args.seed, epochs=args.epochs, patience=args.patience,
                       smoke=args.smoke, warmup=not args.no_warmup, source=source)
    if not args.no_rqkmeans:
        rows.append(rqkmeans_row(x, env, seed=args.seed, smoke=args.smoke, source=source))
    add_ratios(rows)
    tag = args.tag or ("stage1_backends_smoke" if args.smoke else "stage1_backends")
    path = write_rows(rows, pathlib.Path(args.out) / f"{tag}.json")
    print_table(rows, ["op", "backend", "seconds", "init_s", "mean_epoch_s", "epochs_run", "other_s", "warmup_s",
                       "peak_mib", "best_val_route", "speedup_vs_eager", "speedup_vs_rqkmeans", "error"])
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
