// Creates the ATen (LibTorch) implementation of Scorer. This header is
// LibTorch-free; its definition lives in attnscore_scoring, which links
// LibTorch: only main.cc, the scoring tests and the benchmarks call it.
//
// Thread safety: call CreateAtenScorer once, at start-up (it sets the process's
// intra-op thread count). Errors: INVALID_ARGUMENT for a malformed device or a
// negative thread count, or the blocked path asked for on a GPU;
// FAILED_PRECONDITION with a clear message when the
// device is not available.
#ifndef ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_
#define ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/scoring/scorer.h"

namespace attnscore::scoring {

// How a batch is computed: `blocked` (blocked_attention.h: per (item, head),
// tiles of query rows; the CPU only) or `batched` (batched_attention.h: whole
// batched products; any device). `auto`: batched on CUDA, blocked on the CPU.
enum class ComputePath { kAuto, kBlocked, kBatched };

// "auto", "blocked", "batched"; INVALID_ARGUMENT otherwise.
absl::StatusOr<ComputePath> ParseComputePath(absl::string_view name);

struct ScorerOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  int intra_op_threads = 0;    // 0: the number of cores
  ComputePath compute_path = ComputePath::kAuto;
  // The batched path's ALiBi logits by the project's kernel where it runs
  // (alibi_logits.h: CUDA); false keeps the library's products (an operator's
  // way back should the kernel misbehave on some GPU).
  bool alibi_kernel = true;
};

absl::StatusOr<std::unique_ptr<Scorer>> CreateAtenScorer(
    const ScorerOptions& options);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_
