#include "server/service/v1_score_codec.h"

#include "server/service/response_encoder.h"

namespace attnscore::service {

absl::StatusOr<ValidatedRequest> V1ScoreCodec::Parse(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  if (absl::Status parsed =
          ParseByteBuffer(request, "attnscore.v1.ScoreRequest", request_);
      !parsed.ok()) {
    return parsed;
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
