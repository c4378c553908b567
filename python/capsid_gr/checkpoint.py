"""Atomic checkpoints: one safetensors file, tensors inside, JSON metadata in its header.

One file, so a reader never sees tensors from one epoch with metadata from another; written
to a temporary name in the same folder, fsynced, then os.replace'd over the old one, so a
crash leaves either the previous checkpoint or the new one, never half of one.

The metadata carries `format_version` (FORMAT_VERSION; files written before the field existed
have the same layout and read as version 1) and `git_commit` (provenance only, never checked:
null outside a git checkout). Loading never unpickles anything: safetensors holds raw tensors
and the metadata is JSON.

`tensor_sha256` (written since 2026-12-06) is a SHA-256 over every tensor's name, dtype, shape
and bytes: a flipped bit is refused on load, naming the file. Non-finite values in any float
tensor are refused too (a NaN weight would otherwise resume and tokenize every item alike).
Checkpoints without the field (older ones) load unchecked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .atomic import write_atomic

META_KEY = "capsid"
FORMAT_VERSION = 1


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout this package runs from, or None (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def differences(stored: dict, now: dict, limit: int = 3) -> str:
    """Why a checkpoint's settings are not this run's: 'lr: checkpoint 0.001, this run 0.002' for
    the first `limit` fields that differ (nested settings by dotted path, e.g. 'generator.hidden')."""
    from .checks import short

    def flat(d: dict, pre: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) and v else {f"{pre}{k}": v})
        return out

    s, n = flat(stored if isinstance(stored, dict) else {}), flat(now)
    keys = [k for k in n if s.get(k, _ABSENT) != n[k]] + [k for k in s if k not in n]
    parts = [f"{k}: checkpoint {short(s.get(k, _ABSENT))}, this run {short(n.get(k, _ABSENT))}" for k in keys[:limit]]
    return "; ".join(parts) + (f"; {len(keys) - limit} more" if len(keys) > limit else "")


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**meta, "format_version": FORMAT_VERSION, "git_commit": git_commit(),
            "tensor_sha256": tensor_digest(tensors)}
    write_atomic(Path(path), st_save(tensors, metadata={META_KEY: json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a checkpoint written by save_checkpoint; ValueError naming the
    file when it is no safetensors file or carries another format version."""
    data = Path(path).read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get(META_KEY, "{}"))
    except Exception as exc:  # safetensors raises its own error types; JSON its own
        raise ValueError(f"{path}: not a readable capsid checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: checkpoint metadata is {type(meta).__name__}, expected a JSON object")
    version = meta.get("format_version", 1)
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {version!r}, this capsid reads {FORMAT_VERSION}; "
                         "retrain into another output directory or use --no-resume")
    want = meta.get("tensor_sha256")
    if want is not None and tensor_digest(tensors) != want:
        raise ValueError(f"{path}: checkpoint tensors do not match their SHA-256 (the file was changed or damaged "
                         "after it was written); delete it to retrain, or restore a good copy")
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: checkpoint tensor {name!r} holds NaN or Inf; refusing to resume from it")
    return tensors, meta


def require_meta(path: Path, meta: dict, keys: tuple[str, ...]) -> None:
    """A resume reads these header fields: a missing one is a clear error, not a KeyError."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{path}: checkpoint header lacks {', '.join(map(repr, missing))} (damaged, or written by "
                         "another tool); delete it to retrain, or use another output folder")
    opt = meta.get("optimizer")
    if "optimizer" in keys and not (isinstance(opt, dict) and "param_groups" in opt and "scalars" in opt):
        raise ValueError(f"{path}: checkpoint header's 'optimizer' lacks param_groups/scalars (damaged)")


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str = "opt.") -> tuple[dict, dict]:
    """Optimizer state as flat tensors plus JSON-able param groups and scalar state."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "opt.") -> None:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
