"""Tokenizer-side pieces of Stage 1: the all-depths forward, the losses, the schedules; and the
inference SIDs of a trained stack (`tokenize_items`)."""

from .forward import AllDepths, forward_all_depths
from .inference import tokenize_items
from . import losses, schedules

__all__ = ["AllDepths", "forward_all_depths", "losses", "schedules", "tokenize_items"]
