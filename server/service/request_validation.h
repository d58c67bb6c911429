// Turns a parsed attnscore.v1.ScoreRequest into the scoring API's ScoreSpec
// and ScoreItem and checks it completely before anything is allocated for
// compute:
//   - here, what only the wire format can get wrong: enum values, missing
//     tensors, unknown model names;
//   - here, the server's caps (H, D/Dv, Lq/Lk) and the response size against
//     --max-output-bytes;
//   - through scoring::ValidateItem, the semantics: shapes against byte
//     lengths, dims > 0, q/k/v agreement, key_lengths, causal Lq <= Lk, scale,
//     ALiBi slopes, the model's H/D/P, finite values.
//
// Errors name the request field, the expected and the actual value:
// INVALID_ARGUMENT for a malformed request, NOT_FOUND for an unknown model,
// RESOURCE_EXHAUSTED (with the byte counts) for a response over the limit.
//
// Ownership: the TensorRefs in the returned item point into `request`'s tensor
// bytes, which must outlive them; the spec shares ownership of the relative
// model. Thread safety: pure function.
#ifndef ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_
#define ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "attnscore/v1/attnscore.pb.h"
#include "server/scoring/score_spec.h"

namespace attnscore::service {

// Server-wide caps on a single request, one per flag:
//   max_heads         --max-heads
//   max_head_dim      --max-head-dim (D and Dv)
//   max_seq_len       --max-seq-len (Lq and Lk)
//   max_output_bytes  --max-output-bytes (all requested outputs together)
// The member initialisers are the server's defaults: the flags take theirs from
// a default-constructed RequestLimits.
struct RequestLimits {
  int64_t max_heads = 256;
  int64_t max_head_dim = 1024;
  int64_t max_seq_len = 16384;
  int64_t max_output_bytes = int64_t{256} << 20;
};

struct ValidatedRequest {
  scoring::ScoreSpec spec;
  scoring::ScoreItem item;
  int64_t batch = 0;         // B: the items this request adds to a batch
  int64_t output_bytes = 0;  // all requested outputs together
};

absl::StatusOr<ValidatedRequest> ValidateRequest(
    const v1::ScoreRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models);

// The protocol-independent steps that follow the mapping of any wire format
// onto `mapped.spec` and `mapped.item`: scoring::ValidateItem, the caps, the
// response size; then fills `batch` and `output_bytes`. ValidateRequest ends
// with it, and so does the Open Inference Protocol's mapping
// (kserve_request.h), so both protocols share every check and limit.
absl::StatusOr<ValidatedRequest> ValidateMapped(ValidatedRequest mapped,
                                                const RequestLimits& limits);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_
