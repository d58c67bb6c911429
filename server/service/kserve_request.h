// The Open Inference Protocol (KServe v2) request as attnscore understands it:
// a ModelInferRequest mapped onto the same scoring::ScoreSpec/ScoreItem as an
// attnscore.v1 ScoreRequest, then checked by the same ValidateMapped (every
// limit and semantic check is shared).
//
// Models: "alibi" (ALiBi), and every loaded relative-position parameter set
// by its name; version "" or "1".
// Inputs (shapes follow `layout`, BHSD by default):
//   query [B,H,Lq,D], key [B,H,Lk,D]  FP32, FP16 or BF16 (required)
//   value [B,H,Lk,Dv]                 FP32, FP16 or BF16 (for `context`)
//   key_lengths [B]                   INT32
//   slopes [H]                        FP32 (model "alibi" only)
// Data in raw_input_contents (one entry per input, in input order) or typed
// contents (fp32_contents, int_contents; FP16/BF16 only raw), never both.
// Parameters: causal (bool, default false), scale (double or int64),
// layout (string: BHSD, BSHD, SBHD), output_dtype (string: FP32, FP16, BF16;
// default the query's datatype); Triton's `priority` and `timeout` are
// accepted and ignored, any other parameter is an error. Outputs by name:
// logits, probs, context (default logits), in the order asked for. An input's
// or an output's parameters may put its bytes in a registered shared-memory
// region (Triton's system shared memory): shared_memory_region (string),
// shared_memory_byte_size (int64) and shared_memory_offset (int64, default 0),
// the first two together.
//
// Errors: INVALID_ARGUMENT naming the input, parameter or output and the
// expected vs. actual value; NOT_FOUND for an unknown model or version;
// RESOURCE_EXHAUSTED for a response over --max-output-bytes.
// Ownership: the item's TensorRefs point into `request` (raw contents or
// fp32_contents) or where `raw` says, which must outlive them. Thread safety:
// pure functions.
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/scoring/score_spec.h"
#include "server/service/model_registry.h"
#include "server/service/output_placement.h"
#include "server/service/request_validation.h"

namespace attnscore::service::kserve {

// The built-in ALiBi model's name; a relative parameter set may not take it.
// (Pointer and length: string_view's array constructor tests the pointer for
// null, which GCC 12 cannot constant-evaluate under UBSan's null checks.)
inline constexpr absl::string_view kAlibiModel{kReservedModelName,
                                               sizeof(kReservedModelName) - 1};
// The one version every model has.
inline constexpr absl::string_view kModelVersion = "1";

// The protocol's datatype names: "FP32", "FP16", "BF16".
const char* DatatypeName(DType dtype);
// The inverse (exact names); nullopt for any other datatype.
std::optional<DType> ParseDatatype(absl::string_view name);

enum class Output { kLogits, kProbs, kContext };
// "logits", "probs", "context".
const char* OutputName(Output output);

struct MappedInfer {
  ValidatedRequest validated;
  std::vector<Output> outputs;  // reply order
  // The outputs placed in shared memory, to resolve against the caller's
  // regions (output_placement.h).
  std::vector<PlacementRequest> placements;
};

// The v1 output of `output` (for output_placement.h).
v1::Output V1Output(Output output);

// Where raw_input_contents[i]'s bytes are when the parser kept them outside
// the message (kserve_request_parser.h); empty: in the message.
using RawContents = absl::Span<const TensorBytesView>;
// Per input: its bytes when its parameters put it in shared memory and the
// caller resolved the range (SharedInputRequests, then the registry); empty
// when no input is.
using SharedInputs = absl::Span<const std::optional<TensorBytesView>>;

// An input whose parameters put its bytes in a shared-memory region (Triton's
// shared_memory_region, shared_memory_byte_size, shared_memory_offset). Such
// an input has no raw_input_contents entry.
struct SharedInputRequest {
  int input = 0;  // its index in request.inputs()
  v1::SharedMemoryRange range;
  std::string region_field, range_field;
};

// The inputs of `request` in shared memory; INVALID_ARGUMENT for any other
// input parameter, or a region without a size.
absl::StatusOr<std::vector<SharedInputRequest>> SharedInputRequests(
    const inference::ModelInferRequest& request);

// Maps and validates `request` (see the header comment). `raw`: one view per
// raw_input_contents entry, or empty; `shared`: as SharedInputs says.
absl::StatusOr<MappedInfer> MapInferRequest(
    const inference::ModelInferRequest& request, const RequestLimits& limits,
    const scoring::ModelSet& models, RawContents raw = {},
    SharedInputs shared = {});

// Resolves a model name: AlibiBias for "alibi", RelativeBias for a loaded set;
// NOT_FOUND naming `field`, the name and the models served.
absl::StatusOr<scoring::Bias> FindModel(absl::string_view field,
                                        absl::string_view name,
                                        absl::string_view version,
                                        const scoring::ModelSet& models);

}  // namespace attnscore::service::kserve

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_H_
