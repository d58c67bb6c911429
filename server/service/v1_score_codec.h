// The attnscore.v1 ScoreRequest/ScoreResponse codec (score_codec.h): parses
// the request once from gRPC's slices (score_request_parser.h: the tensor
// bytes are copied once, into pooled blocks that the scorer then reads in
// place, and scanned as they are copied), validates it with ValidateRequest,
// and encodes replies with response_encoder.h.
//
// Ownership, thread safety, errors: as ScoreCodec.
#ifndef ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_
#define ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "server/service/output_placement.h"
#include "server/service/score_codec.h"
#include "server/service/score_request_parser.h"

namespace attnscore::service {

class V1ScoreCodec final : public ScoreCodec {
 public:
  // Without shared memory: a request with placements gets
  // FAILED_PRECONDITION.
  V1ScoreCodec() = default;
  // Placements resolve against `owner`'s regions of `shared_memory` (not
  // owned; outlives the codec; may be null).
  V1ScoreCodec(const SharedMemoryRegistry* shared_memory, std::string owner)
      : shared_memory_(shared_memory), owner_(std::move(owner)) {}

  // INVALID_ARGUMENT for bytes that are not a ScoreRequest; the inputs in
  // shared memory (Tensor.shared_memory: NOT_FOUND, FAILED_PRECONDITION or
  // INVALID_ARGUMENT as for a placement); ValidateRequest's error; then the
  // placements (output_placement.h ResolvePlacements), which must not overlap
  // the inputs.
  absl::StatusOr<ValidatedRequest> Parse(
      const grpc::ByteBuffer& request, const RequestLimits& limits,
      const scoring::ModelSet& models) override;
  // ABORTED when a region the inputs were read from broke; then writes the
  // placed outputs: ABORTED when a region broke.
  absl::StatusOr<grpc::ByteBuffer> EncodeResult(
      const scoring::ScoreResult& result,
      const BatchTiming& timing) const override;
  // The same result as ScoreChunked's messages (response_encoder.h
  // EncodeScoreChunks), with the same checks and placements.
  absl::StatusOr<std::vector<grpc::ByteBuffer>> EncodeChunks(
      const scoring::ScoreResult& result, const BatchTiming& timing,
      int64_t chunk_bytes) const;
  // ScoreChunked's messages over outputs still being computed, to send as
  // their rows become final (`row_ends`: EncodeScoreChunks'); the last one's
  // timing is not known yet (EncodeChunks encodes the final messages).
  // FAILED_PRECONDITION where the request places outputs in shared memory:
  // those are written afterwards.
  absl::StatusOr<std::vector<grpc::ByteBuffer>> EncodeChunksAhead(
      const scoring::ScoreResult& result, int64_t chunk_bytes,
      std::vector<int64_t>* row_ends) const;
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
  const SharedMemoryRegistry* const shared_memory_ = nullptr;
  const std::string owner_;
  ParsedScoreRequest request_;
  std::string id_;
  std::vector<ResolvedPlacement> placements_;
  // The ranges the inputs are read from, their regions held until the reply
  // is encoded.
  std::vector<ResolvedInput> inputs_;

  // Points `bytes`' query, key and value at their shared-memory ranges where
  // the request puts them there; INVALID_ARGUMENT for a tensor with both
  // `data` and `shared_memory`.
  absl::Status ResolveSharedInputs(RequestTensorBytes* bytes);
  // The steps every encoding takes first: the inputs' regions intact, then
  // the placed outputs written. Returns their ranges.
  absl::StatusOr<PlacedRanges> FinishPlacements(
      const scoring::ScoreResult& result) const;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_V1_SCORE_CODEC_H_
