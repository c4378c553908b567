"""Data layer: sequences, the leave-one-out protocol, the Amazon loader and synthetic data."""

from .amazon import default_beauty_dir, load_amazon
from .dataset import (
    PAD_ITEM,
    DataError,
    Queries,
    SequenceDataset,
    Split,
    Tiers,
    popularity_tiers,
)
from .synthetic import SyntheticConfig, make_synthetic, synthetic_item_vectors

__all__ = [
    "PAD_ITEM",
    "DataError",
    "Queries",
    "SequenceDataset",
    "Split",
    "SyntheticConfig",
    "Tiers",
    "default_beauty_dir",
    "load_amazon",
    "make_synthetic",
    "popularity_tiers",
    "synthetic_item_vectors",
]
