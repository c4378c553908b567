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
from typing import Callable, Optional

import numpy as np
import torch

import capsid_kernels as ck

from ..atomic import save_npy_atomic, write_atomic
from ..baselines import GAOQConfig, RQKMeansConfig, RQVAEConfig, fit_gaoq, fit_rqkmeans, fit_rqvae
from ..bpe import MergeTable, base_vocab_size, to_global
from ..data import SequenceDataset
from ..metrics import tokenizer_metrics
from ..stage1 import Stage1Config, train_stage1
from ..tokenizer.hamr import HaMRConfig
from .tokenizers import capsid_variant


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


def run_capsid(name: str, x: torch.Tensor, weights: np.ndarray, s: TokenizeSettings, out: Path) -> dict:
    tok_over, st_over, bpe_over = capsid_variant(name)
    tok_cfg = ck.CapsIDConfig(**{"d": x.shape[1], "capsules": s.capsules, "capsule_dim": s.capsule_dim,
                                 "max_length": s.max_length, "backend": s.backend, **s.routing, **tok_over})
    bpe_cfg = dataclasses.replace(s.stage1.bpe, **bpe_over)
    st_cfg = dataclasses.replace(s.stage1, **{"bpe": bpe_cfg, "seed": s.seed, **st_over})
    if s.hamr and st_cfg.hamr is None:
        st_cfg = dataclasses.replace(st_cfg, hamr=HaMRConfig())
    tokenizer = ck.CapsIDTokenizer(tok_cfg, seed=s.seed).to(x.device)
    result = train_stage1(tokenizer, x, weights, st_cfg, out_dir=out, resume=s.resume,
                          show_progress=s.show_progress)
    with torch.no_grad():
        final = tokenizer.tokenize(x)
    sids = final.sids.cpu().numpy()
    ks = tok_cfg.capsules_per_depth
    # lambda_bpe = 0 (capsid-nobpe): the gate was never trained, so no merges are applied
    merges = result.merges if st_cfg.lambda_bpe > 0 else MergeTable(base_vocab_size(ks), [])
    merged = merges.encode_table(to_global(sids, ks))
    save_npy_atomic(out / "sids.npy", sids)
    _write_json(out / "merged.json", merged)
    write_atomic(out / "merges.json", merges.to_json().encode())
    diag = tokenizer_metrics(sids, ks, x.cpu().numpy(), stop_reason=final.stop_reason.cpu().numpy(),
                             merged_lengths=np.array([len(m) for m in merged]), seed=s.seed)
    stack = tokenizer.diagnostics(final)
    diag["depths"] = [{k: v for k, v in d.items() if k != "code_usage"} for d in stack["depths"]]
    diag["val_route"] = result.best_val_route
    diag["stage1"] = {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
                      "stopped_early": result.stopped_early, "seconds": result.seconds,
                      "config": st_cfg.to_dict()}
    diag["bpe"] = {"merges": len(merges), "candidates": int(len(result.candidates.pairs)),
                   **_pair_cosine_summary(tokenizer, sids, weights, ks)}
    diag["tokenizer_config"] = tok_cfg.to_dict()
    return diag


def _pair_cosine_summary(tokenizer, sids: np.ndarray, weights: np.ndarray, ks) -> dict:
    """How the corpus pairs' centre cosines sit against theta: why there are (no) candidates."""
    from ..bpe import count_pairs, token_embeddings
    from ..bpe.pairs import pair_cosine

    pc = count_pairs(to_global(sids, ks), weights)
    if len(pc.pairs) == 0:
        return {"pairs": 0}
    cos = pair_cosine(token_embeddings([m.centres() for m in tokenizer.layers]).detach().double(), pc.pairs).cpu().numpy()
    q = np.quantile(cos, [0.5, 0.9, 0.99, 1.0])
    return {"pairs": int(len(pc.pairs)), "pair_cos_median": float(q[0]), "pair_cos_p90": float(q[1]),
            "pair_cos_p99": float(q[2]), "pair_cos_max": float(q[3])}


def _baseline_diagnostics(res, levels_capsules: tuple, x: np.ndarray, s: TokenizeSettings, seconds: float,
                          cfg) -> dict:
    """SPEC §8 metrics on the codes before the disambiguation position (res.codes, -1 padded
    where a SID ended early) and on the full SIDs (res.sids with res.capsules: the token ids
    the generator gets), fit time and config; the same for every baseline."""
    diag = tokenizer_metrics(res.codes, levels_capsules, x, seed=s.seed)
    after = tokenizer_metrics(res.sids, res.capsules, x, seed=s.seed)
    diag["collision_rate_after_disambiguation"] = after["collision_rate"]
    has_extra = res.sids.shape[1] > res.codes.shape[1]
    diag["disambiguation_codes"] = int(res.sids[:, -1].max()) + 1 if has_extra else 0
    diag["mean_length_with_disambiguation"] = after["mean_length"]
    diag["capsules"] = [int(k) for k in res.capsules]
    diag["fit_seconds"] = seconds
    diag["config"] = cfg.to_dict()
    return diag


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run_rqkmeans(name: str, x: torch.Tensor, s: TokenizeSettings, out: Path) -> dict:
    cfg = RQKMeansConfig(levels=s.rq_levels, codes=s.capsules, seed=s.seed)
    xn = x.cpu().numpy()
    start = time.perf_counter()
    res = fit_rqkmeans(xn, cfg)
    seconds = time.perf_counter() - start
    save_npy_atomic(out / "sids.npy", res.sids)
    diag = _baseline_diagnostics(res, (cfg.codes,) * cfg.levels, xn, s, seconds, cfg)
    diag["val_route"] = float(((_unit(xn) - res.recon) ** 2).sum(1).mean())
    return diag


def run_gaoq(name: str, x: torch.Tensor, s: TokenizeSettings, out: Path) -> dict:
    """GAOQ with its defaults (b = 32 x 3, g = b; see GAOQConfig). Its leaf centroid is no
    reconstruction comparable with the others, so no val_route."""
    cfg = GAOQConfig(seed=s.seed)
    xn = x.cpu().numpy()
    start = time.perf_counter()
    res = fit_gaoq(xn, cfg)
    seconds = time.perf_counter() - start
    save_npy_atomic(out / "sids.npy", res.sids)
    diag = _baseline_diagnostics(res, cfg.anchors_per_level, xn, s, seconds, cfg)
    diag["node_sizes"] = [{"min": int(min(z)), "max": int(max(z))} for z in res.sizes]
    return diag


def run_rqvae(name: str, x: torch.Tensor, s: TokenizeSettings, out: Path) -> dict:
    """RQ-VAE (TIGER; RQVAEConfig defaults: 300 epochs, AdamW) with `rq_levels` x `capsules`
    codes, plus HaMR for `rqvae-hamr` or `--hamr`. Trained on the CPU with `threads` torch
    threads (default 1: its ops are small, and more threads were slower on small CPUs)."""
    hamr = HaMRConfig() if name == "rqvae-hamr" or s.hamr else None
    cfg = RQVAEConfig(levels=s.rq_levels, codes=s.capsules, seed=s.seed, hamr=hamr)
    xn = x.cpu().numpy()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads or 1)
    try:
        res = fit_rqvae(xn, cfg)
    finally:
        torch.set_num_threads(threads)
    save_npy_atomic(out / "sids.npy", res.sids)
    diag = _baseline_diagnostics(res, (cfg.codes,) * cfg.levels, xn, s, res.seconds, cfg)
    diag["val_route"] = float(((_unit(xn) - res.recon) ** 2).sum(1).mean())
    diag["history"] = res.history
    return diag


BASELINE_RUNNERS: dict[str, Callable[[str, torch.Tensor, TokenizeSettings, Path], dict]] = {
    "rqkmeans": run_rqkmeans,
    "gaoq": run_gaoq,
    "rqvae": run_rqvae,
    "rqvae-hamr": run_rqvae,
}
"""Registry name -> runner, for every name in BASELINES; the rest are CAPSID_VARIANTS."""


def run_tokenize(data: SequenceDataset, vectors: np.ndarray, vector_info: dict, s: TokenizeSettings,
                 out_dir: Path, command: Optional[str] = None) -> dict:
    """Train/fit every tokenizer in `s.tokenizers` on the same frozen vectors; write outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(s.device)
    x = torch.as_tensor(vectors, dtype=torch.float32, device=device)
    weights = data.popularity().astype(np.float64)
    _write_json(out_dir / "vectors.json", vector_info)
    results = {}
    for name in s.tokenizers:
        sub = out_dir / name
        sub.mkdir(exist_ok=True)
        start = time.perf_counter()
        runner = BASELINE_RUNNERS.get(name)
        diag = runner(name, x, s, sub) if runner is not None else run_capsid(name, x, weights, s, sub)
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
