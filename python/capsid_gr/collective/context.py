"""The process group a training or evaluation job runs in: rank, world size, device, and the
few collectives the stages need.

`DistContext.from_env()` reads what torchrun exports (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR
and MASTER_PORT for the rendezvous) and joins the default process group: NCCL when CUDA is
available, gloo otherwise. Without those variables it is a one-process context whose
collectives are no-ops, so code written against it runs unchanged outside torchrun.

Sharding rule, used everywhere: a global batch (or a catalogue, or a user list) is cut into
`world` contiguous slices in rank order, so concatenating the slices gives the global batch
back in its order. The global batch itself is drawn exactly as in a one-process run (same
seeded generators), which makes the data a run sees independent of the world size.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional, Sequence

import torch
import torch.distributed as tdist
from torch import Tensor

from ..atomic import write_atomic


def shard_bounds(n: int, world: int, rank: int, align: int = 1) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous slice of n rows; with `align`, slices are whole blocks of
    `align` rows (the last block may be short), so a rank that processes its slice in chunks
    of `align` computes exactly the chunks a single process would."""
    blocks = -(-n // align) if n else 0
    lo_b, hi_b = blocks * rank // world, blocks * (rank + 1) // world
    return min(n, lo_b * align), min(n, hi_b * align)


@dataclass
class DistContext:
    """Rank `rank` of `world` processes; `device` is this rank's compute device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    # --- set-up and tear-down -------------------------------------------------------------
    @classmethod
    def from_env(cls, backend: Optional[str] = None, device: Optional[str] = None,
                 timeout_s: float = 600.0) -> "DistContext":
        """Join the process group torchrun describes; a one-process context when WORLD_SIZE is
        unset or 1. `backend`: None picks nccl with CUDA, gloo without."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
        dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        if world == 1:
            return cls(0, 1, 0, dev, False)
        backend = backend or ("nccl" if use_cuda else "gloo")
        here = False
        if not tdist.is_initialized():
            kw = {"device_id": dev} if backend == "nccl" else {}
            tdist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s), **kw)
            here = True
        return cls(rank, world, local_rank, dev, here)

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.initialised_here and tdist.is_initialized():
            tdist.destroy_process_group()
            self.initialised_here = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, logs and results."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            # gloo's barrier is fine; NCCL's needs the device to be known, which set_device did
            tdist.barrier()

    def write_atomic(self, path, payload: bytes) -> None:
        """Rank 0 writes `payload` atomically; every rank then waits, so after the call the
        file is there for all of them (on a shared file system)."""
        if self.is_writer:
            write_atomic(path, payload)
        self.barrier()

    # --- sharding -------------------------------------------------------------------------
    def bounds(self, n: int, align: int = 1) -> tuple[int, int]:
        return shard_bounds(n, self.world, self.rank, align)

    def all_bounds(self, n: int, align: int = 1) -> list[tuple[int, int]]:
        return [shard_bounds(n, self.world, r, align) for r in range(self.world)]

    def shard(self, batch, align: int = 1):
        """This rank's contiguous slice of a global batch (tensor, array or list)."""
        lo, hi = self.bounds(len(batch), align)
        return batch[lo:hi]

    # --- collectives ----------------------------------------------------------------------
    def all_gather_rows(self, t: Tensor, n: int, align: int = 1) -> Tensor:
        """Concatenate every rank's slice (rows lo:hi of an n-row whole, see `bounds`) in rank
        order: the n-row whole. Slices may differ in length; they travel padded."""
        if not self.active:
            return t
        sizes = [hi - lo for lo, hi in self.all_bounds(n, align)]
        if t.shape[0] != sizes[self.rank]:
            raise ValueError(f"all_gather_rows: rank {self.rank} holds {t.shape[0]} rows, its slice of {n} "
                             f"has {sizes[self.rank]}")
        home, is_bool = t.device, t.dtype == torch.bool
        src = (t.to(torch.uint8) if is_bool else t).to(self._comm_device())
        width = max(sizes)
        pad = src.new_zeros((width - src.shape[0], *src.shape[1:]))
        buf = [src.new_empty((width, *src.shape[1:])) for _ in range(self.world)]
        tdist.all_gather(buf, torch.cat([src, pad]).contiguous())
        out = torch.cat([b[:s] for b, s in zip(buf, sizes)]).to(home)
        return out.bool() if is_bool else out

    def sum_floats(self, *values: float) -> tuple[float, ...]:
        """Sum scalars over ranks in float64 (every rank receives the same sums)."""
        if not self.active:
            return tuple(float(v) for v in values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        tdist.all_reduce(t)
        return tuple(float(v) for v in t.cpu())

    def local_weight(self, n_local: int) -> float:
        """n_local / (sum over ranks of n_local): the factor that turns this rank's mean loss
        into its share of the global mean, so summed gradients equal one process's."""
        if not self.active:
            return 1.0
        (total,) = self.sum_floats(n_local)
        return n_local / total if total else 0.0

    def sum_gradients(self, params: Sequence[Tensor], divide_by_world: bool = False) -> None:
        """All-reduce (sum) the gradients of `params` in one flat buffer; params without a
        gradient on this rank contribute zeros (every rank must pass the same list)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        tdist.all_reduce(flat)
        if divide_by_world:
            flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def average_gradients(self, params: Sequence[Tensor]) -> None:
        """Mean of the gradients over ranks: for losses every rank computes in full (Stage 1)."""
        self.sum_gradients(params, divide_by_world=True)

    def broadcast_modules(self, *modules) -> None:
        """Rank 0's parameters and buffers into every rank (what DDP does at construction):
        initialisations that are seeded but not bit-reproducible across devices agree."""
        if not self.active:
            return
        with torch.no_grad():
            for m in modules:
                if m is None:
                    continue
                for t in list(m.parameters()) + list(m.buffers()):
                    tdist.broadcast(t.data, src=0)

    def reseed(self, base_seed: int) -> None:
        """Seed the global generator from (base_seed, rank): dropout masks differ across ranks
        (a one-process run draws one stream over the whole batch; no sharding reproduces it)."""
        torch.manual_seed(base_seed + 104_729 * self.rank)

    def _comm_device(self) -> torch.device:
        if self.active and tdist.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")


@contextlib.contextmanager
def distributed(backend: Optional[str] = None, device: Optional[str] = None):
    """`with distributed() as dist:` joins torchrun's process group and always leaves it."""
    ctx = DistContext.from_env(backend, device)
    try:
        yield ctx
    finally:
        ctx.close()
