"""Stage 2 (SPEC §6): train the generator (and the routing adapters) on fixed Stage-1 targets.

Per epoch: the training samples in a (seed, epoch)-seeded order; next-token cross entropy on
the target item's tokens; AdamW with a per-step cosine learning rate. Every `eval_every`
epochs a trie-constrained beam search on the validation queries gives Recall@10, which
decides early stopping and the best state. After every epoch an atomic checkpoint
(safetensors + JSON header) and the JSON log are written; a rerun in the same folder resumes
after the last finished epoch with the same result as an uninterrupted run (dropout draws
from the global generator, reseeded from (seed, epoch) at each epoch start).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Split
from ..generator import (IGNORE, Generator, ItemInputs, ItemTokenization, RoutingAdapter, autocast, embed_batch,
                         make_batch, make_sequence_batch)
from ..atomic import write_atomic
from ..checkpoint import flatten_optimizer, load_checkpoint, require_meta, restore_optimizer, save_checkpoint
from .config import Stage2Config
from .samples import bucketed_batches, sample_batch, training_samples, training_windows, window_batch

CHECKPOINT, LOG = "stage2.safetensors", "stage2_log.jsonl"


@dataclass
class Stage2Result:
    model: Generator
    inputs: ItemInputs
    recommender: Any  # what `validation.recommender` built: a capsid_gr.eval.Recommender
    history: list[dict]
    best_epoch: int
    best_val_recall10: float
    stopped_early: bool
    seconds: float


def items_fingerprint(items: ItemTokenization) -> str:
    h = hashlib.sha256(json.dumps([items.vocab_size, items.paths, items.merges]).encode())
    return h.hexdigest()[:16]


def trainable_state(model: Generator, adapter: Optional[RoutingAdapter]) -> dict[str, torch.Tensor]:
    """Everything Stage 2 learns; the frozen stack is rebuilt from the ItemTokenization."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()}
    if adapter is not None:
        out |= {f"adapter.{k}": v for k, v in adapter.named_parameters()}
    return out


def load_trainable(model: Generator, adapter: Optional[RoutingAdapter], tensors: dict, prefix: str = "") -> None:
    model.load_state_dict({k[len(prefix) + 6:]: v for k, v in tensors.items() if k.startswith(prefix + "model.")})
    if adapter is not None:
        params = dict(adapter.named_parameters())
        with torch.no_grad():
            for k, v in tensors.items():
                if k.startswith(prefix + "adapter."):
                    params[k[len(prefix) + 8:]].copy_(v)


class Validation(Protocol):
    """How Stage 2 validates (SPEC §6: early stopping and the best state by validation Recall@10).
    Retrieval sits above training, so it is handed in: capsid_gr.eval.BeamValidation is the one
    the pipeline and the distributed launcher pass (trie-constrained beam search)."""

    def recommender(self, model: Generator, inputs: ItemInputs, items: ItemTokenization,
                    popularity: Optional[np.ndarray], max_history: int, device) -> Any: ...

    def recall_at_10(self, rec: Any, histories: Sequence[np.ndarray], targets: np.ndarray, *,
                     num_beams: int, batch_size: int, dist=None) -> float: ...


def validation_recall(validation: Validation, rec, split: Split, users: np.ndarray, cfg: Stage2Config,
                      dist=None) -> float:
    hist = [split.valid.history[u, : split.valid.length[u]] for u in users]
    return validation.recall_at_10(rec, hist, split.valid.target[users], num_beams=cfg.num_beams,
                                   batch_size=cfg.eval_batch_size, dist=dist)


def train_stage2(model: Generator, items: ItemTokenization, split: Split, popularity: np.ndarray,
                 cfg: Stage2Config = Stage2Config(), *, device=None, out_dir: Optional[Path] = None,
                 resume: bool = True, show_progress: bool = True,
                 on_epoch_end: Optional[Callable[[dict], None]] = None, dist=None,
                 validation: Validation) -> Stage2Result:
    """`dist`: a capsid_gr.collective.DistContext under torchrun: each rank takes its slice of
    every global batch, gradients are summed with each rank's token share as weight (so they
    equal one process's), validation users are sharded, only rank 0 writes. `validation`: how a
    validation round is scored (capsid_gr.eval.BeamValidation()); required, training imports no
    retrieval code."""
    from tqdm import tqdm

    start = time.perf_counter()
    device = torch.device(device) if device is not None else torch.device("cpu")
    adapter = RoutingAdapter(items, cfg.lora_rank, seed=cfg.seed,
                                                  precision=cfg.routing_precision) if (cfg.soft_inputs and items.routing) else None
    inputs = ItemInputs(items, adapter).to(device)
    model.to(device)
    params = list(model.parameters()) + (list(adapter.parameters()) if adapter is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    rec = validation.recommender(model, inputs, items, popularity, cfg.max_history, device)

    path_matrix = items.path_matrix()
    if cfg.sequence_batches:
        samples = training_windows(split.train, cfg.max_history)
    else:
        samples = training_samples(split.train, cfg.targets_per_user)
    if len(samples) == 0:
        raise ValueError("Stage 2: the training split has no (history, next item) pair; every user needs >= 2 "
                         "training interactions somewhere")
    n_users = split.valid.target.shape[0]
    pick = np.random.default_rng(cfg.seed).permutation(n_users)
    val_users = np.sort(pick[: cfg.val_users] if cfg.val_users else pick)
    def row_lengths(rows: np.ndarray) -> Optional[np.ndarray]:
        return np.minimum(rows[:, 1], cfg.max_history + 1) if cfg.sequence_batches else None

    steps_per_epoch = len(bucketed_batches(samples, cfg.batch_size, cfg.max_history, cfg.length_buckets,
                                           np.random.default_rng(0), row_lengths(samples)))
    total = cfg.epochs * steps_per_epoch

    history: list[dict] = []
    best, best_epoch, bad, first = -1.0, -1, 0, 0
    best_state = {k: v.detach().clone() for k, v in trainable_state(model, adapter).items()}
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    meta_key = {"config": cfg.identity(), "generator": model.config.to_dict(), "items": items_fingerprint(items)}
    if ckpt is not None and resume and ckpt.is_file():
        tensors, meta = load_checkpoint(ckpt)
        if {k: meta.get(k) for k in meta_key} != json.loads(json.dumps(meta_key)):
            raise ValueError(f"{ckpt}: written with other settings, generator or item tokenization; use another "
                             "output folder or resume=False")
        load_trainable(model, adapter, tensors)
        best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
        require_meta(ckpt, meta, ("optimizer", "history", "best", "best_epoch", "bad", "epoch"))
        restore_optimizer(opt, tensors, meta["optimizer"])
        history, best, best_epoch, bad = meta["history"], meta["best"], meta["best_epoch"], meta["bad"]
        first = meta["epoch"] + 1
    if dist is not None:
        dist.broadcast_modules(model, adapter)

    stopped = bad >= cfg.patience
    bar = tqdm(range(first, cfg.epochs), desc="stage 2", unit="epoch", disable=not show_progress or stopped)
    for epoch in bar:
        if stopped:
            break
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        if dist is not None:
            dist.reseed(cfg.seed * 1_000_003 + epoch)
        order = samples[torch.randperm(len(samples), generator=torch.Generator().manual_seed(
            cfg.seed * 7_919 + epoch)).numpy()]
        batches = bucketed_batches(order, cfg.batch_size, cfg.max_history, cfg.length_buckets,
                                   np.random.default_rng(cfg.seed * 7_919 + epoch), row_lengths(order))
        model.train()
        loss_sum, tok_sum = 0.0, 0
        for step, chosen in enumerate(batches):
            lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch * steps_per_epoch + step) / total))
            for group in opt.param_groups:
                group["lr"] = lr
            mine = chosen if dist is None else dist.shard(chosen)
            if cfg.sequence_batches:
                b = make_sequence_batch(path_matrix, window_batch(split.train, mine, cfg.max_history)).to(device)
            else:
                hist, target = sample_batch(split.train, mine, cfg.max_history)
                b = make_batch(path_matrix, hist, target, cfg.max_history).to(device)
            with autocast(device):
                logits = model(embed_batch(model, inputs, b), b.positions, b.sid_pos, b.key_valid)
            lab = b.labels[:, b.prefix_len - 1:]
            loss = F.cross_entropy(logits[:, b.prefix_len - 1:].float().reshape(-1, logits.shape[-1]),
                                   lab.reshape(-1), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            if dist is None:
                loss.backward()
            else:
                share = dist.local_weight(int((lab != IGNORE).sum()))  # 0 for an empty slice, whose loss is NaN
                (loss * share if share else logits.sum() * 0.0).backward()
                dist.sum_gradients(params)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            n_tok = int((lab != IGNORE).sum())
            loss_sum += float(loss.detach()) * n_tok if n_tok else 0.0
            tok_sum += n_tok
        elapsed = time.perf_counter() - start
        late = float(cfg.max_seconds is not None and elapsed > cfg.max_seconds)
        if dist is not None:  # one decision for all ranks: any rank out of time stops them all
            loss_sum, tok_sum, late = dist.sum_floats(loss_sum, tok_sum, late)
        record = {"epoch": epoch, "lr_end": lr, "train_loss": loss_sum / max(tok_sum, 1), "seconds": elapsed}
        out_of_time = late > 0
        if out_of_time:
            record["stopped_by"] = "time"
        if (epoch + 1) % cfg.eval_every == 0 or epoch == cfg.epochs - 1 or out_of_time:
            val = validation_recall(validation, rec, split, val_users, cfg, dist)
            record["val_recall@10"] = val
            if val > best:
                best, best_epoch, bad = val, epoch, 0
                best_state = {k: v.detach().clone() for k, v in trainable_state(model, adapter).items()}
            else:
                bad += 1
            stopped = bad >= cfg.patience
        stopped = stopped or out_of_time
        if adapter is not None:
            record["gate_bias"] = float(adapter.gate_bias.detach())
        record["best_epoch"] = best_epoch
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record.get('val_recall@10', float('nan')):.4f}",
                        best=f"{best:.4f}")
        if ckpt is not None and (dist is None or dist.is_writer):
            opt_t, opt_m = flatten_optimizer(opt)
            meta = {**meta_key, "epoch": epoch, "history": history, "best": best, "best_epoch": best_epoch,
                    "bad": bad, "optimizer": opt_m}
            save_checkpoint(ckpt, {**trainable_state(model, adapter), **{f"best.{k}": v for k, v in best_state.items()},
                                   **opt_t}, meta)
            write_atomic(Path(out_dir) / LOG, "".join(json.dumps(r) + "\n" for r in history).encode())
        if on_epoch_end is not None:
            on_epoch_end(record)
    bar.close()
    load_trainable(model, adapter, best_state)
    model.eval()
    return Stage2Result(model, inputs, rec, history, best_epoch, best, stopped, time.perf_counter() - start)
