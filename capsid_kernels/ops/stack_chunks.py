"""The chunk loop of ``tokenize``, written once for every backend, and the results it fills.

Execution bookkeeping, no math. ``run_stack`` cuts the items into chunks (``item_chunks``: moved to
the compute device, the next one prefetched), normalises each to r_0 and hands it to one backend's
stack of a chunk, ``stack(r0, results, start)``: the eager stack (``reference.stack.route_stack``
with every depth on ``route``, wrapped by ``ops.tokenize``) or the Triton stack
(``triton.stack.TritonStack``). That stack writes its outputs through ``StackResults``, which
allocates only the outputs kept, where they are kept.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch
from torch import Tensor

from ..reference.stack import PAD_TOKEN, STACK_OUTPUTS, DepthOutput, StackOutput, check_item_vectors, normalise

_ROW_OUTPUTS = STACK_OUTPUTS[:5]  # one row per item
_IN_FLIGHT = 2  # chunks whose side-stream copies may be queued: bounds the device memory they hold


class StackResults:
    """The catalogue-wide results of a chunked tokenize, allocated once and filled chunk by chunk.

    Only the outputs named in ``keep`` (from ``STACK_OUTPUTS``) are allocated, on ``out_device``
    (default: ``device``, where the chunks are computed). The integer outputs (sids, lengths,
    stop_reason) are kept as ``int_dtype``, the float ones as ``float_dtype``. With chunks on a GPU
    and ``out_device`` the CPU, results live in pinned host memory and each chunk's outputs are copied
    there on a side stream while the next chunk computes; ``output()`` waits for those copies.

    A producer asks ``chunk(start, m)`` for write targets (views into the results where it can
    write in place, else chunk-sized buffers), hands the chunk's tensors to ``commit`` and its
    per-depth records (``index`` local to the chunk) to ``add_depths``.
    """

    def __init__(self, n: int, d: int, l_max: int, *, device, float_dtype: torch.dtype,
                 keep: Sequence[str] = STACK_OUTPUTS, out_device=None, int_dtype: torch.dtype = torch.int64) -> None:
        self.device = torch.device(device)
        self.out_device = self.device if out_device is None else torch.device(out_device)
        self.keep = frozenset(keep)
        self.resident = self.out_device == self.device
        self.n, self.d, self.l_max = n, d, l_max
        self.float_dtype, self.int_dtype = float_dtype, int_dtype
        to_host = self.device.type == "cuda" and self.out_device.type == "cpu"
        self._stream = torch.cuda.Stream(self.device) if to_host else None
        self._pending: collections.deque = collections.deque()
        self._views: dict = {}
        self._depths: list[list[DepthOutput]] = [[] for _ in range(l_max)]
        self.results: dict[str, Tensor] = {}
        for name in _ROW_OUTPUTS:
            if name not in self.keep:
                continue
            shape, dtype, fill = self._layout(name, n, stack_dtype=False)
            if not self.resident:  # every row is copied in from a chunk: no fill needed
                self.results[name] = torch.empty(shape, dtype=dtype, pin_memory=to_host)
            elif fill is None:
                self.results[name] = torch.empty(shape, dtype=dtype, device=self.device)
            else:
                self.results[name] = torch.full(shape, fill, dtype=dtype, device=self.device)

    def keeps(self, name: str) -> bool:
        return name in self.keep

    def _layout(self, name: str, m: int, stack_dtype: bool) -> tuple:
        """(shape, dtype, initial value) of one output for m rows; the stack writes int64."""
        ints = torch.int64 if stack_dtype else self.int_dtype
        return {"sids": ((m, self.l_max), ints, PAD_TOKEN), "lengths": ((m,), ints, 0), "stop_reason": ((m,), ints, 0),
                "recon": ((m, self.d), self.float_dtype, 0), "residual": ((m, self.d), self.float_dtype, None)}[name]

    def chunk(self, start: int, m: int) -> dict:
        """Write targets for rows [start, start + m) as the stack writes them: sids int64 [m, L_max]
        filled with PAD_TOKEN, lengths and stop_reason int64 [m] zeros, recon [m, d] zeros, on ``device``;
        residual a view into the results, or None (the producer then commits its own tensor)."""
        targets = {}
        for name in _ROW_OUTPUTS:
            shape, dtype, fill = self._layout(name, m, stack_dtype=True)
            res = self.results.get(name)
            if res is not None and self.resident and res.dtype == dtype:
                targets[name] = res[start:start + m]
            elif name == "residual":
                targets[name] = None
            else:
                targets[name] = torch.full(shape, fill, dtype=dtype, device=self.device)
        self._views = {name: t for name, t in targets.items() if name in self.results and t is not None
                       and self.resident and t.dtype == self.results[name].dtype}
        return targets

    def commit(self, start: int, m: int, tensors: dict) -> None:
        """Move the kept outputs of rows [start, start + m) into the results (a target that is
        already a view into them is left alone)."""
        moves = []
        for name in _ROW_OUTPUTS:
            if name not in self.keep or tensors[name] is self._views.get(name):
                continue
            dst = self.results[name][start:start + m]
            if self._stream is None:
                dst.copy_(tensors[name])
            else:  # narrowed on the device, so fewer bytes cross the bus
                moves.append((dst, tensors[name].to(dst.dtype)))
        self._views = {}
        self._to_host(moves)

    def add_depths(self, start: int, records: Sequence[DepthOutput]) -> None:
        """Keep one chunk's per-depth records (``index`` local to the chunk, offset here by ``start``)."""
        if "depths" not in self.keep:
            return
        moves = []
        for depth, rec in enumerate(records):
            rec = rec._replace(index=rec.index + start)
            if self._stream is not None:
                host = DepthOutput(*(None if t is None else torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                                     for t in rec))
                moves += [(h, t) for h, t in zip(host, rec) if t is not None]
                rec = host
            self._depths[depth].append(rec)
        self._to_host(moves)

    def _to_host(self, moves: list) -> None:
        """Copy (host destination, device source) pairs on the side stream once the compute stream
        has produced the sources; the sources' memory is not reused before the copies finish."""
        if not moves:
            return
        self._stream.wait_event(torch.cuda.current_stream(self.device).record_event())
        with torch.cuda.stream(self._stream):
            for dst, src in moves:
                dst.copy_(src, non_blocking=True)
                src.record_stream(self._stream)
        self._pending.append(self._stream.record_event())
        while len(self._pending) > _IN_FLIGHT:  # the host stays at most this many chunks ahead of the copies
            self._pending.popleft().synchronize()

    def output(self) -> StackOutput:
        """The results (outputs not kept: None; depths not kept: ()), host copies complete."""
        if self._stream is not None:
            self._stream.synchronize()
            self._pending.clear()
        depths = []
        for recs in self._depths:
            if not recs:
                break
            depths.append(recs[0] if len(recs) == 1 else DepthOutput(*(
                None if getattr(recs[0], f) is None else torch.cat([getattr(r, f) for r in recs])
                for f in DepthOutput._fields)))
        get = self.results.get
        return StackOutput(get("sids"), get("lengths"), get("stop_reason"), get("recon"), get("residual"), tuple(depths))


def item_chunks(x: Tensor, step: int, device, *, check: bool = False) -> Iterator[tuple[int, Tensor]]:
    """(start, rows [start, start + step) of x on ``device``), in order; one empty chunk when x has no rows.

    From host memory to a GPU the next chunk is copied on a side stream while the current one
    computes (asynchronously when x is pinned). ``check``: each chunk's rows are checked on the
    device as ``check_item_vectors`` does, and the first offender is named (one synchronisation,
    after the last chunk) -- the check for an x that lives off the device.
    """
    device = torch.device(device)
    n = x.shape[0]
    starts = list(range(0, max(1, n), step))
    bad = torch.zeros((), dtype=torch.int64, device=device) if check else None
    side = x.device.type == "cpu" and device.type == "cuda"
    stream = torch.cuda.Stream(device) if side else None
    compute = torch.cuda.current_stream(device) if side else None

    def fetch(start: int):
        if not side:
            return x[start:start + step].to(device), None
        with torch.cuda.stream(stream):
            rows = x[start:start + step].to(device, non_blocking=True)
            return rows, stream.record_event()

    pending: collections.deque = collections.deque()
    nxt = fetch(starts[0])
    for i, start in enumerate(starts):
        (rows, ready), nxt = nxt, None
        more = i + 1 < len(starts)
        if side:
            compute.wait_event(ready)
            rows.record_stream(compute)
            if more:
                nxt = fetch(starts[i + 1])  # queued before this chunk's work: the copy overlaps it
        if check and rows.shape[0]:
            bad += (~torch.isfinite(rows).all(dim=1) | (rows == 0).all(dim=1)).sum()
        yield start, rows
        del rows
        if side:
            pending.append(compute.record_event())
            while len(pending) > _IN_FLIGHT:  # bounds the prefetched chunks the allocator holds
                pending.popleft().synchronize()
        elif more:
            nxt = fetch(starts[i + 1])
    if check and int(bad):
        check_item_vectors(x)  # raises, naming the first offender in x


class ChunkStack(Protocol):
    """One backend's stack of one chunk: route r0 [m, d] (unit rows, items ``start`` to ``start + m``)
    through every depth and write the outputs through ``results`` (``chunk``, ``commit``, ``add_depths``)."""

    def __call__(self, r0: Tensor, results: StackResults, start: int) -> None: ...


def run_stack(x: Tensor, stack: ChunkStack, results: StackResults, step: int, *, check: bool = False,
              progress: Optional[Callable[[int], None]] = None) -> StackOutput:
    """Tokenize x [N, d] ``step`` items at a time on ``results.device`` with ``stack``; ``check`` checks
    each chunk's rows there (x off the device), ``progress(m)`` is called after each chunk of m items."""
    for start, rows in item_chunks(x, step, results.device, check=check):
        m = rows.shape[0]
        r0 = normalise(rows)
        del rows  # a chunk moved to the device is not kept beside r_0
        stack(r0, results, start)
        del r0
        if progress is not None:
            progress(m)
    return results.output()
