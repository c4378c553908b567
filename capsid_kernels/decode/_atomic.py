"""Crash-safe file writes for the kernel package (it must not import ``capsid``).

The same protocol as ``capsid_gr.atomic.write_atomic``: a temporary file in the target's
folder, flushed and fsynced, ``os.replace``d over the target, then the folder fsynced, so
after a crash or power loss a reader sees the old file or the new one, whole.

The temporary name carries the writer's process id (``.<name>.<pid>.<random>.tmp``): a write
first removes the temporary files of the same target left by processes that no longer run
(a SIGKILL during a write leaves one, as large as the file).
"""

from __future__ import annotations

import os
import tempfile


def write_atomic(path: str | os.PathLike, payload: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=folder)
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: leave its file alone
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove ``path``'s temporary files whose writer process is gone; returns their names."""
    path = os.fspath(path)
    folder, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    head = f".{base}."
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(head) and name.endswith(".tmp")):
            continue
        pid = name[len(head):-4].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed
