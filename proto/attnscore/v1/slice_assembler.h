// Zero-copy encoding of attnscore.v1 messages that carry tensors, shared by the
// client's request encoder (client/score_codec.cc) and the server's response
// encoder (server/service/response_encoder.cc).
//
// Why: tensors are large (B8 H8 L512 float32 logits are 64 MiB); copying them
// into a protobuf `bytes` field and serializing that costs several times the
// network transfer. Here each tensor's `data` bytes go on the wire as a
// grpc::Slice of their own, and everything else is encoded by protobuf into a
// pending string that becomes one slice before the next data slice, so the
// buffer alternates "header slice, data slice, header slice, ...". The bytes
// are exactly what protobuf writes for the same message provided the fields
// are appended in number order (as protobuf writes them), so any gRPC peer
// parses them. Target attnscore_proto_wire: no LibTorch.
//
// Ownership: the assembler owns the slices it was given (a data slice either
// owns a copy, or references memory its creator keeps alive, e.g. through the
// slice's destroy callback or a static slice); Finish() hands them to the
// returned ByteBuffer.
// Thread safety: none; one assembler per message, used by one thread.
// Errors: none (the caller has checked sizes: gRPC caps a message at 2 GiB).
#ifndef ATTNSCORE_PROTO_ATTNSCORE_V1_SLICE_ASSEMBLER_H_
#define ATTNSCORE_PROTO_ATTNSCORE_V1_SLICE_ASSEMBLER_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "common/dtype.h"

namespace attnscore::v1 {

class SliceAssembler {
 public:
  SliceAssembler() = default;
  SliceAssembler(const SliceAssembler&) = delete;
  SliceAssembler& operator=(const SliceAssembler&) = delete;

  // Encoded fields to go out before the next data slice, e.g.
  // `message.AppendToString(&assembler.pending())` for the small fields around
  // the tensors (concatenated encodings of one message merge).
  std::string& pending() { return pending_; }

  // Field number `field` of the message being encoded, a v1.Tensor: its tag
  // and length, dtype and shape, and the tag and length of its `data` (field
  // 3, the last) go to pending(); `data` itself (its size is the tensor's byte
  // count) becomes the next slice. An empty `data` is left out, as proto3
  // omits an empty `bytes` field.
  void AppendTensorField(int field, attnscore::DType dtype,
                         absl::Span<const int64_t> shape, grpc::Slice data);

  // One element of a repeated `bytes` field number `field` (e.g. KServe's
  // raw_output_contents): its tag and length go to pending(), `data` becomes
  // the next slice. Written even when empty, since a repeated field's elements
  // are positional.
  void AppendBytesField(int field, grpc::Slice data);

  // The whole message. The assembler is empty afterwards.
  grpc::ByteBuffer Finish();

 private:
  void FlushPending();

  std::string pending_;
  std::vector<grpc::Slice> slices_;
};

}  // namespace attnscore::v1

#endif  // ATTNSCORE_PROTO_ATTNSCORE_V1_SLICE_ASSEMBLER_H_
