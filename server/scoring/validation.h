// Request checks and batch keys for the scoring API, before anything is
// allocated. Part of attnscore_scoring_api: no LibTorch.
//
// Thread safety: pure functions; call from any thread.
// Errors: ValidateItem returns INVALID_ARGUMENT naming the field and the
// expected vs. actual value.
#ifndef ATTNSCORE_SERVER_SCORING_VALIDATION_H_
#define ATTNSCORE_SERVER_SCORING_VALIDATION_H_

#include <string>

#include "absl/status/status.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// Validates one item against the spec: dtypes, ranks, shapes vs. byte counts,
// H/D agreement, key_lengths, causal Lq <= Lk, scale, the bias kind's own
// parameters (slopes; the relative model's H, D and P), values finite.
absl::Status ValidateItem(const ScoreSpec& spec, const ScoreItem& item);

// Items with equal keys can share one Scorer::ScoreBatch call.
std::string BatchKey(const ScoreSpec& spec, const ScoreItem& item);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_VALIDATION_H_
