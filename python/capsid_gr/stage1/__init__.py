"""Stage 1: joint training of the CAPSID tokenizer and the SemanticBPE gate (SPEC §4-5)."""

from .checkpoint import load_checkpoint, save_checkpoint, write_atomic
from .train import Stage1Config, Stage1Result, split_items, tokenize_items, train_stage1

__all__ = ["Stage1Config", "Stage1Result", "load_checkpoint", "save_checkpoint", "split_items",
           "tokenize_items", "train_stage1", "write_atomic"]
