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
#include "beam_step.h"

TORCH_LIBRARY_FRAGMENT(capsid_C, m) {
  m.def(
      "beam_step(Tensor logits, Tensor node, Tensor score, Tensor finished, Tensor child_start, Tensor token, "
      "Tensor end_bits, int num_beams) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(capsid_C, CUDA, m) { m.impl("beam_step", &capsid::beam_step_cuda); }
