"""Checkpoints carry a SHA-256 of their tensors and refuse NaN/Inf on load; a killed write's
temporary file is removed by the next write of the same target (issue 21)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from capsid_gr.checkpoint import load_checkpoint, save_checkpoint
from capsid_kernels.decode._atomic import remove_stale_temporaries, write_atomic


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"W": torch.randn(8, 4, generator=g), "b": torch.randn(4, generator=g).to(torch.bfloat16),
            "steps": torch.arange(3), "mask": torch.tensor([True, False])}


def test_round_trip_keeps_every_tensor(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", _tensors(), {"epoch": 3})
    got, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta["epoch"] == 3 and len(meta["tensor_sha256"]) == 64
    for k, v in _tensors().items():
        assert torch.equal(got[k], v)


def test_flipped_sign_bits_are_refused(tmp_path):
    """16 flipped sign bits once resumed silently and changed 15 of 200 SIDs."""
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"epoch": 3})
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(16):  # the high byte of 16 float32 values of W (little-endian: byte 3 of each)
        data[header + 4 * i + 3] ^= 0x80
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"c.safetensors: checkpoint tensors do not match their SHA-256"):
        load_checkpoint(path)


def test_nan_weights_are_refused_even_with_a_matching_header(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, _tensors(), {"epoch": 3})
    tensors = st_load(path.read_bytes())
    tensors["W"][2, 1] = float("nan")
    meta = json.loads(json.loads(path.read_bytes()[8:8 + int.from_bytes(path.read_bytes()[:8], "little")])
                      ["__metadata__"]["capsid"])
    meta.pop("tensor_sha256")  # as an older checkpoint, or one rewritten by another tool
    path.write_bytes(st_save(tensors, metadata={"capsid": json.dumps(meta)}))
    with pytest.raises(ValueError, match=r"checkpoint tensor 'W' holds NaN or Inf"):
        load_checkpoint(path)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".ckpt.safetensors.{pid}.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".ckpt.safetensors.{os.getpid()}.zzz.tmp"  # this process's own: kept
    live.write_bytes(b"y")
    other = tmp_path / ".other.safetensors.1.q.tmp"  # another target's: kept
    other.write_bytes(b"z")
    write_atomic(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temporaries(target) == []


def test_a_header_missing_a_resume_field_is_a_clear_error(tmp_path):
    """A header without a field a resume reads raised KeyError."""
    from capsid_gr.checkpoint import require_meta

    path = tmp_path / "c.safetensors"
    meta = {"optimizer": {"param_groups": [], "scalars": {}}, "history": [], "epoch": 2}
    require_meta(path, meta, ("optimizer", "history", "epoch"))
    with pytest.raises(ValueError, match=r"c.safetensors: checkpoint header lacks 'best', 'bad'"):
        require_meta(path, meta, ("history", "best", "bad"))
    with pytest.raises(ValueError, match=r"'optimizer' lacks param_groups/scalars"):
        require_meta(path, {**meta, "optimizer": {}}, ("optimizer",))
