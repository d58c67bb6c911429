#include "server/service/score_request_parser.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstdint>
#include <optional>
#include <string>

#include "proto/attnscore/v1/proto_dtype.h"
#include "server/service/pooled_wire.h"
#include "server/service/response_encoder.h"

namespace attnscore::service {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;

// One Tensor message up to the current limit: `data` into `bytes`, the other
// fields (their wire bytes, in order) merged into `meta` by the generated
// code. The dtype is followed as it arrives so that the data is scanned as
// the dtype it has at that point.
bool ReadTensor(CodedInputStream& in, v1::Tensor* meta,
                ParsedTensorBytes* bytes) {
  std::string fields;
  {
    StringOutputStream stream(&fields);
    CodedOutputStream copy(&stream);
    int dtype_value = meta->dtype();
    const bool read = ForEachField(in, [&](uint32_t tag) {
      const int field = WireFormatLite::GetTagFieldNumber(tag);
      const auto wire_type = WireFormatLite::GetTagWireType(tag);
      if (field == v1::Tensor::kDataFieldNumber &&
          wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
        // The last `data` wins, as in protobuf: it replaces any earlier one.
        return ReadPooledBytes(in, v1::FromProtoDType(dtype_value), bytes);
      }
      uint64_t value = 0;
      if (!CopyField(in, tag, copy, &value)) return false;
      if (field == v1::Tensor::kDtypeFieldNumber &&
          wire_type == WireFormatLite::WIRETYPE_VARINT) {
        dtype_value = static_cast<int32_t>(value);  // an enum's low 32 bits
      }
      return true;
    });
    if (!read) return false;
  }
  return meta->MergeFromString(fields);
}

// A ScoreRequest field that holds a Tensor: where its parts go.
struct TensorField {
  v1::Tensor* meta;
  ParsedTensorBytes* bytes;
};

std::optional<TensorField> TensorFieldOf(int field, ParsedScoreRequest* out) {
  switch (field) {
    case v1::ScoreRequest::kQueryFieldNumber:
      return TensorField{out->message.mutable_query(), &out->query};
    case v1::ScoreRequest::kKeyFieldNumber:
      return TensorField{out->message.mutable_key(), &out->key};
    case v1::ScoreRequest::kValueFieldNumber:
      return TensorField{out->message.mutable_value(), &out->value};
    default:
      return std::nullopt;
  }
}

// The length-delimited Tensor at the input, its tag read.
bool ReadTensorField(CodedInputStream& in, const TensorField& field) {
  uint32_t length = 0;
  if (!ReadLength(in, &length) ||
      static_cast<int64_t>(length) > in.BytesUntilLimit()) {
    return false;
  }
  if (!in.IncrementRecursionDepth()) return false;
  const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(length));
  const bool ok = ReadTensor(in, field.meta, field.bytes);
  in.PopLimit(limit);
  in.DecrementRecursionDepth();
  return ok;
}

// The message's fields, the tensors' bytes into their blocks and every other
// field's wire bytes into `fields`, in order.
bool ReadFields(CodedInputStream& in, ParsedScoreRequest* out,
                std::string* fields) {
  StringOutputStream stream(fields);
  CodedOutputStream copy(&stream);
  return ForEachField(in, [&](uint32_t tag) {
    // Only a length-delimited field is a Tensor (protobuf keeps any other
    // wire type as an unknown field); asking for it earlier would mark the
    // tensor present.
    const std::optional<TensorField> tensor =
        WireFormatLite::GetTagWireType(tag) ==
                WireFormatLite::WIRETYPE_LENGTH_DELIMITED
            ? TensorFieldOf(WireFormatLite::GetTagFieldNumber(tag), out)
            : std::nullopt;
    return tensor.has_value() ? ReadTensorField(in, *tensor)
                              : CopyField(in, tag, copy);
  });
}

}  // namespace

RequestTensorBytes ParsedScoreRequest::tensor_bytes() const {
  RequestTensorBytes bytes;
  if (tensors_in_message) return bytes;
  bytes.query = query.view();
  bytes.key = key.view();
  bytes.value = value.view();
  return bytes;
}

absl::Status ParseScoreRequest(const grpc::ByteBuffer& buffer,
                               ParsedScoreRequest* out) {
  const auto read_fields = [out](CodedInputStream& in, std::string* fields) {
    return ReadFields(in, out, fields);
  };
  if (ParsePooled(buffer, read_fields, &out->message)) {
    return absl::OkStatus();
  }
  // Malformed, or a form the fast path leaves to protobuf (groups, over-long
  // tags): protobuf's verdict and message, the bytes in the message.
  *out = ParsedScoreRequest();
  out->tensors_in_message = true;
  return ParseByteBuffer(buffer, "attnscore.v1.ScoreRequest", out->message);
}

}  // namespace attnscore::service
