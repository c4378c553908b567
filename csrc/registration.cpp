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

TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) { m.impl("beam_step", &capsid::beam_step_cuda); }

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
TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) { m.impl("route_forward", &capsid::route_forward_cuda); }
