// One trie-constrained beam step (SPEC §7) on the GPU, no host synchronisation.
// Contract (shapes, tie order, empty beams): capsid_kernels/decode/beam_step_torch.py.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

namespace capsid {

constexpr int kRowWarps = 8;     // beams (rows) per block of the candidate kernel
constexpr int kMaxBeams = 128;   // 4 list heads per lane in the merge

// Every argument check of the op, in g++-compiled code (csrc/checks.cpp): throws c10::Error
// naming the argument, what was expected and what came. The op's registration calls it before
// beam_step_cuda, which assumes valid inputs.
void check_beam_step(const at::Tensor& logits, const at::Tensor& node, const at::Tensor& score,
                     const at::Tensor& finished, const at::Tensor& child_start, const at::Tensor& token,
                     const at::Tensor& end_bits, int64_t num_beams, int64_t pad, int64_t eos);

// Returns (token int64, parent int64, node int32, score float32, finished bool), each [Q*B].
// pad and eos are the caller's token ids (capsid_kernels.decode.trie); nothing here fixes them.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> beam_step_cuda(
    const at::Tensor& logits, const at::Tensor& node, const at::Tensor& score, const at::Tensor& finished,
    const at::Tensor& child_start, const at::Tensor& token, const at::Tensor& end_bits, int64_t num_beams,
    int64_t pad, int64_t eos);

}  // namespace capsid
