"""Metrics (SPEC §8). tokenizer.py: SID-table metrics shared by every tokenizer."""

from .tokenizer import (
    code_usage,
    collision_rate,
    gini,
    intra_code_similarity,
    random_pair_similarity,
    tokenizer_metrics,
)

__all__ = ["code_usage", "collision_rate", "gini", "intra_code_similarity", "random_pair_similarity",
           "tokenizer_metrics"]
