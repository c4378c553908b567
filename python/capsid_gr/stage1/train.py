"""Stage 1 (SPEC §4-5): train the CAPSID tokenizer and the SemanticBPE gate together.

Per epoch: recount SID pairs over the training corpus and pick merge candidates with the
annealed theta and alpha; then minibatches of items with
    lambda_r L_route + lambda_s L_spread + lambda_l L_len + lambda_b L_BPE,
AdamW with a per-step cosine learning rate; then the validation items' L_route decides early
stopping. Every epoch ends with an atomic checkpoint and a JSON log line, and a run that
finds its checkpoint picks up after the last finished epoch with bit-identical results: all
randomness is drawn from generators seeded by (seed, epoch), never from global state. The
schedule, early stopping, best state, checkpoints and the gradient all-reduce are the shared
training loop's (capsid_gr.loop.TrainLoop); this file keeps Stage 1's batches, losses and
validation (L_route of the held-out items).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

import capsid_kernels as ck

from ..bpe import (
    MergeGate,
    MergeTable,
    SemanticBPEConfig,
    base_vocab_size,
    bpe_loss,
    build_merge_table,
    check_item_weights,
    count_pairs,
    select_candidates,
    to_global,
    item_space_embeddings,
)
from ..bpe.pairs import Candidates
from ..tokenizer import losses, schedules
from ..tokenizer.forward import forward_all_depths
from ..tokenizer.inference import STOP_RULES, tokenize_items
from ..tokenizer.hamr import HaMRConfig, hamr_from_config, routing_embedding, sids_from_tokens
from .init import InitConfig, data_init
from ..checkpoint import differences
from ..loop import Checkpointing, Cosine, EarlyStopping, TrainLoop
from ..collective import gather_forward
from ..checks import check_config


def _tokenizer_identity(stored: Optional[dict], config) -> Optional[dict]:
    """The stored tokenizer config restricted to `config.identity()`'s fields (None if absent): a
    checkpoint written with another backend, precision or input check resumes; older checkpoints,
    which stored every field, too."""
    if not isinstance(stored, dict):
        return None
    return {k: stored.get(k) for k in config.identity()}


BPE_EMBEDDING = "item-space"
"""What the merge gate's token features are (stored in every checkpoint): SPEC §5's item-space embedding."""


def _resume_mismatch(meta: dict, cfg: "Stage1Config", x_digest: str, config) -> Optional[str]:
    """Why a checkpoint cannot resume this run (None: it can): the Stage-1 settings, the item
    vectors, or the tokenizer's identity (`CapsIDConfig.identity()`: shape and routing, not the
    execution options) differ; the first differing fields are named."""
    settings = json.loads(json.dumps(cfg.to_dict()))
    if meta.get("bpe_embedding") != BPE_EMBEDDING:
        return ("SemanticBPE's token embedding: the checkpoint's gate was trained on codebook-centre features "
                f"(before 2026-12-08), this run uses {BPE_EMBEDDING!r} (SPEC §5); start again with --no-resume")
    if meta.get("config") != settings:
        return "Stage-1 " + differences(meta.get("config") or {}, settings)
    if meta.get("vectors") != x_digest:
        return "other item vectors"
    identity = json.loads(json.dumps(config.identity()))
    stored = _tokenizer_identity(meta.get("tokenizer_config"), config)
    if stored is None:
        return "no tokenizer config stored"
    if stored != identity:
        return "tokenizer " + differences(stored, identity)
    return None


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 optimisation (SPEC §1): AdamW lr 1e-3, cosine, wd 1e-5, batch 256, <= 100 epochs,
    patience 10 on the validation items' L_route; loss weights lambda_r, lambda_s, lambda_l,
    lambda_b = 1.0, 0.1, 0.05, 0.2; spread margin m 0.2 -> 0.9. `val_fraction` of the items
    (at least one) are held out of the gradient steps and only measure reconstruction.
    `hamr`: None, or the HaMR repulsion (capsid_gr.tokenizer.hamr, `--hamr`) added as
    hamr.weight * L_HaMR on the routing weights of the depths each item reaches.
    `init`: the data-dependent capsule warm-up of capsid_gr.stage1.init (k-means centres, a
    per-depth routing sharpness), run on the training items before the first epoch; None
    keeps the module's random initialisation (which stays in the uniform-routing regime).
    `stop_rule`: the inference SIDs every epoch ends with (`tokenizer.inference.STOP_RULES`):
    "plain", or "unique" (the uniqueness-aware stop, `capsid-unique`), so the validation L_route
    that selects the epoch and the SemanticBPE pair counts are those of the SIDs the run produces."""

    epochs: int = 100
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    lambda_route: float = 1.0
    lambda_spread: float = 0.1
    lambda_len: float = 0.05
    lambda_bpe: float = 0.2
    margin_start: float = 0.2
    margin_end: float = 0.9
    val_fraction: float = 0.05
    eval_batch_size: int = 4096
    seed: int = 0
    bpe: SemanticBPEConfig = field(default_factory=SemanticBPEConfig)
    hamr: Optional[HaMRConfig] = None
    init: Optional[InitConfig] = field(default_factory=InitConfig)
    stop_rule: str = "plain"

    def __post_init__(self) -> None:
        check_config(self)
        if self.stop_rule not in STOP_RULES:
            raise ValueError(f"stop_rule: expected one of {', '.join(STOP_RULES)}, got {self.stop_rule!r}")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError(f"epochs, patience and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.patience}, {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: expected a value in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        """JSON-able settings; `hamr` only when set and `stop_rule` only when not "plain", so a run
        without them stores the same config as before the fields existed and still resumes from
        those checkpoints."""
        d = dataclasses.asdict(self)
        for optional in ("hamr", "init"):
            if d[optional] is None:
                del d[optional]
        if d["stop_rule"] == "plain":
            del d["stop_rule"]
        return d


@dataclass
class Stage1Result:
    history: list[dict]
    best_epoch: int
    best_val_route: float
    stopped_early: bool
    merges: MergeTable
    candidates: Candidates
    seconds: float
    init: Optional[dict] = None
    token_emb: Optional[Tensor] = None
    """SPEC §5's item-space token embedding [V_base, d] the final merges were chosen with (the gate's input)."""


def split_items(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, validation) item indices; at least one of each when n >= 2."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(val_fraction * n))) if n >= 2 and val_fraction > 0 else 0
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def reconstruction_error(x: Tensor, out: ck.StackOutput) -> float:
    """L_route of an inference pass: mean ||x/||x|| - x_hat||^2."""
    if x.shape[0] == 0:
        return float("nan")
    x0 = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return float(losses.route_loss(x0.to(out.recon.dtype), out.recon))


def bpe_candidates(tokenizer: ck.CapsIDTokenizer, sids: Tensor, item_weights: np.ndarray,
                   cfg: SemanticBPEConfig, t: float, x: Tensor) -> tuple[Candidates, Tensor]:
    """Recount pairs over the corpus and select candidates with theta(t) and alpha(t); the token
    embedding is recomputed with the counts, in item space from the items x and their SIDs (SPEC §5).
    Returns (candidates, embedding [V_base, d])."""
    ks = tokenizer.config.capsules_per_depth
    ids = to_global(sids.cpu().numpy(), ks)
    emb = item_space_embeddings(ids, x, base_vocab_size(ks)).to(x.device)
    return select_candidates(
        count_pairs(ids, item_weights), emb, n_min=cfg.n_min,
        theta=schedules.bpe_threshold(t, cfg.theta_start, cfg.theta_end),
        alpha=schedules.bpe_alpha(t, cfg.alpha, cfg.warmup), max_merges=cfg.max_merges,
    ), emb


def _state(tokenizer, gate) -> dict:
    """What Stage 1 learns, named as its checkpoints have always named it."""
    return {f"tok.{k}": v for k, v in tokenizer.state_dict().items()} | {
        f"gate.{k}": v for k, v in gate.state_dict().items()}


def _load_state(tokenizer, gate, tensors: dict) -> None:
    tokenizer.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("tok.")})
    gate.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")})


def train_stage1(
    tokenizer: ck.CapsIDTokenizer,
    x: Tensor,
    item_weights: np.ndarray,
    cfg: Stage1Config = Stage1Config(),
    *,
    gate: Optional[MergeGate] = None,
    out_dir: Optional[Path] = None,
    resume: bool = True,
    show_progress: bool = True,
    on_epoch_end: Optional[Callable[[dict], None]] = None,
    dist=None,
) -> Stage1Result:
    """Train `tokenizer` (and the merge gate) on item vectors x [N, d] in place.

    `item_weights[i]` = occurrences of item i in the training histories (the BPE corpus).
    With `out_dir`, writes `stage1.safetensors` (checkpoint) and `stage1_log.jsonl` there
    after every epoch, and resumes from the checkpoint when `resume`. Ends with the best
    epoch's parameters loaded. x's device is the training device.
    `dist`: a capsid_gr.collective.DistContext under torchrun: each rank routes its slice of
    every global batch, the losses are those of the whole batch, only rank 0 writes.
    """
    from tqdm import tqdm

    start_time = time.perf_counter()
    device = x.device
    n = x.shape[0]
    item_weights = check_item_weights(item_weights, n)  # shape (n,), finite, >= 0; errors name the item
    c = tokenizer.config
    gate = gate if gate is not None else MergeGate(c.d, cfg.bpe.gate_hidden, seed=cfg.seed)
    tokenizer.to(device)
    gate.to(device)
    params = list(tokenizer.parameters()) + list(gate.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx, val_idx = split_items(n, cfg.val_fraction, cfg.seed)
    train_idx, val_idx = train_idx.to(device), val_idx.to(device)
    steps_per_epoch = max(1, math.ceil(train_idx.numel() / cfg.batch_size))
    x = x.to(torch.float32)
    x_digest = _digest(x)

    checkpoint = None
    if out_dir is not None:
        checkpoint = Checkpointing(
            Path(out_dir) / "stage1.safetensors", Path(out_dir) / "stage1_log.jsonl",
            header={"config": cfg.to_dict(), "n_items": n, "vectors": x_digest, "tokenizer_config": c.to_dict(),
                    "bpe_embedding": BPE_EMBEDDING},
            mismatch=lambda meta: _resume_mismatch(meta, cfg, x_digest, c))
    loop = TrainLoop(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, schedule=Cosine(cfg.lr, cfg.epochs * steps_per_epoch),
        stopping=EarlyStopping(cfg.patience, goal="min", min_delta=1e-7, keys=("best_val", "best_epoch", "bad_epochs")),
        optimizer=opt, params=params, state=lambda: _state(tokenizer, gate),
        load_state=lambda t: _load_state(tokenizer, gate, t), device=device, seed=cfg.seed,
        checkpoint=checkpoint, resume=resume, dist=dist, modules=(tokenizer, gate), grad_reduction="mean",
        on_epoch_end=on_epoch_end, clock_start=start_time)
    init_summary = None
    if cfg.init is not None and not loop.resumable:
        init_summary = data_init(tokenizer, x[train_idx], cfg.init, seed=cfg.seed)
    # the fallback best state is the live tensors, not a copy: a run whose validation never
    # improves (NaN) ends in its last state
    meta = loop.begin(fallback=_state(tokenizer, gate))
    if meta is not None:
        init_summary = meta.get("init")

    full = tokenize_items(tokenizer, x, cfg.eval_batch_size, stop=cfg.stop_rule)
    bar = tqdm(loop.epochs(), total=loop.epochs_left, desc="stage 1", unit="epoch",
               disable=not show_progress or loop.stopped)
    for epoch in bar:
        t = schedules.progress(epoch, cfg.epochs)
        margin = schedules.spread_margin(t, cfg.margin_start, cfg.margin_end)
        tau_g = schedules.gumbel_temperature(t, cfg.bpe.gumbel_start, cfg.bpe.gumbel_end)
        cands, emb = bpe_candidates(tokenizer, full.sids, item_weights, cfg.bpe, t, x)
        labels = torch.as_tensor(cands.label, dtype=torch.float32, device=device)
        order_seed, gumbel_seed = loop.seeds()
        order_gen = torch.Generator().manual_seed(order_seed)
        gumbel_gen = torch.Generator().manual_seed(gumbel_seed + 1)
        perm = train_idx[torch.randperm(train_idx.numel(), generator=order_gen).to(device)]
        sums = {"route": 0.0, "spread": 0.0, "len": 0.0, "bpe": 0.0, "total": 0.0}
        if cfg.hamr is not None:
            sums["hamr"] = 0.0
        tokenizer.train()
        gate.train()
        for step in range(steps_per_epoch):
            loop.set_lr(step)
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            batch = x[idx] if dist is None else x[dist.shard(idx)]
            a = forward_all_depths(tokenizer, batch, need_weights=cfg.lambda_spread > 0 or cfg.hamr is not None)
            if dist is not None:
                a = gather_forward(a, dist, idx.numel())
            l_route = losses.route_loss(a.x0, a.x_hat)
            l_len = losses.length_loss(a.confidence, a.residual_norm, c.tau, c.eps)
            centres = [m.centres() for m in tokenizer.layers]
            if cfg.lambda_spread > 0:
                l_spread = losses.spread_loss(centres, [w[a.reached[:, j]] for j, w in enumerate(a.weights)], margin)
            else:
                l_spread = l_route.new_zeros(())
            if len(cands.pairs) and cfg.lambda_bpe > 0:
                feats = gate.features(emb, cands.pairs, cands.freq_hat)
                l_bpe = bpe_loss(gate(feats), labels, tau_g=tau_g, generator=gumbel_gen)
            else:
                l_bpe = l_route.new_zeros(())
            total = (cfg.lambda_route * l_route + cfg.lambda_spread * l_spread + cfg.lambda_len * l_len
                     + cfg.lambda_bpe * l_bpe)
            if cfg.hamr is not None:
                l_hamr = hamr_from_config(routing_embedding(a.weights, a.reached), sids_from_tokens(a.token, a.reached),
                                          cfg.hamr, item_ids=idx).loss
                total = total + cfg.hamr.weight * l_hamr
                sums["hamr"] += float(l_hamr.detach())
            loop.step(total)
            for name, v in (("route", l_route), ("spread", l_spread), ("len", l_len), ("bpe", l_bpe), ("total", total)):
                sums[name] += float(v.detach())
        tokenizer.eval()
        gate.eval()
        full = tokenize_items(tokenizer, x, cfg.eval_batch_size, stop=cfg.stop_rule)
        val = reconstruction_error(x[val_idx], _select(full, val_idx)) if val_idx.numel() else \
            reconstruction_error(x, full)
        loop.observe(val)
        diag = tokenizer.diagnostics(full)
        record = {
            "epoch": epoch, "lr_end": loop.lr, "margin": margin, "theta": schedules.bpe_threshold(
                t, cfg.bpe.theta_start, cfg.bpe.theta_end), "alpha": schedules.bpe_alpha(t, cfg.bpe.alpha, cfg.bpe.warmup),
            "tau_g": tau_g, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
            "val_route": val, "best_epoch": loop.best_epoch, "candidates": int(len(cands.pairs)),
            "mean_length": diag["mean_length"], "collision_rate": diag["collision_rate"],
            "code_utilisation": diag["code_utilisation"], "stop_fractions": diag["stop_fractions"],
        }
        bar.set_postfix(route=f"{record['train_route']:.4f}", spread=f"{record['train_spread']:.3f}",
                        len=f"{record['train_len']:.3f}", bpe=f"{record['train_bpe']:.3f}", val=f"{val:.4f}",
                        L=f"{diag['mean_length']:.2f}")
        loop.end_epoch(record, meta={"init": init_summary})
    bar.close()

    loop.finish()
    tokenizer.eval()
    gate.eval()
    full = tokenize_items(tokenizer, x, cfg.eval_batch_size, stop=cfg.stop_rule)
    final, emb = bpe_candidates(tokenizer, full.sids, item_weights, cfg.bpe, 1.0, x)
    merges = build_merge_table(final, gate, emb, base_vocab_size(c.capsules_per_depth), cfg.bpe.max_merges)
    return Stage1Result(loop.history, loop.best_epoch, loop.stopping.best, loop.stopped, merges, final,
                        time.perf_counter() - start_time, init_summary, emb)


def _select(out: ck.StackOutput, idx: Tensor) -> ck.StackOutput:
    """The rows `idx` of a StackOutput, enough of it for reconstruction_error."""
    return out._replace(sids=out.sids[idx], lengths=out.lengths[idx], stop_reason=out.stop_reason[idx],
                        recon=out.recon[idx], residual=out.residual[idx], depths=())


def _digest(x: Tensor) -> str:
    """sha256 of the item vectors: a checkpoint only resumes on the vectors it was trained on."""
    import hashlib

    return hashlib.sha256(x.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()
