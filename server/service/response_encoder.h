// Serializes attnscore.v1.ScoreResponse messages into grpc::ByteBuffers without
// copying tensor data: the small fields are encoded with protobuf, and each
// tensor's `data` bytes go on the wire as a grpc::Slice that references the
// scorer's output buffer (holding its `keepalive`) until gRPC has sent it. The
// bytes are exactly what ScoreResponse::SerializeAsString() would produce for
// the same message (fields in number order), so any gRPC client parses them.
//
// Why: score matrices are large (B8 H8 L512 float32 logits are 64 MiB); copying
// them into a protobuf `bytes` field and serializing that costs several times
// the network transfer.
//
// Ownership: the returned ByteBuffer shares ownership of every OutputTensor's
// memory through its keepalive; an OutputTensor without a keepalive is copied
// instead. Thread safety: pure functions; call from any thread.
#ifndef ATTNSCORE_SERVER_SERVICE_RESPONSE_ENCODER_H_
#define ATTNSCORE_SERVER_SERVICE_RESPONSE_ENCODER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "attnscore/v1/attnscore.pb.h"
#include "server/scoring/scorer.h"

namespace attnscore::service {

// The outputs a request placed in shared memory (output_placement.h): their
// Tensor carries dtype, shape and this range instead of the bytes. Null: the
// bytes go in the reply.
struct PlacedRanges {
  const v1::SharedMemoryRange* logits = nullptr;
  const v1::SharedMemoryRange* probs = nullptr;
  const v1::SharedMemoryRange* context = nullptr;

  // The slot of `output` (LOGITS, PROBS or CONTEXT).
  const v1::SharedMemoryRange*& For(v1::Output output) {
    return output == v1::PROBS     ? probs
           : output == v1::CONTEXT ? context
                                   : logits;
  }
  const v1::SharedMemoryRange* For(v1::Output output) const {
    return output == v1::PROBS     ? probs
           : output == v1::CONTEXT ? context
                                   : logits;
  }
};

// ScoreResponse{request_id, logits, probs, context (those present in `result`),
// timing}.
grpc::ByteBuffer EncodeScoreResponse(std::string_view request_id,
                                     const scoring::ScoreResult& result,
                                     const v1::Timing& timing,
                                     const PlacedRanges& placed = {});

// ScoreChunked's reply to the same result: ScoreChunk messages, the outputs in
// order (logits, probs, context), each output's bytes in runs of whole rows
// (its last dimension) of at most max(chunk_bytes, one row) bytes, as slices
// over the scorer's output; an output placed in shared memory is one chunk with
// its range; the last chunk carries request_id and timing. With `row_ends`,
// also, per message, the leading rows of its output (counted over every
// dimension but the last) that it holds the end of: a message may go once
// those rows are final (the scorer's RowObserver). REQUIRES: chunk_bytes >= 1
// and `result` has at least one output.
std::vector<grpc::ByteBuffer> EncodeScoreChunks(
    std::string_view request_id, const scoring::ScoreResult& result,
    const v1::Timing& timing, const PlacedRanges& placed, int64_t chunk_bytes,
    std::vector<int64_t>* row_ends = nullptr);

// ScoreResponse{request_id, error{code, message}}: how ScoreStream reports a
// failed request. REQUIRES: !status.ok().
grpc::ByteBuffer EncodeErrorResponse(std::string_view request_id,
                                     const absl::Status& status);

// A tensor's bytes as a slice over the scorer's output, holding its
// `keepalive` until gRPC has sent them; a copy when it has none (nothing else
// guarantees the memory outlives the send). Empty for an empty tensor.
grpc::Slice SliceOver(const scoring::OutputTensor& tensor);

// Parses a request message from the slices of `buffer` (no flattening copy).
// INVALID_ARGUMENT naming `type_name` when the bytes are not such a message.
absl::Status ParseByteBuffer(const grpc::ByteBuffer& buffer,
                             absl::string_view type_name,
                             google::protobuf::MessageLite& message);

// Serializes any message into a single-slice ByteBuffer (small messages only:
// copies).
grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_RESPONSE_ENCODER_H_
