#include "server/service/response_encoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "server/service/status_conversion.h"

namespace attnscore::service {
namespace {

using google::protobuf::io::CodedOutputStream;

constexpr uint32_t kWireTypeLengthDelimited = 2;
// Field numbers from attnscore.proto.
constexpr int kResponseLogitsField = v1::ScoreResponse::kLogitsFieldNumber;
constexpr int kResponseProbsField = v1::ScoreResponse::kProbsFieldNumber;
constexpr int kResponseContextField = v1::ScoreResponse::kContextFieldNumber;
constexpr int kTensorDataField = v1::Tensor::kDataFieldNumber;

void AppendVarint(std::string& out, uint64_t value) {
  uint8_t buf[10];
  uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buf);
  out.append(reinterpret_cast<const char*>(buf), end - buf);
}

// Tag and length of a length-delimited field.
void AppendLengthDelimitedHeader(std::string& out, int field, uint64_t length) {
  AppendVarint(out,
               (static_cast<uint32_t>(field) << 3) | kWireTypeLengthDelimited);
  AppendVarint(out, length);
}

void ReleaseKeepalive(void* user_data) {
  delete static_cast<std::shared_ptr<const void>*>(user_data);
}

// Collects the wire bytes: small encoded pieces are gathered into one pending
// string so that the buffer alternates "header slice, tensor data slice, header
// slice, ...".
class SliceAssembler {
 public:
  std::string& pending() { return pending_; }

  // A slice over the tensor's memory, which stays alive while gRPC holds the
  // slice.
  void AppendTensorData(const scoring::OutputTensor& tensor) {
    if (tensor.size_bytes == 0) return;
    FlushPending();
    if (tensor.keepalive == nullptr) {
      // Nobody guarantees the memory outlives the send: copy.
      slices_.emplace_back(tensor.data, tensor.size_bytes);
      return;
    }
    slices_.emplace_back(const_cast<void*>(tensor.data), tensor.size_bytes,
                         &ReleaseKeepalive,
                         new std::shared_ptr<const void>(tensor.keepalive));
  }

  grpc::ByteBuffer Finish() {
    FlushPending();
    return grpc::ByteBuffer(slices_.data(), slices_.size());
  }

 private:
  void FlushPending() {
    if (pending_.empty()) return;
    slices_.emplace_back(pending_);
    pending_.clear();
  }

  std::string pending_;
  std::vector<grpc::Slice> slices_;
};

// Field `field` of ScoreResponse holding `tensor`: the Tensor message's dtype
// and shape are encoded by protobuf, its `data` (field 3, last) by hand as a
// header plus the external slice.
void AppendTensorField(SliceAssembler& out, int field,
                       const scoring::OutputTensor& tensor) {
  v1::Tensor meta;
  meta.set_dtype(ToProtoDType(tensor.dtype));
  meta.mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  const std::string meta_bytes = meta.SerializeAsString();

  std::string data_header;
  // proto3 omits an empty `bytes` field; so do we.
  if (tensor.size_bytes > 0) {
    AppendLengthDelimitedHeader(data_header, kTensorDataField,
                                tensor.size_bytes);
  }
  const uint64_t message_length =
      meta_bytes.size() + data_header.size() + tensor.size_bytes;
  AppendLengthDelimitedHeader(out.pending(), field, message_length);
  out.pending() += meta_bytes;
  out.pending() += data_header;
  out.AppendTensorData(tensor);
}

}  // namespace

v1::DType ToProtoDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return v1::FLOAT32;
    case DType::kFloat16:
      return v1::FLOAT16;
    case DType::kBFloat16:
      return v1::BFLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

grpc::ByteBuffer EncodeScoreResponse(std::string_view request_id,
                                     const scoring::ScoreResult& result,
                                     const v1::Timing& timing) {
  SliceAssembler out;
  // Fields in number order, as protobuf itself writes them: request_id (1), the
  // tensors (2-4), timing (5). Concatenated serialized messages merge, so the
  // pieces are encoded separately.
  if (!request_id.empty()) {
    v1::ScoreResponse head;
    head.set_request_id(std::string(request_id));
    head.AppendToString(&out.pending());
  }
  if (result.logits)
    AppendTensorField(out, kResponseLogitsField, *result.logits);
  if (result.probs) AppendTensorField(out, kResponseProbsField, *result.probs);
  if (result.context)
    AppendTensorField(out, kResponseContextField, *result.context);
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
