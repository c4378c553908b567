"""Tokenizer-side pieces of Stage 1: the all-depths forward, the losses, the schedules."""

from .forward import AllDepths, forward_all_depths
from . import losses, schedules

__all__ = ["AllDepths", "forward_all_depths", "losses", "schedules"]
