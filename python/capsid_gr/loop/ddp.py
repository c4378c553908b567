"""The sequential fit on several processes (issue 22): a model's loss under
torch.nn.parallel.DistributedDataParallel with exact global-batch semantics, and validation
decoded in shards.

`GlobalBatchLoss`: the update every rank applies equals the one-process update on the whole
global batch.

Every rank holds the same global batch (drawn from the run's seeds, independent of the world
size) and computes the loss of its contiguous slice of rows (`DistContext.bounds`). A model's
`loss` is a mean over its targets, and DDP averages gradients over ranks, so the plain mean
of per-rank means would weight a rank's targets by 1 / (its own count). Instead each rank's
objective is

    mean_r * n_r * world / N,        N = sum_r n_r (one all-reduce of one scalar),

whose DDP average is sum_r mean_r * n_r / N: the global batch's mean over all its targets,
as in one process. A rank whose slice is empty (a global batch with fewer rows than ranks)
computes the loss of the batch's first row with weight 0, so it still joins DDP's gradient
all-reduce. Dropout masks are drawn per rank, so runs equal one process only with dropout 0.

`sharded_ranking_metrics`: each rank decodes whole chunks of the validation queries and the
target ranks are gathered, so the metrics are one process's to the last bit (the same chunks,
the same shapes, the same `metrics_from_rank`). Training hands the recommender in; this module
only calls its `recommend` (capsid_gr.eval.sharded does the same for the test metrics).

Foundation like the rest of capsid_gr.loop: torch and capsid_gr.ranking; the DistContext is
passed in.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..ranking import metrics_from_rank, target_rank


class _Loss(nn.Module):
    """The model's `loss` as a module's forward: DDP synchronises gradients only for a
    forward that goes through its own `__call__`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *rows: Tensor):
        return self.model.loss(*rows)


class GlobalBatchLoss:
    """`model.loss` of a rank's slice of a global batch, weighted to the global target count.

    model: has `loss(*rows) -> (mean over its targets, target count)`; dist: a
    capsid_gr.collective.DistContext with world > 1. Wrapping broadcasts rank 0's parameters to
    every rank (DDP's construction); buffers are not re-broadcast at every forward
    (`forward_sync_buffers=False`, formerly `broadcast_buffers`): the models' buffers (path
    matrix, item features) are constant.
    """

    def __init__(self, model: nn.Module, dist) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.dist = dist
        import inspect

        ids = [dist.device] if dist.device.type == "cuda" else None
        # newer PyTorch renamed broadcast_buffers (still synced once at construction either way)
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        self.ddp = DistributedDataParallel(_Loss(model), device_ids=ids, **{no_sync: False})

    def __call__(self, rows: Sequence[Tensor]) -> tuple[Tensor, Tensor, int]:
        """rows: the global batch's tensors (same first dimension) -> (the objective to
        backpropagate, this rank's summed loss (detached), this rank's target count)."""
        lo, hi = self.dist.bounds(rows[0].shape[0])
        idle = hi == lo
        local = [r[:1] if idle else r[lo:hi] for r in rows]
        mean, n = self.ddp(*local)
        n = 0 if idle else int(n)
        (total,) = self.dist.sum_floats(n)
        objective = mean * (n * self.dist.world / total) if total > 0 else mean * 0.0
        return objective, mean.detach() * n, n


def sharded_ranking_metrics(recommender, histories: Sequence[np.ndarray], targets: np.ndarray, dist, *,
                            ks: Sequence[int] = (10,), num_beams: int = 50, top_k: int = 10,
                            batch_size: int = 64) -> dict:
    """`ranking_metrics(recommender.recommend(histories, ...)[0], targets, ks)`, the queries
    decoded in whole chunks of `batch_size` across ranks: the same dict on every rank."""
    q = len(histories)
    lo, hi = dist.bounds(q, align=batch_size)
    ranked, _ = recommender.recommend(list(histories[lo:hi]), num_beams=num_beams, top_k=top_k,
                                      batch_size=batch_size)
    local = torch.as_tensor(target_rank(ranked.reshape(-1, top_k), np.asarray(targets)[lo:hi]), dtype=torch.int64)
    return metrics_from_rank(dist.all_gather_rows(local, q, align=batch_size).numpy(), np.asarray(targets), ks)
