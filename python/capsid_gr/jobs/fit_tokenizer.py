"""Fit one tokenizer: item vectors -> SIDs, diagnostics, timings. The one fitting path of
`capsid tokenize` / `capsid run` (jobs/tokenize.py) and `capsid pipeline` (pipeline.py).

A caller states its settings once, as FitSettings (from its flags or from its preset), and
gets a TokenizerFit back: the SIDs, the codes before any disambiguation position, the fitted
model, the fit's seconds, and `fit_diagnostics`, the SPEC §8 record of `<tokenizer>/
diagnostics.json`. The vectors are checked here (check_item_vectors), so both commands refuse
the same vectors with the same message. What a caller makes of a fit (files on disk, the
generator's ItemTokenization) stays with the caller.

Imports torch, the tokenizers and the SPEC §8 metrics: a job of the runs stage.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

import numpy as np
import torch

import capsid_kernels as ck

from ..baselines import GAOQConfig, RQKMeansConfig, RQVAEConfig, fit_gaoq, fit_rqkmeans, fit_rqvae
from ..bpe import MergeTable, base_vocab_size, to_global
from ..metrics import tokenizer_metrics
from ..stage1 import Stage1Config, Stage1Result, tokenize_items, train_stage1
from ..tokenizer.hamr import HaMRConfig
from ..tokenizer.inference import unique_stop_tokenize
from .tokenizers import BASELINES, canonical, capsid_variant


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Everything a fit reads besides the vectors and the seed (the seed replaces every config's)."""

    tokenizer: dict = dataclasses.field(default_factory=dict)
    """CapsIDConfig fields other than d (capsules, capsule_dim, max_length, backend, routing);
    a CAPSID variant's overrides (jobs/tokenizers.py) go on top."""
    stage1: Stage1Config = dataclasses.field(default_factory=Stage1Config)
    """Stage 1 with its SemanticBPE settings; a variant's Stage-1 and BPE overrides go on top."""
    rqkmeans: RQKMeansConfig = RQKMeansConfig()
    gaoq: GAOQConfig = GAOQConfig()
    rqvae: RQVAEConfig = RQVAEConfig()
    hamr: bool = False
    """Add HaMR (HaMRConfig's defaults) to every CAPSID variant's Stage 1 and to RQ-VAE (`--hamr`)."""
    threads: Optional[int] = None
    """torch CPU threads while RQ-VAE trains (its ops are tiny: 1 was fastest on small CPUs);
    None leaves the process's setting."""
    resume: bool = True
    """Stage 1 resumes from a checkpoint in the fit's folder."""
    show_progress: bool = True


@dataclasses.dataclass
class TokenizerFit:
    """One fitted tokenizer. `sids` [N, L] int64 are its SIDs (-1 after an item's end; a
    baseline's with its disambiguation column), `codes` the part before that column (CAPSID:
    the SIDs), `capsules` the codes per position of `sids`, `code_capsules` those of `codes`."""

    name: str
    seed: int
    x: np.ndarray
    """The item vectors it was fitted on (float32 [N, d], as check_item_vectors returned them)."""
    weights: Optional[np.ndarray]
    """The items' popularity [N] Stage 1 counted pairs with (CAPSID; None for a baseline)."""
    sids: np.ndarray
    codes: np.ndarray
    capsules: tuple
    code_capsules: tuple
    centres: list
    """A baseline's codebook rows [K, width] per position of `codes` (the generator's warm
    start; RQ-VAE's are latent-space); empty for CAPSID, whose centres live in `tokenizer`."""
    seconds: float
    config: Any
    """The fitted model's config: CapsIDConfig, or the baseline's config."""
    output: Any = None
    """A baseline's output (RQKMeansOutput, GAOQOutput, RQVAEOutput)."""
    tokenizer: Optional[ck.CapsIDTokenizer] = None
    stage1_config: Optional[Stage1Config] = None
    stage1: Optional[Stage1Result] = None
    final: Optional[ck.StackOutput] = None
    """CAPSID's inference pass over every item after Stage 1."""
    merges: Optional[MergeTable] = None
    """CAPSID's SemanticBPE vocabulary; empty when the variant trains no gate (lambda_bpe = 0)."""
    held: Optional[list] = None
    """A uniqueness-aware stop's items held per depth (`UniqueStop.held`); None for the plain rule."""

    @property
    def uses_merges(self) -> bool:
        """Whether Stage 1 trained the merge gate, so the merges apply (not for lambda_bpe = 0)."""
        return self.stage1_config is not None and self.stage1_config.lambda_bpe > 0

    def merged(self) -> list[list[int]]:
        """CAPSID: every item's token ids after the merges (the SIDs when there are none)."""
        return self.merges.encode_table(to_global(self.sids, self.capsules))


def check_item_vectors(x, rows: Optional[int] = None) -> np.ndarray:
    """The item vectors as float32 [N, d], or a ValueError naming what is wrong: not a 2-D
    real matrix with a row and a column, another row count than `rows` (the catalogue), a
    NaN/Inf or a zero row (every tokenizer needs each item's direction; the first bad row is
    named). float32 input is returned as it is, not copied."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or min(arr.shape) < 1 or (rows is not None and arr.shape[0] != rows):
        want = f"[N{'=' + str(rows) if rows is not None else ' >= 1'}, d >= 1]"
        raise ValueError(f"item vectors: expected a {want} matrix (one row per item), got {arr.dtype} {list(arr.shape)}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"item vectors: expected real numbers (float or int), got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range becomes inf, refused below
        arr = np.asarray(arr, dtype=np.float32)
        norms = np.linalg.norm(arr, axis=1)
    bad = ~np.isfinite(arr).all(axis=1) | ~(norms > 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        what = "NaN or Inf" if not np.isfinite(arr[row]).all() else "zero"
        raise ValueError(f"item vectors: expected finite, non-zero rows (in float32), row {row} is {what} "
                         f"({int(bad.sum())} such rows)")
    return arr


def fit_tokenizer(name: str, x, settings: FitSettings, seed: int, *, weights: Optional[np.ndarray] = None,
                  device="cpu", out_dir=None) -> TokenizerFit:
    """Fit tokenizer `name` (a registry name or alias) on item vectors x [N, d] with `settings`
    and `seed`. A CAPSID variant needs `weights` [N], the items' popularity (SemanticBPE counts
    pairs with it), and writes Stage 1's checkpoint and log to `out_dir`."""
    name = canonical(name)
    x = check_item_vectors(x, rows=None if weights is None else len(weights))
    if name in BASELINES:
        return _fit_baseline(name, x, settings, seed)
    if weights is None:
        raise ValueError(f"fit_tokenizer({name!r}): a CAPSID variant needs weights, the items' popularity [N], got None")
    return _fit_capsid(name, x, np.asarray(weights, np.float64), settings, seed, torch.device(device), out_dir)


def _fit_capsid(name: str, x: np.ndarray, weights: np.ndarray, s: FitSettings, seed: int, device,
                out_dir) -> TokenizerFit:
    tok_over, st_over, bpe_over = capsid_variant(name)
    tok_cfg = ck.CapsIDConfig(**{"d": x.shape[1], **s.tokenizer, **tok_over})
    bpe_cfg = dataclasses.replace(s.stage1.bpe, **bpe_over)
    st_cfg = dataclasses.replace(s.stage1, **{"bpe": bpe_cfg, "seed": seed, **st_over})
    if s.hamr and st_cfg.hamr is None:
        st_cfg = dataclasses.replace(st_cfg, hamr=HaMRConfig())
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    start = time.perf_counter()
    tokenizer = ck.CapsIDTokenizer(tok_cfg, seed=seed).to(device)
    result = train_stage1(tokenizer, xt, weights, st_cfg, out_dir=out_dir, resume=s.resume,
                          show_progress=s.show_progress)
    held = None
    with torch.no_grad():
        if st_cfg.stop_rule == "unique":
            final, held = unique_stop_tokenize(tokenizer, xt)
        else:
            final = tokenize_items(tokenizer, xt)
    seconds = time.perf_counter() - start
    sids = final.sids.cpu().numpy()
    ks = tuple(tok_cfg.capsules_per_depth)
    fit = TokenizerFit(name=name, seed=seed, x=x, weights=weights, sids=sids, codes=sids, capsules=ks,
                       code_capsules=ks, centres=[], seconds=seconds, config=tok_cfg,
                       tokenizer=tokenizer, stage1_config=st_cfg, stage1=result, final=final, held=held)
    fit.merges = result.merges if fit.uses_merges else MergeTable(base_vocab_size(ks), [])
    return fit


def _fit_baseline(name: str, x: np.ndarray, s: FitSettings, seed: int) -> TokenizerFit:
    start = time.perf_counter()
    if name == "rqkmeans":
        cfg = dataclasses.replace(s.rqkmeans, seed=seed)
        out = fit_rqkmeans(x, cfg)
        centres, code_capsules = out.centres, (cfg.codes,) * cfg.levels
    elif name == "gaoq":
        cfg = dataclasses.replace(s.gaoq, seed=seed)
        out = fit_gaoq(x, cfg)
        centres, code_capsules = out.anchors, tuple(cfg.anchors_per_level)
    else:  # rqvae, rqvae-hamr
        hamr = HaMRConfig() if name == "rqvae-hamr" or s.hamr else s.rqvae.hamr
        cfg = dataclasses.replace(s.rqvae, seed=seed, hamr=hamr)
        threads = torch.get_num_threads()
        if s.threads:
            torch.set_num_threads(s.threads)
        try:
            out = fit_rqvae(x, cfg)
        finally:
            torch.set_num_threads(threads)
        centres, code_capsules = out.centres, (cfg.codes,) * cfg.levels  # latent-space codebooks
    return TokenizerFit(name=name, seed=seed, x=x, weights=None, sids=out.sids, codes=out.codes, capsules=tuple(out.capsules),
                        code_capsules=code_capsules, centres=centres, seconds=time.perf_counter() - start,
                        config=cfg, output=out)


def fit_diagnostics(fit: TokenizerFit) -> dict:
    """SPEC §8 metrics of a fit on the vectors it was fitted on, plus what each tokenizer
    records: CAPSID its per-depth routing records, Stage 1, the merges and the pairs' cosines;
    a baseline its metrics before and after the disambiguation position, fit time and config."""
    if fit.tokenizer is not None:
        return _capsid_diagnostics(fit)
    x, res, cfg = fit.x, fit.output, fit.config
    diag = tokenizer_metrics(res.codes, fit.code_capsules, x, seed=fit.seed)
    after = tokenizer_metrics(res.sids, res.capsules, x, seed=fit.seed)
    diag["collision_rate_after_disambiguation"] = after["collision_rate"]
    has_extra = res.sids.shape[1] > res.codes.shape[1]
    diag["disambiguation_codes"] = int(res.sids[:, -1].max()) + 1 if has_extra else 0
    diag["mean_length_with_disambiguation"] = after["mean_length"]
    diag["capsules"] = [int(k) for k in res.capsules]
    diag["fit_seconds"] = fit.seconds
    diag["config"] = cfg.to_dict()
    if fit.name == "gaoq":  # its leaf centroid is no reconstruction comparable with the others: no val_route
        diag["node_sizes"] = [{"min": int(min(z)), "max": int(max(z))} for z in res.sizes]
        return diag
    diag["val_route"] = float(((_unit(x) - res.recon) ** 2).sum(1).mean())
    if fit.name in ("rqvae", "rqvae-hamr"):
        diag["history"] = res.history
    return diag


def _capsid_diagnostics(fit: TokenizerFit) -> dict:
    result, merged = fit.stage1, fit.merged()
    diag = tokenizer_metrics(fit.sids, fit.capsules, fit.x, stop_reason=fit.final.stop_reason.cpu().numpy(),
                             merged_lengths=np.array([len(m) for m in merged]), seed=fit.seed)
    stack = fit.tokenizer.diagnostics(fit.final)
    diag["depths"] = [{k: v for k, v in d.items() if k != "code_usage"} for d in stack["depths"]]
    diag["val_route"] = result.best_val_route
    if fit.held is not None:
        diag["stop_rule"] = "unique"
        diag["held_per_depth"] = list(fit.held)
    diag["stage1"] = {"epochs_run": len(result.history), "best_epoch": result.best_epoch,
                      "stopped_early": result.stopped_early, "seconds": result.seconds,
                      "config": fit.stage1_config.to_dict()}
    diag["bpe"] = {"merges": len(fit.merges), "candidates": int(len(result.candidates.pairs)),
                   **_pair_cosine_summary(fit.x, fit.sids, fit.weights, fit.capsules)}
    diag["tokenizer_config"] = fit.config.to_dict()
    return diag


def _pair_cosine_summary(x: np.ndarray, sids: np.ndarray, weights: np.ndarray, ks) -> dict:
    """How the corpus pairs' cosines (SPEC §5's item-space token embedding) sit against theta: why
    there are (no) candidates."""
    from ..bpe import count_pairs, item_space_embeddings
    from ..bpe.pairs import pair_cosine

    ids = to_global(sids, ks)
    pc = count_pairs(ids, weights)
    if len(pc.pairs) == 0:
        return {"pairs": 0}
    emb = item_space_embeddings(ids, torch.as_tensor(x), base_vocab_size(ks))
    cos = pair_cosine(emb, pc.pairs).cpu().numpy()
    q = np.quantile(cos, [0.5, 0.9, 0.99, 1.0])
    return {"pairs": int(len(pc.pairs)), "pair_cos_median": float(q[0]), "pair_cos_p90": float(q[1]),
            "pair_cos_p99": float(q[2]), "pair_cos_max": float(q[3])}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)
