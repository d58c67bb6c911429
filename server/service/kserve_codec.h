// The Open Inference Protocol's ModelInfer codec (score_codec.h): parses a
// ModelInferRequest once from gRPC's slices, maps and validates it
// (kserve_request.h), and encodes the ModelInferResponse with the outputs'
// bytes in raw_output_contents as slices over the scorer's output (no copy),
// exactly as response_encoder.h does for attnscore.v1.
//
// Ownership, thread safety, errors: as ScoreCodec. ModelInfer is unary: a
// failure is the call's status, so EncodeError is ScoreCodec's default.
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/service/kserve_request.h"
#include "server/service/kserve_request_parser.h"
#include "server/service/score_codec.h"

namespace attnscore::service::kserve {

// ModelInferResponse{model_name, model_version "1", id, parameters {queue_us,
// compute_us, batch_size} (int64), outputs (name, datatype, shape) in
// `outputs` order, raw_output_contents}: the bytes SerializeAsString() would
// write for that message, tensor data as external slices.
// REQUIRES: `result` holds every output in `outputs`.
grpc::ByteBuffer EncodeInferResponse(absl::string_view model_name,
                                     absl::string_view id,
                                     const std::vector<Output>& outputs,
                                     const scoring::ScoreResult& result,
                                     const BatchTiming& timing);

class KServeInferCodec final : public ScoreCodec {
 public:
  // INVALID_ARGUMENT for bytes that are not a ModelInferRequest, else
  // MapInferRequest's error.
  absl::StatusOr<ValidatedRequest> Parse(
      const grpc::ByteBuffer& request, const RequestLimits& limits,
      const scoring::ModelSet& models) override;
  absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result,
      const BatchTiming& timing) const override;
  const std::string& request_id() const override {
    return request_.message.id();
  }

 private:
  ParsedInferRequest request_;
  std::vector<Output> outputs_;
};

}  // namespace attnscore::service::kserve

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_CODEC_H_
