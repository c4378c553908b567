"""The tokenizer stack of SPEC §3: normalise, route depth by depth, stop, compact.

Written once and shared by every backend: the per-depth layer is passed in as
``route_fn`` (the eager reference, or the public op bound to a fast backend), so the
stop rules, compaction and bookkeeping exist in one place only.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..config import ExecutionOptions, RoutingParams, routing_params
from .routing import CONTINUE, STOP_CAP, STOP_CONF, STOP_RESID, RouteOutput, route_reference
from .squash import compute_dtype

PAD_TOKEN = -1
CHECK_CHUNK = 1 << 20  # rows per step of the item-vector check


class DepthOutput(NamedTuple):
    """What happened at one depth to the items that entered it (``index`` into the batch)."""

    index: Tensor  # [M] int64, the items active at this depth
    token: Tensor  # [M]
    confidence: Tensor  # [M] q
    onorm: Tensor  # [M] ||o|| of the last round
    residual_norm: Tensor  # [M] ||r_l||
    prev_residual_norm: Tensor  # [M] ||r_{l-1}||
    stop_reason: Tensor  # [M]
    weights: Optional[Tensor]  # [M, K] c*, on request


class StackOutput(NamedTuple):
    """Padded SIDs [N, L_max] (PAD_TOKEN after the end), lengths [N], stop reason [N],
    reconstruction x_hat [N, d] and final residual [N, d] in the compute dtype, per-depth records."""

    sids: Tensor
    lengths: Tensor
    stop_reason: Tensor
    recon: Tensor
    residual: Tensor
    depths: tuple[DepthOutput, ...]


def check_item_vectors(x: Tensor, name: str = "x") -> None:
    """Zero or non-finite item vectors cannot be normalised: name the first offender."""
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [N, d], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"{name}: expected a floating dtype (float64, float32, bfloat16), got {x.dtype}")
    if x.shape[0] == 0:
        return
    # Row flags chunk by chunk: the temporaries stay O(chunk * d) on a catalogue of millions.
    n = x.shape[0]
    bad_finite = torch.empty(n, dtype=torch.bool, device=x.device)
    zero = torch.empty(n, dtype=torch.bool, device=x.device)
    for start in range(0, n, CHECK_CHUNK):
        rows = x[start:start + CHECK_CHUNK]
        bad_finite[start:start + rows.shape[0]] = ~torch.isfinite(rows).all(dim=1)
        zero[start:start + rows.shape[0]] = (rows == 0).all(dim=1)
    if bool(bad_finite.any()):
        i = int(bad_finite.nonzero()[0, 0])
        raise ValueError(
            f"{name}: item {i} has a non-finite value (NaN or Inf); {int(bad_finite.sum())} such items in all"
        )
    if bool(zero.any()):
        i = int(zero.nonzero()[0, 0])
        raise ValueError(f"{name}: item {i} is the zero vector and cannot be normalised; {int(zero.sum())} such items")


def normalise(x: Tensor) -> Tensor:
    """r_0 = x / ||x|| in the compute dtype, returned in x's dtype."""
    xc = x.to(compute_dtype(x.dtype))
    return (xc / torch.linalg.vector_norm(xc, dim=-1, keepdim=True)).to(x.dtype)


RouteFn = Callable[..., RouteOutput]


def tokenize_stack(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams = RoutingParams(),
    *,
    need_weights: bool = False,
    route_fn: RouteFn = route_reference,
    check_inputs: bool = ExecutionOptions.check_inputs,
    **routing_keywords,
) -> StackOutput:
    """Tokenize N item vectors with ``len(layers)`` = L_max depths of (W, b, D).

    ``routing`` is passed whole to ``route_fn(r, W, b, D, routing, last=..., ...)`` at every depth;
    keywords may replace its fields, as in ``route``.
    Items that stop leave the batch (compaction); every depth's outputs are scattered
    back to item order. Differentiable in x and every depth's parameters.
    """
    routing = routing_params(routing, routing_keywords)
    if check_inputs:
        check_item_vectors(x)
    if len(layers) == 0:
        raise ValueError("layers: expected at least one depth of (W, b, D), got none")
    n, device = x.shape[0], x.device
    cd = compute_dtype(x.dtype)
    l_max = len(layers)
    r = normalise(x)

    sids = torch.full((n, l_max), PAD_TOKEN, dtype=torch.int64, device=device)
    lengths = torch.zeros(n, dtype=torch.int64, device=device)
    reasons = torch.zeros(n, dtype=torch.int64, device=device)
    recon = torch.zeros(n, x.shape[1], dtype=cd, device=device)
    residual = torch.zeros(n, x.shape[1], dtype=cd, device=device)

    active = torch.arange(n, device=device)
    depths = []
    for depth, (W, b, D) in enumerate(layers):
        last = depth == l_max - 1
        out = route_fn(r, W, b, D, routing, last=last, need_weights=need_weights, need_onorm=True)
        prev_norm = torch.linalg.vector_norm(r.to(cd), dim=-1)
        res_c = out.residual.to(cd)
        res_norm = torch.linalg.vector_norm(res_c, dim=-1)
        sids[active, depth] = out.token
        recon = recon.index_add(0, active, out.recon.to(cd))
        depths.append(
            DepthOutput(active, out.token, out.confidence, out.onorm, res_norm, prev_norm, out.stop_reason, out.weights)
        )
        stopped = out.stop_reason != CONTINUE
        stop_idx = active[stopped]
        lengths[stop_idx] = depth + 1
        reasons[stop_idx] = out.stop_reason[stopped]
        residual = residual.index_copy(0, stop_idx, res_c[stopped])
        keep = ~stopped
        active, r = active[keep], out.residual[keep]
        if active.numel() == 0:
            break
    return StackOutput(sids, lengths, reasons, recon, residual, tuple(depths))


@torch.no_grad()
def stack_diagnostics(out: StackOutput, capsules: Sequence[int]) -> dict:
    """Per-depth and whole-catalogue SID statistics (SPEC §3 and §8), as plain Python numbers."""
    n = int(out.lengths.shape[0])
    per_depth = []
    for depth, rec in enumerate(out.depths):
        m = int(rec.index.numel())
        k = capsules[depth]
        usage = torch.bincount(rec.token, minlength=k).cpu()
        winner = torch.where(rec.onorm > 0, rec.confidence / rec.onorm.clamp_min(1e-30), torch.zeros_like(rec.onorm))
        per_depth.append(
            {
                "depth": depth + 1,
                "active": m,
                "stops": {name: int((rec.stop_reason == code).sum()) for code, name in
                          ((STOP_CONF, "conf"), (STOP_RESID, "resid"), (STOP_CAP, "cap"))},
                "mean_winner_weight": float(winner.double().mean()) if m else float("nan"),
                "mean_confidence": float(rec.confidence.double().mean()) if m else float("nan"),
                "residual_grew": float((rec.residual_norm > rec.prev_residual_norm).double().mean()) if m else float("nan"),
                "codes_used": int((usage > 0).sum()),
                "code_usage": usage.tolist(),
            }
        )
    length_hist = torch.bincount(out.lengths, minlength=len(capsules) + 1).cpu().tolist()
    unique = torch.unique(out.sids, dim=0).shape[0] if n else 0
    total_codes = sum(capsules[: len(out.depths)])
    used_codes = sum(d["codes_used"] for d in per_depth)
    return {
        "items": n,
        "mean_length": float(out.lengths.double().mean()) if n else float("nan"),
        "length_histogram": {i: c for i, c in enumerate(length_hist) if i > 0},
        "stop_fractions": {name: float((out.stop_reason == code).double().mean()) if n else float("nan")
                           for code, name in ((STOP_CONF, "conf"), (STOP_RESID, "resid"), (STOP_CAP, "cap"))},
        "collision_rate": 1.0 - unique / n if n else float("nan"),
        "code_utilisation": used_codes / total_codes if total_codes else float("nan"),
        "depths": per_depth,
    }


def concat_outputs(parts: Sequence[StackOutput]) -> StackOutput:
    """Join the outputs of consecutive item chunks into one, as if tokenized in one call."""
    if len(parts) == 1:
        return parts[0]
    offsets, total = [], 0
    for p in parts:
        offsets.append(total)
        total += p.lengths.shape[0]
    depths = []
    for depth in range(max(len(p.depths) for p in parts)):
        recs = [(off, p.depths[depth]) for off, p in zip(offsets, parts) if depth < len(p.depths)]
        fields = []
        for name in DepthOutput._fields:
            vals = [getattr(rec, name) for _, rec in recs]
            if name == "index":
                vals = [v + off for (off, _), v in zip(recs, vals)]
            fields.append(None if vals[0] is None else torch.cat(vals))
        depths.append(DepthOutput(*fields))
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    return StackOutput(cat("sids"), cat("lengths"), cat("stop_reason"), cat("recon"), cat("residual"), tuple(depths))


# ----------------------------------------------------------------------------- chunked results
# Execution bookkeeping beside concat_outputs (no math): every backend's chunk loop writes through it.

STACK_OUTPUTS = ("sids", "lengths", "stop_reason", "recon", "residual", "depths")
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
