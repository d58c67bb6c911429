#include "proto/attnscore/v1/slice_assembler.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <utility>

#include "attnscore/v1/attnscore.pb.h"
#include "proto/attnscore/v1/proto_dtype.h"

namespace attnscore::v1 {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

void AppendVarint(std::string& out, uint64_t value) {
  uint8_t buf[10];
  uint8_t* end = CodedOutputStream::WriteVarint64ToArray(value, buf);
  out.append(reinterpret_cast<const char*>(buf), end - buf);
}

// Tag and length of a length-delimited field.
void AppendLengthDelimitedHeader(std::string& out, int field, uint64_t length) {
  AppendVarint(out, WireFormatLite::MakeTag(
                        field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
  AppendVarint(out, length);
}

}  // namespace

void SliceAssembler::AppendTensorField(int field, attnscore::DType dtype,
                                       absl::Span<const int64_t> shape,
                                       grpc::Slice data) {
  // dtype (1) and shape (2) by protobuf; data (3) by hand, after them.
  Tensor meta;
  meta.set_dtype(ToProtoDType(dtype));
  meta.mutable_shape()->Add(shape.begin(), shape.end());
  const std::string meta_bytes = meta.SerializeAsString();
  std::string data_header;
  if (data.size() > 0) {
    AppendLengthDelimitedHeader(data_header, Tensor::kDataFieldNumber,
                                data.size());
  }
  AppendLengthDelimitedHeader(
      pending_, field, meta_bytes.size() + data_header.size() + data.size());
  pending_ += meta_bytes;
  pending_ += data_header;
  if (data.size() == 0) return;
  FlushPending();
  slices_.push_back(std::move(data));
}

void SliceAssembler::AppendBytesField(int field, grpc::Slice data) {
  AppendLengthDelimitedHeader(pending_, field, data.size());
  if (data.size() == 0) return;
  FlushPending();
  slices_.push_back(std::move(data));
}

grpc::ByteBuffer SliceAssembler::Finish() {
  FlushPending();
  grpc::ByteBuffer buffer(slices_.data(), slices_.size());
  slices_.clear();
  return buffer;
}

void SliceAssembler::FlushPending() {
  if (pending_.empty()) return;
  slices_.emplace_back(pending_);
  pending_.clear();
}

}  // namespace attnscore::v1
