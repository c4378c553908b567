"""The fused routing forward (SPEC §2) with G capsules per vote GEMM: route_fwd.py's schedule, regrouped.

``route_fwd_kernel`` takes capsules two at a time, each one tensor-core product of the item tile
[BM, d] with W_kᵀ [d, d_c]: with d_c = 64 that is N = 64, small for Hopper's wgmma, and every pair
costs one online-softmax rescale of the [BM, d_c] accumulator. Here W comes packed as
[K'/G, BD, G·BC] (``group_layer``), so one ``tl.dot(x, W_g)`` gives the votes of G capsules
[BM, G·BC]; viewed as [BM, G, BC] they give G logits a = Σ_c u·S at once, and the online softmax
takes one update per group:

    m' = max(m, max_g a_g)      p_g = exp(a_g − m')      acc = acc · exp(m − m') + Σ_g p_g u_g

The final pass keeps the token as route_fwd_kernel does, the first maximal capsule in capsule order:
within a group ``tl.max(..., return_indices=True)`` returns the first maximum (its ties break to the
lower index on the GPU and under the interpreter), across groups a strict > keeps the earlier group.
Pad capsules (K' = K rounded up to a multiple of G) have zero W and b, so their votes are exactly 0,
and logit −inf, so their weight is exactly 0; the first capsule of every group is a real one, so the
running max is finite after the first group.

Everything else (round 1 from v₁, the SAVE records, z = D rec, r', the stop reason, stack mode, the
precision rules) is route_fwd_kernel's, written out the same way so that the two kernels read side by
side. ``route_fwd.route_forward`` and ``route_stack_depth`` launch this kernel when
CAPSID_TRITON_GROUP is 1, 4 or 8 (``tile_config``); which G wins is a measurement (bench/routing.py
--sweep --groups), not a rule.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .jit_math import _out, _round_tf32, _squash_scale


@triton.jit
def _group_votes(x, W_ptr, b_ptr, g, offs_d, offs_n, BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr,
                 GROUP: tl.constexpr, FP32_DOT: tl.constexpr):
    """The votes of capsules gG .. gG + G − 1 for the tile, [BM, G, BC] float32: one GEMM of the tile
    with W_g [BD, G·BC] (packed and zero-padded by ``group_layer``: unmasked loads, no transpose),
    column j = i·BC + c being component c of capsule gG + i."""
    w = tl.load(W_ptr + g * (BD * GROUP * BC) + offs_d[:, None] * (GROUP * BC) + offs_n[None, :])
    bg = tl.load(b_ptr + g * (GROUP * BC) + offs_n)
    if FP32_DOT == "none" or FP32_DOT == "fp64":
        u = tl.dot(x, w)
    elif FP32_DOT == "upcast":  # bf16 under the CPU interpreter, whose bf16 dot is wrong
        u = tl.dot(x.to(tl.float32), w.to(tl.float32))
    else:
        u = tl.dot(x, w, input_precision=FP32_DOT)
    return tl.reshape(u + bg[None, :], (BM, GROUP, BC))


@triton.jit
def route_fwd_grouped_kernel(
    r_ptr, idx_ptr, count_ptr, W_ptr, b_ptr, D_ptr, v1_ptr,
    q_ptr, rout_ptr, z_ptr, logit_ptr, lse_ptr, onorm_ptr, token_ptr, reason_ptr,
    sids_ptr, len_ptr, fin_ptr, recon_ptr, resn_ptr, prevn_ptr, sv_ptr, slse_ptr, srec_ptr,
    N, K, d, dc, sids_stride, depth, eta, tau, eps, last,
    ROUNDS: tl.constexpr, HARD: tl.constexpr, NEED_W: tl.constexpr, NEED_ONORM: tl.constexpr,
    STACK: tl.constexpr, FP32_DOT: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
    BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr, GROUP: tl.constexpr,
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
        offs_g = tl.arange(0, GROUP)
        offs_n = tl.arange(0, GROUP * BC)
        dmask = offs_d < d
        cmask = offs_c < dc
        xmask = rmask[:, None] & dmask[None, :]
        x_ptrs = r_ptr + item[:, None] * d + offs_d[None, :]
        x = tl.load(x_ptrs, mask=xmask, other=0.0)
        if FP32_DOT == "tf32":
            x = _round_tf32(x)
        n_groups = (K + GROUP - 1) // GROUP

        # Round 1: uniform weights, v₁ = r W̄ᵀ + b̄ (computed before the launch, [*, BC] float32).
        v = tl.load(v1_ptr + item[:, None] * BC + offs_c[None, :], mask=rmask[:, None], other=0.0)
        smask = rmask[:, None] & cmask[None, :]
        if SAVE:  # what the backward needs (route_bwd.py): v of every round, lse of every logit vector
            tl.store(sv_ptr + rows64[:, None] * (ROUNDS * dc) + offs_c[None, :], v, mask=smask)
        o = v * _squash_scale(tl.sum(v * v, 1))[:, None]
        S = o

        # Rounds 2..T: one pass over the capsule groups each, one online-softmax update per group.
        for _rnd in tl.static_range(1, ROUNDS):
            m = tl.full([BM], float("-inf"), ACC)
            l = tl.zeros([BM], ACC)
            acc = tl.zeros([BM, BC], ACC)
            for g in range(0, n_groups):
                u = _group_votes(x, W_ptr, b_ptr, g, offs_d, offs_n, BM, BD, BC, GROUP, FP32_DOT)
                real = (g * GROUP + offs_g) < K
                a = tl.where(real[None, :], tl.sum(u * S[:, None, :], 2), float("-inf"))
                m_new = tl.maximum(m, tl.max(a, 1))
                alpha = tl.exp(m - m_new)
                p = tl.exp(a - m_new[:, None])
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * u, 1)
                l = l * alpha + tl.sum(p, 1)
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
        for g in range(0, n_groups):
            u = _group_votes(x, W_ptr, b_ptr, g, offs_d, offs_n, BM, BD, BC, GROUP, FP32_DOT)
            cap = g * GROUP + offs_g
            real = cap < K
            a = tl.where(real[None, :], tl.sum(u * S[:, None, :], 2), float("-inf"))
            if NEED_W:
                tl.store(logit_ptr + rows64[:, None] * K + cap[None, :], a, mask=rmask[:, None] & real[None, :])
            # The first maximum inside the group, then a strict > across groups: the first maximal
            # capsule in capsule order keeps the token.
            a_max, i_max = tl.max(a, 1, return_indices=True, return_indices_tie_break_left=True)
            better = a_max > m
            best = tl.where(better, g * GROUP + i_max, best)
            m_new = tl.maximum(m, a_max)
            alpha = tl.exp(m - m_new)
            p = tl.exp(a - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            if HARD:
                winner = tl.sum(tl.where((offs_g[None, :] == i_max[:, None])[:, :, None], u, 0.0), 1)
                rec = tl.where(better[:, None], winner, rec)
            else:
                su = u * _squash_scale(tl.sum(u * u, 2))[:, :, None]
                rec = rec * alpha[:, None] + tl.sum(p[:, :, None] * su, 1)
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


def group_layer(Wp: torch.Tensor, bp: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pack_layer``'s W [K'', BC, BD] and b [K'', BC] (capsules in pairs) regrouped for this kernel:
    W as [K'/G, BD, G·BC] (W_gᵀ of each group, capsule-major columns) and b as [K'/G, G·BC], K' = k
    rounded up to a multiple of ``group``, the pad capsules zero (the kernel gives them logit −inf)."""
    bc, bd = Wp.shape[1], Wp.shape[2]
    kp = -(-k // group) * group
    Wg = Wp.new_zeros(kp, bc, bd)
    Wg[:k] = Wp[:k]
    bg = bp.new_zeros(kp, bc)
    bg[:k] = bp[:k]
    Wg = Wg.view(kp // group, group, bc, bd).permute(0, 3, 1, 2).reshape(kp // group, bd, group * bc)
    return Wg.contiguous(), bg.view(kp // group, group * bc)
