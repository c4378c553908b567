"""The training loop every trainer shares (Stage 1, Stage 2, the sequential fit): learning-rate
schedules, early stopping, and the checkpointed epoch loop. Foundation: it imports only
capsid_gr.checkpoint and capsid_gr.atomic, so the tokenizer's Stage 1 can use it."""

from .epochs import Checkpointing, TrainLoop, epoch_seeds, reseed_global, validation_subset
from .schedule import Cosine, WarmupCosine
from .stopping import EarlyStopping

__all__ = ["Checkpointing", "Cosine", "EarlyStopping", "TrainLoop", "WarmupCosine", "epoch_seeds", "reseed_global",
           "validation_subset"]
