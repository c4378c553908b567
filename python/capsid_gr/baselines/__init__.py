"""Baseline tokenizers on the same item vectors (SPEC §9)."""

from .gaoq import GAOQConfig, GAOQOutput, fit_gaoq
from .rqkmeans import RQKMeansConfig, RQKMeansOutput, disambiguation_column, fit_rqkmeans
from .rqvae import RQVAEConfig, RQVAEOutput, fit_rqvae

__all__ = ["GAOQConfig", "GAOQOutput", "fit_gaoq", "RQKMeansConfig", "RQKMeansOutput", "disambiguation_column",
           "fit_rqkmeans", "RQVAEConfig", "RQVAEOutput", "fit_rqvae"]
