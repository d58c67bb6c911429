// The fused ALiBi logits kernel (alibi_logits_tile.h) at the ATen level: one
// launch writes scale * q.k^T plus the ALiBi bias, -inf where causal or the
// key length hides a key, straight into the logits, and skips the products of
// tiles that causal hides entirely. The batched path (batched_attention.cc)
// uses it for ALiBi logits on a CUDA device, for query tiles where it pays
// (AlibiLogitsKernelPays, batched_estimate.h, which also counts the memory it
// saves); the library's baddbmm stays the path elsewhere, and the benchmark
// (bench/device_bench.cc) measures both. The kernel is compiled only in CUDA
// builds: exactly one of alibi_logits_cuda.cc (with alibi_logits_cuda.cu) and
// alibi_logits_none.cc defines RunAlibiLogitsKernel and
// AlibiLogitsKernelAvailable.
//
// Thread safety: reentrant; the kernel runs on the calling thread's current
// stream. Errors: RunAlibiLogitsKernel throws c10::Error when the kernel is
// not available for the tensors' device, or the launch fails.
#ifndef ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_H_
#define ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_H_

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "server/scoring/alibi_logits_tile.h"

namespace attnscore::scoring {

// The operands of one launch. q [B,H,T,D] and k [B,H,Lk,D] float32, any
// strides but a contiguous last dimension; neg_slopes [H] float32 (-m_h);
// key_lengths [B] int64, or undefined for all Lk; out [B,H,T,Lk] float32 with
// a contiguous last dimension. first_position: the absolute position of q's
// row 0 (Lk - Lq + the first row's index in the whole query).
struct AlibiLogitsOperands {
  at::Tensor query;
  at::Tensor key;
  at::Tensor neg_slopes;
  at::Tensor key_lengths;
  at::Tensor out;
  int64_t first_position = 0;
  double scale = 1.0;
  bool causal = false;
};

// The kernel's arguments for `ops`, with the quad flags from the actual
// strides and alignment. Throws c10::Error when a shape, dtype or last-dim
// stride is not as required above. Used by the launcher and by the tests,
// which run the kernel's steps on the CPU with these arguments.
alibi_tile::AlibiLogitsArgs MakeAlibiLogitsArgs(const AlibiLogitsOperands& ops);

// Whether RunAlibiLogitsKernel runs on `device`: a CUDA build and a CUDA
// device.
bool AlibiLogitsKernelAvailable(const at::Device& device);

// Launches the kernel on `ops`' CUDA device, on the current stream.
void RunAlibiLogitsKernel(const AlibiLogitsOperands& ops);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ALIBI_LOGITS_H_
