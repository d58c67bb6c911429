#include "client/score_codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attnscore::client::internal {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;

void AppendVarint(std::string& out, uint64_t value) {
  uint8_t buf[10];
  uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buf);
  out.append(reinterpret_cast<const char*>(buf), end - buf);
}

void AppendLengthDelimitedHeader(std::string& out, int field, uint64_t length) {
  AppendVarint(out, WireFormatLite::MakeTag(
                        field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
  AppendVarint(out, length);
}

// Gathers small encoded pieces into one pending string so that the message
// becomes "header slice, data slice, header slice, ..." with data slices over
// tensor memory.
class SliceAssembler {
 public:
  explicit SliceAssembler(DataMode mode) : mode_(mode) {}

  std::string& pending() { return pending_; }

  void AppendData(const void* data, size_t size) {
    if (size == 0) return;
    FlushPending();
    if (mode_ == DataMode::kCopy) {
      slices_.emplace_back(data, size);
    } else {
      // gRPC never frees or writes a static slice; the caller keeps the memory
      // alive.
      slices_.emplace_back(data, size, grpc::Slice::STATIC_SLICE);
    }
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

  const DataMode mode_;
  std::string pending_;
  std::vector<grpc::Slice> slices_;
};

// Field `field` of ScoreRequest holding `tensor`: dtype and shape encoded by
// protobuf, `data` (field 3, the last) as a header plus a slice.
void AppendTensorField(SliceAssembler& out, int field,
                       const TensorView& tensor) {
  v1::Tensor meta;
  meta.set_dtype(ToProto(tensor.dtype));
  meta.mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  const std::string meta_bytes = meta.SerializeAsString();
  std::string data_header;
  if (tensor.size_bytes > 0) {  // proto3 omits an empty bytes field
    AppendLengthDelimitedHeader(data_header, v1::Tensor::kDataFieldNumber,
                                tensor.size_bytes);
  }
  AppendLengthDelimitedHeader(
      out.pending(), field,
      meta_bytes.size() + data_header.size() + tensor.size_bytes);
  out.pending() += meta_bytes;
  out.pending() += data_header;
  out.AppendData(tensor.data, tensor.size_bytes);
}

v1::Layout ToProto(Layout layout) {
  switch (layout) {
    case Layout::kBHSD:
      return v1::BHSD;
    case Layout::kBSHD:
      return v1::BSHD;
    case Layout::kSBHD:
      return v1::SBHD;
  }
  return v1::LAYOUT_UNSPECIFIED;
}

absl::Status DataLoss(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed ScoreResponse: ", what));
}

// Reads one v1.Tensor message up to the current limit; the data bytes go
// straight from the received slices into the tensor's buffer.
absl::StatusOr<Tensor> ReadTensor(CodedInputStream& in, const char* name) {
  int dtype_value = 0;
  std::vector<int64_t> shape;
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const auto wire_type = WireFormatLite::GetTagWireType(tag);
    if (field == v1::Tensor::kDtypeFieldNumber &&
        wire_type == WireFormatLite::WIRETYPE_VARINT) {
      uint32_t v;
      if (!in.ReadVarint32(&v)) return DataLoss(absl::StrCat(name, ".dtype"));
      dtype_value = static_cast<int>(v);
    } else if (field == v1::Tensor::kShapeFieldNumber &&
               wire_type == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t v;
      if (!in.ReadVarint64(&v)) return DataLoss(absl::StrCat(name, ".shape"));
      shape.push_back(static_cast<int64_t>(v));
    } else if (field == v1::Tensor::kShapeFieldNumber &&
               wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length;
      if (!in.ReadVarint32(&length))
        return DataLoss(absl::StrCat(name, ".shape"));
      const CodedInputStream::Limit limit =
          in.PushLimit(static_cast<int>(length));
      while (in.BytesUntilLimit() > 0) {
        uint64_t v;
        if (!in.ReadVarint64(&v)) return DataLoss(absl::StrCat(name, ".shape"));
        shape.push_back(static_cast<int64_t>(v));
      }
      in.PopLimit(limit);
    } else if (field == v1::Tensor::kDataFieldNumber &&
               wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length;
      if (!in.ReadVarint32(&length) ||
          static_cast<int>(length) > in.BytesUntilLimit()) {
        return DataLoss(absl::StrCat(name, ".data length"));
      }
      // A repeated field replaces the earlier one (proto3 merge semantics for
      // bytes).
      size = length;
      data.reset(new uint8_t[size > 0 ? size : 1]);
      if (size > 0 && !in.ReadRaw(data.get(), static_cast<int>(size))) {
        return DataLoss(absl::StrCat(name, ".data truncated"));
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return DataLoss(absl::StrCat(name, " field ", field));
    }
  }
  if (!in.ConsumedEntireMessage()) return DataLoss(absl::StrCat(name, " end"));
  std::optional<DType> dtype = FromProto(static_cast<v1::DType>(dtype_value));
  if (!dtype) {
    return absl::DataLossError(
        absl::StrCat("ScoreResponse.", name, ": unknown dtype ", dtype_value));
  }
  absl::StatusOr<Tensor> tensor =
      Tensor::Adopt(*dtype, std::move(shape), std::move(data), size);
  if (!tensor.ok()) {
    return absl::DataLossError(
        absl::StrCat("ScoreResponse.", name, ": ", tensor.status().message()));
  }
  return tensor;
}

// Reads a length-delimited submessage into `message` (small ones: Timing,
// Error).
bool ReadSmallMessage(CodedInputStream& in,
                      google::protobuf::MessageLite& message) {
  uint32_t length;
  if (!in.ReadVarint32(&length)) return false;
  const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(length));
  const bool ok =
      message.MergePartialFromCodedStream(&in) && in.ConsumedEntireMessage();
  in.PopLimit(limit);
  return ok;
}

}  // namespace

v1::DType ToProto(DType dtype) {
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

std::optional<DType> FromProto(v1::DType dtype) {
  switch (dtype) {
    case v1::FLOAT32:
      return DType::kFloat32;
    case v1::FLOAT16:
      return DType::kFloat16;
    case v1::BFLOAT16:
      return DType::kBFloat16;
    default:
      return std::nullopt;
  }
}

absl::StatusOr<grpc::ByteBuffer> EncodeScoreRequest(const ScoreRequest& request,
                                                    DataMode mode) {
  // Local checks only where a bad view would make us read memory we were not
  // given; the server validates everything else and names the field.
  const std::pair<const char*, const TensorView*> tensors[] = {
      {"query", &request.query},
      {"key", &request.key},
      {"value", request.value ? &*request.value : nullptr}};
  for (const auto& [name, view] : tensors) {
    if (view == nullptr) continue;
    if (absl::Status s = view->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ScoreRequest.", name, ": ", s.message()));
    }
    if (view->size_bytes >
        static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("ScoreRequest.", name, ": ", view->size_bytes,
                       " bytes, over gRPC's 2 GiB message cap"));
    }
  }

  SliceAssembler out(mode);
  // Fields in number order. Concatenated encodings of one message merge, so the
  // parts are encoded separately: request_id and bias (1-3), the tensors (4-6),
  // the options (7-12).
  v1::ScoreRequest head;
  head.set_request_id(request.request_id);
  if (const Alibi* alibi = std::get_if<Alibi>(&request.bias)) {
    head.mutable_alibi()->mutable_slopes()->Add(alibi->slopes.begin(),
                                                alibi->slopes.end());
  } else {
    head.mutable_relative()->set_model(std::get<Relative>(request.bias).model);
  }
  head.AppendToString(&out.pending());

  AppendTensorField(out, v1::ScoreRequest::kQueryFieldNumber, request.query);
  AppendTensorField(out, v1::ScoreRequest::kKeyFieldNumber, request.key);
  if (request.value)
    AppendTensorField(out, v1::ScoreRequest::kValueFieldNumber, *request.value);

  v1::ScoreRequest tail;
  tail.set_layout(ToProto(request.layout));
  tail.set_causal(request.causal);
  if (request.scale) tail.set_scale(*request.scale);
  tail.mutable_key_lengths()->Add(request.key_lengths.begin(),
                                  request.key_lengths.end());
  if (request.outputs.logits) tail.add_outputs(v1::LOGITS);
  if (request.outputs.probs) tail.add_outputs(v1::PROBS);
  if (request.outputs.context) tail.add_outputs(v1::CONTEXT);
  if (request.output_dtype)
    tail.set_output_dtype(ToProto(*request.output_dtype));
  tail.AppendToString(&out.pending());
  return out.Finish();
}

absl::StatusOr<DecodedResponse> DecodeScoreResponse(grpc::ByteBuffer& buffer) {
  grpc::ProtoBufferReader reader(&buffer);
  if (!reader.status().ok()) return DataLoss(reader.status().error_message());
  CodedInputStream in(&reader);
  DecodedResponse out;
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool length_delimited = WireFormatLite::GetTagWireType(tag) ==
                                  WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    std::optional<Tensor>* tensor_field = nullptr;
    const char* tensor_name = "";
    if (length_delimited) {
      switch (field) {
        case v1::ScoreResponse::kLogitsFieldNumber:
          tensor_field = &out.result.logits;
          tensor_name = "logits";
          break;
        case v1::ScoreResponse::kProbsFieldNumber:
          tensor_field = &out.result.probs;
          tensor_name = "probs";
          break;
        case v1::ScoreResponse::kContextFieldNumber:
          tensor_field = &out.result.context;
          tensor_name = "context";
          break;
        default:
          break;
      }
    }
    if (tensor_field != nullptr) {
      uint32_t length;
      if (!in.ReadVarint32(&length)) return DataLoss(tensor_name);
      const CodedInputStream::Limit limit =
          in.PushLimit(static_cast<int>(length));
      absl::StatusOr<Tensor> tensor = ReadTensor(in, tensor_name);
      if (!tensor.ok()) return tensor.status();
      in.PopLimit(limit);
      *tensor_field = *std::move(tensor);
    } else if (length_delimited &&
               field == v1::ScoreResponse::kRequestIdFieldNumber) {
      uint32_t length;
      if (!in.ReadVarint32(&length) ||
          !in.ReadString(&out.result.request_id, static_cast<int>(length))) {
        return DataLoss("request_id");
      }
    } else if (length_delimited &&
               field == v1::ScoreResponse::kTimingFieldNumber) {
      v1::Timing timing;
      if (!ReadSmallMessage(in, timing)) return DataLoss("timing");
      out.result.timing =
          Timing{timing.queue_us(), timing.compute_us(), timing.batch_size()};
    } else if (length_delimited &&
               field == v1::ScoreResponse::kErrorFieldNumber) {
      v1::Error error;
      if (!ReadSmallMessage(in, error)) return DataLoss("error");
      out.error = absl::Status(static_cast<absl::StatusCode>(error.code()),
                               error.message());
      if (out.error.ok() && !error.message().empty()) {
        // Code 0 with a message is not a success the server would send; keep it
        // visible.
        out.error = absl::UnknownError(error.message());
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return DataLoss(absl::StrCat("field ", field));
    }
  }
  if (!in.ConsumedEntireMessage()) return DataLoss("trailing bytes");
  return out;
}

}  // namespace attnscore::client::internal
