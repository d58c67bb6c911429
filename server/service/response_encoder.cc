#include "server/service/response_encoder.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
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

namespace {

// The ScoreChunk messages of one output: `tensor`'s bytes in runs of whole
// rows, or its shared-memory range; and, into `row_ends` (may be null), the
// rows each message holds the end of.
void AppendChunks(v1::Output output, const scoring::OutputTensor& tensor,
                  const v1::SharedMemoryRange* placed, int64_t chunk_bytes,
                  std::vector<grpc::ByteBuffer>& messages,
                  std::vector<int64_t>* row_ends) {
  v1::ScoreChunk head;
  head.set_output(output);
  head.set_dtype(v1::ToProtoDType(tensor.dtype));
  head.mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  // Whole rows per chunk: a client may use each row as it arrives.
  const size_t row_bytes =
      std::max<size_t>(tensor.shape.empty() || tensor.shape.back() <= 0
                           ? tensor.size_bytes
                           : static_cast<size_t>(tensor.shape.back()) *
                                 attnscore::ElementSize(tensor.dtype),
                       1);
  const auto mark_end = [&](size_t end) {
    if (row_ends != nullptr) {
      row_ends->push_back(static_cast<int64_t>(end / row_bytes));
    }
  };
  if (placed != nullptr) {
    *head.mutable_shared_memory() = *placed;
    messages.push_back(SerializeToByteBuffer(head));
    mark_end(tensor.size_bytes);
    return;
  }
  const size_t rows_per_chunk =
      std::max<size_t>(1, static_cast<size_t>(chunk_bytes) / row_bytes);
  const size_t step = rows_per_chunk * row_bytes;
  // One slice over the whole output holds the keepalive once; each chunk's
  // data is a sub-slice (a reference, no copy).
  const grpc::Slice whole = SliceOver(tensor);
  size_t offset = 0;
  do {
    const size_t end = std::min(tensor.size_bytes, offset + step);
    head.set_offset(offset);
    v1::SliceAssembler out;
    head.AppendToString(&out.pending());
    // An empty output's chunk has no data field, as protobuf leaves an empty
    // `bytes` out.
    if (end > offset) {
      out.AppendBytesField(v1::ScoreChunk::kDataFieldNumber,
                           whole.sub(offset, end));
    }
    messages.push_back(out.Finish());
    mark_end(end);
    offset = end;
  } while (offset < tensor.size_bytes);
}

}  // namespace

std::vector<grpc::ByteBuffer> EncodeScoreChunks(
    std::string_view request_id, const scoring::ScoreResult& result,
    const v1::Timing& timing, const PlacedRanges& placed, int64_t chunk_bytes,
    std::vector<int64_t>* row_ends) {
  std::vector<grpc::ByteBuffer> messages;
  const struct {
    v1::Output output;
    const std::optional<scoring::OutputTensor>& tensor;
  } outputs[] = {{v1::LOGITS, result.logits},
                 {v1::PROBS, result.probs},
                 {v1::CONTEXT, result.context}};
  for (const auto& [output, tensor] : outputs) {
    if (tensor) {
      AppendChunks(output, *tensor, placed.For(output), chunk_bytes, messages,
                   row_ends);
    }
  }
  // request_id (7) and timing (8) follow the last chunk's fields (1-6): the
  // message stays in field-number order.
  v1::ScoreChunk tail;
  tail.set_request_id(std::string(request_id));
  *tail.mutable_timing() = timing;
  grpc::Slice tail_slice(tail.SerializeAsString());
  if (messages.empty()) {
    messages.emplace_back(&tail_slice, 1);
  } else {
    std::vector<grpc::Slice> slices;
    if (!messages.back().Dump(&slices).ok()) slices.clear();
    slices.push_back(std::move(tail_slice));
    messages.back() = grpc::ByteBuffer(slices.data(), slices.size());
  }
  return messages;
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
