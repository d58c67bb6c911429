// Reading the protobuf wire format with large `bytes` fields copied straight
// from gRPC's slices into pooled host blocks (scoring::HostBufferPool) and
// scanned for NaN/Inf while each piece is in cache: the pieces that the
// attnscore.v1 parser (score_request_parser.h) and the Open Inference
// Protocol parser (kserve_request_parser.h) share. Every other field is copied
// back out as wire bytes for the generated code to parse, so a message means
// what protobuf makes of it; anything these readers do not take (a group, a
// tag or length over 5 bytes, malformed bytes) makes them return false, and
// the parsers then leave the whole message to protobuf.
//
// Ownership: a ParsedTensorBytes owns its block, which goes back to the pool
// when it is destroyed. Thread safety: one stream per thread. Errors: false
// for bytes not taken (nothing of a length past the limit is allocated).
#ifndef ATTNSCORE_SERVER_SERVICE_POOLED_WIRE_H_
#define ATTNSCORE_SERVER_SERVICE_POOLED_WIRE_H_

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/message_lite.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "common/dtype.h"
#include "server/scoring/buffer_pool.h"
#include "server/scoring/validation.h"
#include "server/service/request_validation.h"

namespace attnscore::service {

// One tensor's bytes, held outside the message.
struct ParsedTensorBytes {
  scoring::PooledBytes block;  // null when there are no bytes
  size_t size = 0;
  // The scan of the bytes as the dtype the tensor had when they arrived;
  // unset when that was not known. Validation takes it only if the tensor's
  // final dtype is the same (scoring::ScanAs).
  std::optional<scoring::FiniteScan> scan;

  TensorBytesView view() const;
};

// Walks the fields up to the end of the message or the current limit: for
// each, `field(tag)` reads or copies the value after its tag and says whether
// it could. False for a tag over 5 bytes or a group's, a field that failed, or
// an end that is not the message's (a 0 tag).
bool ForEachField(google::protobuf::io::CodedInputStream& in,
                  absl::FunctionRef<bool(uint32_t tag)> field);

// A length prefix as protobuf's parser takes it: at most 5 bytes, under 2 GiB.
bool ReadLength(google::protobuf::io::CodedInputStream& in, uint32_t* length);

// Copies the field whose tag was just read, tag and value, to `out` (varints
// come out canonical, which parse to the same value); `*varint` receives a
// varint field's value when given. False for groups and invalid wire types.
bool CopyField(google::protobuf::io::CodedInputStream& in, uint32_t tag,
               google::protobuf::io::CodedOutputStream& out,
               uint64_t* varint = nullptr);

// A length-delimited value (its tag read) into a new block in `*out`, which
// replaces the one it held; scanned as `scan_as` when given and the length is
// a whole number of its elements.
bool ReadPooledBytes(google::protobuf::io::CodedInputStream& in,
                     std::optional<DType> scan_as, ParsedTensorBytes* out);

// The fast path of both parsers: `read_fields` walks `buffer`'s top-level
// fields (a stream limited to the message's real end, so that a claimed
// length past it allocates nothing), keeps what it pools and writes every
// other field, as wire bytes, to the string; those bytes are then merged into
// `message` by the generated code. False when the buffer cannot be read, is
// over 2 GiB, or either step fails (the caller then leaves the message to
// protobuf).
bool ParsePooled(const grpc::ByteBuffer& buffer,
                 absl::FunctionRef<bool(google::protobuf::io::CodedInputStream&,
                                        std::string*)>
                     read_fields,
                 google::protobuf::MessageLite* message);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_POOLED_WIRE_H_
