"""Small @triton.jit helpers shared by the routing kernels (route_fwd.py, route_fwd_grouped.py,
route_bwd.py): the squash scale and the by-hand roundings to bf16 and tf32."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _squash_scale(n2):
    """||z|| / (0.5 + ||z||²) from ||z||²: squash(z) = z · scale, defined at z = 0."""
    return tl.sqrt(n2) / (0.5 + n2)


@triton.jit
def _round_bf16(x):
    """float32 -> nearest bfloat16 value (ties to even), still float32: Triton's interpreter
    truncates on a bf16 cast, so under it the rounding is done by hand before the cast."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _round_tf32(x):
    """float32 -> nearest tf32 value (ties to even). The tensor cores truncate float32 operands to
    tf32, a biased error that adds up over d; operands rounded first match cuBLAS's tf32 accuracy."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 13) & 1) + 0xFFF)) & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _out(x, ptr, ROUND_BY_HAND: tl.constexpr):
    if ROUND_BY_HAND:
        x = _round_bf16(x)
    return x.to(ptr.dtype.element_ty)
