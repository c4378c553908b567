// squash(z) = z * ||z|| / (0.5 + ||z||^2) over the last dimension, and its backward.
// Accumulation in float (double for double inputs); outputs keep the input dtype.
#pragma once

#include <ATen/core/Tensor.h>

namespace capsid {

at::Tensor squash_forward_cpu(const at::Tensor& z);
at::Tensor squash_backward_cpu(const at::Tensor& grad, const at::Tensor& z);
at::Tensor squash_forward_cuda(const at::Tensor& z);
at::Tensor squash_backward_cuda(const at::Tensor& grad, const at::Tensor& z);

// Shared argument checks: they name the argument, what was expected and what came.
void check_squash_input(const at::Tensor& z, const char* name);
void check_squash_pair(const at::Tensor& grad, const at::Tensor& z);

}  // namespace capsid
