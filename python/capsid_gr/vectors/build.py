"""The frozen item vectors every tokenizer quantises (SPEC §4, §10), cached on disk.

Each source block is ell2-normalised per item and scaled by 1/sqrt(#sources) so no source
dominates by dimension count; the blocks are concatenated, centred, reduced to d by a
truncated SVD (PCA), and every row is ell2-normalised. The cache key hashes the data
fingerprint, these settings, the content encoder's version and CACHE_VERSION.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..data.dataset import DataError, SequenceDataset
from .attributes import attribute_vectors
from .collaborative import collaborative_vectors, cooccurrence_vectors
from .config import VectorConfig
from .content import content_model_id, content_vectors

CACHE_VERSION = 1
"""Bump when the way vectors are built changes, so stale caches are never read."""


def default_cache_dir() -> Path:
    env = os.environ.get("CAPSID_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "capsid"


def cache_key(data: SequenceDataset, cfg: VectorConfig) -> str:
    payload = {
        "data": data.fingerprint(), "config": cfg.to_dict(), "version": CACHE_VERSION,
        "content_model": content_model_id() if "content" in cfg.sources else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def reduce_and_normalise(blocks: list[np.ndarray], d: int, weights=None) -> np.ndarray:
    """Concatenate unit-scaled blocks (each times its weight, default 1), PCA to d dimensions,
    ell2-normalise rows."""
    weights = [1.0] * len(blocks) if weights is None else list(weights)
    if len(weights) != len(blocks):
        raise ValueError(f"weights: expected one per block ({len(blocks)}), got {len(weights)}")
    scaled = []
    for b, w in zip(blocks, weights):
        b = np.asarray(b, dtype=np.float64)
        norm = np.linalg.norm(b, axis=1, keepdims=True)
        scaled.append(np.where(norm > 0, b / np.where(norm > 0, norm, 1.0), 0.0) * (w / np.sqrt(len(blocks))))
    z = np.concatenate(scaled, axis=1)
    z = z - z.mean(axis=0, keepdims=True)
    if z.shape[1] > d:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        z = z @ vt[:d].T
    elif z.shape[1] < d:
        z = np.concatenate([z, np.zeros((z.shape[0], d - z.shape[1]))], axis=1)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    bad = np.flatnonzero(norm[:, 0] == 0)
    if bad.size:
        raise DataError(f"item {int(bad[0])} has an all-zero item vector after reduction "
                        f"({bad.size} such items); add a vector source that covers it")
    return (z / norm).astype(np.float32)


def build_item_vectors(data: SequenceDataset, cfg: VectorConfig = VectorConfig(), *,
                       cache_dir: Path | None = None, device: str = "cpu",
                       show_progress: bool = False) -> tuple[np.ndarray, dict]:
    """Item vectors [n_items, d] and a record of how they were made (with `cached`)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(data, cfg)
    path = cache_dir / f"vectors-{key}.npy"
    info = {"key": key, "path": str(path), "config": cfg.to_dict(), "dataset": data.name,
            "content_model": content_model_id() if "content" in cfg.sources else None}
    if path.is_file():
        cached = load_cached_array(path, rows=data.n_items, cols=cfg.d, dtype=np.float32, unit_rows=True)
        side = path.with_suffix(".json")
        if cached is not None and (cfg.weights != "auto" or side.is_file()):
            choice = json.loads(side.read_text()) if cfg.weights == "auto" else {}
            return cached, {**info, **choice, "cached": True}
    blocks = [_cached_block(data, cfg, source, cache_dir, device, show_progress) for source in cfg.sources]
    choice: dict = {}
    if cfg.weights == "auto":
        vectors, choice = _auto_weights(blocks, cfg.d, data)
    else:
        vectors = reduce_and_normalise(blocks, cfg.d, cfg.weights)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, vectors)
    if choice:
        write_atomic(path.with_suffix(".json"), json.dumps(choice, indent=1).encode())
    write_atomic(path, buf.getvalue())
    return vectors, {**info, **choice, "cached": False}


def _auto_weights(blocks: list[np.ndarray], d: int, data: SequenceDataset) -> tuple[np.ndarray, dict]:
    """`weights="auto"`: the first block at 1, each other one from AUTO_WEIGHTS, the combination with the
    best last-item nearest-neighbour Recall@10 on the validation queries (never the test ones)."""
    import itertools

    from .config import AUTO_WEIGHTS
    from .diagnostics import last_item_nn_recall

    best, tried = None, {}
    for rest in itertools.product(AUTO_WEIGHTS, repeat=len(blocks) - 1):
        w = (1.0, *rest)
        v = reduce_and_normalise(blocks, d, w)
        r = last_item_nn_recall(v, data, queries="valid")
        tried[",".join(f"{x:g}" for x in w)] = r
        if best is None or r > best[0]:
            best = (r, w, v)
    return best[2], {"weights_chosen": list(best[1]), "val_nn_recall@10_by_weights": tried}


def _source_block(data: SequenceDataset, cfg: VectorConfig, source: str, device: str,
                  show_progress: bool) -> np.ndarray:
    if source == "given":
        if data.item_vectors is None:
            raise DataError(f"{data.name}: source 'given' asked for but the data has no item vectors")
        return data.item_vectors
    if source == "content":
        if data.item_text is None:
            raise DataError(f"{data.name}: source 'content' needs item text (metadata) and there is none")
        return content_vectors(data.item_text, batch_size=cfg.content_batch, device=device,
                               show_progress=show_progress)
    if source == "collab":
        return collaborative_vectors(
            data.split().train, data.n_items, dim=cfg.collab_dim, layers=cfg.collab_layers,
            heads=cfg.collab_heads, epochs=cfg.collab_epochs, batch_size=cfg.collab_batch,
            lr=cfg.collab_lr, max_len=cfg.collab_max_len, seed=cfg.seed, device=device,
            show_progress=show_progress)
    if source == "cooc":
        return cooccurrence_vectors(data.split().train, data.n_items, dim=cfg.cooc_dim, window=cfg.cooc_window,
                                    seed=cfg.seed)
    if data.item_attributes is None:
        raise DataError(f"{data.name}: source 'attr' needs item attributes and there are none")
    return attribute_vectors(data.item_attributes)


def _cached_block(data: SequenceDataset, cfg: VectorConfig, source: str, cache_dir: Path, device: str,
                  show_progress: bool) -> np.ndarray:
    """One source's block, cached on its own: changing another source or d reuses it."""
    if source in ("given", "attr", "cooc"):  # cheap: never cached
        return _source_block(data, cfg, source, device, show_progress)
    settings = {"content": {"batch": cfg.content_batch, "model": content_model_id()},
                "collab": {k: v for k, v in cfg.to_dict().items() if k.startswith("collab_") or k == "seed"}}[source]
    payload = {"data": data.fingerprint(), "source": source, "settings": settings, "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir / f"block-{source}-{key}.npy"
    if path.is_file():
        cached = load_cached_array(path, rows=data.n_items)
        if cached is not None:
            return cached
    block = _source_block(data, cfg, source, device, show_progress)
    buf = io.BytesIO()
    np.save(buf, block)
    write_atomic(path, buf.getvalue())
    return block


def load_cached_array(path: Path, *, rows: int, cols: int | None = None, dtype=None,
                      unit_rows: bool = False) -> np.ndarray | None:
    """A cached .npy re-checked before use, or None (with a warning) to rebuild it.

    The file name is only a hash of the inputs; the bytes could be truncated by a disk fault,
    replaced by hand, or written by another version. Checked: it parses without pickle, it is a
    2-D floating array of ``rows`` rows (and ``cols`` columns, ``dtype``), every value is
    finite, and with ``unit_rows`` every row has norm 1 (what reduce_and_normalise writes).
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return _stale(path, f"unreadable ({type(exc).__name__}: {exc})")
    if arr.ndim != 2 or arr.shape[0] != rows or (cols is not None and arr.shape[1] != cols):
        want = f"[{rows}, {cols if cols is not None else 'any'}]"
        return _stale(path, f"expected shape {want}, got {list(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating) or (dtype is not None and arr.dtype != dtype):
        return _stale(path, f"expected dtype {np.dtype(dtype) if dtype is not None else 'floating'}, got {arr.dtype}")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        return _stale(path, f"row {bad} has a non-finite value")
    if unit_rows and arr.size and not np.allclose(np.linalg.norm(arr.astype(np.float64), axis=1), 1.0, atol=1e-4):
        return _stale(path, "rows are not unit vectors")
    return arr


def load_vector_file(path, *, rows: int | None = None) -> np.ndarray:
    """Item vectors a user passed (``--vectors FILE.npy``) as float32 ``[N, d]``, or a ValueError.

    The error names the file and says what was expected and what came: an unreadable or pickled
    file, anything but a 2-D real-valued matrix with at least one row and column, another row count
    than ``rows`` (the catalogue), or a NaN/Inf (the first bad row is named).
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"--vectors {path}: expected a .npy file of item vectors, could not read it "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or min(arr.shape) < 1 or (
            rows is not None and arr.shape[0] != rows):
        want = f"[N{'=' + str(rows) if rows is not None else ' >= 1'}, d >= 1]"
        got = f"{arr.dtype} {list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"--vectors {path}: expected a {want} matrix (one row per item), got {got}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"--vectors {path}: expected real numbers (float or int), got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):  # past float32's range becomes inf, refused below
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"--vectors {path}: expected finite vectors (in float32), row {row} has NaN or Inf")
    return arr


def _stale(path: Path, why: str) -> None:
    warnings.warn(f"{path}: cached vectors rejected: {why}; rebuilding", RuntimeWarning, stacklevel=3)
    return None


def block_signal(data: SequenceDataset, cfg: VectorConfig, vectors: np.ndarray, *, cache_dir: Path | None = None,
                 device: str = "cpu", k: int = 10, queries: str = "test") -> dict[str, float]:
    """Last-item nearest-neighbour Recall@k (test or validation queries) of each source block, of
    the final vectors and of popularity alone, so that a block that carries no next-item signal
    shows. Block weights are chosen on "valid"."""
    from .diagnostics import last_item_nn_recall, popularity_recall

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = {"popularity": popularity_recall(data, k, queries)}
    for source in cfg.sources:
        out[source] = last_item_nn_recall(_cached_block(data, cfg, source, cache_dir, device, False), data, k,
                                          queries=queries)
    out["final"] = last_item_nn_recall(vectors, data, k, queries=queries)
    return out
