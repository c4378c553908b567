// Operator schemas and their CPU/CUDA implementations (namespace capsid_C). The Python
// side adds fake implementations and autograd when it loads the extension.
#include <torch/library.h>

#include "squash.h"

TORCH_LIBRARY(capsid_C, m) {
  m.def("squash_forward(Tensor z) -> Tensor");
  m.def("squash_backward(Tensor grad, Tensor z) -> Tensor");
}

TORCH_LIBRARY_IMPL(capsid_C, CPU, m) {
  m.impl("squash_forward", &capsid::squash_forward_cpu);
  m.impl("squash_backward", &capsid::squash_backward_cpu);
}

TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) {
  m.impl("squash_forward", &capsid::squash_forward_cuda);
  m.impl("squash_backward", &capsid::squash_backward_cuda);
}

// Trie-constrained beam step (csrc/beam_step.cu); the torch fallback serves CPU tensors.
// pad and eos have no defaults: the token-id layout lives in capsid_kernels.decode.trie only.
#include "beam_step.h"

TORCH_LIBRARY_FRAGMENT(capsid_C, m) {
  m.def(
      "beam_step(Tensor logits, Tensor node, Tensor score, Tensor finished, Tensor child_start, Tensor token, "
      "Tensor end_bits, int num_beams, int pad, int eos) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace {
// The argument checks (csrc/checks.cpp, with the open segfault bug) run before the kernel wrapper.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_checked(
    const at::Tensor& logits, const at::Tensor& node, const at::Tensor& score, const at::Tensor& finished,
    const at::Tensor& child_start, const at::Tensor& token, const at::Tensor& end_bits, int64_t num_beams,
    int64_t pad, int64_t eos) {
  capsid::check_beam_step(logits, node, score, finished, child_start, token, end_bits, num_beams, pad, eos);
  return capsid::beam_step_cuda(logits, node, score, finished, child_start, token, end_bits, num_beams, pad, eos);
}
}  // namespace

TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) { m.impl("beam_step", &beam_step_checked); }

// Fused routing-layer forward (csrc/route_fwd.cu). CPU tensors get an error that names the fix.
#include "route_fwd.h"

namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
route_forward_cpu(const at::Tensor& r, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, bool, double,
                  double, double, bool, bool, bool, bool, int64_t) {
  TORCH_CHECK(false, "route_forward: the cuda routing kernel needs CUDA tensors, got r on ", r.device().str(),
              " (use backend='eager' for CPU tensors)");
}
}  // namespace

TORCH_LIBRARY_FRAGMENT(capsid_C, m) {
  m.def(
      "route_forward(Tensor r, Tensor W, Tensor b, Tensor D, int rounds, bool hard, float eta, float tau, float eps, "
      "bool last, bool need_weights, bool need_onorm, bool tf32, int stage_skip=0) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(capsid_C, CPU, m) { m.impl("route_forward", &route_forward_cpu); }
namespace {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
route_forward_checked(const at::Tensor& r, const at::Tensor& W, const at::Tensor& b, const at::Tensor& D,
                      int64_t rounds, bool hard, double eta, double tau, double eps, bool last, bool need_weights,
                      bool need_onorm, bool tf32, int64_t stage_skip) {
  capsid::check_route_forward(r, W, b, D, rounds);
  return capsid::route_forward_cuda(r, W, b, D, rounds, hard, eta, tau, eps, last, need_weights, need_onorm, tf32,
                                    stage_skip);
}
}  // namespace

TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) { m.impl("route_forward", &route_forward_checked); }
