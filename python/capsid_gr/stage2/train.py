"""Stage 2 (SPEC §6): train the generator (and the routing adapters) on fixed Stage-1 targets.

Per epoch: the training samples in a (seed, epoch)-seeded order; next-token cross entropy on
the target item's tokens; AdamW with a per-step cosine learning rate. Every `eval_every`
epochs a trie-constrained beam search on the validation queries gives Recall@10, which
decides early stopping and the best state. After every epoch an atomic checkpoint
(safetensors + JSON header) and the JSON log are written; a rerun in the same folder resumes
after the last finished epoch with the same result as an uninterrupted run (dropout draws
from the global generator, reseeded from (seed, epoch) at each epoch start). The loop itself
(schedule, early stopping, best state, checkpoints, time budget, distributed reductions) is
capsid_gr.loop.TrainLoop; this file keeps Stage 2's batches, loss and validation Recall@10.
"""

from __future__ import annotations

import hashlib
import json
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
from ..loop import Checkpointing, Cosine, EarlyStopping, TrainLoop, reseed_global, validation_subset
from .config import Stage2Config
from .samples import batch_count, bucketed_batches, sample_batch, training_samples, training_windows, window_batch

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
    val_users = validation_subset(split.valid.target.shape[0], cfg.val_users, cfg.seed)

    def row_lengths(rows: np.ndarray) -> Optional[np.ndarray]:
        return np.minimum(rows[:, 1], cfg.max_history + 1) if cfg.sequence_batches else None

    steps_per_epoch = batch_count(samples, cfg.batch_size, cfg.max_history, cfg.length_buckets, row_lengths(samples))
    checkpoint = None
    if out_dir is not None:
        checkpoint = Checkpointing(Path(out_dir) / CHECKPOINT, Path(out_dir) / LOG, header={
            "config": cfg.identity(), "generator": model.config.to_dict(), "items": items_fingerprint(items)})
    loop = TrainLoop(
        epochs=cfg.epochs, steps_per_epoch=steps_per_epoch, schedule=Cosine(cfg.lr, cfg.epochs * steps_per_epoch),
        stopping=EarlyStopping(cfg.patience, best=-1.0), optimizer=opt, params=params,
        state=lambda: trainable_state(model, adapter), load_state=lambda t: load_trainable(model, adapter, t),
        device=device, seed=cfg.seed, eval_every=cfg.eval_every, grad_clip=cfg.grad_clip,
        max_seconds=cfg.max_seconds, checkpoint=checkpoint, resume=resume, dist=dist, modules=(model, adapter),
        grad_reduction="sum", on_epoch_end=on_epoch_end, clock_start=start)
    loop.begin()

    bar = tqdm(loop.epochs(), total=loop.epochs_left, desc="stage 2", unit="epoch",
               disable=not show_progress or loop.stopped)
    for epoch in bar:
        dropout_seed, order_seed = loop.seeds()
        reseed_global(dropout_seed, dist)
        order = samples[torch.randperm(len(samples), generator=torch.Generator().manual_seed(order_seed)).numpy()]
        batches = bucketed_batches(order, cfg.batch_size, cfg.max_history, cfg.length_buckets,
                                   np.random.default_rng(order_seed), row_lengths(order))
        model.train()
        loss_sum, tok_sum = 0.0, 0
        for step, chosen in enumerate(batches):
            loop.set_lr(step)
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
            if dist is None:
                loop.step(loss)
            else:  # summed over ranks with each rank's token share as weight: one process's gradient
                share = dist.local_weight(int((lab != IGNORE).sum()))  # 0 for an empty slice, whose loss is NaN
                loop.step(loss * share if share else logits.sum() * 0.0)
            n_tok = int((lab != IGNORE).sum())
            loss_sum += float(loss.detach()) * n_tok if n_tok else 0.0
            tok_sum += n_tok
        elapsed, loss_sum, tok_sum = loop.close_steps(loss_sum, tok_sum)  # one decision: any rank late stops all
        record = {"epoch": epoch, "lr_end": loop.lr, "train_loss": loss_sum / max(tok_sum, 1), "seconds": elapsed}
        if loop.late:
            record["stopped_by"] = "time"
        if loop.validation_due():
            val = validation_recall(validation, rec, split, val_users, cfg, dist)
            record["val_recall@10"] = val
            loop.observe(val)
        if adapter is not None:
            record["gate_bias"] = float(adapter.gate_bias.detach())
        record["best_epoch"] = loop.best_epoch
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record.get('val_recall@10', float('nan')):.4f}",
                        best=f"{loop.stopping.best:.4f}")
        loop.end_epoch(record)
    bar.close()
    loop.finish()
    model.eval()
    return Stage2Result(model, inputs, rec, loop.history, loop.best_epoch, loop.stopping.best, loop.stopped,
                        time.perf_counter() - start)
