"""Shared benchmark machinery: device-event timing, peak memory, JSON rows, plots.

Every bench/ program imports this. Rules from KERNELS.md: time with device events after a
warm-up, report the median of many repeats, rotate inputs so L2 does not serve them, never
time zeros, and tag every row with the GPU, versions, date and git commit.

Usage::

    from harness import Timer, bench, env_info, write_rows, plot_rows
    t = bench(lambda x: f(x), inputs=[make() for _ in range(4)])   # -> Timing
    row = make_row(op="route", backend="triton", dtype="bf16", shapes={...}, timing=t, ...)
    write_rows(rows, out_dir / "routing.json")
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

REPO = pathlib.Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- environment

def git_commit() -> Optional[str]:
    """CAPSID_GIT_COMMIT if set, else git, else .git/HEAD read by hand (git may be absent)."""
    env = os.environ.get("CAPSID_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if not ref.startswith("ref:"):
            return ref
        name = ref.split(None, 1)[1]
        ref_file = REPO / ".git" / name
        if ref_file.exists():
            return ref_file.read_text().strip()
        packed = REPO / ".git" / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + name):
                    return line.split()[0]
    except OSError:
        pass
    return None


def env_info() -> dict:
    """GPU name, versions, date and commit: the tag every row carries."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": sys.version.split()[0],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
    }


# --------------------------------------------------------------------------- timing

@dataclass
class Timing:
    """Milliseconds per call: median over ``repeats`` device-event-timed calls."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    peak_bytes: Optional[int] = None  # allocator peak during one call, beyond what was live before
    samples: list = field(default_factory=list, repr=False)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    warmup: int = 3,
    repeats: int = 25,
    min_time_ms: float = 0.0,
    max_time_ms: float = 2000.0,
    measure_memory: bool = True,
) -> Timing:
    """Time ``fn(inp)`` with CUDA events, rotating over ``inputs`` (pass several input sets
    whose total exceeds L2 so no call reads warm cache). ``inp`` is unpacked when a tuple.

    Warm-up runs ``warmup`` calls (compilation and autotuning land there). Then at least
    ``repeats`` timed calls, more while their sum is under ``min_time_ms``, fewer once it
    passes ``max_time_ms`` (at least 3). Returns the median. On CPU a host clock is used.
    """
    if not inputs:
        raise ValueError("bench: need at least one input set")

    def call(i):
        inp = inputs[i % len(inputs)]
        return fn(*inp) if isinstance(inp, tuple) else fn(inp)

    for i in range(warmup):
        call(i)
    _sync()
    peak = None
    if measure_memory and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = call(0)
        _sync()
        peak = torch.cuda.max_memory_allocated() - base
        del out
    samples: list[float] = []
    total = 0.0
    i = 0
    cuda = torch.cuda.is_available()
    while True:
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            out = call(i)
            e.record()
            e.synchronize()
            ms = s.elapsed_time(e)
        else:
            import time

            t0 = time.perf_counter()
            out = call(i)
            ms = (time.perf_counter() - t0) * 1e3
        del out
        samples.append(ms)
        total += ms
        i += 1
        if len(samples) >= 3 and total >= max_time_ms:
            break
        if len(samples) >= repeats and total >= min_time_ms:
            break
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples), peak, samples)


def peak_memory(fn: Callable[[], Any]) -> int:
    """Bytes the allocator held at peak during ``fn()`` beyond what was live before it."""
    if not torch.cuda.is_available():
        return 0
    _sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    _sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def rotation_count(bytes_per_input: int, l2_bytes: int = 50 * 2**20, cap: int = 8) -> int:
    """How many input sets to rotate so that together they exceed L2 (H100: 50 MB)."""
    if bytes_per_input <= 0:
        return cap
    return max(2, min(cap, -(-2 * l2_bytes // bytes_per_input)))


# --------------------------------------------------------------------------- rows

def make_row(
    *,
    op: str,
    backend: str,
    dtype: str,
    shapes: dict,
    timing: Optional[Timing],
    items: Optional[int] = None,
    layers: int = 1,
    steps: Optional[int] = None,
    flops: Optional[float] = None,
    bytes_moved: Optional[float] = None,
    env: Optional[dict] = None,
    **extra: Any,
) -> dict:
    """One JSON row. ``items`` × ``layers`` gives ns per item-layer; ``steps`` gives µs per
    step; ``flops``/``bytes_moved`` per call give TFLOP/s / GB/s. A None timing records a
    case that could not run (put the reason in ``error=``)."""
    row: dict[str, Any] = {"op": op, "backend": backend, "dtype": dtype, "shapes": shapes}
    if timing is not None:
        sec = timing.median_ms * 1e-3
        row.update(median_ms=round(timing.median_ms, 5), min_ms=round(timing.min_ms, 5),
                   max_ms=round(timing.max_ms, 5), repeats=timing.repeats)
        if items:
            row["ns_per_item_layer"] = round(sec * 1e9 / (items * layers), 4)
        if steps:
            row["us_per_step"] = round(sec * 1e6 / steps, 4)
        if flops:
            row["tflops"] = round(flops / sec / 1e12, 3)
        if bytes_moved:
            row["gbps"] = round(bytes_moved / sec / 1e9, 2)
        if timing.peak_bytes is not None:
            row["peak_mib"] = round(timing.peak_bytes / 2**20, 2)
    row.update(extra)
    row.update(env if env is not None else env_info())
    return row


def write_rows(rows: Iterable[dict], path: os.PathLike | str, *, append: bool = False) -> pathlib.Path:
    """Write rows as a JSON list (appending to an existing list when ``append``)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    if append and path.exists():
        rows = json.loads(path.read_text()) + rows
    path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return path


def read_rows(path: os.PathLike | str) -> list[dict]:
    return json.loads(pathlib.Path(path).read_text())


def print_table(rows: Sequence[dict], columns: Sequence[str], file=None) -> None:
    """A plain fixed-width table of the given row keys (missing keys print as '-')."""
    file = file or sys.stdout
    cells = [[str(c) for c in columns]]
    for r in rows:
        cells.append(["-" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r[c]))
                      for c in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), file=file)
    file.flush()


# --------------------------------------------------------------------------- plots

def plot_rows(
    rows: Sequence[dict],
    path: os.PathLike | str,
    *,
    x: str,
    y: str,
    series: Callable[[dict], str],
    panel: Optional[Callable[[dict], str]] = None,
    title: str = "",
    logx: bool = True,
    logy: bool = True,
) -> Optional[pathlib.Path]:
    """One PNG: ``y`` against ``x`` (keys, or 'shapes.N' for a nested key), one line per
    ``series(row)``, one subplot per ``panel(row)``. Skips with a message without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped ({path}): matplotlib is not installed", file=sys.stderr)
        return None

    def get(r, key):
        v = r
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v

    rows = [r for r in rows if get(r, x) is not None and get(r, y) is not None]
    panels = sorted({panel(r) if panel else "" for r in rows})
    if not panels:
        print(f"plot skipped ({path}): no rows with {x} and {y}", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        sub = [r for r in rows if (panel(r) if panel else "") == p]
        for name in sorted({series(r) for r in sub}):
            pts = sorted((get(r, x), get(r, y)) for r in sub if series(r) == name)
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=name)
        if logx:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(p)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
