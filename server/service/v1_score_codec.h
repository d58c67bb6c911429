// The attnscore.v1 ScoreRequest/ScoreResponse codec (score_codec.h): parses
// the request once from gRPC's slices (the tensor bytes are copied once, into
// the message's strings, which the scorer then reads in place), validates it
// with ValidateRequest, and encodes replies with response_encoder.h.
//
// Ownership, thread safety, errors: as ScoreCodec.
#ifndef ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_
#define ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_

#include <string>

#include "attnscore/v1/attnscore.pb.h"
#include "server/service/score_codec.h"

namespace attnscore::service {

class V1ScoreCodec final : public ScoreCodec {
 public:
  // INVALID_ARGUMENT for bytes that are not a ScoreRequest, else
  // ValidateRequest's error.
  absl::StatusOr<ValidatedRequest> Parse(
      const grpc::ByteBuffer& request, const RequestLimits& limits,
      const scoring::ModelSet& models) override;
  grpc::ByteBuffer EncodeResult(const scoring::ScoreResult& result,
                                const BatchTiming& timing) const override;
  // ScoreResponse{request_id, error}: how ScoreStream reports a failure.
  grpc::ByteBuffer EncodeError(const absl::Status& status) const override;
  // The request_id when the message starts with it (protobuf writes fields
  // in number order, and request_id is field 1), from at most its first
  // few hundred bytes.
  void Peek(const grpc::ByteBuffer& request) override;
  // At most kMaxClientStringBytes of it: an over-long id is refused, and
  // echoed only that far.
  const std::string& request_id() const override { return id_; }

 private:
  v1::ScoreRequest request_;
  std::string id_;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_
