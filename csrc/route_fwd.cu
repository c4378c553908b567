// Fused routing-layer forward (SPEC §2) with mma.sync tensor-core products (sm_80 and sm_90).
//
// One block of 8 warps takes 128·MT items; warp w owns MT tiles of 16 items (MT = 2 at d_c <= 64,
// else 1), so all per-item state (the running sum S of round outputs, the online-softmax max/sum,
// the weighted vote accumulator) lives in that warp's registers in the mma accumulator layout,
// and no two warps ever exchange data. The block streams the packed vote transforms W_k [d_c, d] through a
// cp.async ring of shared-memory stages, one capsule per step, rounds after rounds without a
// break: (T - 1) routing passes and one final pass, T·K steps in all. Per step each warp
// computes its (16·MT) x d_c vote tile u_k = r W_kᵀ + b_k on the tensor cores and folds it in:
//   routing pass: a_k = u_k · S, online softmax (m, l), acc = acc·e^(m-m') + e^(a-m')·u_k;
//                 at the pass end v = acc / l, o = squash(v), S += o;
//   final pass:   the same logits give c*, the argmax (first maximum wins), log-sum-exp, and
//                 Σ c*_k squash(u_k) (soft) or the winner's vote (hard).
// Round 1 has uniform weights: v₁ = r W̄ᵀ + b̄ with the capsule means W̄, b̄, computed in float32
// (SIMT, exact) from the item tile before the stream starts. The epilogue stages rec and Dᵀ in
// shared memory and computes z = D rec in float32 (SIMT), r' = r − η z, ||r'|| and the reason.
//
// Precision: bf16 inputs use m16n8k16 bf16 products (exact in float32; with one row tile per
// warp the item fragments stay in registers); float32 inputs use m16n8k8 tf32 products on tf32-rounded operands when
// tf32 is asked for, else a 3xTF32 split product (hi·hi + hi·lo + lo·hi, float32 accuracy).
// Softmax and every accumulation are float32.
#include "route_fwd.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace capsid {
namespace {

enum class Prec : int { kBF16 = 0, kTF32 = 1, kFP32 = 2 };

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxBM = kWarps * 16 * 2;  // the largest block tile (Cfg::kBM)
static_assert(kMaxBM == kRouteMaxBM, "check_route_forward's item bound assumes this tile");
constexpr int kBD = 128;          // d padded
constexpr int kSmemBudget = 225 * 1024;

template <Prec P, int BC, int MT>
struct Cfg {
  static constexpr int kBM = kWarps * 16 * MT;  // items per block: MT row tiles of 16 per warp
  using T = std::conditional_t<P == Prec::kBF16, __nv_bfloat16, float>;
  static constexpr int kElem = sizeof(T);
  static constexpr int kRow = kBD + 16 / kElem;  // smem row stride: +16 B keeps ldmatrix conflict-free
  static constexpr int kKStep = P == Prec::kBF16 ? 16 : 8;
  static constexpr int kKSteps = kBD / kKStep;
  static constexpr int kNT = BC / 8;
  static constexpr bool kARegs = P == Prec::kBF16 && BC <= 64 && MT == 1;  // item fragments in registers
  static constexpr int kABytes = kBM * kRow * kElem;
  static constexpr int kStageBytes = BC * kRow * kElem;
  static constexpr int kStages = (kABytes + 4 * kStageBytes <= kSmemBudget)   ? 4
                                 : (kABytes + 3 * kStageBytes <= kSmemBudget) ? 3
                                                                              : 2;
  static constexpr int kWbarRow = kBD + 1;
  static constexpr int kRecRow = BC + 4;
  static constexpr int kMainBytes = kABytes + kStages * kStageBytes;
  static constexpr int kPrologBytes = kABytes + BC * kWbarRow * 4;
  static constexpr int kEpiBytes = (kBM * kRecRow + BC * kBD) * 4;
  static constexpr int kSmem = kMainBytes > kPrologBytes ? (kMainBytes > kEpiBytes ? kMainBytes : kEpiBytes)
                                                         : (kPrologBytes > kEpiBytes ? kPrologBytes : kEpiBytes);
  static_assert(kSmem <= 227 * 1024, "tile does not fit in shared memory");
};

struct Params {
  const void* r;      // [n, d] input dtype
  const void* Wp;     // [K, BC, kBD] input dtype, zero padded (tf32-rounded in tf32 mode)
  const float* bp;    // [K, BC]
  const float* wbar;  // [BC, kBD]
  const float* bbar;  // [BC]
  const void* D;      // [d, dc] input dtype
  float* q;
  void* rout;
  void* z;
  float* logits;
  float* lse;
  float* onorm;
  int64_t* token;
  int64_t* reason;
  int n, K, d, dc, rounds;
  int hard, need_w, need_onorm, last, skip;
  float eta, tau, eps;
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&x)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ uint32_t tf32_round(uint32_t x) {
  uint32_t y;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(y) : "f"(__uint_as_float(x)));
  return y;
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Sum over the 4 lanes of a quad (the lanes that share one accumulator row).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// ||z|| / (0.5 + ||z||²) from ||z||²: squash(z) = z · scale, defined at z = 0.
__device__ __forceinline__ float squash_scale(float n2) { return sqrtf(n2) / (0.5f + n2); }

// Row norms² of an accumulator tile: rows g (elements 0, 1) and g + 8 (elements 2, 3).
template <int NT>
__device__ __forceinline__ void row_norm2(const float (&x)[NT][4], float& na, float& nb) {
  na = 0.f;
  nb = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    na = fmaf(x[nt][0], x[nt][0], fmaf(x[nt][1], x[nt][1], na));
    nb = fmaf(x[nt][2], x[nt][2], fmaf(x[nt][3], x[nt][3], nb));
  }
  na = quad_sum(na);
  nb = quad_sum(nb);
}

// Copy capsule k's packed W tile [BC, kBD] into one shared-memory stage (16-byte cp.async).
template <Prec P, int BC, int MT>
__device__ __forceinline__ void load_stage(const Params& p, int k, unsigned char* stage) {
  using C = Cfg<P, BC, MT>;
  using T = typename C::T;
  constexpr int kChunksPerRow = kBD * C::kElem / 16;
  constexpr int kPerChunk = 16 / C::kElem;
  const T* src = static_cast<const T*>(p.Wp) + static_cast<int64_t>(k) * BC * kBD;
  T* dst = reinterpret_cast<T*>(stage);
#pragma unroll
  for (int ch = threadIdx.x; ch < BC * kChunksPerRow; ch += kThreads) {
    const int c = ch / kChunksPerRow, jc = ch % kChunksPerRow;
    cp_async16(dst + c * C::kRow + jc * kPerChunk, src + c * kBD + jc * kPerChunk);
  }
}

template <Prec P, int BC, int MT>
__global__ void __launch_bounds__(kThreads, 1) route_fwd_kernel(const Params p) {
  using C = Cfg<P, BC, MT>;
  using T = typename C::T;
  constexpr int NT = C::kNT;
  constexpr int KS = C::kKStep;
  constexpr int RW = 16 * MT;  // rows per warp
  extern __shared__ __align__(16) unsigned char smem[];
  T* sA = reinterpret_cast<T*>(smem);
  unsigned char* stages = smem + C::kABytes;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tig = lane & 3;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * C::kBM;
  const int n = p.n, K = p.K, d = p.d;

  // --- Prologue: the item tile (exact input values) and W̄ into shared memory.
  {
    const T* r = static_cast<const T*>(p.r);
    for (int i = tid; i < C::kBM * kBD; i += kThreads) {
      const int rr = i / kBD, j = i % kBD;
      const int64_t row = row0 + rr;
      sA[rr * C::kRow + j] = (row < n && j < d) ? r[row * d + j] : from_f<T>(0.f);
    }
    float* sWbar = reinterpret_cast<float*>(stages);
    for (int i = tid; i < BC * kBD; i += kThreads) sWbar[(i / kBD) * C::kWbarRow + i % kBD] = p.wbar[i];
  }
  __syncthreads();

  // This thread's accumulator rows in the tile: ra(mt) = warp·RW + 16·mt + g (half 0) and + 8 (half 1).
  const int ra0 = warp * RW + g;
  float S[MT][NT][4];    // Σ of the round outputs o
  float acc[MT][NT][4];  // Σ c u (routing passes) / the reconstruction (final pass)
  float on[MT][2];       // ||o|| of the latest round
  {
    // Round 1: v₁ = r W̄ᵀ + b̄ in float32, then o₁ = squash(v₁), S = o₁.
    const float* sWbar = reinterpret_cast<const float*>(stages);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int c = nt * 8 + 2 * tig;
        S[mt][nt][0] = S[mt][nt][2] = p.bbar[c];
        S[mt][nt][1] = S[mt][nt][3] = p.bbar[c + 1];
      }
    for (int j = 0; j < d; ++j) {
      float xa[MT], xb[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        xa[mt] = to_f(sA[(ra0 + 16 * mt) * C::kRow + j]);
        xb[mt] = to_f(sA[(ra0 + 16 * mt + 8) * C::kRow + j]);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int c = nt * 8 + 2 * tig;
        const float w0 = sWbar[c * C::kWbarRow + j], w1 = sWbar[(c + 1) * C::kWbarRow + j];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          S[mt][nt][0] = fmaf(xa[mt], w0, S[mt][nt][0]);
          S[mt][nt][1] = fmaf(xa[mt], w1, S[mt][nt][1]);
          S[mt][nt][2] = fmaf(xb[mt], w0, S[mt][nt][2]);
          S[mt][nt][3] = fmaf(xb[mt], w1, S[mt][nt][3]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      float na, nb;
      row_norm2(S[mt], na, nb);
      const float sa = squash_scale(na), sb = squash_scale(nb);
      on[mt][0] = sqrtf(na) * sa;
      on[mt][1] = sqrtf(nb) * sb;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        S[mt][nt][0] *= sa;
        S[mt][nt][1] *= sa;
        S[mt][nt][2] *= sb;
        S[mt][nt][3] *= sb;
      }
    }
  }

  // Item fragments (A operand): row-major 16 x KS blocks of this warp's rows.
  const int a_row = warp * RW + ((lane >> 3) & 1) * 8 + (lane & 7);  // + 16·mt
  const int a_col = (lane >> 4) * (KS / 2);
  const int b_row = (lane >> 4) * 8 + (lane & 7);  // + nt pair * 16
  const int b_col = ((lane >> 3) & 1) * (KS / 2);
  uint32_t afr[C::kARegs ? C::kKSteps : 1][4];
  if constexpr (C::kARegs) {
#pragma unroll
    for (int kk = 0; kk < C::kKSteps; ++kk) ldmatrix_x4(afr[kk], sA + a_row * C::kRow + kk * KS + a_col);
  }
  const int ksteps = (d + KS - 1) / KS;
  __syncthreads();  // W̄ is read: the stages may be overwritten

  const int total = p.rounds * K;  // (rounds - 1) routing passes + the final pass
  // Each block starts its capsule loop at its own offset, so the blocks on the GPU read different
  // W tiles at any moment instead of all hitting the same L2 lines (stage_skip bit 4 turns it off).
  const int k0 = (p.skip & 4) ? 0 : static_cast<int>((static_cast<int64_t>(blockIdx.x) * 29) % K);
#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < total) load_stage<P, BC, MT>(p, (s % K + k0) % K, stages + s * C::kStageBytes);
    cp_async_commit();
  }

  float m[MT][2], l[MT][2];
  int best[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      m[mt][h] = -INFINITY;
      l[mt][h] = 0.f;
      best[mt][h] = 0;
    }
  int k = 0, pass = 0;
  const bool skip_soft = p.skip & 1, skip_mma = p.skip & 2;

  for (int it = 0; it < total; ++it) {
    cp_async_wait<C::kStages - 2>();
    __syncthreads();
    {
      const int nx = it + C::kStages - 1;
      if (nx < total) load_stage<P, BC, MT>(p, (nx % K + k0) % K, stages + (nx % C::kStages) * C::kStageBytes);
      cp_async_commit();
    }
    const bool final_pass = pass == p.rounds - 1;
    const int kc = k + k0 < K ? k + k0 : k + k0 - K;  // the capsule of this step
    if (k == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
      }
    }

    // u_k = r W_kᵀ + b_k for the warp's rows. The products accumulate from zero and the bias is
    // added afterwards in float32. For exact float32 the two small 3xTF32 terms are summed over
    // all of d first and the large hi·hi term goes on top (as Triton's tf32x3): the tensor cores
    // truncate when they accumulate, so fewer additions onto the large sum keep its error near
    // float32's. One B fragment (W) serves all MT row tiles of the warp.
    float u[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) u[mt][nt][0] = u[mt][nt][1] = u[mt][nt][2] = u[mt][nt][3] = 0.f;
    const T* sW = reinterpret_cast<const T*>(stages + (it % C::kStages) * C::kStageBytes);
    if (!skip_mma) {
      constexpr int kParts = P == Prec::kFP32 ? 2 : 1;
#pragma unroll
      for (int part = 0; part < kParts; ++part) {
#pragma unroll
        for (int kk = 0; kk < C::kKSteps; ++kk) {
          if (kk < ksteps) {
            uint32_t a[MT][4], a_lo[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              if constexpr (C::kARegs) {
#pragma unroll
                for (int e = 0; e < 4; ++e) a[mt][e] = afr[kk][e];
              } else {
                ldmatrix_x4(a[mt], sA + (a_row + 16 * mt) * C::kRow + kk * KS + a_col);
              }
              if constexpr (P == Prec::kTF32) {
#pragma unroll
                for (int e = 0; e < 4; ++e) a[mt][e] = tf32_round(a[mt][e]);
              } else if constexpr (P == Prec::kFP32) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  const uint32_t hi = tf32_round(a[mt][e]);
                  a_lo[mt][e] = tf32_round(__float_as_uint(__uint_as_float(a[mt][e]) - __uint_as_float(hi)));
                  a[mt][e] = hi;
                }
              }
            }
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
              uint32_t bf[4];
              ldmatrix_x4(bf, sW + (np * 16 + b_row) * C::kRow + kk * KS + b_col);
              if constexpr (P == Prec::kBF16) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                  mma_bf16(u[mt][2 * np], a[mt], bf[0], bf[1]);
                  mma_bf16(u[mt][2 * np + 1], a[mt], bf[2], bf[3]);
                }
              } else if constexpr (P == Prec::kTF32) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                  mma_tf32(u[mt][2 * np], a[mt], bf[0], bf[1]);
                  mma_tf32(u[mt][2 * np + 1], a[mt], bf[2], bf[3]);
                }
              } else {
                uint32_t bh[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) bh[e] = tf32_round(bf[e]);
                if (part == 0) {
                  uint32_t bl[4];
#pragma unroll
                  for (int e = 0; e < 4; ++e)
                    bl[e] = tf32_round(__float_as_uint(__uint_as_float(bf[e]) - __uint_as_float(bh[e])));
#pragma unroll
                  for (int mt = 0; mt < MT; ++mt) {
                    mma_tf32(u[mt][2 * np], a[mt], bl[0], bl[1]);
                    mma_tf32(u[mt][2 * np], a_lo[mt], bh[0], bh[1]);
                    mma_tf32(u[mt][2 * np + 1], a[mt], bl[2], bl[3]);
                    mma_tf32(u[mt][2 * np + 1], a_lo[mt], bh[2], bh[3]);
                  }
                } else {
#pragma unroll
                  for (int mt = 0; mt < MT; ++mt) {
                    mma_tf32(u[mt][2 * np], a[mt], bh[0], bh[1]);
                    mma_tf32(u[mt][2 * np + 1], a[mt], bh[2], bh[3]);
                  }
                }
              }
            }
          }
        }
      }
    }
    {
      const float* bk = p.bp + static_cast<int64_t>(kc) * BC;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const float2 bb = __ldg(reinterpret_cast<const float2*>(bk + nt * 8 + 2 * tig));
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          u[mt][nt][0] += bb.x;
          u[mt][nt][1] += bb.y;
          u[mt][nt][2] += bb.x;
          u[mt][nt][3] += bb.y;
        }
      }
    }

    if (skip_soft) {  // timing only: consume u, nothing else
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mt][nt][e] += u[mt][nt][e];
    } else {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // Agreement logits a_k = u_k · S for the two rows of this row tile.
        float av[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          av[0] = fmaf(u[mt][nt][0], S[mt][nt][0], fmaf(u[mt][nt][1], S[mt][nt][1], av[0]));
          av[1] = fmaf(u[mt][nt][2], S[mt][nt][2], fmaf(u[mt][nt][3], S[mt][nt][3], av[1]));
        }
        float al[2], pr[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          av[h] = quad_sum(av[h]);
          const float mn = fmaxf(m[mt][h], av[h]);
          al[h] = expf(m[mt][h] - mn);
          pr[h] = expf(av[h] - mn);
          l[mt][h] = fmaf(l[mt][h], al[h], pr[h]);
        }
        if (!final_pass) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = fmaf(pr[e >> 1], u[mt][nt][e], acc[mt][nt][e] * al[e >> 1]);
        } else {
          bool better[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t grow = row0 + ra0 + 16 * mt + 8 * h;
            if (p.need_w && tig == 0 && grow < n) p.logits[grow * K + kc] = av[h];
            // Ties go to the lowest capsule index (as torch.argmax), whatever the visiting order.
            better[h] = av[h] > m[mt][h] || (av[h] == m[mt][h] && kc < best[mt][h]);
            best[mt][h] = better[h] ? kc : best[mt][h];
          }
          if (p.hard) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[mt][nt][e] = better[e >> 1] ? u[mt][nt][e] : acc[mt][nt][e];
          } else {
            float na, nb;
            row_norm2(u[mt], na, nb);
            const float w[2] = {pr[0] * squash_scale(na), pr[1] * squash_scale(nb)};
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[mt][nt][e] = fmaf(w[e >> 1], u[mt][nt][e], acc[mt][nt][e] * al[e >> 1]);
          }
        }
        m[mt][0] = fmaxf(m[mt][0], av[0]);
        m[mt][1] = fmaxf(m[mt][1], av[1]);
      }
    }

    if (++k == K) {
      k = 0;
      if (!final_pass) {  // end of a routing round: v = acc / l, o = squash(v), S += o
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] /= l[mt][e >> 1];
          float na, nb;
          row_norm2(acc[mt], na, nb);
          const float sa = squash_scale(na), sb = squash_scale(nb);
          on[mt][0] = sqrtf(na) * sa;
          on[mt][1] = sqrtf(nb) * sb;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            S[mt][nt][0] = fmaf(acc[mt][nt][0], sa, S[mt][nt][0]);
            S[mt][nt][1] = fmaf(acc[mt][nt][1], sa, S[mt][nt][1]);
            S[mt][nt][2] = fmaf(acc[mt][nt][2], sb, S[mt][nt][2]);
            S[mt][nt][3] = fmaf(acc[mt][nt][3], sb, S[mt][nt][3]);
          }
        }
      }
      ++pass;
    }
  }

  // The reconstruction in capsule space: squash(winner's vote) or Σ c* squash(u) = acc / l.
  float qv[MT][2], lse[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    if (p.hard) {
      float na, nb;
      row_norm2(acc[mt], na, nb);
      const float sc[2] = {squash_scale(na), squash_scale(nb)};
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] *= sc[e >> 1];
    } else {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mt][nt][e] /= l[mt][e >> 1];
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      qv[mt][h] = on[mt][h] / l[mt][h];  // c*_s = exp(a_s − max) / Σ = 1 / l
      lse[mt][h] = m[mt][h] + logf(l[mt][h]);
    }
  }

  // --- Epilogue: z = D rec (float32), r' = r − η z, ||r'||, stop reason.
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the stages
  float* rec_s = reinterpret_cast<float*>(smem);
  float* Dt = rec_s + C::kBM * C::kRecRow;  // [BC][kBD]: Dᵀ, zero padded
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int c = nt * 8 + 2 * tig, ra = ra0 + 16 * mt;
      *reinterpret_cast<float2*>(rec_s + ra * C::kRecRow + c) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
      *reinterpret_cast<float2*>(rec_s + (ra + 8) * C::kRecRow + c) = make_float2(acc[mt][nt][2], acc[mt][nt][3]);
    }
  {
    const T* Dg = static_cast<const T*>(p.D);
    for (int i = tid; i < BC * kBD; i += kThreads) {
      const int c = i / kBD, j = i % kBD;
      Dt[i] = (c < p.dc && j < d) ? to_f(Dg[j * p.dc + c]) : 0.f;
    }
  }
  __syncthreads();

  const T* rin = static_cast<const T*>(p.r);
  T* rout = static_cast<T*>(p.rout);
  T* zout = static_cast<T*>(p.z);
  constexpr int kCols = kBD / 32;
#pragma unroll 1
  for (int mt = 0; mt < MT; ++mt) {
    float zacc[16][kCols];
#pragma unroll
    for (int i = 0; i < 16; ++i)
#pragma unroll
      for (int cc = 0; cc < kCols; ++cc) zacc[i][cc] = 0.f;
    const float* rec_w = rec_s + (warp * RW + 16 * mt) * C::kRecRow;
#pragma unroll 2
    for (int c = 0; c < BC; ++c) {
      float dv[kCols];
#pragma unroll
      for (int cc = 0; cc < kCols; ++cc) dv[cc] = Dt[c * kBD + lane + 32 * cc];
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const float rv = rec_w[i * C::kRecRow + c];
#pragma unroll
        for (int cc = 0; cc < kCols; ++cc) zacc[i][cc] = fmaf(rv, dv[cc], zacc[i][cc]);
      }
    }
    // This row tile's routing results, picked by compile-time index (mt may be a run-time loop index).
    float q_a = qv[0][0], q_b = qv[0][1], on_a = on[0][0], on_b = on[0][1], l_a = lse[0][0], l_b = lse[0][1];
    int b_a = best[0][0], b_b = best[0][1];
#pragma unroll
    for (int t = 1; t < MT; ++t) {
      if (mt == t) {
        q_a = qv[t][0];
        q_b = qv[t][1];
        on_a = on[t][0];
        on_b = on[t][1];
        l_a = lse[t][0];
        l_b = lse[t][1];
        b_a = best[t][0];
        b_b = best[t][1];
      }
    }
    float my_q = 0.f, my_resn = 0.f, my_on = 0.f, my_lse = 0.f;
    int my_best = 0;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int64_t row = row0 + warp * RW + 16 * mt + i;
      float ss = 0.f;
      if (row < n) {
#pragma unroll
        for (int cc = 0; cc < kCols; ++cc) {
          const int j = lane + 32 * cc;
          if (j < d) {
            const float zz = zacc[i][cc];
            const float rn = to_f(rin[row * d + j]) - p.eta * zz;
            zout[row * d + j] = from_f<T>(zz);
            rout[row * d + j] = from_f<T>(rn);
            ss = fmaf(rn, rn, ss);
          }
        }
      }
      ss = warp_sum(ss);
      // Row i's routing results live in lane 4 (i mod 8), as its row a (i < 8) or b (i >= 8).
      const int src = (i & 7) * 4;
      const float qi = __shfl_sync(0xffffffffu, i < 8 ? q_a : q_b, src);
      const float oi = __shfl_sync(0xffffffffu, i < 8 ? on_a : on_b, src);
      const float li = __shfl_sync(0xffffffffu, i < 8 ? l_a : l_b, src);
      const int bi = __shfl_sync(0xffffffffu, i < 8 ? b_a : b_b, src);
      if (lane == i) {
        my_q = qi;
        my_on = oi;
        my_lse = li;
        my_best = bi;
        my_resn = sqrtf(ss);
      }
    }
    const int64_t row = row0 + warp * RW + 16 * mt + lane;
    if (lane < 16 && row < n) {
      p.q[row] = my_q;
      p.token[row] = my_best;
      p.reason[row] = my_q >= p.tau ? 1 : (my_resn <= p.eps ? 2 : (p.last ? 3 : 0));
      if (p.need_w) p.lse[row] = my_lse;
      if (p.need_onorm) p.onorm[row] = my_on;
    }
  }
}

template <Prec P, int BC, int MT>
void launch(const Params& p, cudaStream_t stream) {
  using C = Cfg<P, BC, MT>;
  auto* kernel = route_fwd_kernel<P, BC, MT>;
  // Set on every launch (it is per device and costs about a microsecond).
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem));
  const unsigned grid = static_cast<unsigned>((p.n + C::kBM - 1) / C::kBM);
  kernel<<<grid, kThreads, C::kSmem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <Prec P>
void launch_dc(const Params& p, int bc, cudaStream_t stream) {
  // d_c <= 64: two row tiles per warp (256 items per block) halve the W traffic per item; wider
  // capsules keep one (their accumulators fill the registers). stage_skip bit 8 forces one.
  if (bc == 64 && !(p.skip & 8)) launch<P, 64, 2>(p, stream);
  else if (bc == 64) launch<P, 64, 1>(p, stream);
  else if (bc == 96) launch<P, 96, 1>(p, stream);
  else launch<P, 128, 1>(p, stream);
}

int padded_dc(int64_t dc) { return dc <= 64 ? 64 : (dc <= 96 ? 96 : 128); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
route_forward_cuda(const at::Tensor& r_in, const at::Tensor& W_in, const at::Tensor& b_in, const at::Tensor& D_in,
                   int64_t rounds, bool hard, double eta, double tau, double eps, bool last, bool need_weights,
                   bool need_onorm, bool tf32, int64_t stage_skip) {
  // Inputs are validated by check_route_forward (csrc/checks.cpp) before this is called.
  const int64_t n = r_in.size(0), d = r_in.size(1), K = W_in.size(0), dc = W_in.size(1);

  const c10::cuda::CUDAGuard guard(r_in.device());
  const auto r = r_in.contiguous(), D = D_in.contiguous();
  const auto f32 = r.options().dtype(at::kFloat);
  auto q = at::empty({n}, f32);
  auto rout = at::empty({n, d}, r.options());
  auto z = at::empty({n, d}, r.options());
  auto logits = need_weights ? at::empty({n, K}, f32) : at::empty({0}, f32);
  auto lse = at::empty({need_weights ? n : 0}, f32);
  auto onorm = at::empty({need_onorm ? n : 0}, f32);
  auto token = at::empty({n}, r.options().dtype(at::kLong));
  auto reason = at::empty({n}, r.options().dtype(at::kLong));
  if (n == 0) return {q, rout, z, logits, lse, onorm, token, reason};

  // The kernel's layout: W zero padded to [K, BC, 128] (tf32-rounded, ties to even, in tf32
  // mode), biases [K, BC] and the capsule means W̄ [BC, 128], b̄ [BC] in float32.
  const int bc = padded_dc(dc);
  const bool bf16 = r.scalar_type() == at::kBFloat16;
  auto Wp = at::zeros({K, bc, kBD}, r.options());
  Wp.narrow(1, 0, dc).narrow(2, 0, d).copy_(W_in);
  if (tf32 && !bf16) {
    auto bits = Wp.view(at::kInt);
    bits.copy_(bits.add(bits.bitwise_right_shift(13).bitwise_and(1).add(0xFFF)).bitwise_and(-0x2000));
  }
  auto bp = at::zeros({K, bc}, f32);
  bp.narrow(1, 0, dc).copy_(b_in);
  auto wbar = at::zeros({bc, kBD}, f32);
  wbar.narrow(0, 0, dc).narrow(1, 0, d).copy_(W_in.to(at::kFloat).mean(0));
  auto bbar = at::zeros({bc}, f32);
  bbar.narrow(0, 0, dc).copy_(b_in.to(at::kFloat).mean(0));

  Params p{};
  p.r = r.const_data_ptr();
  p.Wp = Wp.const_data_ptr();
  p.bp = bp.const_data_ptr<float>();
  p.wbar = wbar.const_data_ptr<float>();
  p.bbar = bbar.const_data_ptr<float>();
  p.D = D.const_data_ptr();
  p.q = q.mutable_data_ptr<float>();
  p.rout = rout.mutable_data_ptr();
  p.z = z.mutable_data_ptr();
  p.logits = need_weights ? logits.mutable_data_ptr<float>() : nullptr;
  p.lse = need_weights ? lse.mutable_data_ptr<float>() : nullptr;
  p.onorm = need_onorm ? onorm.mutable_data_ptr<float>() : nullptr;
  p.token = token.mutable_data_ptr<int64_t>();
  p.reason = reason.mutable_data_ptr<int64_t>();
  p.n = static_cast<int>(n);
  p.K = static_cast<int>(K);
  p.d = static_cast<int>(d);
  p.dc = static_cast<int>(dc);
  p.rounds = static_cast<int>(rounds);
  p.hard = hard;
  p.need_w = need_weights;
  p.need_onorm = need_onorm;
  p.last = last;
  p.skip = static_cast<int>(stage_skip);
  p.eta = static_cast<float>(eta);
  p.tau = static_cast<float>(tau);
  p.eps = static_cast<float>(eps);

  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (bf16) launch_dc<Prec::kBF16>(p, bc, stream);
  else if (tf32) launch_dc<Prec::kTF32>(p, bc, stream);
  else launch_dc<Prec::kFP32>(p, bc, stream);
  return {q, rout, z, logits, lse, onorm, token, reason};
}

}  // namespace capsid
