// Parses an attnscore.v1.ScoreRequest from gRPC's slices with each tensor's
// bytes copied once, straight into a pooled host block
// (scoring::HostBufferPool), and scanned for NaN/Inf and their largest
// magnitude piece by piece while each piece is still in cache. Protobuf's own
// parse would copy them into fresh strings (page faults on every large
// request) and validation would then read every byte again from memory; under
// the decode load those two passes were a quarter of the server's CPU.
//
// Every other field is parsed by the generated code, so the message means
// exactly what protobuf makes of the same bytes (merge semantics for repeated
// submessages, the last `data` wins, unknown fields kept). Bytes the fast path
// does not take (malformed, groups, over-long tags or lengths) go to protobuf's
// own parse, whose verdict and message then stand. The request fuzzer checks
// the two against each other.
//
// Ownership: a ParsedScoreRequest owns its message and blocks; the blocks go
// back to the pool when it is cleared or destroyed. Thread safety: one object
// per request, one thread at a time. Errors: INVALID_ARGUMENT when the bytes
// are not a ScoreRequest (truncated, a length past the end, a bad tag), before
// anything of a claimed length is allocated.
#ifndef ATTNSCORE_SERVER_SERVICE_SCORE_REQUEST_PARSER_H_
#define ATTNSCORE_SERVER_SERVICE_SCORE_REQUEST_PARSER_H_

#include <grpcpp/support/byte_buffer.h>

#include "absl/status/status.h"
#include "attnscore/v1/attnscore.pb.h"
#include "server/service/pooled_wire.h"
#include "server/service/request_validation.h"

namespace attnscore::service {

struct ParsedScoreRequest {
  // Every field; the query, key and value messages have empty `data` unless
  // tensors_in_message.
  v1::ScoreRequest message;
  ParsedTensorBytes query;
  ParsedTensorBytes key;
  ParsedTensorBytes value;
  // Protobuf parsed the whole message (the bytes were in a form the fast path
  // leaves to it): the tensors' bytes are in `message`, the blocks empty.
  bool tensors_in_message = false;

  // Where validation finds the tensors' bytes.
  RequestTensorBytes tensor_bytes() const;
};

// Parses `buffer` into `*out`, which must be freshly constructed.
absl::Status ParseScoreRequest(const grpc::ByteBuffer& buffer,
                               ParsedScoreRequest* out);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_SCORE_REQUEST_PARSER_H_
