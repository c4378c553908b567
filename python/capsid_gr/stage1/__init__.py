"""Stage 1: joint training of the CAPSID tokenizer and the SemanticBPE gate (SPEC §4-5)."""

# Re-exported for the old import paths; their homes are capsid_gr.atomic, capsid_gr.checkpoint
# (foundation) and capsid_gr.tokenizer.inference.
from ..atomic import write_atomic
from ..checkpoint import load_checkpoint, save_checkpoint
from ..tokenizer.inference import tokenize_items
from .train import Stage1Config, Stage1Result, split_items, train_stage1

__all__ = ["Stage1Config", "Stage1Result", "load_checkpoint", "save_checkpoint", "split_items",
           "tokenize_items", "train_stage1", "write_atomic"]
