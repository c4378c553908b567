// C++ test of the squash operator: the CPU kernel against the formula written with ATen ops,
// and, when a GPU is present, the CUDA kernel against the CPU one. Exit code 0 means pass.
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cstdio>
#include <string>

#include "squash.h"

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const char* what) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const bool finite = at::isfinite(got).all().item<bool>();
  if (!(err <= tol) || !finite) {
    std::printf("FAIL %s: max error %.3g > %.3g (finite=%d)\n", what, err, tol, static_cast<int>(finite));
    ++failures;
  } else {
    std::printf("ok   %s: max error %.3g\n", what, err);
  }
}

at::Tensor formula(const at::Tensor& z) {
  const auto zd = z.to(at::kDouble);
  const auto n = zd.norm(2, {-1}, /*keepdim=*/true);
  return zd * n / (0.5 + n * n);
}

}  // namespace

void expect_throws_naming(const char* what, const char* needle, void (*fn)()) {
  try {
    fn();
    std::printf("FAIL %s: no error raised\n", what);
    ++failures;
  } catch (const c10::Error& e) {
    const bool named = std::string(e.what_without_backtrace()).find(needle) != std::string::npos;
    std::printf("%s %s: %s\n", named ? "ok  " : "FAIL", what, e.what_without_backtrace());
    failures += named ? 0 : 1;
  }
}

int main() {
  expect_throws_naming("integer input rejected", "z: expected dtype float32, float64 or bfloat16",
                       [] { capsid::squash_forward_cpu(at::ones({3}, at::kLong)); });
  expect_throws_naming("shape mismatch rejected", "grad: expected the shape of z",
                       [] { capsid::squash_backward_cpu(at::ones({3}), at::ones({4})); });
  at::manual_seed(0);
  for (auto shape : {std::vector<int64_t>{7, 5}, {130, 64}, {3, 4, 33}, {1, 1}}) {
    const auto z = at::randn(shape, at::kDouble) * 1.5;
    expect_close(capsid::squash_forward_cpu(z), formula(z), 1e-13, "cpu float64 forward");
    expect_close(capsid::squash_forward_cpu(z.to(at::kFloat)), formula(z.to(at::kFloat)), 1e-6, "cpu float32 forward");
    const auto zero = at::zeros(shape, at::kDouble);
    expect_close(capsid::squash_backward_cpu(at::randn(shape, at::kDouble), zero), zero, 0.0, "cpu backward at 0");
    if (at::hasCUDA()) {
      const auto zc = z.to(at::kFloat).cuda();
      expect_close(capsid::squash_forward_cuda(zc).cpu(), capsid::squash_forward_cpu(zc.cpu()), 1e-6,
                   "cuda vs cpu forward");
      const auto g = at::randn(shape, at::kFloat);
      expect_close(capsid::squash_backward_cuda(g.cuda(), zc).cpu(), capsid::squash_backward_cpu(g, zc.cpu()), 1e-5,
                   "cuda vs cpu backward");
    }
  }
  std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
