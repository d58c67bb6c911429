#include "server/service/response_encoder.h"

#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "proto/attnscore/v1/slice_assembler.h"
#include "server/service/status_conversion.h"

namespace attnscore::service {
namespace {

// Field numbers from attnscore.proto.
constexpr int kResponseLogitsField = v1::ScoreResponse::kLogitsFieldNumber;
constexpr int kResponseProbsField = v1::ScoreResponse::kProbsFieldNumber;
constexpr int kResponseContextField = v1::ScoreResponse::kContextFieldNumber;

void ReleaseKeepalive(void* user_data) {
  delete static_cast<std::shared_ptr<const void>*>(user_data);
}

// The tensor's bytes as a slice over its memory, which the slice keeps alive
// (through the keepalive) while gRPC holds it; a copy when nobody guarantees
// that the memory outlives the send.
grpc::Slice DataSlice(const scoring::OutputTensor& tensor) {
  if (tensor.size_bytes == 0) return grpc::Slice();
  if (tensor.keepalive == nullptr) {
    return grpc::Slice(tensor.data, tensor.size_bytes);
  }
  return grpc::Slice(const_cast<void*>(tensor.data), tensor.size_bytes,
                     &ReleaseKeepalive,
                     new std::shared_ptr<const void>(tensor.keepalive));
}

// Field `field` of ScoreResponse holding `tensor`, its data as an external
// slice.
void AppendTensorField(v1::SliceAssembler& out, int field,
                       const scoring::OutputTensor& tensor) {
  out.AppendTensorField(field, tensor.dtype, tensor.shape, DataSlice(tensor));
}

}  // namespace

grpc::ByteBuffer EncodeScoreResponse(std::string_view request_id,
                                     const scoring::ScoreResult& result,
                                     const v1::Timing& timing) {
  v1::SliceAssembler out;
  // Fields in number order, as protobuf itself writes them: request_id (1), the
  // tensors (2-4), timing (5). Concatenated serialized messages merge, so the
  // pieces are encoded separately.
  if (!request_id.empty()) {
    v1::ScoreResponse head;
    head.set_request_id(std::string(request_id));
    head.AppendToString(&out.pending());
  }
  if (result.logits) {
    AppendTensorField(out, kResponseLogitsField, *result.logits);
  }
  if (result.probs) AppendTensorField(out, kResponseProbsField, *result.probs);
  if (result.context) {
    AppendTensorField(out, kResponseContextField, *result.context);
  }
  v1::ScoreResponse tail;
  *tail.mutable_timing() = timing;
  tail.AppendToString(&out.pending());
  return out.Finish();
}

grpc::ByteBuffer EncodeErrorResponse(std::string_view request_id,
                                     const absl::Status& status) {
  const grpc::Status grpc_status = ToGrpcStatus(status);
  v1::ScoreResponse response;
  response.set_request_id(std::string(request_id));
  response.mutable_error()->set_code(grpc_status.error_code());
  response.mutable_error()->set_message(grpc_status.error_message());
  return SerializeToByteBuffer(response);
}

grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace attnscore::service
