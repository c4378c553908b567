// The Python module capsid_kernels._C: importing it registers the operators (see
// registration.cpp); build_info() says what this binary was compiled with.
#include <cuda_runtime_api.h>
#include <torch/extension.h>

#ifndef CAPSID_ARCH_LIST
#define CAPSID_ARCH_LIST "unknown"
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["cudart_version"] = CUDART_VERSION;
  info["arch_list"] = CAPSID_ARCH_LIST;
  info["ops"] = pybind11::make_tuple("squash_forward", "squash_backward", "beam_step", "route_forward");
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "capsid-kernels CUDA C++ operators (namespace torch.ops.capsid_C)";
  m.def("build_info", &build_info, "What this extension was compiled with");
}
