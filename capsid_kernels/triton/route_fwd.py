"""Fused forward of one routing layer (SPEC §2) for a tile of items; votes never leave the chip.

Schedule (per tile of BM items, one program):

* Round 1 has uniform weights, so its weighted vote sum is ``v₁ = r W̄ᵀ + b̄`` with W̄, b̄ the
  mean over capsules: one small exact-float32 GEMM (cuBLAS, before the launch; [N, d_c] float32
  read back by the kernel) instead of a pass over all K capsules.
* The agreement logits need no storage: ``a_k = Σ_j u_k · o_j = u_k · S`` with ``S`` the running
  sum of the round outputs. Each later round is one pass over the capsules that recomputes the
  vote tile ``u_k = r W_kᵀ + b_k`` on the tensor cores, forms ``a_k = u_k · S`` and folds it into
  an online softmax (running max, running sum, rescaled accumulator of Σ c_k u_k).
* The final pass recomputes the votes once more for c* = softmax(u · S): it keeps the running
  argmax (first maximum wins, as torch.argmax), accumulates Σ c*_k squash(u_k) (soft) or keeps
  the winner's vote (hard), and writes the raw logits only when c* is requested.

So T rounds cost T vote passes (T − 1 rounds + the final pass) plus one small GEMM. Then
z = D rec, r' = r − η z, ||r'|| and the stop reason, in the same program.

Capsules go two at a time (two vote GEMMs of N = d_c in flight, one softmax rescale per pair).
CAPSID_TRITON_GROUP = 1, 4 or 8 launches route_fwd_grouped.py's kernel instead: the same math with
G capsules in one GEMM of N = G·d_c and one rescale per group (issue 20, chosen by measurement).

Precision: bfloat16 inputs use bf16 tensor-core products with float32 accumulation (products of
bf16 values are exact in float32, as in the reference). Float32 inputs use ``FP32_DOT`` for the
vote GEMMs: "tf32" when precision="tf32" is asked for, else ``EXACT_FP32`` ("tf32x3": the split
three-pass tf32 product, about float32 accuracy on tensor cores; "ieee" is the exact but slow
alternative). z = D rec keeps rec in float32 accuracy: for bfloat16 inputs (D exact in bf16) rec
is split into two bf16 terms (hi + lo, 16 significant bits) and multiplied on the tensor cores;
for float32 inputs the product is "tf32x3". Softmax and all accumulation are float32.

Stack mode (STACK=True) serves the tokenizer: the rows are ``idx[0:count]`` (count read from
device memory, so the host never learns it), r is read from and r' written back to the
residual buffer at those rows, and the token, stop length and reason and Σ z land in the
catalogue-wide outputs; the per-depth records are written at the compact row.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .jit_math import _out, _round_tf32, _squash_scale

EXACT_FP32 = os.environ.get("CAPSID_TRITON_EXACT_FP32", "tf32x3")


@triton.jit
def _votes(x, W_ptr, b_ptr, k, offs_d, offs_c, BD: tl.constexpr, BC: tl.constexpr, FP32_DOT: tl.constexpr):
    """u_k = r W_kᵀ + b_k for the tile: [BM, BC] float32. W and b come packed and zero-padded
    to [K, BC, BD] and [K, BC] (``pack_layer``), so these loads are unmasked and vectorised and
    the padded columns of u are exactly 0."""
    w = tl.trans(tl.load(W_ptr + k * (BC * BD) + offs_c[:, None] * BD + offs_d[None, :]))
    bk = tl.load(b_ptr + k * BC + offs_c)
    if FP32_DOT == "none" or FP32_DOT == "fp64":
        u = tl.dot(x, w)
    elif FP32_DOT == "upcast":  # bf16 under the CPU interpreter, whose bf16 dot is wrong
        u = tl.dot(x.to(tl.float32), w.to(tl.float32))
    else:
        u = tl.dot(x, w, input_precision=FP32_DOT)
    return u + bk[None, :]


@triton.jit
def route_fwd_kernel(
    r_ptr, idx_ptr, count_ptr, W_ptr, b_ptr, D_ptr, v1_ptr,
    q_ptr, rout_ptr, z_ptr, logit_ptr, lse_ptr, onorm_ptr, token_ptr, reason_ptr,
    sids_ptr, len_ptr, fin_ptr, recon_ptr, resn_ptr, prevn_ptr, sv_ptr, slse_ptr, srec_ptr,
    N, K, d, dc, sids_stride, depth, eta, tau, eps, last,
    ROUNDS: tl.constexpr, HARD: tl.constexpr, NEED_W: tl.constexpr, NEED_ONORM: tl.constexpr,
    STACK: tl.constexpr, FP32_DOT: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
    BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr,
    SAVE: tl.constexpr = False, ACC: tl.constexpr = tl.float32,
):
    pid = tl.program_id(0)
    if STACK:
        n_rows = tl.load(count_ptr)
    else:
        n_rows = N
    if pid * BM < n_rows:
        rows = pid * BM + tl.arange(0, BM)
        rmask = rows < n_rows
        rows64 = rows.to(tl.int64)
        if STACK:
            item = tl.load(idx_ptr + rows64, mask=rmask, other=0).to(tl.int64)
        else:
            item = rows64
        offs_d = tl.arange(0, BD)
        offs_c = tl.arange(0, BC)
        dmask = offs_d < d
        cmask = offs_c < dc
        xmask = rmask[:, None] & dmask[None, :]
        x_ptrs = r_ptr + item[:, None] * d + offs_d[None, :]
        x = tl.load(x_ptrs, mask=xmask, other=0.0)
        if FP32_DOT == "tf32":
            x = _round_tf32(x)

        # Round 1: uniform weights, v₁ = r W̄ᵀ + b̄ (computed before the launch, [*, BC] float32).
        v = tl.load(v1_ptr + item[:, None] * BC + offs_c[None, :], mask=rmask[:, None], other=0.0)
        smask = rmask[:, None] & cmask[None, :]
        if SAVE:  # what the backward needs (route_bwd.py): v of every round, lse of every logit vector
            tl.store(sv_ptr + rows64[:, None] * (ROUNDS * dc) + offs_c[None, :], v, mask=smask)
        o = v * _squash_scale(tl.sum(v * v, 1))[:, None]
        S = o

        # Rounds 2..T: one pass over the capsules each, online softmax of a_k = u_k · S. Capsules
        # go two at a time: two independent vote GEMMs in flight, one rescale per pair. W is
        # padded to an even K; the pad capsule's logit is -inf.
        for _rnd in tl.static_range(1, ROUNDS):
            m = tl.full([BM], float("-inf"), ACC)
            l = tl.zeros([BM], ACC)
            acc = tl.zeros([BM, BC], ACC)
            for k in range(0, K, 2):
                u0 = _votes(x, W_ptr, b_ptr, k, offs_d, offs_c, BD, BC, FP32_DOT)
                u1 = _votes(x, W_ptr, b_ptr, k + 1, offs_d, offs_c, BD, BC, FP32_DOT)
                a0 = tl.sum(u0 * S, 1)
                a1 = tl.where(k + 1 < K, tl.sum(u1 * S, 1), float("-inf"))
                m_new = tl.maximum(m, tl.maximum(a0, a1))
                alpha = tl.exp(m - m_new)
                p0 = tl.exp(a0 - m_new)
                p1 = tl.exp(a1 - m_new)
                acc = acc * alpha[:, None] + p0[:, None] * u0 + p1[:, None] * u1
                l = l * alpha + p0 + p1
                m = m_new
            v = acc / l[:, None]
            if SAVE:
                tl.store(slse_ptr + rows64 * (ROUNDS + 1) + (_rnd - 1), m + tl.log(l), mask=rmask)
                tl.store(sv_ptr + rows64[:, None] * (ROUNDS * dc) + _rnd * dc + offs_c[None, :], v, mask=smask)
            o = v * _squash_scale(tl.sum(v * v, 1))[:, None]
            S += o

        # Final pass: c* = softmax(u · S), argmax, and the reconstruction.
        onorm = tl.sqrt(tl.sum(o * o, 1))
        m = tl.full([BM], float("-inf"), ACC)
        l = tl.zeros([BM], ACC)
        best = tl.zeros([BM], tl.int32)
        rec = tl.zeros([BM, BC], ACC)
        for k in range(0, K, 2):
            u0 = _votes(x, W_ptr, b_ptr, k, offs_d, offs_c, BD, BC, FP32_DOT)
            u1 = _votes(x, W_ptr, b_ptr, k + 1, offs_d, offs_c, BD, BC, FP32_DOT)
            a0 = tl.sum(u0 * S, 1)
            a1 = tl.where(k + 1 < K, tl.sum(u1 * S, 1), float("-inf"))
            if NEED_W:
                tl.store(logit_ptr + rows64 * K + k, a0, mask=rmask)
                tl.store(logit_ptr + rows64 * K + k + 1, a1, mask=rmask & (k + 1 < K))
            # Strict comparisons in capsule order: the first maximal capsule keeps the token.
            better0 = a0 > m
            m0 = tl.maximum(m, a0)
            better1 = a1 > m0
            best = tl.where(better1, k + 1, tl.where(better0, k, best))
            m_new = tl.maximum(m0, a1)
            alpha = tl.exp(m - m_new)
            p0 = tl.exp(a0 - m_new)
            p1 = tl.exp(a1 - m_new)
            l = l * alpha + p0 + p1
            if HARD:
                rec = tl.where(better1[:, None], u1, tl.where(better0[:, None], u0, rec))
            else:
                su0 = u0 * _squash_scale(tl.sum(u0 * u0, 1))[:, None]
                su1 = u1 * _squash_scale(tl.sum(u1 * u1, 1))[:, None]
                rec = rec * alpha[:, None] + p0[:, None] * su0 + p1[:, None] * su1
            m = m_new
        if HARD:
            rec = rec * _squash_scale(tl.sum(rec * rec, 1))[:, None]
        else:
            rec = rec / l[:, None]
        q = onorm / l  # c*_s = exp(a_s − max) / Σ = 1 / l
        if SAVE:
            tl.store(slse_ptr + rows64 * (ROUNDS + 1) + (ROUNDS - 1), m + tl.log(l), mask=rmask)
            tl.store(slse_ptr + rows64 * (ROUNDS + 1) + ROUNDS, 1.0 / l, mask=rmask)
            tl.store(srec_ptr + rows64[:, None] * dc + offs_c[None, :], rec, mask=smask)

        # z = D rec (D is [d, d_c]); r' = r − η z.
        dt = tl.load(D_ptr + offs_d[None, :] * dc + offs_c[:, None], mask=cmask[:, None] & dmask[None, :],
                     other=0.0)
        if FP32_DOT == "none":  # bf16: rec = hi + lo in bf16, two tensor-core products
            hi = rec.to(tl.bfloat16)
            lo = (rec - hi.to(tl.float32)).to(tl.bfloat16)
            z = tl.dot(hi, dt, tl.dot(lo, dt))
        elif FP32_DOT == "upcast":
            z = tl.dot(rec, dt.to(tl.float32))
        elif FP32_DOT == "fp64":
            z = tl.dot(rec, dt)
        else:
            z = tl.dot(rec, dt, input_precision="tf32x3")
        # r is read again rather than kept live in float32 through the passes (register pressure).
        xf = tl.load(x_ptrs, mask=xmask, other=0.0).to(ACC)
        rnew = xf - eta * z
        rnew = tl.where(xmask, rnew, 0.0)
        resn = tl.sqrt(tl.sum(rnew * rnew, 1))
        reason = tl.where(resn <= eps, 2, tl.where(last != 0, 3, 0))
        reason = tl.where(q >= tau, 1, reason)

        if NEED_W:
            tl.store(lse_ptr + rows64, m + tl.log(l), mask=rmask)
        if NEED_ONORM:
            tl.store(onorm_ptr + rows64, onorm, mask=rmask)
        tl.store(q_ptr + rows64, q, mask=rmask)
        tl.store(token_ptr + rows64, best.to(tl.int64), mask=rmask)
        tl.store(reason_ptr + rows64, reason.to(tl.int64), mask=rmask)
        zo = _out(z, rout_ptr, ROUND_BY_HAND)
        if STACK:
            # r' back into the residual buffer; Σ z in float32 from the input-dtype z (as the reference).
            tl.store(rout_ptr + item[:, None] * d + offs_d[None, :], _out(rnew, rout_ptr, ROUND_BY_HAND), mask=xmask)
            rc_ptrs = recon_ptr + item[:, None] * d + offs_d[None, :]
            tl.store(rc_ptrs, tl.load(rc_ptrs, mask=xmask, other=0.0) + zo.to(tl.float32), mask=xmask)
            tl.store(sids_ptr + item * sids_stride + depth, best.to(tl.int64), mask=rmask)
            stop = rmask & (reason != 0)
            tl.store(len_ptr + item, (depth + 1 + 0 * best).to(tl.int64), mask=stop)
            tl.store(fin_ptr + item, reason.to(tl.int64), mask=stop)
            tl.store(resn_ptr + rows64, resn, mask=rmask)
            tl.store(prevn_ptr + rows64, tl.sqrt(tl.sum(xf * xf, 1)), mask=rmask)
        else:
            tl.store(rout_ptr + rows64[:, None] * d + offs_d[None, :], _out(rnew, rout_ptr, ROUND_BY_HAND), mask=xmask)
            tl.store(z_ptr + rows64[:, None] * d + offs_d[None, :], zo, mask=xmask)


_WORKING: dict = {}  # (kernel tag, shapes, constexprs) -> the config that launched


def launch(kernel, grid_fn, args: tuple, consts: dict, cfg: dict, key: tuple, tail=None) -> dict:
    """Launch ``kernel`` with ``cfg`` (grid from ``grid_fn(cfg)``, last arguments from
    ``tail(cfg)``); if the compiled kernel needs more shared memory than the GPU has, retry with
    fewer pipeline stages, then smaller item tiles, and remember what worked. Forward and
    backward kernels share this loop and its cache (keys start with a per-kernel tag)."""
    cfg = dict(_WORKING.get(key, cfg))
    while True:
        try:
            kernel[grid_fn(cfg)](*args, *(tail(cfg) if tail else ()), **consts, **cfg)
            _WORKING[key] = cfg
            return cfg
        except triton.runtime.errors.OutOfResources:
            if cfg["num_stages"] > 1:
                cfg["num_stages"] -= 1
            elif cfg["BM"] > 16:
                cfg["BM"] //= 2
                cfg["num_warps"] = max(4, cfg["num_warps"] // 2)
            else:
                raise


def _launch(grid_rows: int, args: tuple, consts: dict, cfg: dict, key: tuple, group: int) -> None:
    """``route_fwd_kernel`` for capsules in pairs (group 2, the default), else the grouped schedule
    of route_fwd_grouped.py with its GROUP (its W and b packed by ``group_layer``)."""
    kernel = route_fwd_kernel
    if group != 2:
        from .route_fwd_grouped import route_fwd_grouped_kernel as kernel

        consts = dict(consts, GROUP=group)
    launch(kernel, lambda c: (triton.cdiv(grid_rows, c["BM"]),), args, consts, cfg, ("forward", group) + key)


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


SMEM_BUDGET = 220 * 1024  # of the H100's 227 KB per block, leaving room for layout scratch


def smem_estimate(bm: int, bd: int, bc: int, stages: int, elsize: int, group: int = 2) -> int:
    """Shared memory of one program: the r tile, then the pipelined W tiles or (after the loops,
    reusing that space) the z = D rec operands. A first guess: ``_launch`` retries smaller."""
    small = (bm * bc + bc * bd) * 4 if elsize == 4 else (2 * bm * bc + bc * bd) * 2
    return bm * bd * elsize + max(stages * group * bc * bd * elsize, small)  # W tiles come ``group`` at a time


GROUPS = (1, 2, 4, 8)  # capsules per vote GEMM: 2 is route_fwd_kernel, the others route_fwd_grouped.py


def _group() -> int:
    """CAPSID_TRITON_GROUP (capsules per vote GEMM, one of ``GROUPS``), default 2."""
    text = os.environ.get("CAPSID_TRITON_GROUP", "") or "2"
    if text not in tuple(map(str, GROUPS)):
        raise ValueError(f"CAPSID_TRITON_GROUP: expected one of {', '.join(map(str, GROUPS))}, got {text!r}; "
                         "unset it for the default (2)")
    return int(text)


def tile_config(d: int, dc: int, device_type: str, elsize: int = 2) -> dict:
    """Block sizes and launch settings (tiny tiles under the CPU interpreter). The committed
    bench/results/routing_sweep.json does not support them: until 2026-12-08 the sweep reused the
    first configuration that launched for every row (the launch cache), so they await a rerun of
    bench/routing.py --sweep. CAPSID_TRITON_BM / _WARPS / _STAGES override for sweeps, and
    CAPSID_TRITON_GROUP picks the schedule (``GROUP``: capsules per vote GEMM, also read under the
    interpreter so the CPU tests reach every schedule); callers pop ``GROUP`` before the launch."""
    bd, bc = _pow2(d), _pow2(dc)
    group = _group()
    if device_type != "cuda":
        return dict(BM=16, BD=bd, BC=bc, num_warps=4, num_stages=1, GROUP=group)
    # 128 x 64 float32 tiles in 8 warps fit the registers without spilling; wider capsules halve BM.
    bm = int(os.environ.get("CAPSID_TRITON_BM", 0)) or (128 if bc <= 64 and bd <= 128 else 64)
    warps = int(os.environ.get("CAPSID_TRITON_WARPS", 0)) or 8
    stages = int(os.environ.get("CAPSID_TRITON_STAGES", 0)) or 3
    while stages > 1 and smem_estimate(bm, bd, bc, stages, elsize, group) > SMEM_BUDGET:
        stages -= 1
    while bm > 16 and smem_estimate(bm, bd, bc, stages, elsize, group) > SMEM_BUDGET:
        bm //= 2
    if group != 2 and smem_estimate(bm, bd, bc, stages, elsize, group) > SMEM_BUDGET:
        # Smaller item tiles cannot shrink a group's W tile: say so before compiling (pairs keep the launch's fallback).
        need = smem_estimate(bm, bd, bc, stages, elsize, group) // 1024
        raise ValueError(f"CAPSID_TRITON_GROUP={group}: one group's W tile [{bd}, {group * bc}] needs {need} KiB of "
                         f"shared memory with d={d}, d_c={dc}, over the {SMEM_BUDGET // 1024} KiB budget; use a "
                         "smaller group")
    return dict(BM=bm, BD=bd, BC=bc, num_warps=warps, num_stages=stages, GROUP=group)


def fp32_dot(dtype: torch.dtype, tf32: bool, device_type: str = "cuda") -> str:
    """The vote GEMM's mode: bf16 tensor cores ("none"), tf32, or the exact-fp32 choice.

    Under TRITON_INTERPRET (CPU tensors) a bf16 dot is miscomputed by Triton's interpreter, so
    bf16 operands are upcast first: the same values, since bf16 products are exact in float32.
    """
    if dtype == torch.bfloat16:
        return "none" if device_type == "cuda" else "upcast"
    if dtype == torch.float64:  # float64 accumulation throughout (the backward's float64 tests)
        return "fp64"
    return "tf32" if tf32 else EXACT_FP32


def acc_dtype(dtype: torch.dtype):
    """The kernels' accumulation type: float64 for float64 inputs, else float32 (SPEC §2)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _round_by_hand(r: torch.Tensor) -> bool:
    return r.dtype == torch.bfloat16 and r.device.type != "cuda"


def round_tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to the nearest tf32 value (ties to even), as float32."""
    bits = t.contiguous().view(torch.int32)
    bits = (bits + (((bits >> 13) & 1) + 0xFFF)) & -0x2000
    return bits.view(torch.float32)


def pack_layer(W: torch.Tensor, b: torch.Tensor, BC: int, BD: int, tf32: bool = False):
    """The kernel's layout of one layer: W zero-padded to [K', BC, BD] (input dtype; K' = K rounded
    up to even, the kernel takes capsules in pairs), b to [K', BC] float32, and round 1's mean vote
    W̄ = mean_k W_k [BC, d], b̄ [BC] in float32. A copy of W per call (a few MB), so the vote loads
    need no masks. With ``tf32`` the packed W is rounded to tf32 (see ``_round_tf32``)."""
    k, dc, d = W.shape
    kp = k + (k % 2)
    cd = torch.float64 if W.dtype == torch.float64 else torch.float32
    Wp = W.new_zeros(kp, BC, BD)
    Wp[:k, :dc, :d] = round_tf32(W) if tf32 and W.dtype == torch.float32 else W
    bp = torch.zeros(kp, BC, dtype=cd, device=W.device)
    bp[:k, :dc] = b.to(cd)
    wbar = torch.zeros(BC, d, dtype=cd, device=W.device)
    wbar[:dc] = W.to(cd).mean(0)
    bbar = torch.zeros(BC, dtype=cd, device=W.device)
    bbar[:dc] = b.to(cd).mean(0)
    return Wp, bp, wbar, bbar


def first_round_votes(r: torch.Tensor, wbar: torch.Tensor, bbar: torch.Tensor) -> torch.Tensor:
    """v₁ = r W̄ᵀ + b̄ [N, BC] in exact float32 (tf32 off whatever the global setting)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return torch.addmm(bbar, r.to(bbar.dtype), wbar.t())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def route_forward(r, W, b, D, rounds: int, hard: bool, eta: float, tau: float, eps: float, last: bool,
                  need_weights: bool, need_onorm: bool, tf32: bool, save: bool = False):
    """Launch the fused layer; returns (q, r', z, c* or empty, ||o|| or empty, token, reason).

    With ``save`` three more: what the fused backward (route_bwd.py) recomputes from, O(N·T·d_c):
    v of every round [N, T, d_c], the log-sum-exp of every round's logits plus the winner's c*
    [N, T + 1] (columns lse(a¹) .. lse(a^T), c*_s), and the reconstruction before D [N, d_c].
    """
    r, W, b, D = (t.contiguous() for t in (r, W, b, D))
    n, d = r.shape
    k, dc = W.shape[0], W.shape[1]
    dev = r.device
    f32 = torch.float64 if r.dtype == torch.float64 else torch.float32
    q = torch.empty(n, dtype=f32, device=dev)
    rout = torch.empty_like(r)
    z = torch.empty_like(r)
    token = torch.empty(n, dtype=torch.int64, device=dev)
    reason = torch.empty(n, dtype=torch.int64, device=dev)
    logits = torch.empty((n, k) if need_weights else (0,), dtype=f32, device=dev)
    lse = torch.empty(n if need_weights else 0, dtype=f32, device=dev)
    onorm = torch.empty(n if need_onorm else 0, dtype=f32, device=dev)
    sv = torch.empty((n, rounds, dc) if save else (0,), dtype=f32, device=dev)
    slse = torch.empty((n, rounds + 1) if save else (0,), dtype=f32, device=dev)
    srec = torch.empty((n, dc) if save else (0,), dtype=f32, device=dev)
    if n > 0:
        cfg = tile_config(d, dc, dev.type, r.element_size())
        group = cfg.pop("GROUP")
        Wp, bp, wbar, bbar = pack_layer(W, b, cfg["BC"], cfg["BD"], tf32)
        if group != 2:
            from .route_fwd_grouped import group_layer

            Wp, bp = group_layer(Wp, bp, k, group)
        v1 = first_round_votes(r, wbar, bbar)
        dummy = token
        consts = dict(ROUNDS=rounds, HARD=hard, NEED_W=need_weights, NEED_ONORM=need_onorm, STACK=False,
                      FP32_DOT=fp32_dot(r.dtype, tf32, dev.type), ROUND_BY_HAND=_round_by_hand(r),
                      SAVE=save, ACC=acc_dtype(r.dtype))
        args = (r, dummy, dummy, Wp, bp, D, v1, q, rout, z, logits, lse, onorm, token, reason,
                dummy, dummy, dummy, q, q, q, sv if save else q, slse if save else q, srec if save else q,
                n, k, d, dc, 0, 0, float(eta), float(tau), float(eps), int(bool(last)))
        _launch(n, args, consts, cfg, (d, dc, r.dtype, tuple(consts.items())), group)
    weights = torch.exp(logits - lse[:, None]) if need_weights else logits
    if save:
        return q, rout, z, weights, onorm, token, reason, sv, slse, srec
    return q, rout, z, weights, onorm, token, reason


def route_stack_depth(R, idx, count, packed, D, *, capsules, rounds, hard, eta, tau, eps, last, depth,
                      sids, lengths, reasons, recon, need_weights, tf32, rec):
    """One depth of the tokenizer on the rows ``idx[:count]`` (count stays on the device).

    ``rec`` holds this depth's compact records (q, onorm, token, reason, resn, prevn, logits, lse),
    sized for the whole chunk; rows past count are left unwritten.
    """
    """``packed`` is ``pack_layer``'s output for this depth (made once per tokenize call)."""
    Wp, bp, wbar, bbar = packed
    cap, d = idx.shape[0], R.shape[1]
    k, dc = capsules, D.shape[1]
    if cap == 0:
        return
    cfg = tile_config(d, dc, R.device.type, R.element_size())
    group = cfg.pop("GROUP")
    if group != 2:  # the stack packs pairs once; another schedule regroups them per depth (a few MB)
        from .route_fwd_grouped import group_layer

        Wp, bp = group_layer(Wp, bp, k, group)
    v1 = first_round_votes(R, wbar, bbar)  # for every row of the chunk: the kernel reads rows idx
    consts = dict(ROUNDS=rounds, HARD=hard, NEED_W=need_weights, NEED_ONORM=True, STACK=True,
                  FP32_DOT=fp32_dot(R.dtype, tf32, R.device.type), ROUND_BY_HAND=_round_by_hand(R))
    args = (R, idx, count, Wp, bp, D, v1,
            rec["confidence"], R, R, rec["logits"], rec["lse"], rec["onorm"], rec["token"], rec["stop_reason"],
            sids, lengths, reasons, recon, rec["residual_norm"], rec["prev_residual_norm"], R, R, R,
            cap, k, d, dc, sids.stride(0), depth, float(eta), float(tau), float(eps), int(bool(last)))
    _launch(cap, args, consts, cfg, (d, dc, R.dtype, tuple(consts.items())), group)
