#include "server/service/score_request_parser.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "proto/attnscore/v1/proto_dtype.h"
#include "server/scoring/validation.h"
#include "server/service/response_encoder.h"

namespace attnscore::service {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;
using google::protobuf::io::StringOutputStream;

// Bytes copied before the copy is scanned: small enough that the copy is
// still in the first-level cache when the scan reads it.
constexpr size_t kScanPiece = size_t{32} << 10;

// The next tag, 0 at the end of the message or limit. A tag of more than 5
// bytes, or a group, sends the request to protobuf's own parse: *canonical
// turns false.
uint32_t ReadCanonicalTag(CodedInputStream& in, bool* canonical) {
  const int start = in.CurrentPosition();
  const uint32_t tag = in.ReadTag();
  const auto wire_type = WireFormatLite::GetTagWireType(tag);
  if (in.CurrentPosition() - start > 5 ||
      wire_type == WireFormatLite::WIRETYPE_START_GROUP ||
      wire_type == WireFormatLite::WIRETYPE_END_GROUP) {
    *canonical = false;
    return 0;
  }
  return tag;
}

// A length prefix as protobuf's parser takes it: at most 5 bytes and under
// 2 GiB; false (to protobuf's parse) otherwise.
bool ReadLength(CodedInputStream& in, uint32_t* length) {
  const int start = in.CurrentPosition();
  uint64_t value = 0;
  if (!in.ReadVarint64(&value) || in.CurrentPosition() - start > 5 ||
      value > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
    return false;
  }
  *length = static_cast<uint32_t>(value);
  return true;
}

// Copies the field whose tag was just read, tag and value, to `out`. Every
// value is written back as it was read but for varint encodings, which come
// out canonical and parse to the same value.
bool CopyField(CodedInputStream& in, uint32_t tag, CodedOutputStream& out) {
  out.WriteTag(tag);
  switch (WireFormatLite::GetTagWireType(tag)) {
    case WireFormatLite::WIRETYPE_VARINT: {
      uint64_t value = 0;
      if (!in.ReadVarint64(&value)) return false;
      out.WriteVarint64(value);
      return true;
    }
    case WireFormatLite::WIRETYPE_FIXED64: {
      uint64_t value = 0;
      if (!in.ReadLittleEndian64(&value)) return false;
      out.WriteLittleEndian64(value);
      return true;
    }
    case WireFormatLite::WIRETYPE_FIXED32: {
      uint32_t value = 0;
      if (!in.ReadLittleEndian32(&value)) return false;
      out.WriteLittleEndian32(value);
      return true;
    }
    case WireFormatLite::WIRETYPE_LENGTH_DELIMITED: {
      uint32_t length = 0;
      std::string value;
      if (!ReadLength(in, &length) ||
          !in.ReadString(&value, static_cast<int>(length))) {
        return false;
      }
      out.WriteVarint32(length);
      out.WriteString(value);
      return true;
    }
    default:  // groups (left to protobuf) and invalid wire types
      return false;
  }
}

// Copies `size` bytes from `in` into `dst`, feeding `scanner` (when set) the
// whole elements copied so far after each piece. False when `in` ends first.
bool CopyAndScan(CodedInputStream& in, unsigned char* dst, size_t size,
                 scoring::FiniteScanner* scanner) {
  const size_t element = scanner != nullptr ? ElementSize(scanner->dtype()) : 1;
  size_t copied = 0;
  size_t scanned = 0;
  while (copied < size) {
    const void* chunk = nullptr;
    int available = 0;
    if (!in.GetDirectBufferPointer(&chunk, &available)) return false;
    const size_t take = std::min(size - copied, static_cast<size_t>(available));
    const auto* from = static_cast<const unsigned char*>(chunk);
    for (size_t done = 0; done < take;) {
      const size_t piece = std::min(kScanPiece, take - done);
      std::memcpy(dst + copied, from + done, piece);
      copied += piece;
      done += piece;
      if (scanner != nullptr) {
        // An element cut by a slice boundary is scanned with the next piece.
        const size_t whole = copied / element * element;
        scanner->Consume(dst + scanned, whole - scanned);
        scanned = whole;
      }
    }
    if (!in.Skip(static_cast<int>(take))) return false;
  }
  return true;
}

// The `data` field of a Tensor, its tag read: into a new pooled block, which
// replaces any earlier one (the last `data` wins, as in protobuf), scanned as
// `dtype_value` when that is a float type.
bool ReadData(CodedInputStream& in, int dtype_value, ParsedTensorBytes* out) {
  uint32_t length = 0;
  if (!ReadLength(in, &length) ||
      static_cast<int64_t>(length) > in.BytesUntilLimit()) {
    return false;  // nothing allocated for a length past the end
  }
  out->block.reset();
  out->size = length;
  out->scan.reset();
  out->scan_dtype = dtype_value;
  std::optional<scoring::FiniteScanner> scanner;
  if (const std::optional<DType> dtype = v1::FromProtoDType(dtype_value);
      dtype.has_value() && length % ElementSize(*dtype) == 0) {
    scanner.emplace(*dtype);
  }
  if (length > 0) {
    out->block = scoring::AcquireBytes(length);
    if (!CopyAndScan(in, out->block.get(), length,
                     scanner.has_value() ? &*scanner : nullptr)) {
      return false;
    }
  }
  if (scanner.has_value()) out->scan = scanner->Finish();
  return true;
}

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
    bool canonical = true;
    while (true) {
      const uint32_t tag = ReadCanonicalTag(in, &canonical);
      if (!canonical) return false;
      if (tag == 0) break;
      const int field = WireFormatLite::GetTagFieldNumber(tag);
      const auto wire_type = WireFormatLite::GetTagWireType(tag);
      if (field == v1::Tensor::kDataFieldNumber &&
          wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
        if (!ReadData(in, dtype_value, bytes)) return false;
        continue;
      }
      if (field == v1::Tensor::kDtypeFieldNumber &&
          wire_type == WireFormatLite::WIRETYPE_VARINT) {
        uint64_t value = 0;
        if (!in.ReadVarint64(&value)) return false;
        // Protobuf keeps an enum's low 32 bits.
        dtype_value = static_cast<int32_t>(value);
        copy.WriteTag(tag);
        copy.WriteVarint64(value);
        continue;
      }
      if (!CopyField(in, tag, copy)) return false;
    }
    if (!in.ConsumedEntireMessage()) return false;
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
  bool canonical = true;
  while (true) {
    const uint32_t tag = ReadCanonicalTag(in, &canonical);
    if (!canonical) return false;
    if (tag == 0) break;
    // Only a length-delimited field is a Tensor (protobuf keeps any other
    // wire type as an unknown field); asking for it earlier would mark the
    // tensor present.
    const std::optional<TensorField> tensor =
        WireFormatLite::GetTagWireType(tag) ==
                WireFormatLite::WIRETYPE_LENGTH_DELIMITED
            ? TensorFieldOf(WireFormatLite::GetTagFieldNumber(tag), out)
            : std::nullopt;
    if (tensor.has_value()) {
      if (!ReadTensorField(in, *tensor)) {
        return false;
      }
      continue;
    }
    if (!CopyField(in, tag, copy)) return false;
  }
  return in.ConsumedEntireMessage();
}

// The fast path: false when the bytes are malformed or not in the canonical
// form it handles (then `out` holds a partial parse).
bool ParseWithPooledTensors(const grpc::ByteBuffer& buffer,
                            ParsedScoreRequest* out) {
  // A ByteBuffer copy only takes references to the slices.
  grpc::ByteBuffer slices(buffer);
  grpc::ProtoBufferReader reader(&slices);
  const auto total = static_cast<int64_t>(buffer.Length());
  if (!reader.status().ok() || total > std::numeric_limits<int>::max()) {
    return false;
  }
  std::string fields;
  {
    CodedInputStream in(&reader);
    in.SetTotalBytesLimit(std::numeric_limits<int>::max());
    // The message's real end: a claimed length past it allocates nothing.
    in.PushLimit(static_cast<int>(total));
    if (!ReadFields(in, out, &fields)) return false;
  }
  return out->message.MergeFromString(fields);
}

}  // namespace

TensorBytesView ParsedTensorBytes::view() const {
  return TensorBytesView{block.get(), size, scan, scan_dtype};
}

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
  if (ParseWithPooledTensors(buffer, out)) return absl::OkStatus();
  // Malformed, or a form the fast path leaves to protobuf (groups, over-long
  // tags): protobuf's verdict and message, the bytes in the message.
  *out = ParsedScoreRequest();
  out->tensors_in_message = true;
  return ParseByteBuffer(buffer, "attnscore.v1.ScoreRequest", out->message);
}

}  // namespace attnscore::service
