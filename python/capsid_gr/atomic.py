"""Crash-safe file writes: temp file in the same folder, fsync, os.replace, fsync the folder."""

from __future__ import annotations

import os
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


def writable_folder(path, what: str) -> Path:
    """Create `path` (and parents) and prove a file can be written in it, before any work starts.

    A missing parent that is a file, a read-only folder or a full disk becomes a ValueError naming
    the argument (`what`, e.g. ``--out``), the folder and the system's reason, so that a command
    fails in its first second instead of after training.
    """
    folder = Path(path)
    probe = folder / f".capsid-write-check.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ValueError(f"{what} {folder}: expected a folder this process can write to, got "
                         f"{exc.strerror or type(exc).__name__}"
                         f"{' (' + str(exc.filename) + ')' if exc.filename and str(exc.filename) != str(probe) else ''}"
                         ) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder
