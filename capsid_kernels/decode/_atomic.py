"""Crash-safe file writes for the kernel package (it must not import ``capsid``).

The same protocol as ``capsid.atomic.write_atomic``: a temporary file in the target's
folder, flushed and fsynced, ``os.replace``d over the target, then the folder fsynced, so
after a crash or power loss a reader sees the old file or the new one, whole.
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str | os.PathLike, payload: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
