#include "server/service/kserve_codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnscore::service::kserve {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

void AppendVarint(std::string& out, uint64_t value) {
  uint8_t buf[10];
  uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buf);
  out.append(reinterpret_cast<const char*>(buf),
             static_cast<size_t>(end - buf));
}

void ReleaseKeepalive(void* user_data) {
  delete static_cast<std::shared_ptr<const void>*>(user_data);
}

// The tensor's bytes as a slice over its memory, kept alive by the slice; a
// copy when nothing guarantees that the memory outlives the send.
grpc::Slice DataSlice(const scoring::OutputTensor& tensor) {
  if (tensor.keepalive == nullptr) {
    return grpc::Slice(tensor.data, tensor.size_bytes);
  }
  return grpc::Slice(const_cast<void*>(tensor.data), tensor.size_bytes,
                     &ReleaseKeepalive,
                     new std::shared_ptr<const void>(tensor.keepalive));
}

const scoring::OutputTensor& Tensor(const scoring::ScoreResult& result,
                                    Output output) {
  switch (output) {
    case Output::kProbs:
      return *result.probs;
    case Output::kContext:
      return *result.context;
    case Output::kLogits:
      break;
  }
  return *result.logits;
}

void SetInt(inference::ModelInferResponse& head, const char* name,
            int64_t value) {
  (*head.mutable_parameters())[name].set_int64_param(value);
}

}  // namespace

grpc::ByteBuffer EncodeInferResponse(absl::string_view model_name,
                                     absl::string_view id,
                                     const std::vector<Output>& outputs,
                                     const scoring::ScoreResult& result,
                                     const BatchTiming& timing) {
  // Fields 1-5 by protobuf, then raw_output_contents (6) by hand: a tag and
  // length per output, its bytes a slice of their own.
  inference::ModelInferResponse head;
  head.set_model_name(model_name.data(), model_name.size());
  head.set_model_version(kModelVersion.data(), kModelVersion.size());
  head.set_id(id.data(), id.size());
  SetInt(head, "queue_us", timing.queue_us);
  SetInt(head, "compute_us", timing.compute_us);
  SetInt(head, "batch_size", timing.batch_size);
  for (Output output : outputs) {
    const scoring::OutputTensor& tensor = Tensor(result, output);
    inference::ModelInferResponse::InferOutputTensor* meta = head.add_outputs();
    meta->set_name(OutputName(output));
    meta->set_datatype(DatatypeName(tensor.dtype));
    meta->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  }
  std::vector<grpc::Slice> slices;
  std::string pending = head.SerializeAsString();
  constexpr int kRawField =
      inference::ModelInferResponse::kRawOutputContentsFieldNumber;
  for (Output output : outputs) {
    const scoring::OutputTensor& tensor = Tensor(result, output);
    AppendVarint(pending,
                 WireFormatLite::MakeTag(
                     kRawField, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
    AppendVarint(pending, tensor.size_bytes);
    if (tensor.size_bytes == 0) continue;
    slices.emplace_back(pending);
    pending.clear();
    slices.push_back(DataSlice(tensor));
  }
  if (!pending.empty()) slices.emplace_back(pending);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::StatusOr<ValidatedRequest> KServeInferCodec::Parse(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  // A ByteBuffer copy only takes references to the slices.
  grpc::ByteBuffer slices(request);
  grpc::ProtoBufferReader reader(&slices);
  if (!reader.status().ok() || !request_.ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request: expected a serialized inference.ModelInferRequest, got ",
        request.Length(), " bytes that do not parse as one"));
  }
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request_, limits, models);
  if (!mapped.ok()) return mapped.status();
  outputs_ = std::move(mapped->outputs);
  return std::move(mapped->validated);
}

grpc::ByteBuffer KServeInferCodec::EncodeResult(
    const scoring::ScoreResult& result, const BatchTiming& timing) const {
  return EncodeInferResponse(request_.model_name(), request_.id(), outputs_,
                             result, timing);
}

}  // namespace attnscore::service::kserve
