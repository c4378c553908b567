"""The tokenizer stack on a chosen backend.

One stack per backend, behind one chunk loop (``stack_chunks.run_stack``): the eager stack
(``reference.stack.route_stack``) with every depth on the public ``route`` serves every backend
and autograd; on the Triton backend a forward-only call (no gradient needed) runs
``triton.stack.TritonStack`` instead, which compacts on the GPU and writes the catalogue-wide
outputs in place. Both fill their results through ``stack_chunks.StackResults``, so ``outputs=``,
``out_device=``, ``device=`` and ``int_dtype=`` mean the same on every backend.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..config import ExecutionOptions, RoutingParams, execution_options, routing_params
from ..reference import StackOutput, check_item_vectors, compute_dtype
from ..reference.stack import STACK_OUTPUTS, RouteFn, route_stack
from ..registry import limit_reasons, select
from .route import route
from .stack_chunks import StackResults, run_stack
from .._validate import short

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)


def tokenize(
    x: Tensor,
    layers: Sequence[tuple[Tensor, Tensor, Tensor]],
    routing: RoutingParams = RoutingParams(),
    *,
    need_weights: bool = False,
    execution: Optional[ExecutionOptions] = None,
    precision: Optional[str] = None,
    backend: Optional[str] = None,
    check_inputs: Optional[bool] = None,
    batch_size: Optional[int] = None,
    progress: Optional[Callable[[int], None]] = None,
    outputs: Union[None, str, Iterable[str]] = None,
    out_device: Union[None, str, torch.device] = None,
    device: Union[None, str, torch.device] = None,
    int_dtype: Optional[torch.dtype] = None,
    **routing_keywords,
) -> StackOutput:
    """Tokenize item vectors x [N, d] through ``layers`` = [(W, b, D)] * L_max (SPEC §3).

    ``routing``: the ``RoutingParams`` of every depth; keywords may replace its fields, as in ``route``.
    ``execution``: an ``ExecutionOptions`` (default ``ExecutionOptions()``); ``precision=``,
    ``backend=`` and ``check_inputs=`` replace its fields.

    Zero or non-finite rows raise an error naming the item (``check_inputs=False`` skips
    that check, which costs one device synchronisation). ``batch_size`` bounds memory by
    tokenizing that many items at a time; ``progress(n)`` is called after each chunk of n items.

    For catalogues larger than the GPU (each default below is today's behaviour, bit for bit):

    - ``outputs``: the outputs to keep, names from ``STACK_OUTPUTS`` ("sids", "lengths",
      "stop_reason", "recon", "residual", "depths"; one name or several). The others come back
      as None (``depths`` as ``()``) and are never allocated catalogue-wide. Default: all.
    - ``out_device``: where the kept catalogue-wide outputs live: the compute device (default) or
      "cpu", in pinned host memory filled chunk by chunk by asynchronous copies that overlap the
      next chunk; the call returns once they are complete.
    - ``device``: where the chunks are computed (default: x's device). x may then live on the host
      (pin it, ``x.pin_memory()``, for asynchronous copies): each chunk is moved to ``device`` as
      it is processed, and the item check runs there, raising after the last chunk. Layers not on
      ``device`` are moved there.
    - ``int_dtype``: dtype of sids, lengths and stop_reason (int8, int16, int32 or int64, the
      default); it must hold every token id (K - 1) and L_max.

    The per-depth records keep int64 indices. Peak device memory with ``outputs`` = sids, lengths,
    stop_reason and ``out_device="cpu"``: O(batch_size · (d + K)), plus x if it lives there.
    """
    routing = routing_params(routing, routing_keywords)
    ex = execution_options(execution, {"backend": backend, "precision": precision, "check_inputs": check_inputs})
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor [N, d], got {type(x).__name__}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size: expected None or an integer >= 1, got {short(batch_size)}")
    keep = _outputs_arg(outputs, need_weights)
    compute = x.device if device is None else _device_arg("device", device)
    out_dev = compute if out_device is None else _device_arg("out_device", out_device)
    if out_dev != compute and out_dev.type != "cpu":
        raise ValueError(f"out_device: expected None, 'cpu' or the compute device {compute}, got {short(out_device)}")
    ints = _int_dtype_arg(int_dtype, layers)
    if device is not None:
        layers = [tuple(t.to(compute) for t in layer) for layer in layers]
    on_device = x.device == compute
    if ex.check_inputs:
        # Once, so an error names the item's index in x, not in a chunk. Off the device, x's rows are
        # checked chunk by chunk where they are computed; here only its shape and dtype.
        check_item_vectors(x if on_device else x[:0])
    elif x.dim() != 2:
        raise ValueError(f"x: expected a 2-D tensor [N, d], got shape {tuple(x.shape)}")
    n, d, l_max = x.shape[0], x.shape[1], len(layers)
    if _fast_stack(x, layers, routing.rounds, ex.backend, compute):
        from ..triton.stack import DEFAULT_CHUNK, TritonStack  # imports Triton on first use only

        stack = TritonStack(layers, routing, need_weights=need_weights, tf32=ex.precision == "tf32")
        step, floats = batch_size or DEFAULT_CHUNK, torch.float32
    else:
        route_fn = functools.partial(route, execution=ex, check_finite=False)  # items checked above, once
        stack = EagerStack(layers, routing, need_weights=need_weights, route_fn=route_fn)
        step, floats = batch_size or max(1, n), compute_dtype(x.dtype)
    results = StackResults(n, d, l_max, device=compute, float_dtype=floats, keep=keep, out_device=out_dev,
                           int_dtype=ints)
    return run_stack(x, stack, results, step, check=ex.check_inputs and not on_device, progress=progress)


class EagerStack:
    """The eager stack of one chunk (``stack_chunks.ChunkStack``): ``reference.stack.route_stack``
    with every depth on ``route_fn`` (the public ``route`` on the chosen backend), differentiable."""

    def __init__(self, layers: Sequence[tuple[Tensor, Tensor, Tensor]], routing: RoutingParams, *,
                 need_weights: bool, route_fn: RouteFn) -> None:
        self.layers, self.routing, self.need_weights, self.route_fn = layers, routing, need_weights, route_fn

    def __call__(self, r0: Tensor, results: StackResults, start: int) -> None:
        out = route_stack(r0, self.layers, self.routing, need_weights=self.need_weights, route_fn=self.route_fn)
        results.commit(start, r0.shape[0], out._asdict())
        results.add_depths(start, out.depths)


def _outputs_arg(outputs, need_weights: bool) -> tuple[str, ...]:
    if outputs is None:
        return STACK_OUTPUTS
    names = (outputs,) if isinstance(outputs, str) else outputs
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(f"outputs: expected None, a name or names from {STACK_OUTPUTS}, got {short(outputs)}") from None
    unknown = [n for n in names if n not in STACK_OUTPUTS]
    if unknown:
        raise ValueError(f"outputs: unknown name(s) {unknown}; expected names from {STACK_OUTPUTS}")
    if need_weights and "depths" not in names:
        raise ValueError("outputs: need_weights=True asks for c* in the per-depth records, which outputs="
                         f"{short(outputs)} does not keep; add 'depths' or drop need_weights")
    return names


def _device_arg(name: str, value) -> torch.device:
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name}: expected None, a device name or a torch.device, got {short(value)}")
    try:
        dev = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name}: expected a device such as 'cpu' or 'cuda', got {short(value)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}: {short(value)} needs a CUDA GPU and none is available; use 'cpu'")
        if dev.index is None:  # "cuda" means the current GPU, so it compares equal to the tensors there
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _int_dtype_arg(int_dtype, layers) -> torch.dtype:
    if int_dtype is None:
        return torch.int64
    if int_dtype not in INT_DTYPES:
        raise ValueError(f"int_dtype: expected one of {[str(t)[6:] for t in INT_DTYPES]}, got {short(int_dtype)}")
    top = max([W.shape[0] - 1 for W, _, _ in layers] + [len(layers)])
    if top > torch.iinfo(int_dtype).max:
        raise ValueError(f"int_dtype: {str(int_dtype)[6:]} cannot hold token id {top} (K up to "
                         f"{max(W.shape[0] for W, _, _ in layers)}); use a wider dtype such as int32")
    return int_dtype


def _fast_stack(x: Tensor, layers, rounds: int, backend: str, device: torch.device) -> bool:
    """The Triton stack runs when the backend resolves to triton on ``device``, every depth fits the
    kernel's limits, and no gradient is needed (it is forward-only); else the reference stack runs."""
    if backend not in ("auto", "triton") or x.shape[0] == 0 or len(layers) == 0:
        return False
    if select("tokenize", backend, device.type, x.dtype) != "triton":
        return False
    if any(limit_reasons("tokenize", "triton", d=W.shape[2], d_c=W.shape[1], rounds=rounds) for W, _, _ in layers):
        return False  # route() raises for backend="triton" or falls back to eager for "auto"
    tensors = [x] + [t for layer in layers for t in layer]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.dtype == x.dtype for t in tensors) and all(t.device == device for t in tensors[1:])
