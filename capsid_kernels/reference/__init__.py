"""The eager reference: SPEC.md as executable PyTorch. Every backend is checked against it."""

from .routing import (
    CONTINUE,
    STOP_CAP,
    STOP_CONF,
    STOP_REASON_NAMES,
    STOP_RESID,
    RouteOutput,
    codebook_centres,
    route_reference,
    route_votes,
    stop_reasons,
)
from .squash import compute_dtype, squash, squash_backward
from .stack import (
    PAD_TOKEN,
    DepthOutput,
    StackOutput,
    check_item_vectors,
    normalise,
    route_stack,
    stack_diagnostics,
    tokenize_stack,
)

__all__ = [
    "CONTINUE", "STOP_CAP", "STOP_CONF", "STOP_RESID", "STOP_REASON_NAMES", "PAD_TOKEN",
    "RouteOutput", "DepthOutput", "StackOutput",
    "codebook_centres", "compute_dtype", "check_item_vectors", "normalise",
    "route_reference", "route_votes", "squash", "squash_backward", "stop_reasons",
    "route_stack", "stack_diagnostics", "tokenize_stack",
]
