// squash(z) = z * ||z|| / (0.5 + ||z||^2) over the last dimension, and its backward.
// Accumulation in float (double for double inputs); outputs keep the input dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace capsid {

at::Tensor squash_forward_cpu(const at::Tensor& z);
at::Tensor squash_backward_cpu(const at::Tensor& grad, const at::Tensor& z);
at::Tensor squash_forward_cuda(const at::Tensor& z);
at::Tensor squash_backward_cuda(const at::Tensor& grad, const at::Tensor& z);

// "[3, 4]": shapes are formatted here rather than streamed with c10's operator<<, whose use from
// an extension crashed the process under torch 2.11 (seen on the GPU host; C++ alone was fine).
std::string shape_str(at::IntArrayRef sizes);

// Shared argument checks: they name the argument, what was expected and what came.
void check_squash_input(const at::Tensor& z, const char* name);
void check_squash_pair(const at::Tensor& grad, const at::Tensor& z);

}  // namespace capsid
