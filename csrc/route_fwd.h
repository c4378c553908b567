// Fused forward of one routing layer (SPEC §2) on tensor cores with mma.sync: the CUDA C++
// backend of capsid::route. Same contract and outputs as capsid_kernels/triton/route_fwd.py;
// the schedule is described in csrc/ROUTE_CUDA.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace capsid {

// Largest sizes one item tile keeps on chip (d padded to 128, d_c to 64/96/128).
constexpr int64_t kRouteMaxD = 128;
constexpr int64_t kRouteMaxDc = 128;
constexpr int64_t kRouteMaxBM = 256;  // the largest item tile of one block

// Every argument check of the op, in g++-compiled code (csrc/checks.cpp): throws c10::Error
// naming the argument, what was expected and what came. The op's registration calls it before
// route_forward_cuda, which assumes valid inputs.
void check_route_forward(const at::Tensor& r, const at::Tensor& W, const at::Tensor& b, const at::Tensor& D,
                         int64_t rounds);

// Returns (q, r', z, logits [N, K] or empty, lse [N] or empty, ||o|| [N] or empty, token, reason).
// The Python wrapper turns (logits, lse) into c* = exp(logits - lse). ``tf32`` applies to float32
// inputs (tf32 vote products); otherwise float32 uses a split 3xTF32 product (float32 accuracy).
// ``stage_skip`` is for leave-one-stage-out timings only (bit 1: no agreement/softmax work,
// bit 2: no tensor-core products; either gives meaningless outputs). Bit 4 keeps valid outputs:
// every block visits the capsules in order 0..K-1 instead of from its own offset; bit 8 too:
// one 16-row tile per warp (128 items per block) at d_c <= 64 instead of two.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
route_forward_cuda(const at::Tensor& r, const at::Tensor& W, const at::Tensor& b, const at::Tensor& D,
                   int64_t rounds, bool hard, double eta, double tau, double eps, bool last, bool need_weights,
                   bool need_onorm, bool tf32, int64_t stage_skip);

}  // namespace capsid
