// Creates the ATen (LibTorch) implementation of Scorer. This header is
// LibTorch-free; its definition lives in attnscore_scoring, which links
// LibTorch: only main.cc, the scoring tests and the benchmarks call it.
//
// Thread safety: call CreateAtenScorer once, at start-up (it sets the process's
// intra-op thread count). Errors: INVALID_ARGUMENT for a malformed device or a
// negative thread count; FAILED_PRECONDITION with a clear message when the
// device is not available.
#ifndef ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_
#define ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/scoring/scorer.h"

namespace attnscore::scoring {

struct ScorerOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  int intra_op_threads = 0;    // 0: the number of cores
};

absl::StatusOr<std::unique_ptr<Scorer>> CreateAtenScorer(
    const ScorerOptions& options);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ATEN_SCORER_H_
