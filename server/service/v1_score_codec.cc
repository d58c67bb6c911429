#include "server/service/v1_score_codec.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "server/service/response_encoder.h"

namespace attnscore::service {

absl::StatusOr<ValidatedRequest> V1ScoreCodec::Parse(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  // A ByteBuffer copy only takes references to the slices.
  grpc::ByteBuffer slices(request);
  grpc::ProtoBufferReader reader(&slices);
  if (!reader.status().ok() || !request_.ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request: expected a serialized attnscore.v1.ScoreRequest, got ",
        request.Length(), " bytes that do not parse as one"));
  }
  return ValidateRequest(request_, limits, models);
}

grpc::ByteBuffer V1ScoreCodec::EncodeResult(const scoring::ScoreResult& result,
                                            const BatchTiming& timing) const {
  v1::Timing wire;
  wire.set_queue_us(timing.queue_us);
  wire.set_compute_us(timing.compute_us);
  wire.set_batch_size(static_cast<int32_t>(timing.batch_size));
  return EncodeScoreResponse(request_.request_id(), result, wire);
}

grpc::ByteBuffer V1ScoreCodec::EncodeError(const absl::Status& status) const {
  return EncodeErrorResponse(request_.request_id(), status);
}

}  // namespace attnscore::service
