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
