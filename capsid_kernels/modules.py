"""``nn.Module``s over the functional ops (layer 3 of 3): parameters, init, and nothing else."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ._validate import check_finite
from .config import CapsIDConfig, ExecutionOptions, RoutingParams
from .ops import route, tokenize
from .reference import RouteOutput, StackOutput, codebook_centres, stack_diagnostics


class CapsuleLayer(nn.Module):
    """One depth of routing: vote transforms W [K, d_c, d], biases b [K, d_c], decoder D [d, d_c].

    ``routing`` (a RoutingParams) is what it computes, ``execution`` (an ExecutionOptions) how:
    ``execution.check_inputs`` rejects NaN/Inf residuals and parameters before routing (one
    device synchronisation for all four tensors).
    Initialised so a unit residual gives votes of norm about 1 (W ~ N(0, 1/d_c)), capsule
    centres in distinct directions (b ~ N(0, 1/d_c)) and a norm-preserving decoder
    (orthonormal columns, the identity when d_c = d).
    """

    def __init__(
        self, d: int, capsules: int, capsule_dim: int, *, routing: RoutingParams = RoutingParams(),
        execution: ExecutionOptions = ExecutionOptions(), generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None, device=None,
    ) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.W = nn.Parameter(torch.empty(capsules, capsule_dim, d, **kw))
        self.b = nn.Parameter(torch.empty(capsules, capsule_dim, **kw))
        self.D = nn.Parameter(torch.empty(d, capsule_dim, **kw))
        if not isinstance(routing, RoutingParams):
            raise TypeError(f"routing: expected a capsid_kernels.RoutingParams, got {type(routing).__name__}")
        if not isinstance(execution, ExecutionOptions):
            raise TypeError(f"execution: expected a capsid_kernels.ExecutionOptions, got {type(execution).__name__}")
        self.routing, self.execution = routing, execution
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        dc, d = self.W.shape[1], self.W.shape[2]
        std = dc ** -0.5
        self.W.copy_(torch.randn(self.W.shape, generator=generator) * std)
        self.b.copy_(torch.randn(self.b.shape, generator=generator) * std)
        q, _ = torch.linalg.qr(torch.randn(max(d, dc), min(d, dc), generator=generator, dtype=torch.float64))
        self.D.copy_((q if d >= dc else q.T).to(self.D.dtype))

    def forward(self, r: Tensor, *, last: bool = False, need_weights: bool = False,
                need_onorm: bool = False) -> RouteOutput:
        """One routing layer; ``execution.check_inputs`` (on by default, one synchronisation)
        rejects NaN/Inf in r and in the parameters W, b, D, naming the argument and its first bad row."""
        return route_layer(self, r, self.routing, self.execution, last=last, need_weights=need_weights,
                           need_onorm=need_onorm)

    def centres(self) -> Tensor:
        """Codebook centres C_k = D squash(b_k), [K, d] (SPEC §3)."""
        return codebook_centres(self.b, self.D)

    def extra_repr(self) -> str:
        k, dc, d = self.W.shape
        return f"d={d}, capsules={k}, capsule_dim={dc}, rounds={self.routing.rounds}, mode={self.routing.mode}"


def route_layer(layer: CapsuleLayer, r: Tensor, routing: RoutingParams, execution: ExecutionOptions, *,
                last: bool = False, need_weights: bool = False, need_onorm: bool = False) -> RouteOutput:
    """``route`` through one layer's parameters with the given routing and execution options."""
    return route(
        r, layer.W, layer.b, layer.D, routing, last=last, need_weights=need_weights, need_onorm=need_onorm,
        execution=execution,
    )


class CapsIDTokenizer(nn.Module):
    """The CAPSID tokenizer: L_max capsule layers with early stopping (SPEC §3).

    ``tokenize(x)`` returns padded SIDs, lengths, stop reasons, the reconstruction and
    per-depth records; ``diagnostics(out)`` summarises them. Both ``tokenize`` and ``route_depth``
    (Stage 1's all-depths forward) route with ``config.routing`` and ``config.execution``.
    """

    def __init__(self, config: CapsIDConfig = CapsIDConfig(), *, seed: Optional[int] = 0,
                 dtype: Optional[torch.dtype] = None, device=None) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.layers = nn.ModuleList(
            CapsuleLayer(config.d, k, config.capsule_dim, routing=config.routing, execution=config.execution,
                         generator=generator, dtype=dtype, device=device)
            for k in config.capsules_per_depth
        )

    def tokenize(self, x: Tensor, *, need_weights: bool = False, batch_size: Optional[int] = None,
                 progress: Optional[Callable[[int], None]] = None, outputs: Union[None, str, Iterable[str]] = None,
                 out_device=None, device=None, int_dtype: Optional[torch.dtype] = None) -> StackOutput:
        """``capsid_kernels.tokenize`` through these layers with ``config.routing`` and ``config.execution``;
        ``batch_size``, ``progress``, ``outputs``, ``out_device``, ``device`` and ``int_dtype`` as there.
        ``execution.check_inputs`` also rejects NaN/Inf in the layers' weights (one synchronisation)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x: expected a torch.Tensor [N, d={self.config.d}], got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x: expected a floating dtype (float32, bfloat16, float64), got {x.dtype}")
        if x.dim() != 2 or x.shape[-1] != self.config.d:
            raise ValueError(f"x: expected shape [N, d={self.config.d}], got {tuple(x.shape)}")
        ex = self.config.execution
        if ex.check_inputs:  # NaN in a weight would give all-zero SIDs without a word (one sync for all)
            check_finite(**{f"layers[{i}].{n}": getattr(m, n) for i, m in enumerate(self.layers) for n in "WbD"})
        return tokenize(
            x.to(self.layers[0].W.dtype), [(m.W, m.b, m.D) for m in self.layers], self.config.routing,
            need_weights=need_weights, execution=ex, batch_size=batch_size, progress=progress, outputs=outputs,
            out_device=out_device, device=device, int_dtype=int_dtype,
        )

    forward = tokenize

    def route_depth(self, depth: int, r: Tensor, *, need_weights: bool = False,
                    need_onorm: bool = False) -> RouteOutput:
        """Depth ``depth``'s routing of residuals r with this tokenizer's config (the last depth stops
        every item still going)."""
        return route_layer(self.layers[depth], r, self.config.routing, self.config.execution,
                           last=depth == len(self.layers) - 1, need_weights=need_weights, need_onorm=need_onorm)

    def diagnostics(self, out: StackOutput) -> dict:
        return stack_diagnostics(out, self.config.capsules_per_depth)

    def centres(self) -> list[Tensor]:
        """Codebook centres per depth, [K_l, d] each."""
        return [m.centres() for m in self.layers]
