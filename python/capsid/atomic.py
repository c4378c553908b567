"""Crash-safe file writes: temp file in the same folder, fsync, os.replace, fsync the folder."""

from __future__ import annotations

from pathlib import Path

from capsid_kernels.decode._atomic import write_atomic as _write_atomic


def write_atomic(path: Path, payload: bytes) -> None:
    """Write bytes to `path` so that readers see the old or the new file, whole (the kernel
    package's writer, which the trie uses too: one protocol for every artefact)."""
    _write_atomic(path, payload)


def save_npy_atomic(path: Path, array) -> None:
    """``np.save`` through :func:`write_atomic`: a killed run never leaves a truncated .npy."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_atomic(path, buf.getvalue())


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))
