#include "server/service/pooled_wire.h"

#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "server/scoring/validation.h"

namespace attnscore::service {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;

// Bytes copied before the copy is scanned: small enough that the copy is
// still in the first-level cache when the scan reads it.
constexpr size_t kScanPiece = size_t{32} << 10;

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

}  // namespace

TensorBytesView ParsedTensorBytes::view() const {
  return TensorBytesView{block.get(), size, scan};
}

bool ForEachField(CodedInputStream& in,
                  absl::FunctionRef<bool(uint32_t tag)> field) {
  while (true) {
    const int start = in.CurrentPosition();
    const uint32_t tag = in.ReadTag();
    if (in.CurrentPosition() - start > 5) return false;
    if (tag == 0) return in.ConsumedEntireMessage();
    const auto wire_type = WireFormatLite::GetTagWireType(tag);
    if (wire_type == WireFormatLite::WIRETYPE_START_GROUP ||
        wire_type == WireFormatLite::WIRETYPE_END_GROUP || !field(tag)) {
      return false;
    }
  }
}

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

bool CopyField(CodedInputStream& in, uint32_t tag, CodedOutputStream& out,
               uint64_t* varint) {
  out.WriteTag(tag);
  switch (WireFormatLite::GetTagWireType(tag)) {
    case WireFormatLite::WIRETYPE_VARINT: {
      uint64_t value = 0;
      if (!in.ReadVarint64(&value)) return false;
      out.WriteVarint64(value);
      if (varint != nullptr) *varint = value;
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

bool ReadPooledBytes(CodedInputStream& in, std::optional<DType> scan_as,
                     ParsedTensorBytes* out) {
  uint32_t length = 0;
  if (!ReadLength(in, &length) ||
      static_cast<int64_t>(length) > in.BytesUntilLimit()) {
    return false;  // nothing allocated for a length past the end
  }
  out->block.reset();
  out->size = length;
  out->scan.reset();
  std::optional<scoring::FiniteScanner> scanner;
  if (scan_as.has_value() && length % ElementSize(*scan_as) == 0) {
    scanner.emplace(*scan_as);
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

bool ParsePooled(
    const grpc::ByteBuffer& buffer,
    absl::FunctionRef<bool(CodedInputStream&, std::string*)> read_fields,
    google::protobuf::MessageLite* message) {
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
    in.PushLimit(static_cast<int>(total));
    if (!read_fields(in, &fields)) return false;
  }
  return message->MergeFromString(fields);
}

}  // namespace attnscore::service
