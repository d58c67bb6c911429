// The Open Inference Protocol's ModelInfer codec (score_codec.h): parses a
// ModelInferRequest once from gRPC's slices, maps and validates it
// (kserve_request.h), and encodes the ModelInferResponse with the outputs'
// bytes in raw_output_contents as slices over the scorer's output (no copy),
// exactly as response_encoder.h does for attnscore.v1; or, for outputs the
// request placed in shared memory, written there (output_placement.h).
//
// Ownership, thread safety, errors: as ScoreCodec. ModelInfer is unary: a
// failure is the call's status, so EncodeError is ScoreCodec's default.
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/service/kserve_request.h"
#include "server/service/kserve_request_parser.h"
#include "server/service/output_placement.h"
#include "server/service/response_encoder.h"
#include "server/service/score_codec.h"
#include "server/service/shared_memory.h"

namespace attnscore::service::kserve {

// ModelInferResponse{model_name, model_version "1", id, parameters {queue_us,
// compute_us, batch_size} (int64), outputs (name, datatype, shape) in
// `outputs` order, raw_output_contents}: the bytes SerializeAsString() would
// write for that message, tensor data as external slices. An output in
// `placed` has, as Triton's, an empty raw_output_contents entry (the entries
// stay aligned with the outputs) and its range in its parameters
// shared_memory_region, shared_memory_offset and shared_memory_byte_size.
// REQUIRES: `result` holds every output in `outputs`.
grpc::ByteBuffer EncodeInferResponse(absl::string_view model_name,
                                     absl::string_view id,
                                     const std::vector<Output>& outputs,
                                     const scoring::ScoreResult& result,
                                     const BatchTiming& timing,
                                     const PlacedRanges& placed = {});

class KServeInferCodec final : public ScoreCodec {
 public:
  // Without shared memory: a request placing an output gets
  // FAILED_PRECONDITION.
  KServeInferCodec() = default;
  // Placed outputs resolve against `owner`'s regions of `shared_memory` (not
  // owned; outlives the codec; may be null).
  KServeInferCodec(const SharedMemoryRegistry* shared_memory, std::string owner)
      : shared_memory_(shared_memory), owner_(std::move(owner)) {}

  // INVALID_ARGUMENT for bytes that are not a ModelInferRequest, else the
  // shared-memory inputs' (their regions and ranges), MapInferRequest's, then
  // the placements' (output_placement.h).
  absl::StatusOr<ValidatedRequest> Parse(
      const grpc::ByteBuffer& request, const RequestLimits& limits,
      const scoring::ModelSet& models) override;
  // ABORTED when a region the inputs were read from broke; then writes the
  // placed outputs first: ABORTED when a region broke.
  absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result,
      const BatchTiming& timing) const override;
  const std::string& request_id() const override {
    return request_.message.id();
  }

 private:
  // Per input, its bytes in a region of the caller's when its parameters put
  // it there (empty when none does); holds those regions in inputs_.
  absl::StatusOr<std::vector<std::optional<TensorBytesView>>>
  ResolveSharedInputs();

  const SharedMemoryRegistry* const shared_memory_ = nullptr;
  const std::string owner_;
  ParsedInferRequest request_;
  std::vector<Output> outputs_;
  std::vector<ResolvedPlacement> placements_;
  // The ranges the inputs are read from, their regions held until the reply
  // is encoded.
  std::vector<ResolvedInput> inputs_;
};

}  // namespace attnscore::service::kserve

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_
