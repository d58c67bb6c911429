// One scoring request in one wire protocol: how its bytes become the scoring
// API's ScoreSpec/ScoreItem, and how its result or error goes back on the wire.
// The service's pipeline (AttentionScorerService: validate, schedule, batch,
// compute, the single Answer exit) is protocol-agnostic and holds a codec per
// request; attnscore.v1 (V1ScoreCodec, v1_score_codec.h) and the Open Inference
// Protocol (KServeInferCodec, kserve_codec.h) each implement one.
//
// Ownership: a codec owns its parsed request; the TensorRefs of the item that
// Parse() returns point into it, so the codec must outlive the item's use (the
// task that holds both guarantees it). Thread safety: one codec belongs to one
// request, used by one thread at a time. Errors: Parse() returns the request's
// validation error (INVALID_ARGUMENT naming the field, NOT_FOUND for an
// unknown model, RESOURCE_EXHAUSTED for a response over the limit).
#ifndef ATTNSCORE_SERVER_SERVICE_SCORE_CODEC_H_
#define ATTNSCORE_SERVER_SERVICE_SCORE_CODEC_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/scoring/score_spec.h"
#include "server/service/request_validation.h"

namespace attnscore::service {

// Where a request's time went, for the reply (v1 Timing, KServe parameters).
struct BatchTiming {
  int64_t queue_us = 0;    // accepted to the start of its batch's compute
  int64_t compute_us = 0;  // its batch's ScoreBatch call
  int64_t batch_size = 0;  // items (sum of B) in that batch
};

class ScoreCodec {
 public:
  virtual ~ScoreCodec() = default;

  // Parses `request` (keeping the message: the item's tensors point into it)
  // and validates it completely against `limits` and `models`.
  virtual absl::StatusOr<ValidatedRequest> Parse(
      const grpc::ByteBuffer& request, const RequestLimits& limits,
      const scoring::ModelSet& models) = 0;

  // The reply to a successful request, tensors zero-copy over `result` (or
  // written where the request placed them: an error then fails the request).
  // REQUIRES: Parse() returned OK.
  virtual absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result, const BatchTiming& timing) const = 0;

  // A failed request's answer as a message, for streams that report errors
  // in band; called only for them. Codecs of unary-only methods, whose
  // failures are the call's status, keep this default (an empty buffer).
  // REQUIRES: !status.ok().
  virtual grpc::ByteBuffer EncodeError(const absl::Status& /*status*/) const {
    return grpc::ByteBuffer();
  }

  // Before anything else is looked at: takes what it cheaply can from the
  // raw request (its id) so that a refusal before parsing can still be
  // matched by the client. The default takes nothing.
  virtual void Peek(const grpc::ByteBuffer& /*request*/) {}

  // The caller's request id, for replies and log lines ("" if none).
  virtual const std::string& request_id() const = 0;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_SCORE_CODEC_H_
