#include "client/score_codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>
#include <sys/mman.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/attnscore/v1/proto_dtype.h"
#include "proto/attnscore/v1/proto_layout.h"
#include "proto/attnscore/v1/slice_assembler.h"

namespace attnscore::client::internal {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

// `tensor`'s bytes as a slice: over the caller's memory (kReference; gRPC never
// frees or writes a static slice, the caller keeps the memory alive) or owning
// a copy (kCopy).
grpc::Slice DataSlice(const TensorView& tensor, DataMode mode) {
  if (tensor.size_bytes == 0) return grpc::Slice();
  if (mode == DataMode::kCopy) {
    return grpc::Slice(tensor.data, tensor.size_bytes);
  }
  return grpc::Slice(tensor.data, tensor.size_bytes, grpc::Slice::STATIC_SLICE);
}

// Field `field` of ScoreRequest holding `tensor`, its data as a slice.
void AppendTensorField(v1::SliceAssembler& out, int field,
                       const TensorView& tensor, DataMode mode) {
  out.AppendTensorField(field, tensor.dtype, tensor.shape,
                        DataSlice(tensor, mode));
}

// Tensors this big come from the Client's pool. glibc's malloc always maps
// blocks above 32 MiB (its largest mmap threshold) afresh, so every such
// response faulted in all its pages. Smaller ones come from its heap, which
// it keeps once a block of that size has been freed; pooling those too would
// take away the frees that teach it to, and gRPC's receive buffers would
// fault instead (measured: 2.6k faults per 16 MiB response).
constexpr size_t kPooledTensorBytes = size_t{32} << 20;

// The buffer a response tensor's bytes are copied into: `size` uninitialised
// bytes, from `pool` when there is one and they are large (reused blocks are
// already faulted in), else new[]'d. Large ones get madvise(MADV_HUGEPAGE)
// before they are written: a fresh 64 MiB buffer otherwise takes 16384 page
// faults during the copy, which measured as the largest part of the client's
// receive CPU (bench/transport_bench.cc); with transparent huge pages
// (Debian's default mode "madvise") it takes 32. Only advice: where the
// kernel declines, the buffer is as before.
TensorBytes AllocateTensorBytes(size_t size,
                                const std::shared_ptr<BufferPool>& pool) {
  TensorBytes data;
  if (pool != nullptr && size >= kPooledTensorBytes) {
    size_t capacity = 0;
    void* block = pool->Acquire(size, &capacity);
    data = TensorBytes(static_cast<uint8_t*>(block),
                       TensorBytesDeleter(pool, capacity));
  } else {
    data = TensorBytes(new uint8_t[size > 0 ? size : 1]);
  }
  constexpr size_t kHugePage = size_t{2} << 20;
  if (size >= 4 * kHugePage) {
    // The whole huge pages inside the buffer.
    const size_t misalign = reinterpret_cast<uintptr_t>(data.get()) % kHugePage;
    const size_t skip = misalign == 0 ? 0 : kHugePage - misalign;
    const size_t length = (size - skip) / kHugePage * kHugePage;
    madvise(data.get() + skip, length, MADV_HUGEPAGE);
  }
  return data;
}

absl::Status DataLoss(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed ScoreResponse: ", what));
}

// Reads one v1.Tensor message up to the current limit; the data bytes go
// straight from the received slices into the tensor's buffer.
absl::StatusOr<Tensor> ReadTensor(CodedInputStream& in, const char* name,
                                  const std::shared_ptr<BufferPool>& pool) {
  int dtype_value = 0;
  std::vector<int64_t> shape;
  TensorBytes data;
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
      if (!in.ReadVarint32(&length)) {
        return DataLoss(absl::StrCat(name, ".shape"));
      }
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
      data = AllocateTensorBytes(size, pool);
      if (size > 0 && !in.ReadRaw(data.get(), static_cast<int>(size))) {
        return DataLoss(absl::StrCat(name, ".data truncated"));
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return DataLoss(absl::StrCat(name, " field ", field));
    }
  }
  if (!in.ConsumedEntireMessage()) return DataLoss(absl::StrCat(name, " end"));
  std::optional<DType> dtype = v1::FromProtoDType(dtype_value);
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

  v1::SliceAssembler out;
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

  AppendTensorField(out, v1::ScoreRequest::kQueryFieldNumber, request.query,
                    mode);
  AppendTensorField(out, v1::ScoreRequest::kKeyFieldNumber, request.key, mode);
  if (request.value) {
    AppendTensorField(out, v1::ScoreRequest::kValueFieldNumber, *request.value,
                      mode);
  }

  v1::ScoreRequest tail;
  tail.set_layout(v1::ToProtoLayout(request.layout));
  tail.set_causal(request.causal);
  if (request.scale) tail.set_scale(*request.scale);
  tail.mutable_key_lengths()->Add(request.key_lengths.begin(),
                                  request.key_lengths.end());
  if (request.outputs.logits) tail.add_outputs(v1::LOGITS);
  if (request.outputs.probs) tail.add_outputs(v1::PROBS);
  if (request.outputs.context) tail.add_outputs(v1::CONTEXT);
  if (request.output_dtype) {
    tail.set_output_dtype(v1::ToProtoDType(*request.output_dtype));
  }
  tail.AppendToString(&out.pending());
  return out.Finish();
}

absl::StatusOr<DecodedResponse> DecodeScoreResponse(
    grpc::ByteBuffer& buffer, const std::shared_ptr<BufferPool>& pool) {
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
      absl::StatusOr<Tensor> tensor = ReadTensor(in, tensor_name, pool);
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
