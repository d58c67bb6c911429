#include "server/service/kserve_request_parser.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstdint>
#include <optional>
#include <string>

#include "server/service/kserve_request.h"
#include "server/service/response_encoder.h"

namespace attnscore::service::kserve {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;
using inference::ModelInferRequest;

constexpr int kInputsField = ModelInferRequest::kInputsFieldNumber;
constexpr int kRawField = ModelInferRequest::kRawInputContentsFieldNumber;
constexpr int kDatatypeField =
    ModelInferRequest::InferInputTensor::kDatatypeFieldNumber;

// More inputs or raw entries than any valid request has (5 inputs at most):
// past this the fast path stops and protobuf parses, so that a flood of tiny
// entries costs no more here than there.
constexpr size_t kMaxEntries = 16;

bool IsLengthDelimited(uint32_t tag) {
  return WireFormatLite::GetTagWireType(tag) ==
         WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
}

// The datatype an InferInputTensor's wire bytes give it (the last datatype
// field wins, as in protobuf); "" when they hold none or do not read.
std::string DatatypeOf(const std::string& input) {
  CodedInputStream in(reinterpret_cast<const uint8_t*>(input.data()),
                      static_cast<int>(input.size()));
  std::string datatype;
  const bool read = ForEachField(in, [&](uint32_t tag) {
    if (WireFormatLite::GetTagFieldNumber(tag) == kDatatypeField &&
        IsLengthDelimited(tag)) {
      uint32_t length = 0;
      return ReadLength(in, &length) &&
             in.ReadString(&datatype, static_cast<int>(length));
    }
    return WireFormatLite::SkipField(&in, tag);
  });
  return read ? datatype : "";
}

// One `inputs` entry, its tag read: copied to `copy` whole, its datatype
// noted for the raw entry of the same index.
bool ReadInput(CodedInputStream& in, uint32_t tag, CodedOutputStream& copy,
               std::vector<std::string>* datatypes) {
  if (datatypes->size() >= kMaxEntries) return false;
  uint32_t length = 0;
  std::string input;
  if (!ReadLength(in, &length) ||
      !in.ReadString(&input, static_cast<int>(length))) {
    return false;
  }
  datatypes->push_back(DatatypeOf(input));
  copy.WriteTag(tag);
  copy.WriteVarint32(length);
  copy.WriteString(input);
  return true;
}

// One raw_input_contents entry, its tag read: into a pooled block, scanned as
// its input's datatype when that is known and a float type; an empty entry
// takes its place in `copy`.
bool ReadRaw(CodedInputStream& in, uint32_t tag, CodedOutputStream& copy,
             const std::vector<std::string>& datatypes,
             std::vector<ParsedTensorBytes>* raw) {
  const size_t index = raw->size();
  if (index >= kMaxEntries) return false;
  const std::optional<DType> scan_as =
      index < datatypes.size() ? ParseDatatype(datatypes[index]) : std::nullopt;
  raw->emplace_back();
  if (!ReadPooledBytes(in, scan_as, &raw->back())) return false;
  copy.WriteTag(tag);
  copy.WriteVarint32(0);
  return true;
}

// The message's fields: raw contents into blocks, every other field's wire
// bytes into `fields`, in order.
bool ReadFields(CodedInputStream& in, ParsedInferRequest* out,
                std::string* fields) {
  StringOutputStream stream(fields);
  CodedOutputStream copy(&stream);
  std::vector<std::string> datatypes;  // of inputs[i], as they came
  return ForEachField(in, [&](uint32_t tag) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    if (field == kInputsField && IsLengthDelimited(tag)) {
      return ReadInput(in, tag, copy, &datatypes);
    }
    if (field == kRawField && IsLengthDelimited(tag)) {
      return ReadRaw(in, tag, copy, datatypes, &out->raw);
    }
    return CopyField(in, tag, copy);
  });
}

}  // namespace

std::vector<TensorBytesView> ParsedInferRequest::raw_views() const {
  std::vector<TensorBytesView> views;
  if (contents_in_message) return views;
  views.reserve(raw.size());
  for (const ParsedTensorBytes& bytes : raw) views.push_back(bytes.view());
  return views;
}

absl::Status ParseInferRequest(const grpc::ByteBuffer& buffer,
                               ParsedInferRequest* out) {
  const auto read_fields = [out](CodedInputStream& in, std::string* fields) {
    return ReadFields(in, out, fields);
  };
  if (ParsePooled(buffer, read_fields, &out->message)) {
    return absl::OkStatus();
  }
  *out = ParsedInferRequest();
  out->contents_in_message = true;
  return ParseByteBuffer(buffer, "inference.ModelInferRequest", out->message);
}

}  // namespace attnscore::service::kserve
