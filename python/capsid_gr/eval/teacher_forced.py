"""Teacher-forced diagnostics (SPEC §8): per-position top-1/top-5 token accuracy and CodeRecall@M.

Both read the generator's full-vocabulary logits with the target's true prefix as input.
CodeRecall@M: the target's first token is among the M highest-scoring tokens at the first
target position (the paper's "ground-truth first SID token in the top-M predictions").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..generator import embed_batch, make_batch
from .decode import autocast


@torch.no_grad()
def teacher_forced_scores(model, inputs, items, histories: Sequence[np.ndarray], targets: np.ndarray,
                          max_history: int = 50, batch_size: int = 128, code_m: int = 50) -> dict:
    model.eval()
    device = model.tok.weight.device
    p = items.max_path
    top1 = np.zeros(p)
    top5 = np.zeros(p)
    count = np.zeros(p)
    code_hits = 0
    pm = items.path_matrix()
    for lo in range(0, len(histories), batch_size):
        b = make_batch(pm, histories[lo: lo + batch_size], targets[lo: lo + batch_size],
                       max_history).to(device)
        with autocast(device):
            logits = model(embed_batch(model, inputs, b), b.positions, b.sid_pos, b.key_valid).float()
        tp = b.prefix_len
        lab = b.labels[:, tp - 1:]
        lg = logits[:, tp - 1:]
        k = min(max(5, code_m), lg.shape[-1])
        top = lg.topk(k, dim=-1).indices  # [B, P', k]
        hit_rank = (top == lab[..., None])
        valid = (lab >= 0).cpu().numpy()
        h1 = hit_rank[..., :1].any(-1).cpu().numpy()
        h5 = hit_rank[..., :5].any(-1).cpu().numpy()
        width = lab.shape[1]
        top1[:width] += (h1 & valid).sum(0)
        top5[:width] += (h5 & valid).sum(0)
        count[:width] += valid.sum(0)
        code_hits += int(hit_rank[:, 0, :code_m].any(-1).sum())
    keep = count > 0
    return {
        "token_top1": [float(x) for x in (top1[keep] / count[keep])],
        "token_top5": [float(x) for x in (top5[keep] / count[keep])],
        "token_positions": [int(x) for x in count[keep]],
        f"code_recall@{code_m}": code_hits / max(len(histories), 1),
    }
