"""The training loop every trainer shares (Stage 1, Stage 2, the sequential fit): learning-rate
schedules, early stopping, the checkpointed epoch loop, and a model's loss under
DistributedDataParallel with global-batch semantics and sharded validation (`ddp`).
Foundation: it imports only capsid_gr.checkpoint, capsid_gr.atomic and capsid_gr.ranking, so
the tokenizer's Stage 1 can use it."""

from .ddp import GlobalBatchLoss, sharded_ranking_metrics
from .epochs import Checkpointing, TrainLoop, epoch_seeds, reseed_global, validation_subset
from .schedule import Cosine, WarmupCosine
from .stopping import EarlyStopping

__all__ = ["Checkpointing", "Cosine", "EarlyStopping", "GlobalBatchLoss", "TrainLoop", "WarmupCosine", "epoch_seeds",
           "reseed_global", "sharded_ranking_metrics", "validation_subset"]
