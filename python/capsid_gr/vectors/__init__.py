"""Item vectors (SPEC §10): content, collaborative and attribute sources, reduced and cached."""

from .attributes import attribute_vectors
from .build import build_item_vectors, cache_key, default_cache_dir, load_vector_file, reduce_and_normalise
from .collaborative import collaborative_vectors
from .config import SOURCES, VectorConfig
from .content import content_model_id, content_vectors

__all__ = ["SOURCES", "VectorConfig", "attribute_vectors", "build_item_vectors", "cache_key",
           "collaborative_vectors", "content_model_id", "content_vectors", "default_cache_dir",
           "reduce_and_normalise"]
