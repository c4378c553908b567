// Argument checks of the CUDA ops, in one place, compiled by the host C++ compiler and run by
// the op registrations (csrc/registration.cpp) before the nvcc-compiled entry points.
//
// Known bug (open): on an H100 with torch 2.11 and CUDA 13.0 (2026-12-07), a failing check of
// capsid_C::beam_step (eos outside the row) ends the process with a segmentation fault instead
// of raising RuntimeError. Moving the checks here from beam_step.cu did not change that (second
// GPU run the same day), so the cause is not where the check is compiled; it is not yet found.
// tests/test_beam.py::test_cuda_step_refuses_token_ids_outside_the_row runs the call in a child
// process and fails while the bug stands. The public beam_step passes the trie's own ids.
#include "beam_step.h"
#include "route_fwd.h"
#include "squash.h"  // shape_str

#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace capsid {
namespace {

void check_input(const at::Tensor& t, const char* name, at::ScalarType dtype, const at::Tensor& like) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), name, ": expected a CUDA tensor on ",
              like.device().str(), ", got one on ", t.device().str());
  TORCH_CHECK(t.scalar_type() == dtype, name, ": expected ", c10::toString(dtype), ", got ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
}

void check_like_r(const at::Tensor& t, const char* name, const at::Tensor& r, int64_t dim) {
  TORCH_CHECK(t.is_cuda() && t.device() == r.device(), name, ": expected a CUDA tensor on ", r.device().str(),
              ", got one on ", t.device().str());
  TORCH_CHECK(t.scalar_type() == r.scalar_type(), name, ": expected dtype ", c10::toString(r.scalar_type()),
              " (that of r), got ", c10::toString(t.scalar_type()));
  TORCH_CHECK(t.dim() == dim, name, ": expected ", dim, " dimensions, got shape ", shape_str(t.sizes()));
}

}  // namespace

void check_beam_step(const at::Tensor& logits, const at::Tensor& node, const at::Tensor& score,
                     const at::Tensor& finished, const at::Tensor& child_start, const at::Tensor& token,
                     const at::Tensor& end_bits, int64_t num_beams, int64_t pad, int64_t eos) {
  TORCH_CHECK(logits.is_cuda(), "logits: expected a CUDA tensor, got one on ", logits.device().str());
  TORCH_CHECK(logits.dim() == 2, "logits: expected [Q*B, V], got ", shape_str(logits.sizes()));
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16,
              "logits: expected float32 or bfloat16, got ", c10::toString(logits.scalar_type()));
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(num_beams >= 1 && num_beams <= kMaxBeams, "num_beams: the cuda beam step takes 1 to ", kMaxBeams,
              " beams, got ", num_beams);
  TORCH_CHECK(rows % num_beams == 0, "logits: ", rows, " rows is not a multiple of num_beams = ", num_beams);
  TORCH_CHECK(vocab < (int64_t(1) << 31), "logits: vocabulary size ", vocab, " out of range");
  // The token ids are the caller's (capsid_kernels.decode.trie holds them); EOS is the logit
  // column every end node reads, so an id outside the row would read out of bounds.
  TORCH_CHECK(eos >= 0 && eos < vocab, "eos: expected a token id in [0, V = ", vocab, "), got ", eos,
              "; pass capsid_kernels.decode.trie.EOS");
  TORCH_CHECK(pad >= 0 && pad < vocab, "pad: expected a token id in [0, V = ", vocab, "), got ", pad,
              "; pass capsid_kernels.decode.trie.PAD");
  check_input(node, "node", at::kInt, logits);
  check_input(score, "score", at::kFloat, logits);
  check_input(finished, "finished", at::kBool, logits);
  check_input(child_start, "child_start", at::kInt, logits);
  check_input(end_bits, "end_bits", at::kInt, logits);
  TORCH_CHECK(token.is_cuda() && token.device() == logits.device() && token.is_contiguous() &&
                  (token.scalar_type() == at::kShort || token.scalar_type() == at::kInt),
              "token: expected a contiguous int16 or int32 CUDA tensor on ", logits.device().str());
  TORCH_CHECK(node.numel() == rows && score.numel() == rows && finished.numel() == rows,
              "node, score, finished: expected ", rows, " entries each");
  TORCH_CHECK(child_start.numel() >= 1, "child_start: expected at least one entry");
  TORCH_CHECK((rows + kRowWarps - 1) / kRowWarps <= 0x7fffffff, "logits: too many rows for one launch");
}

void check_route_forward(const at::Tensor& r, const at::Tensor& W, const at::Tensor& b, const at::Tensor& D,
                         int64_t rounds) {
  TORCH_CHECK(r.is_cuda(), "r: expected a CUDA tensor, got one on ", r.device().str());
  TORCH_CHECK(r.scalar_type() == at::kFloat || r.scalar_type() == at::kBFloat16,
              "r: expected float32 or bfloat16, got ", c10::toString(r.scalar_type()));
  TORCH_CHECK(r.dim() == 2, "r: expected [N, d], got shape ", shape_str(r.sizes()));
  check_like_r(W, "W", r, 3);
  check_like_r(b, "b", r, 2);
  check_like_r(D, "D", r, 2);
  const int64_t n = r.size(0), d = r.size(1), K = W.size(0), dc = W.size(1);
  TORCH_CHECK(W.size(2) == d, "W: expected [K, d_c, ", d, "], got shape ", shape_str(W.sizes()));
  TORCH_CHECK(b.size(0) == K && b.size(1) == dc, "b: expected [", K, ", ", dc, "], got shape ", shape_str(b.sizes()));
  TORCH_CHECK(D.size(0) == d && D.size(1) == dc, "D: expected [", d, ", ", dc, "], got shape ", shape_str(D.sizes()));
  TORCH_CHECK(d >= 1 && d <= kRouteMaxD, "r: the cuda routing kernel takes 1 <= d <= ", kRouteMaxD, ", got d = ", d,
              " (use backend='triton' or 'eager')");
  TORCH_CHECK(dc >= 1 && dc <= kRouteMaxDc, "W: the cuda routing kernel takes 1 <= d_c <= ", kRouteMaxDc,
              ", got d_c = ", dc, " (use backend='triton' or 'eager')");
  TORCH_CHECK(K >= 1 && K < (int64_t(1) << 30), "W: expected 1 <= K < 2^30 capsules, got K = ", K);
  TORCH_CHECK(rounds >= 1 && rounds <= 64, "rounds: expected 1..64, got ", rounds);
  TORCH_CHECK(n < (int64_t(1) << 31) - kRouteMaxBM, "r: too many items for one launch: ", n);
}

}  // namespace capsid
