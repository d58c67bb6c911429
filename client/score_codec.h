// Wire encoding of ScoreRequest and decoding of ScoreResponse for the client,
// without protobuf's copies of tensor bytes. Internal to the client library
// (not installed).
//
// Why: protobuf's generated path copies a `bytes` field into a std::string when
// parsing (and the request into one contiguous buffer when serializing); score
// matrices are tens of MiB. Here a request's tensor data goes out as gRPC
// slices over the caller's memory (or one copy, for streams), and a response's
// tensor data is read from the received slices straight into the result
// Tensor's buffer: one copy. The bytes on the wire are exactly the proto's
// (fields in number order, as protobuf writes them), so any server parses them,
// and any conforming encoding of ScoreResponse (any field order, packed or
// unpacked shape, unknown fields) parses.
//
// Outputs placed in shared memory (ScoreRequest::placements) come back as
// Tensors with shared_memory set and no data; they are decoded into
// ScoreResult::placed, never as empty tensors.
//
// Thread safety: pure functions.
// Errors: INVALID_ARGUMENT for a malformed request (naming the tensor);
// DATA_LOSS for a response that does not parse, whose tensor bytes disagree
// with its shape, or whose placed output carries bytes or does not fit its
// range.
#ifndef ATTNSCORE_CLIENT_SCORE_CODEC_H_
#define ATTNSCORE_CLIENT_SCORE_CODEC_H_

#include <grpcpp/support/byte_buffer.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "attnscore/v1/attnscore.pb.h"
#include "client/client.h"
#include "common/buffer_pool.h"

namespace attnscore::client::internal {

enum class DataMode {
  kReference,  // slices point at the caller's memory, which must outlive the
               // call
  kCopy,  // slices own a copy (the caller's memory is free once this returns)
};

absl::StatusOr<grpc::ByteBuffer> EncodeScoreRequest(const ScoreRequest& request,
                                                    DataMode mode);

struct DecodedResponse {
  ScoreResult result;
  // ScoreResponse.error (ScoreStream's per-request failure) as a status; OK
  // when absent.
  absl::Status error;
};

// Reads `buffer` once; the result owns copies of the tensor bytes (one copy
// each), in blocks of `pool` when it is not null (they return to it when the
// tensors let go).
absl::StatusOr<DecodedResponse> DecodeScoreResponse(
    grpc::ByteBuffer& buffer,
    const std::shared_ptr<BufferPool>& pool = nullptr);

}  // namespace attnscore::client::internal

#endif  // ATTNSCORE_CLIENT_SCORE_CODEC_H_
