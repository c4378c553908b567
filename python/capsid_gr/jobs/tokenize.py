"""The tokenize job: item vectors -> each tokenizer -> SIDs, merges, diagnostics on disk.

Output directory layout:
    vectors.json                       how the item vectors were made (cache key, sources)
    <tokenizer>/sids.npy               [N, L] per-depth codes, -1 after the item's end
    <tokenizer>/merged.json            merged token ids per item (CAPSID variants; the SIDs when
                                       a variant has no SemanticBPE)
    <tokenizer>/merges.json            the SemanticBPE vocabulary
    <tokenizer>/stage1.safetensors     Stage-1 checkpoint (resumable), stage1_log.jsonl
    <tokenizer>/diagnostics.json       SPEC §8 metrics plus per-depth routing records; for the
                                       baselines, metrics before and after the disambiguation
                                       position, fit time and config
    summary.json, summary.md           every tokenizer side by side
    diagnostics.png                    length histogram and stop reasons (needs matplotlib)
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..atomic import save_npy_atomic, write_atomic
from ..baselines import GAOQConfig, RQKMeansConfig, RQVAEConfig
from ..data import SequenceDataset
from ..stage1 import Stage1Config
from .fit_tokenizer import FitSettings, TokenizerFit, check_item_vectors, fit_diagnostics, fit_tokenizer


@dataclasses.dataclass
class TokenizeSettings:
    """What the CLI passes in; every field has the default of `capsid tokenize`."""

    tokenizers: list = dataclasses.field(default_factory=lambda: ["capsid", "rqkmeans"])
    capsules: int = 256
    capsule_dim: int = 64
    max_length: int = 6
    backend: str = "auto"
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    rq_levels: int = 3
    seed: int = 0
    device: str = "cpu"
    resume: bool = True
    show_progress: bool = True
    hamr: bool = False  # `--hamr`: add HaMR to every CAPSID variant's Stage 1 and to RQ-VAE
    threads: Optional[int] = None  # torch CPU threads for RQ-VAE (None: 1, faster for its tiny ops)
    routing: dict = dataclasses.field(default_factory=dict)  # the routing flags given (--rounds --mode --tau ...)


def _write_json(path: Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, default=_jsonable) + "\n").encode())


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def fit_settings(s: TokenizeSettings) -> FitSettings:
    """The shared fit's settings from the CLI's: every baseline with `rq_levels` x `capsules`
    codes (GAOQ with its defaults, b = 32 x 3), RQ-VAE on `threads` torch threads (default 1)."""
    tokenizer = {"capsules": s.capsules, "capsule_dim": s.capsule_dim, "max_length": s.max_length,
                 "backend": s.backend, **s.routing}
    return FitSettings(tokenizer=tokenizer, stage1=s.stage1,
                       rqkmeans=RQKMeansConfig(levels=s.rq_levels, codes=s.capsules), gaoq=GAOQConfig(),
                       rqvae=RQVAEConfig(levels=s.rq_levels, codes=s.capsules), hamr=s.hamr,
                       threads=s.threads or 1, resume=s.resume, show_progress=s.show_progress)


def write_fit(fit: TokenizerFit, out: Path) -> dict:
    """A fit's files in `out` (sids.npy; CAPSID also merged.json and merges.json; Stage 1 wrote
    its checkpoint there) -> its diagnostics."""
    save_npy_atomic(out / "sids.npy", fit.sids)
    if fit.merges is not None:
        _write_json(out / "merged.json", fit.merged())
        write_atomic(out / "merges.json", fit.merges.to_json().encode())
    return fit_diagnostics(fit)


def run_tokenize(data: SequenceDataset, vectors: np.ndarray, vector_info: dict, s: TokenizeSettings,
                 out_dir: Path, command: Optional[str] = None) -> dict:
    """Train/fit every tokenizer in `s.tokenizers` on the same frozen vectors; write outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(s.device)
    x = check_item_vectors(vectors, rows=data.n_items)
    weights = data.popularity().astype(np.float64)
    settings = fit_settings(s)
    _write_json(out_dir / "vectors.json", vector_info)
    results = {}
    for name in s.tokenizers:
        sub = out_dir / name
        sub.mkdir(exist_ok=True)
        start = time.perf_counter()
        fit = fit_tokenizer(name, x, settings, s.seed, weights=weights, device=device, out_dir=sub)
        diag = write_fit(fit, sub)
        diag["seconds"] = time.perf_counter() - start
        _write_json(sub / "diagnostics.json", diag)
        results[name] = diag
    summary = {
        "dataset": data.name, "items": data.n_items, "users": data.n_users, "seed": s.seed,
        "device": _device_name(device), "command": command, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(), "torch": torch.__version__,
        "vectors": {k: v for k, v in vector_info.items() if k != "path"}, "tokenizers": results,
    }
    _write_json(out_dir / "summary.json", summary)
    from ..report import format_comparison
    write_atomic(out_dir / "summary.md", (format_comparison(summary, markdown=True) + "\n").encode())
    try:
        from ..plots import plot_diagnostics
        plot_diagnostics(results, out_dir / "diagnostics.png")
        summary["plot"] = str(out_dir / "diagnostics.png")
    except ImportError:
        summary["plot"] = None
    return summary


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def command_line() -> str:
    return " ".join(["capsid", *sys.argv[1:]])
