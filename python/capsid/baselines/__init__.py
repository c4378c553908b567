"""Baseline tokenizers on the same item vectors (SPEC §9)."""

from .rqkmeans import RQKMeansConfig, RQKMeansOutput, disambiguation_column, fit_rqkmeans

__all__ = ["RQKMeansConfig", "RQKMeansOutput", "disambiguation_column", "fit_rqkmeans"]
