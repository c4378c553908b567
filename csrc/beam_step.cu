// Trie-constrained beam step: two launches, no host synchronisation.
//
// 1. beam_candidates_kernel, one warp per beam (row): log-sum-exp of the row in float (16-byte
//    loads, an online max/sum per lane merged across the warp), then the beam's candidates
//    (EOS first when the node ends an item, then its CSR children in token order; a finished
//    beam has one virtual child of log-prob 0) are scored and its best min(B, fanout) are
//    extracted in order into a [Q*B, B] scratch of 64-bit keys.
// 2. beam_merge_kernel, one block per query: the B sorted lists go to shared memory and one warp
//    merges them (B rounds of a warp-wide minimum over the list heads); then every thread
//    writes one new beam (token, parent, node, score, flag), so the trie reads run in parallel.
//
// A key is (~orderable(score) << 32 | rank): ascending keys are descending scores, and rank
// (the child's position in token order) breaks ties inside a beam; the merge compares
// (score, beam), so ties go to the lower beam, then the lower token, as SPEC §7 orders them.
// Candidates whose score is not above -inf (including NaN) are never selectable.
#include "beam_step.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace capsid {
namespace {

using u64 = unsigned long long;
using u32 = unsigned int;

constexpr u64 kNone = ~0ull;
constexpr int kRegChildren = 8;  // children held in registers per lane: fanouts up to 256
constexpr int kMergeThreads = 128;

__device__ __forceinline__ u32 desc_key(float v) {
  u32 u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~u;
}

__device__ __forceinline__ float key_score(u32 k) {
  u32 u = ~k;
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  return __uint_as_float(u);
}

__device__ __forceinline__ u64 warp_min_u64(u64 v) {
  u32 hi = static_cast<u32>(v >> 32);
  u32 mh = hi;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mh = min(mh, __shfl_xor_sync(0xffffffffu, mh, off));
  u32 lo = hi == mh ? static_cast<u32>(v) : 0xffffffffu;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, off));
  return (static_cast<u64>(mh) << 32) | lo;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(c10::BFloat16 x) { return static_cast<float>(x); }

// Online (max, sum of exp) over one value batch; -inf values contribute nothing.
struct LogSumExp {
  float m = -INFINITY;
  float s = 0.f;
  __device__ __forceinline__ void add_batch(const float* v, int n) {
    float vm = v[0];
    for (int i = 1; i < n; ++i) vm = fmaxf(vm, v[i]);
    if (vm > m) {
      s *= expf(m - vm);
      m = vm;
    }
    if (m == -INFINITY) return;
    for (int i = 0; i < n; ++i) s += expf(v[i] - m);
  }
  __device__ __forceinline__ void merge(float om, float os) {
    if (om == -INFINITY) return;
    if (om > m) {
      s = s * expf(m - om) + os;
      m = om;
    } else {
      s += os * expf(om - m);
    }
  }
};

template <typename scalar_t>
__device__ __forceinline__ void load16(const scalar_t* p, float* out);

template <>
__device__ __forceinline__ void load16<float>(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

template <>
__device__ __forceinline__ void load16<c10::BFloat16>(const c10::BFloat16* p, float* out) {
  const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
  const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(w[i] << 16);
    out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

// Log-sum-exp of one row by one warp, as (max, log(sum exp(x - max))); every lane gets both.
template <typename scalar_t>
__device__ __forceinline__ void row_logsumexp(const scalar_t* x, int vocab, int lane, float& shift, float& logz) {
  constexpr int W = 16 / sizeof(scalar_t);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(x);
  int head = static_cast<int>(((16 - (addr & 15)) & 15) / sizeof(scalar_t));
  if (addr % sizeof(scalar_t) != 0) head = vocab;  // cannot happen for a torch tensor; stay correct anyway
  head = min(head, vocab);
  const int nvec = (vocab - head) / W;
  LogSumExp acc;
  if (lane < head) {
    const float v = to_float(x[lane]);
    acc.add_batch(&v, 1);
  }
  const scalar_t* body = x + head;
  int i = lane;
  for (; i + 32 < nvec; i += 64) {  // two 16-byte loads in flight per lane
    float a[W], b[W];
    load16<scalar_t>(body + static_cast<int64_t>(i) * W, a);
    load16<scalar_t>(body + static_cast<int64_t>(i + 32) * W, b);
    acc.add_batch(a, W);
    acc.add_batch(b, W);
  }
  for (; i < nvec; i += 32) {
    float a[W];
    load16<scalar_t>(body + static_cast<int64_t>(i) * W, a);
    acc.add_batch(a, W);
  }
  for (int t = head + nvec * W + lane; t < vocab; t += 32) {
    const float v = to_float(x[t]);
    acc.add_batch(&v, 1);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, acc.m, off);
    const float os = __shfl_xor_sync(0xffffffffu, acc.s, off);
    acc.merge(om, os);
  }
  shift = acc.m;
  logz = logf(acc.s);
}

template <typename scalar_t, typename tok_t>
__global__ void __launch_bounds__(kRowWarps * 32) beam_candidates_kernel(
    const scalar_t* __restrict__ logits, int64_t rows, int vocab, const int* __restrict__ node,
    const float* __restrict__ score, const bool* __restrict__ finished, const int* __restrict__ child_start,
    int num_inner, const tok_t* __restrict__ token, const int* __restrict__ end_bits, int beams, int eos,
    u64* __restrict__ cand) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together
  u64* out = cand + row * beams;
  const int n = node[row];
  const float s = score[row];
  int written = 0;
  if (n >= 0 && finished[row]) {
    if (s > -INFINITY) {
      if (lane == 0) out[0] = static_cast<u64>(desc_key(s + 0.f)) << 32;
      written = 1;
    }
  } else if (n >= 0) {
    const scalar_t* x = logits + row * static_cast<int64_t>(vocab);
    float shift, logz;
    row_logsumexp(x, vocab, lane, shift, logz);
    const int is_end = (end_bits[n >> 5] >> (n & 31)) & 1;
    int lo = 0, hi = 0;
    if (n < num_inner) {
      lo = child_start[n];
      hi = child_start[n + 1];
    }
    const int fanout = is_end + hi - lo;
    const int want = min(beams, fanout);
    auto key_of = [&](int r) -> u64 {
      const int tok = (is_end && r == 0) ? eos : static_cast<int>(token[lo + r - is_end]);
      const float v = s + ((to_float(x[tok]) - shift) - logz) + 0.f;
      if (!(v > -INFINITY)) return kNone;
      return (static_cast<u64>(desc_key(v)) << 32) | static_cast<u32>(r);
    };
    if (fanout <= 32 * kRegChildren) {
      u64 k[kRegChildren];
#pragma unroll
      for (int i = 0; i < kRegChildren; ++i) {
        const int r = i * 32 + lane;
        k[i] = r < fanout ? key_of(r) : kNone;
      }
      for (; written < want; ++written) {
        u64 best = k[0];
#pragma unroll
        for (int i = 1; i < kRegChildren; ++i) best = min(best, k[i]);
        const u64 win = warp_min_u64(best);
        if (win == kNone) break;
        if (lane == 0) out[written] = win;
#pragma unroll
        for (int i = 0; i < kRegChildren; ++i) k[i] = k[i] == win ? kNone : k[i];
      }
    } else {
      // Wide nodes (the root, merged-token hubs): rescan the children for each extraction.
      u64 last = 0;
      for (; written < want; ++written) {
        u64 best = kNone;
        for (int r = lane; r < fanout; r += 32) {
          const u64 key = key_of(r);
          if ((written == 0 || key > last) && key < best) best = key;
        }
        const u64 win = warp_min_u64(best);
        if (win == kNone) break;
        if (lane == 0) out[written] = win;
        last = win;
      }
    }
  }
  for (int j = written + lane; j < beams; j += 32) out[j] = kNone;
}

template <typename tok_t>
__global__ void __launch_bounds__(kMergeThreads) beam_merge_kernel(
    const u64* __restrict__ cand, int beams, const int* __restrict__ node, const bool* __restrict__ finished,
    const int* __restrict__ child_start, const tok_t* __restrict__ token, const int* __restrict__ end_bits, int pad,
    int eos, int64_t* __restrict__ out_token, int64_t* __restrict__ out_parent, int* __restrict__ out_node,
    float* __restrict__ out_score, bool* __restrict__ out_finished) {
  extern __shared__ u64 lists[];
  int* slot_beam = reinterpret_cast<int*>(lists + beams * beams);
  u32* slot_rank = reinterpret_cast<u32*>(slot_beam + beams);
  u32* slot_key = slot_rank + beams;
  __shared__ int selected;
  const int64_t q = blockIdx.x;
  const int64_t base = q * beams;
  const u64* src = cand + base * beams;
  for (int i = threadIdx.x; i < beams * beams; i += kMergeThreads) lists[i] = src[i];
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    constexpr int H = kMaxBeams / 32;
    int pos[H];
    u64 head[H];
#pragma unroll
    for (int h = 0; h < H; ++h) {
      const int b = lane + 32 * h;
      pos[h] = 0;
      head[h] = b < beams ? lists[b * beams] : kNone;
    }
    int j = 0;
    for (; j < beams; ++j) {
      u64 best = kNone;
#pragma unroll
      for (int h = 0; h < H; ++h) {
        if (head[h] != kNone) best = min(best, ((head[h] >> 32) << 32) | static_cast<u32>(lane + 32 * h));
      }
      const u64 win = warp_min_u64(best);
      if (win == kNone) break;
      const int beam = static_cast<int>(static_cast<u32>(win));
      if (lane == (beam & 31)) {
#pragma unroll
        for (int h = 0; h < H; ++h) {
          if (h == (beam >> 5)) {
            slot_beam[j] = beam;
            slot_rank[j] = static_cast<u32>(head[h]);
            slot_key[j] = static_cast<u32>(win >> 32);
            ++pos[h];
            head[h] = pos[h] < beams ? lists[beam * beams + pos[h]] : kNone;
          }
        }
      }
    }
    if (lane == 0) selected = j;
  }
  __syncthreads();
  // The new beams' tokens and states, one thread per slot (the trie reads run in parallel).
  for (int e = threadIdx.x; e < beams; e += kMergeThreads) {
    if (e < selected) {
      const int beam = slot_beam[e];
      const u32 rank = slot_rank[e];
      const int64_t from = base + beam;
      const int n = node[from];
      int64_t tok;
      int new_node;
      bool fin;
      if (finished[from]) {
        tok = pad;
        new_node = n;
        fin = true;
      } else {
        const int is_end = (end_bits[n >> 5] >> (n & 31)) & 1;
        if (is_end && rank == 0) {
          tok = eos;
          new_node = n;
          fin = true;
        } else {
          new_node = child_start[n] + static_cast<int>(rank) - is_end;
          tok = static_cast<int64_t>(token[new_node]);
          fin = false;
        }
      }
      out_token[base + e] = tok;
      out_parent[base + e] = from;
      out_node[base + e] = new_node;
      out_score[base + e] = key_score(slot_key[e]);
      out_finished[base + e] = fin;
    } else {  // fewer selectable candidates than beams: empty beams
      out_token[base + e] = pad;
      out_parent[base + e] = base + e;
      out_node[base + e] = -1;
      out_score[base + e] = -INFINITY;
      out_finished[base + e] = true;
    }
  }
}

struct StepArgs {
  const at::Tensor &logits, &node, &score, &finished, &child_start, &token, &end_bits, &cand;
  at::Tensor &out_token, &out_parent, &out_node, &out_score, &out_finished;
  int64_t rows, vocab;
  int beams, pad, eos;
};

template <typename scalar_t, typename tok_t>
void launch(const StepArgs& a) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int num_inner = static_cast<int>(a.child_start.numel() - 1);
  const auto row_blocks = static_cast<unsigned>((a.rows + kRowWarps - 1) / kRowWarps);
  beam_candidates_kernel<scalar_t, tok_t><<<row_blocks, kRowWarps * 32, 0, stream>>>(
      a.logits.const_data_ptr<scalar_t>(), a.rows, static_cast<int>(a.vocab), a.node.const_data_ptr<int>(),
      a.score.const_data_ptr<float>(), a.finished.const_data_ptr<bool>(), a.child_start.const_data_ptr<int>(),
      num_inner, a.token.const_data_ptr<tok_t>(), a.end_bits.const_data_ptr<int>(), a.beams, a.eos,
      reinterpret_cast<u64*>(a.cand.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const size_t smem = static_cast<size_t>(a.beams) * a.beams * sizeof(u64) + static_cast<size_t>(a.beams) * 12;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(beam_merge_kernel<tok_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  beam_merge_kernel<tok_t><<<static_cast<unsigned>(a.rows / a.beams), kMergeThreads, smem, stream>>>(
      reinterpret_cast<const u64*>(a.cand.const_data_ptr<int64_t>()), a.beams, a.node.const_data_ptr<int>(),
      a.finished.const_data_ptr<bool>(), a.child_start.const_data_ptr<int>(), a.token.const_data_ptr<tok_t>(),
      a.end_bits.const_data_ptr<int>(), a.pad, a.eos, a.out_token.mutable_data_ptr<int64_t>(),
      a.out_parent.mutable_data_ptr<int64_t>(), a.out_node.mutable_data_ptr<int>(),
      a.out_score.mutable_data_ptr<float>(), a.out_finished.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cuda(
    const at::Tensor& logits_in, const at::Tensor& node, const at::Tensor& score, const at::Tensor& finished,
    const at::Tensor& child_start, const at::Tensor& token, const at::Tensor& end_bits, int64_t num_beams,
    int64_t pad, int64_t eos) {
  // Inputs are validated by check_beam_step (csrc/checks.cpp) before this is called.
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto logits = logits_in.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  const auto opts = logits.options();
  auto out_token = at::empty({rows}, opts.dtype(at::kLong));
  auto out_parent = at::empty({rows}, opts.dtype(at::kLong));
  auto out_node = at::empty({rows}, opts.dtype(at::kInt));
  auto out_score = at::empty({rows}, opts.dtype(at::kFloat));
  auto out_finished = at::empty({rows}, opts.dtype(at::kBool));
  if (rows == 0) return {out_token, out_parent, out_node, out_score, out_finished};
  auto cand = at::empty({rows, num_beams}, opts.dtype(at::kLong));

  StepArgs a{logits, node, score, finished, child_start, token, end_bits, cand,
             out_token, out_parent, out_node, out_score, out_finished, rows, vocab, static_cast<int>(num_beams),
             static_cast<int>(pad), static_cast<int>(eos)};

  const bool short_tok = token.scalar_type() == at::kShort;
  const bool bf16 = logits.scalar_type() == at::kBFloat16;
  if (short_tok && bf16) launch<c10::BFloat16, int16_t>(a);
  else if (short_tok) launch<float, int16_t>(a);
  else if (bf16) launch<c10::BFloat16, int32_t>(a);
  else launch<float, int32_t>(a);
  return {out_token, out_parent, out_node, out_score, out_finished};
}

}  // namespace capsid
