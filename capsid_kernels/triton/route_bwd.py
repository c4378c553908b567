"""Fused backward of one routing layer (SPEC §2): exact gradients w.r.t. r, W, b and D.

Imports Triton; loaded on first use by ``capsid_kernels.ops.route``. The forward
(``route_forward(..., save=True)``) leaves O(N·T·d_c) behind: v of every round, the log-sum-exp
of every round's logits (and c*_s), and the reconstruction before D. Votes are never stored:
every pass below recomputes ``u_k = W_k r + b_k`` tile by tile on the tensor cores.

The math (a^t = u·S^t with S^t = o¹ + … + o^t, c^{t+1} = softmax(a^t), c* = softmax(a^T)):

* g_rec = Dᵀ(g_z − η g_r'), and β = Σ_k c*_k g_c*_k is known per item before any pass
  (Σ c* g_w + g_rec·rec in soft mode + g_q·q), so g_a^T_k = c*_k (g_c*_k − β) needs one capsule at a time.
* G_t = ∂L/∂S^t: G_T = Σ_k g_a^T_k u_k; o^t gets G_t (plus the ||o^T|| term for t = T);
  g_v^t = squash'(v^t)ᵀ g_o^t; then g_a^{t−1}_k = c^t_k (u_k·g_v^t − v^t·g_v^t) and
  G_{t−1} = G_t + Σ_k g_a^{t−1}_k u_k. Each step of this chain is one pass over the capsules.
* Round 1's weights are uniform, so its share of g_u_k is g_v¹/K for every k: it is added with
  small GEMMs after the kernels (as the forward's first round uses the mean vote).

Kernels:

* ``route_bwd_items_kernel`` (one program per tile of BM items): pass F (final logits → G_T), one
  pass per round T..3 (G_{t−1}), and a last pass that forms the whole g_u_k (every round but the
  first, and the final softmax/squash terms) and accumulates dr += g_u_k W_k. T vote passes + one
  more GEMM. Writes dr and g_v^t of every round.
* ``route_bwd_weights_kernel`` (one program per capsule and item split): W_k stays on chip; the
  program walks its items, recomputes u_k and g_u_k from the saved per-item state and accumulates
  dW_k += g_u_kᵀ r and db_k += Σ g_u_k in registers; one partial per split.

Determinism: no atomics anywhere. Weight-gradient partials [splits, K, d_c, d] are summed in a
fixed order (``torch.sum`` over the split axis), dD and the first-round terms are cuBLAS GEMMs.
So the gradients are bit-identical run to run on one GPU; this is the only mode (there is no
faster atomic variant to choose).

Precision: as the forward. bf16 inputs: bf16 tensor-core products; the float32 operand of the
dr and dW GEMMs (g_u) is split into two bf16 terms (16 significant bits; the gradients are
returned in bf16). float32: "tf32x3" (or CAPSID_TRITON_EXACT_FP32), or tf32 with precision="tf32".
float64 (CPU interpreter tests): float64 throughout.

Measured (H100 80GB, torch 2.11, Triton 3.6, 2026-11-23; bench/routing.py --train, default preset,
N = 65,536, T = 3, one layer forward + backward to r, W, b, D; bench/results/routing_train.json):
bf16 488 ns per item-layer, 4.3x eager autograd and 2.95x torch.compile, peak 491 MiB (2.9% of
eager's 17.2 GB). float32 1559 ns, 1.34x eager but 0.92x compile (the tf32x3 products: 8 GEMM
passes of three tf32 products each, and register pressure of float32 operands), peak 2.9% of eager.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .jit_math import _round_tf32, _squash_scale
from .route_fwd import _pow2, acc_dtype, fp32_dot, launch as _launch, pack_layer


@triton.jit
def _vote(x, w, bk, FP32_DOT: tl.constexpr):
    """u = x wᵀ + b for the tile; ``w`` is W_k as [BC, BD] (padded columns of u are 0)."""
    wt = tl.trans(w)
    if FP32_DOT == "none" or FP32_DOT == "fp64":
        u = tl.dot(x, wt)
    elif FP32_DOT == "upcast":
        u = tl.dot(x.to(tl.float32), wt.to(tl.float32))
    else:
        u = tl.dot(x, wt, input_precision=FP32_DOT)
    return u + bk[None, :]


@triton.jit
def _mm(a, b, FP32_DOT: tl.constexpr):
    """a @ b with ``a`` an accumulation-precision operand and ``b`` in the input dtype."""
    if FP32_DOT == "none":  # bf16: a = hi + lo in bf16 (16 significant bits), two products
        hi = a.to(tl.bfloat16)
        lo = (a - hi.to(tl.float32)).to(tl.bfloat16)
        return tl.dot(hi, b, tl.dot(lo, b))
    elif FP32_DOT == "upcast":
        return tl.dot(a, b.to(tl.float32))
    elif FP32_DOT == "fp64":
        return tl.dot(a, b)
    elif FP32_DOT == "tf32":
        return tl.dot(_round_tf32(a), b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision=FP32_DOT)


@triton.jit
def _squash_bwd(g, z):
    """Gradient of Σ g·squash(z) w.r.t. z, row by row (reference: ``squash_backward``)."""
    n2 = tl.sum(z * z, 1)
    n = tl.sqrt(n2)
    den = 0.5 + n2
    safe = tl.where(n > 0, n, 1.0)
    coef = tl.where(n > 0, (0.5 - n2) / (den * den * safe), 0.0)
    return (n / den)[:, None] * g + (coef * tl.sum(z * g, 1))[:, None] * z


@triton.jit
def _final_gu(u, k, ST, lseT, grec, beta, gqo, tok, gwk, HARD: tl.constexpr):
    """Capsule k's share of g_u from the final softmax and the reconstruction, and g_a^T_k."""
    cT = tl.exp(tl.sum(u * ST, 1) - lseT)
    n2 = tl.sum(u * u, 1)
    n = tl.sqrt(n2)
    den = 0.5 + n2
    f = n / den
    coef = tl.where(n > 0, (0.5 - n2) / (den * den * tl.where(n > 0, n, 1.0)), 0.0)
    ug = tl.sum(u * grec, 1)
    win = tok == k
    gc = gwk + tl.where(win, gqo, 0.0)
    if HARD:  # rec = squash(u_s): only the winner, with no dependence on c*
        wsq = tl.where(win, 1.0, 0.0)
    else:  # rec = Σ c*_k squash(u_k)
        gc += f * ug
        wsq = cT
    gaT = cT * (gc - beta)
    gu = gaT[:, None] * ST + (wsq * f)[:, None] * grec + (wsq * coef * ug)[:, None] * u
    return gu, gaT


@triton.jit
def _round_gu(u, Sp, gv, lp, vg):
    """Round t's share of g_u (t ≥ 2): c^t_k g_v^t + g_a^{t−1}_k S^{t−1}, and g_a^{t−1}_k."""
    c = tl.exp(tl.sum(u * Sp, 1) - lp)
    ga = c * (tl.sum(u * gv, 1) - vg)
    return c[:, None] * gv + ga[:, None] * Sp, ga


@triton.jit
def _load_rows(ptr, rows64, rmask, offs_c, cmask, stride, col):
    """[BM, BC] from a row-major per-item buffer: row n, columns col .. col + d_c (zero padded)."""
    return tl.load(ptr + rows64[:, None] * stride + col + offs_c[None, :], mask=rmask[:, None] & cmask[None, :],
                   other=0.0)


@triton.jit
def route_bwd_items_kernel(
    r_ptr, W_ptr, b_ptr, sv_ptr, slse_ptr, tok_ptr, gw_ptr, grec_ptr, beta_ptr, gqo_ptr, gon_ptr,
    dr_ptr, gv_ptr, ss_ptr, vg_ptr,
    N, K, d, dc,
    ROUNDS: tl.constexpr, HARD: tl.constexpr, HAS_GW: tl.constexpr, FP32_DOT: tl.constexpr,
    ACC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BD)
    offs_c = tl.arange(0, BC)
    dmask = offs_d < d
    cmask = offs_c < dc
    smask = rmask[:, None] & cmask[None, :]
    tstride = ROUNDS * dc
    x = tl.load(r_ptr + rows64[:, None] * d + offs_d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
    if FP32_DOT == "tf32":
        x = _round_tf32(x)
    # S^t = o¹ + … + o^t from the saved v^t; written out for the weight kernel.
    ST = tl.zeros([BM, BC], ACC)
    vT = ST
    for j in tl.static_range(0, ROUNDS):
        vT = _load_rows(sv_ptr, rows64, rmask, offs_c, cmask, tstride, j * dc)
        ST += vT * _squash_scale(tl.sum(vT * vT, 1))[:, None]
        tl.store(ss_ptr + rows64[:, None] * tstride + j * dc + offs_c[None, :], ST, mask=smask)
    lseT = tl.load(slse_ptr + rows64 * (ROUNDS + 1) + (ROUNDS - 1), mask=rmask, other=0.0)
    grec = _load_rows(grec_ptr, rows64, rmask, offs_c, cmask, dc, 0)
    beta = tl.load(beta_ptr + rows64, mask=rmask, other=0.0)
    gqo = tl.load(gqo_ptr + rows64, mask=rmask, other=0.0)
    gon = tl.load(gon_ptr + rows64, mask=rmask, other=0.0)
    tok = tl.load(tok_ptr + rows64, mask=rmask, other=0).to(tl.int32)
    # ||o^T|| (the q and ||o|| outputs) adds gon · o^T / ||o^T|| to o^T's gradient.
    oT = vT * _squash_scale(tl.sum(vT * vT, 1))[:, None]
    on = tl.sqrt(tl.sum(oT * oT, 1))
    gon_vec = (gon / tl.where(on > 0, on, 1.0))[:, None] * oT
    w_base = W_ptr + offs_c[:, None] * BD + offs_d[None, :]

    # Pass F: the final softmax and reconstruction terms; G_T = Σ_k g_a^T_k u_k.
    dr = tl.zeros([BM, BD], ACC)
    G = tl.zeros([BM, BC], ACC)
    for k in range(0, K):
        w = tl.load(w_base + k * (BC * BD))
        u = _vote(x, w, tl.load(b_ptr + k * BC + offs_c), FP32_DOT)
        if HAS_GW:
            gwk = tl.load(gw_ptr + rows64 * K + k, mask=rmask, other=0.0)
        else:
            gwk = tl.zeros([BM], ACC)
        gu, ga = _final_gu(u, k, ST, lseT, grec, beta, gqo, tok, gwk, HARD)
        G += ga[:, None] * u
        dr += _mm(tl.where(rmask[:, None], gu, 0.0), w, FP32_DOT)
    go = G + gon_vec
    # Rounds T..2: g_v^t, then one pass for round t's terms and G_{t−1} = G_t + Σ_k g_a^{t−1}_k u_k.
    for jj in tl.static_range(0, ROUNDS - 1):
        t = ROUNDS - jj
        vt = _load_rows(sv_ptr, rows64, rmask, offs_c, cmask, tstride, (t - 1) * dc)
        gv = _squash_bwd(go, vt)
        vg = tl.sum(vt * gv, 1)
        tl.store(gv_ptr + rows64[:, None] * tstride + (t - 1) * dc + offs_c[None, :], gv, mask=smask)
        tl.store(vg_ptr + rows64 * ROUNDS + (t - 1), vg, mask=rmask)
        Sp = _load_rows(ss_ptr, rows64, rmask, offs_c, cmask, tstride, (t - 2) * dc)
        lp = tl.load(slse_ptr + rows64 * (ROUNDS + 1) + (t - 2), mask=rmask, other=0.0)
        for k in range(0, K):
            w = tl.load(w_base + k * (BC * BD))
            u = _vote(x, w, tl.load(b_ptr + k * BC + offs_c), FP32_DOT)
            gu, ga = _round_gu(u, Sp, gv, lp, vg)
            G += ga[:, None] * u
            dr += _mm(tl.where(rmask[:, None], gu, 0.0), w, FP32_DOT)
        go = G
    v1 = _load_rows(sv_ptr, rows64, rmask, offs_c, cmask, tstride, 0)
    tl.store(gv_ptr + rows64[:, None] * tstride + offs_c[None, :], _squash_bwd(go, v1), mask=smask)
    tl.store(dr_ptr + rows64[:, None] * d + offs_d[None, :], dr, mask=rmask[:, None] & dmask[None, :])


@triton.jit
def route_bwd_weights_kernel(
    r_ptr, W_ptr, b_ptr, ss_ptr, slse_ptr, tok_ptr, gw_ptr, grec_ptr, beta_ptr, gqo_ptr, gv_ptr, vg_ptr,
    pdw_ptr, pdb_ptr,
    N, K, KP, d, dc, tiles_per_split,
    ROUNDS: tl.constexpr, HARD: tl.constexpr, HAS_GW: tl.constexpr, FP32_DOT: tl.constexpr,
    ACC: tl.constexpr, PAIR: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BC: tl.constexpr,
):
    """One program per capsule (PAIR: per two capsules, sharing every per-item load) and item split."""
    if PAIR:
        k0 = 2 * tl.program_id(0)
    else:
        k0 = tl.program_id(0)
    k1 = k0 + 1  # with PAIR; W is padded to an even K, a pad capsule's partial is never read
    split = tl.program_id(1)
    offs_d = tl.arange(0, BD)
    offs_c = tl.arange(0, BC)
    dmask = offs_d < d
    cmask = offs_c < dc
    w_off = offs_c[:, None] * BD + offs_d[None, :]
    w0 = tl.load(W_ptr + k0 * (BC * BD) + w_off)
    b0 = tl.load(b_ptr + k0 * BC + offs_c)
    acc0 = tl.zeros([BC, BD], ACC)
    accb0 = tl.zeros([BC], ACC)
    if PAIR:
        w1 = tl.load(W_ptr + k1 * (BC * BD) + w_off)
        b1 = tl.load(b_ptr + k1 * BC + offs_c)
        acc1 = tl.zeros([BC, BD], ACC)
        accb1 = tl.zeros([BC], ACC)
    tstride = ROUNDS * dc
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, tl.cdiv(N, BM))
    for tile in range(first, last):
        rows = tile * BM + tl.arange(0, BM)
        rmask = rows < N
        rows64 = rows.to(tl.int64)
        x = tl.load(r_ptr + rows64[:, None] * d + offs_d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
        if FP32_DOT == "tf32":
            x = _round_tf32(x)
        ST = _load_rows(ss_ptr, rows64, rmask, offs_c, cmask, tstride, (ROUNDS - 1) * dc)
        lseT = tl.load(slse_ptr + rows64 * (ROUNDS + 1) + (ROUNDS - 1), mask=rmask, other=0.0)
        grec = _load_rows(grec_ptr, rows64, rmask, offs_c, cmask, dc, 0)
        beta = tl.load(beta_ptr + rows64, mask=rmask, other=0.0)
        gqo = tl.load(gqo_ptr + rows64, mask=rmask, other=0.0)
        tok = tl.load(tok_ptr + rows64, mask=rmask, other=0).to(tl.int32)
        # g_u of the capsule(s): final terms, then each round t ≥ 2 (its vectors loaded once for both).
        u0 = _vote(x, w0, b0, FP32_DOT)
        if HAS_GW:
            gw0 = tl.load(gw_ptr + rows64 * K + k0, mask=rmask, other=0.0)
        else:
            gw0 = tl.zeros([BM], ACC)
        gu0, _ga0 = _final_gu(u0, k0, ST, lseT, grec, beta, gqo, tok, gw0, HARD)
        if PAIR:
            u1 = _vote(x, w1, b1, FP32_DOT)
            if HAS_GW:
                gw1 = tl.load(gw_ptr + rows64 * K + k1, mask=rmask & (k1 < K), other=0.0)
            else:
                gw1 = tl.zeros([BM], ACC)
            gu1, _ga1 = _final_gu(u1, k1, ST, lseT, grec, beta, gqo, tok, gw1, HARD)
        for j in tl.static_range(0, ROUNDS - 1):  # round t = j + 2
            Sp = _load_rows(ss_ptr, rows64, rmask, offs_c, cmask, tstride, j * dc)
            gv = _load_rows(gv_ptr, rows64, rmask, offs_c, cmask, tstride, (j + 1) * dc)
            lp = tl.load(slse_ptr + rows64 * (ROUNDS + 1) + j, mask=rmask, other=0.0)
            vg = tl.load(vg_ptr + rows64 * ROUNDS + (j + 1), mask=rmask, other=0.0)
            part0, _gr0 = _round_gu(u0, Sp, gv, lp, vg)
            gu0 += part0
            if PAIR:
                part1, _gr1 = _round_gu(u1, Sp, gv, lp, vg)
                gu1 += part1
        gu0 = tl.where(rmask[:, None], gu0, 0.0)
        acc0 += _mm(tl.trans(gu0), x, FP32_DOT)
        accb0 += tl.sum(gu0, 0)
        if PAIR:
            gu1 = tl.where(rmask[:, None], gu1, 0.0)
            acc1 += _mm(tl.trans(gu1), x, FP32_DOT)
            accb1 += tl.sum(gu1, 0)
    base = split.to(tl.int64) * KP + k0
    tl.store(pdw_ptr + base * (BC * BD) + w_off, acc0)
    tl.store(pdb_ptr + base * BC + offs_c, accb0)
    if PAIR:
        tl.store(pdw_ptr + (base + 1) * (BC * BD) + w_off, acc1)
        tl.store(pdb_ptr + (base + 1) * BC + offs_c, accb1)


def bwd_config(d: int, dc: int, dtype: torch.dtype, device_type: str) -> dict:
    """First-choice tiles of the two backward kernels (tiny tiles under the CPU interpreter);
    ``_launch`` shrinks them when the compiled kernel needs more shared memory than the GPU has.
    CAPSID_BWD_BM / _WARPS / _STAGES / _PAIR override for sweeps."""
    bd, bc = _pow2(d), _pow2(dc)
    if device_type != "cuda":
        return dict(BM=16, BD=bd, BC=bc, num_warps=4, num_stages=1, PAIR=True)

    def env(name, default):  # CAPSID_BWD_<NAME>_BF16 / _F32 first, then CAPSID_BWD_<NAME>
        tag = "BF16" if dtype == torch.bfloat16 else "F32"
        return os.environ.get(f"CAPSID_BWD_{name}_{tag}", os.environ.get(f"CAPSID_BWD_{name}", default))

    # Measured on an H100 (bench/route_train_sweep.py, 2026-11-23): bf16 64 x 8 warps x 2 stages with
    # capsule pairs; float32 (tf32x3) 32 x 4 warps x 1 stage (1578 ns/item-layer against 3243 at
    # 64 x 8). With d_c = 16 (BC = 16), 8 warps faulted (illegal address, Triton 3.6), 4 did not.
    wide = bc > 64 or bd > 128
    bf16 = dtype == torch.bfloat16
    bm = int(env("BM", 64 if bf16 and not wide else 32))
    warps = int(env("WARPS", 8 if bm >= 64 and bc >= 32 else 4))
    stages = int(env("STAGES", 2 if bf16 else 1))
    pair = env("PAIR", "1" if dtype == torch.bfloat16 and not wide else "0") == "1"
    return dict(BM=bm, BD=bd, BC=bc, num_warps=warps, num_stages=stages, PAIR=pair)


def weight_splits(n_tiles: int, programs: int, device: torch.device) -> int:
    """Item splits of the weight kernel: enough programs for two waves on the GPU. A function of
    (N, K, GPU) only, so the summation order, and the result, are the same run to run."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(n_tiles, triton.cdiv(2 * sms, max(programs, 1))))


def _exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in the accumulation dtype with tf32 off (small GEMMs of the glue)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return a @ b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def route_backward(r, W, b, D, sv, slse, srec, token, weights, g_q, g_res, g_z, g_w, g_onorm,
                   rounds: int, hard: bool, eta: float, tf32: bool):
    """Gradients (dr, dW, db, dD) of one routing layer from the forward's saved state.

    ``weights`` is c* [N, K] when ``g_w`` is given (else unused); any g_* may be None.
    """
    r, W, b, D = (t.contiguous() for t in (r, W, b, D))
    n, d = r.shape
    k, dc = W.shape[0], W.shape[1]
    cd = torch.float64 if r.dtype == torch.float64 else torch.float32
    dev = r.device
    if n == 0 or all(g is None for g in (g_q, g_res, g_z, g_w, g_onorm)):
        return torch.zeros_like(r), torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(D)

    def per_item(g):
        return torch.zeros(n, dtype=cd, device=dev) if g is None else g.to(cd)

    # Per-item glue, O(N·(d + K)): g_rec, β, and the q / ||o|| terms.
    gzt = torch.zeros(n, d, dtype=cd, device=dev)
    if g_z is not None:
        gzt += g_z.to(cd)
    if g_res is not None:
        gzt -= eta * g_res.to(cd)
    grec = _exact(gzt, D.to(cd)).contiguous()
    vT = sv[:, rounds - 1]
    nT2 = (vT * vT).sum(1)
    onorm = nT2 / (0.5 + nT2)  # ||squash(v)|| = ||v||² / (0.5 + ||v||²)
    cs = slse[:, rounds]
    gq, gon = per_item(g_q), per_item(g_onorm)
    gqo = (gq * onorm).contiguous()
    gon_t = (gon + gq * cs).contiguous()
    beta = gq * cs * onorm
    if not hard:
        beta = beta + (grec * srec).sum(1)
    if g_w is not None:
        beta = beta + (weights.to(cd) * g_w.to(cd)).sum(1)
        gw = g_w.to(cd).contiguous()
    beta = beta.contiguous()

    cfg = bwd_config(d, dc, r.dtype, dev.type)
    bd, bc, pair = cfg["BD"], cfg["BC"], cfg.pop("PAIR")
    Wp, bp, wbar, _bbar = pack_layer(W, b, bc, bd, tf32)
    kp = Wp.shape[0]  # K rounded up to even
    consts = dict(ROUNDS=rounds, HARD=hard, HAS_GW=g_w is not None, FP32_DOT=fp32_dot(r.dtype, tf32, dev.type),
                  ACC=acc_dtype(r.dtype))
    gwp = gw if g_w is not None else beta
    dr = torch.empty(n, d, dtype=cd, device=dev)
    gv = torch.empty(n, rounds, dc, dtype=cd, device=dev)
    ss = torch.empty(n, rounds, dc, dtype=cd, device=dev)
    vg = torch.empty(n, rounds, dtype=cd, device=dev)
    key = (d, dc, r.dtype, tuple(consts.items()))
    _launch(route_bwd_items_kernel, lambda c: (triton.cdiv(n, c["BM"]),),
            (r, Wp, bp, sv, slse, token, gwp, grec, beta, gqo, gon_t, dr, gv, ss, vg, n, k, d, dc),
            consts, cfg, ("items",) + key)
    # The weight kernel: the split count is fixed first (so the summation order is), then the
    # tiles per split follow the tile size that launches.
    programs = kp // 2 if pair else k
    splits = weight_splits(triton.cdiv(n, cfg["BM"]), programs, dev)
    pdw = torch.empty(splits, kp, bc, bd, dtype=cd, device=dev)
    pdb = torch.empty(splits, kp, bc, dtype=cd, device=dev)
    _launch(route_bwd_weights_kernel, lambda c: (programs, splits),
            (r, Wp, bp, ss, slse, token, gwp, grec, beta, gqo, gv, vg, pdw, pdb, n, k, kp, d, dc),
            dict(consts, PAIR=pair), cfg, ("weights", pair) + key,
            tail=lambda c: (triton.cdiv(triton.cdiv(n, c["BM"]), splits),))

    # Round 1 (uniform weights): g_u_k gets g_v¹ / K for every capsule.
    gv1 = gv[:, 0]
    rc = r.to(cd)
    dW = pdw.sum(0)[:k, :dc, :d] + (_exact(gv1.t(), rc) / k)[None]
    db = pdb.sum(0)[:k, :dc] + (gv1.sum(0) / k)[None]
    dr = dr + _exact(gv1, wbar[:dc])
    if g_res is not None:
        dr = dr + g_res.to(cd)
    dD = _exact(gzt.t(), srec)
    return dr.to(r.dtype), dW.to(W.dtype), db.to(b.dtype), dD.to(D.dtype)
