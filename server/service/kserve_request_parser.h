// Parses an Open Inference Protocol inference.ModelInferRequest from gRPC's
// slices with each raw_input_contents entry copied once, straight into a
// pooled host block, and scanned for NaN/Inf as its input's datatype
// (FP32/FP16/BF16) while each piece is in cache, as the attnscore.v1 parser
// does (score_request_parser.h, pooled_wire.h). The scan is made when the
// entry's input (inputs[i]) came before it, as clients send them; otherwise
// validation scans the block itself.
//
// Every other field is parsed by the generated code; each raw entry stays in
// the message as an empty string, so counts and indices are protobuf's.
// Bytes the fast path does not take (as for attnscore.v1, and more than 16
// inputs or raw entries, which no valid request has) go to protobuf's own
// parse, whose verdict and message stand (contents_in_message).
//
// Ownership: a ParsedInferRequest owns its message and blocks. Thread safety:
// one object per request. Errors: INVALID_ARGUMENT when the bytes are not a
// ModelInferRequest.
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_PARSER_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_PARSER_H_

#include <grpcpp/support/byte_buffer.h>

#include <vector>

#include "absl/status/status.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/service/pooled_wire.h"
#include "server/service/request_validation.h"

namespace attnscore::service::kserve {

struct ParsedInferRequest {
  inference::ModelInferRequest message;
  std::vector<ParsedTensorBytes> raw;  // raw_input_contents, in order
  // Protobuf parsed the whole message: the raw contents are in `message`.
  bool contents_in_message = false;

  // One view per raw entry, for MapInferRequest; empty when
  // contents_in_message.
  std::vector<TensorBytesView> raw_views() const;
};

// Parses `buffer` into `*out`, which must be freshly constructed.
absl::Status ParseInferRequest(const grpc::ByteBuffer& buffer,
                               ParsedInferRequest* out);

}  // namespace attnscore::service::kserve

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_REQUEST_PARSER_H_
