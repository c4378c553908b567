"""Stage 2 (SPEC §6): generator adaptation on fixed Stage-1 targets, with routing adapters."""

from .config import Stage2Config
from .samples import sample_batch, training_samples, training_windows
from .train import Stage2Result, items_fingerprint, train_stage2

__all__ = ["Stage2Config", "Stage2Result", "items_fingerprint", "sample_batch", "train_stage2", "training_samples",
           "training_windows"]
