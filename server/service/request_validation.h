// Turns a parsed attnscore.v1.ScoreRequest into the scoring API's ScoreSpec
// and ScoreItem and checks it completely before anything is allocated for
// compute:
//   - here, what only the wire format can get wrong: enum values, missing
//     tensors, unknown model names;
//   - here, the server's caps (H, D/Dv, Lq/Lk), the response size against
//     --max-output-bytes, and the predicted peak memory and compute work
//     (scoring::EstimateResources) against --max-request-memory and
//     --max-request-work;
//   - here, client strings (request_id, model names) of at most
//     kMaxClientStringBytes;
//   - through scoring::ValidateItem, the semantics: shapes against byte
//     lengths, dims > 0, q/k/v agreement, key_lengths, causal Lq <= Lk, scale,
//     ALiBi slopes, the model's H/D/P, finite values.
//
// Errors name the request field, the expected and the actual value:
// INVALID_ARGUMENT for a malformed request, NOT_FOUND for an unknown model,
// RESOURCE_EXHAUSTED (with the numbers) for a response, a peak memory or a
// work over its limit. Client strings are echoed in messages only as
// ClientStringForLog's bounded prefix.
//
// Ownership: the TensorRefs in the returned item point into `request`'s tensor
// bytes (or where RequestTensorBytes says), which must outlive them; the spec
// shares ownership of the relative model. Thread safety: pure function.
#ifndef ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_
#define ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnscore/v1/attnscore.pb.h"
#include "server/scoring/resource_estimate.h"
#include "server/scoring/score_spec.h"
#include "server/scoring/validation.h"

namespace attnscore::service {

// Server-wide caps on a single request, one per flag:
//   max_heads         --max-heads
//   max_head_dim      --max-head-dim (D and Dv)
//   max_seq_len       --max-seq-len (Lq and Lk)
//   max_output_bytes  --max-output-bytes (all requested outputs together)
//   max_request_memory --max-request-memory (predicted peak working memory)
//   max_request_work  --max-request-work (predicted work units)
// The member initialisers are the server's defaults: the flags take theirs from
// a default-constructed RequestLimits.
struct RequestLimits {
  int64_t max_heads = 256;
  int64_t max_head_dim = 1024;
  int64_t max_seq_len = 16384;
  int64_t max_output_bytes = int64_t{256} << 20;
  // 1 GiB: a quarter of the 4 GiB the Kubernetes base gives a pod, so that a
  // few such requests fit next to the process itself.
  int64_t max_request_memory = int64_t{1} << 30;
  // 1e11 work units of scoring::EstimateResources (floating-point operations
  // plus a calibrated per-row and per-head charge): about 1.5 s of the blocked
  // path on 2 cores of a 2024 server CPU. Admits B8 H8 L512 D64 with every
  // output (~4.3e9), B1 H8 L4096 D128 logits (~3.4e10) and the decode preset;
  // refuses H16 Lq=Lk=16384 D64 (~5.5e11) and issue 9's B=2,000,000 rows of
  // H=Lq=Lk=D=1 (~1.2e11: the per-row charge dominates). Operators with long
  // contexts or a GPU raise it. request_validation_test pins these cases.
  int64_t max_request_work = 100'000'000'000;
  // How a request's peak memory and work are predicted: the scorer's own
  // estimate (Scorer::Estimate, set by the service from its scorer), which
  // depends on its compute path and device. Empty: the CPU blocked path's.
  std::function<scoring::ResourceEstimate(const scoring::ScoreSpec&,
                                          const scoring::ProblemSize&)>
      estimate;
};

// Longest request_id or model name accepted (bytes); longer ones are
// INVALID_ARGUMENT.
inline constexpr size_t kMaxClientStringBytes = 256;
// Most bytes of a client string that a log line or an error message carries.
inline constexpr size_t kClientStringLogPrefix = 64;

// `text` for a log line or an error message: its first kClientStringLogPrefix
// bytes, C-escaped, and "...(N bytes)" when it was longer.
std::string ClientStringForLog(absl::string_view text);

// INVALID_ARGUMENT naming `field` and the length when `value` is over
// kMaxClientStringBytes.
absl::Status CheckClientString(absl::string_view field,
                               absl::string_view value);

struct ValidatedRequest {
  scoring::ScoreSpec spec;
  scoring::ScoreItem item;
  int64_t batch = 0;            // B: the items this request adds to a batch
  int64_t output_bytes = 0;     // all requested outputs together
  int64_t peak_bytes = 0;       // scoring::EstimateResources' peak_bytes
  int64_t in_flight_bytes = 0;  // its in_flight_bytes(): the budget's charge
  int64_t work = 0;             // and its work
  // The parser's scans of the item's bytes, when it made them.
  scoring::InputScans scans;
};

// A tensor's bytes held outside the message (score_request_parser.h keeps
// them in a pooled block) and, when the parser scanned them, the scan.
struct TensorBytesView {
  const void* data = nullptr;
  size_t size = 0;
  std::optional<scoring::FiniteScan> scan;
  const char* bytes_field = "data";  // scoring::TensorRef::bytes_field
};
// Where each tensor's bytes are: unset, in the message's own `data`.
struct RequestTensorBytes {
  std::optional<TensorBytesView> query;
  std::optional<TensorBytesView> key;
  std::optional<TensorBytesView> value;
};

// `bytes` says where the tensors' bytes are when they are not in `request`;
// the item's TensorRefs point there.
absl::StatusOr<ValidatedRequest> ValidateRequest(
    const v1::ScoreRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models, const RequestTensorBytes& bytes = {});

// The protocol-independent steps that follow the mapping of any wire format
// onto `mapped.spec` and `mapped.item`: scoring::ValidateItem, the caps, the
// response size; then fills `batch` and `output_bytes`. ValidateRequest ends
// with it, and so does the Open Inference Protocol's mapping
// (kserve_request.h), so both protocols share every check and limit.
absl::StatusOr<ValidatedRequest> ValidateMapped(ValidatedRequest mapped,
                                                const RequestLimits& limits);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_REQUEST_VALIDATION_H_
