// CUDA squash: one warp per row (a capsule vector), the norm reduced with warp shuffles in
// float (double for double). Rows are short (d_c = 64 to 96), so a row fits one pass of a
// warp; longer rows loop. Memory-bound: each element is read once (twice in the backward,
// from L1) and written once.
#include "squash.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace capsid {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void squash_forward_kernel(const scalar_t* __restrict__ z, scalar_t* __restrict__ out, int64_t rows,
                                      int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps exit together: the shuffles below stay convergent
  const scalar_t* x = z + row * n;
  acc_t ss = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const acc_t v = static_cast<acc_t>(x[i]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const acc_t scale = sqrt(ss) / (acc_t(0.5) + ss);
  for (int64_t i = lane; i < n; i += 32) out[row * n + i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * scale);
}

template <typename scalar_t, typename acc_t>
__global__ void squash_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ z,
                                       scalar_t* __restrict__ out, int64_t rows, int64_t n) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const scalar_t* x = z + row * n;
  const scalar_t* g = grad + row * n;
  acc_t ss = 0, zg = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const acc_t zi = static_cast<acc_t>(x[i]);
    ss += zi * zi;
    zg += zi * static_cast<acc_t>(g[i]);
  }
  ss = warp_sum(ss);
  zg = warp_sum(zg);
  const acc_t norm = sqrt(ss);
  const acc_t den = acc_t(0.5) + ss;
  const acc_t f = norm / den;
  const acc_t coef = norm > acc_t(0) ? (acc_t(0.5) - ss) / (den * den * norm) : acc_t(0);
  for (int64_t i = lane; i < n; i += 32) {
    out[row * n + i] = static_cast<scalar_t>(f * static_cast<acc_t>(g[i]) + coef * zg * static_cast<acc_t>(x[i]));
  }
}

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device().str());
}

unsigned int blocks_for(int64_t rows) {
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks <= 0x7fffffff, "z: too many rows for one launch (", rows, ")");
  return static_cast<unsigned int>(blocks);
}

}  // namespace

at::Tensor squash_forward_cuda(const at::Tensor& z_in) {
  check_squash_input(z_in, "z");
  check_cuda(z_in, "z");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = z_in.contiguous();
  auto out = at::empty_like(z);
  const int64_t n = z.size(-1);
  const int64_t rows = n == 0 ? 0 : z.numel() / n;
  if (rows == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "squash_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    squash_forward_kernel<scalar_t, acc_t><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(
        z.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor squash_backward_cuda(const at::Tensor& grad_in, const at::Tensor& z_in) {
  check_squash_pair(grad_in, z_in);
  check_cuda(z_in, "z");
  const c10::cuda::CUDAGuard guard(z_in.device());
  const auto z = z_in.contiguous();
  const auto grad = grad_in.contiguous();
  auto out = at::empty_like(z);
  const int64_t n = z.size(-1);
  const int64_t rows = n == 0 ? 0 : z.numel() / n;
  if (rows == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "squash_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    squash_backward_kernel<scalar_t, acc_t><<<blocks_for(rows), kWarpsPerBlock * 32, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace capsid
