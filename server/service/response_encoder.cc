#include "server/service/response_encoder.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/attnscore/v1/proto_dtype.h"
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

// Field `field` of ScoreResponse holding `tensor`: its data as an external
// slice or, when placed in shared memory, the range it went to.
void AppendTensorField(v1::SliceAssembler& out, int field,
                       const scoring::OutputTensor& tensor,
                       const v1::SharedMemoryRange* placed) {
  if (placed == nullptr) {
    out.AppendTensorField(field, tensor.dtype, tensor.shape, SliceOver(tensor));
    return;
  }
  v1::ScoreResponse part;
  v1::Tensor* wire = field == kResponseLogitsField  ? part.mutable_logits()
                     : field == kResponseProbsField ? part.mutable_probs()
                                                    : part.mutable_context();
  wire->set_dtype(v1::ToProtoDType(tensor.dtype));
  wire->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  *wire->mutable_shared_memory() = *placed;
  part.AppendToString(&out.pending());
}

}  // namespace

grpc::ByteBuffer EncodeScoreResponse(std::string_view request_id,
                                     const scoring::ScoreResult& result,
                                     const v1::Timing& timing,
                                     const PlacedRanges& placed) {
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
    AppendTensorField(out, kResponseLogitsField, *result.logits, placed.logits);
  }
  if (result.probs) {
    AppendTensorField(out, kResponseProbsField, *result.probs, placed.probs);
  }
  if (result.context) {
    AppendTensorField(out, kResponseContextField, *result.context,
                      placed.context);
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

grpc::Slice SliceOver(const scoring::OutputTensor& tensor) {
  if (tensor.size_bytes == 0) return grpc::Slice();
  if (tensor.keepalive == nullptr) {
    return grpc::Slice(tensor.data, tensor.size_bytes);
  }
  return grpc::Slice(const_cast<void*>(tensor.data), tensor.size_bytes,
                     &ReleaseKeepalive,
                     new std::shared_ptr<const void>(tensor.keepalive));
}

absl::Status ParseByteBuffer(const grpc::ByteBuffer& buffer,
                             absl::string_view type_name,
                             google::protobuf::MessageLite& message) {
  // A ByteBuffer copy only takes references to the slices.
  grpc::ByteBuffer slices(buffer);
  grpc::ProtoBufferReader reader(&slices);
  if (!reader.status().ok() || !message.ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        absl::StrCat("request: expected a serialized ", type_name, ", got ",
                     buffer.Length(), " bytes that do not parse as one"));
  }
  return absl::OkStatus();
}

grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace attnscore::service
