// CPU implementation of the squash operator: the same formula as the CUDA kernel, so
// the operator's registration, fake and autograd paths can be tested without a GPU.
#include "squash.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace capsid {

std::string shape_str(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

void check_squash_input(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.dim() >= 1, name, ": expected at least one dimension, got a 0-d tensor");
  const auto t = z.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16, name,
              ": expected dtype float32, float64 or bfloat16, got ", c10::toString(t));
}

void check_squash_pair(const at::Tensor& grad, const at::Tensor& z) {
  check_squash_input(z, "z");
  TORCH_CHECK(grad.sizes() == z.sizes(), "grad: expected the shape of z ", shape_str(z.sizes()), ", got ",
              shape_str(grad.sizes()));
  TORCH_CHECK(grad.scalar_type() == z.scalar_type(), "grad: expected the dtype of z (",
              c10::toString(z.scalar_type()), "), got ", c10::toString(grad.scalar_type()));
  TORCH_CHECK(grad.device() == z.device(), "grad: expected the device of z (", z.device().str(), "), got ",
              grad.device().str());
}

at::Tensor squash_forward_cpu(const at::Tensor& z_in) {
  check_squash_input(z_in, "z");
  const auto z = z_in.contiguous();
  auto out = at::empty_like(z);
  const int64_t n = z.size(-1);
  const int64_t rows = n == 0 ? 0 : z.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "squash_forward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* src = z.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const scalar_t* x = src + row * n;
        acc_t ss = 0;
        for (int64_t i = 0; i < n; ++i) ss += static_cast<acc_t>(x[i]) * static_cast<acc_t>(x[i]);
        const acc_t norm = std::sqrt(ss);
        const acc_t scale = norm / (acc_t(0.5) + ss);
        for (int64_t i = 0; i < n; ++i) dst[row * n + i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * scale);
      }
    });
  });
  return out;
}

at::Tensor squash_backward_cpu(const at::Tensor& grad_in, const at::Tensor& z_in) {
  check_squash_pair(grad_in, z_in);
  const auto z = z_in.contiguous();
  const auto grad = grad_in.contiguous();
  auto out = at::empty_like(z);
  const int64_t n = z.size(-1);
  const int64_t rows = n == 0 ? 0 : z.numel() / n;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, z.scalar_type(), "squash_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* zs = z.const_data_ptr<scalar_t>();
    const scalar_t* gs = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        acc_t ss = 0, zg = 0;
        for (int64_t i = 0; i < n; ++i) {
          const acc_t zi = static_cast<acc_t>(zs[row * n + i]);
          ss += zi * zi;
          zg += zi * static_cast<acc_t>(gs[row * n + i]);
        }
        const acc_t norm = std::sqrt(ss);
        const acc_t den = acc_t(0.5) + ss;
        const acc_t f = norm / den;
        // d/dz of the direction term is O(||z||): it is exactly zero at the origin.
        const acc_t coef = norm > 0 ? (acc_t(0.5) - ss) / (den * den * norm) : acc_t(0);
        for (int64_t i = 0; i < n; ++i) {
          const acc_t zi = static_cast<acc_t>(zs[row * n + i]);
          dst[row * n + i] = static_cast<scalar_t>(f * static_cast<acc_t>(gs[row * n + i]) + coef * zg * zi);
        }
      }
    });
  });
  return out;
}

}  // namespace capsid
