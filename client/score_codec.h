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

#include <google/protobuf/io/coded_stream.h>
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

// Assembles a ScoreChunked reply (attnscore.proto ScoreChunk messages) into a
// ScoreResult as the messages arrive: each chunk's bytes go from the received
// slices straight to their place in the output's buffer (one copy, made while
// the next chunk is still on the wire). Errors, all DATA_LOSS: a message that
// does not parse; data before its chunk's output, dtype and shape; an output
// out of order (logits, probs, context, each once) or begun before the previous
// one is complete; a chunk whose dtype or shape differ from its output's first;
// an offset other than where the previous chunk ended; bytes past the output's
// end; outputs larger than `max_output_bytes` together; and, from Finish(), an
// output
// left incomplete or a reply without any. After an error the assembler
// accepts nothing more.
class ChunkAssembler {
 public:
  ChunkAssembler(std::shared_ptr<BufferPool> pool, size_t max_output_bytes);
  ChunkAssembler(const ChunkAssembler&) = delete;
  ChunkAssembler& operator=(const ChunkAssembler&) = delete;
  ~ChunkAssembler();

  // Reads one message (its slices are consumed).
  absl::Status Add(grpc::ByteBuffer& message);
  // Any message has been added.
  bool started() const { return messages_ > 0; }
  // What the first message Add refused gave (DATA_LOSS for a malformed one,
  // RESOURCE_EXHAUSTED past `max_output_bytes`); OK while every message was
  // taken. Finish()'s own errors (a reply cut short) are not counted: a call
  // that ended with an error status was cut short by that error.
  const absl::Status& refused() const { return refused_; }
  // The result, once the call has ended OK.
  absl::StatusOr<ScoreResult> Finish();

  struct Header;  // a chunk's fields other than its data (internal)

 private:
  struct Output;  // the output being received
  absl::Status Read(grpc::ByteBuffer& message);
  absl::Status ReadFields(google::protobuf::io::CodedInputStream& in,
                          Header& header, bool* has_data);
  Output* Locate(const Header& header, absl::Status* status);
  absl::Status ReadData(google::protobuf::io::CodedInputStream& in,
                        const Header& header);
  absl::Status Place(const Header& header);
  absl::Status Store(Output& output);
  // `wire_output` (a v1.Output number) is the output being received.
  bool IsCurrent(int wire_output) const;

  std::shared_ptr<BufferPool> pool_;
  const size_t max_output_bytes_;
  std::unique_ptr<Output> current_;
  ScoreResult result_;
  size_t output_bytes_ = 0;  // of the outputs begun so far
  int last_output_ = 0;      // wire number of the latest output begun
  size_t messages_ = 0;
  absl::Status refused_;  // Add's first error
  absl::Status error_;
};

}  // namespace attnscore::client::internal

#endif  // ATTNSCORE_CLIENT_SCORE_CODEC_H_
