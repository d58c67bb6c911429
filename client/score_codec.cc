#include "client/score_codec.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/slice.h>
#include <sys/mman.h>

#include <algorithm>
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

// Field `field` of ScoreRequest holding `tensor`: its bytes as a slice, or
// with `shared` its dtype, shape and that range instead.
void AppendInput(v1::SliceAssembler& out, int field, const TensorView& tensor,
                 const std::optional<SharedMemoryRange>& shared,
                 DataMode mode) {
  if (!shared.has_value()) {
    AppendTensorField(out, field, tensor, mode);
    return;
  }
  // A one-field ScoreRequest: concatenated encodings merge.
  v1::ScoreRequest part;
  v1::Tensor* wire =
      field == v1::ScoreRequest::kQueryFieldNumber ? part.mutable_query()
      : field == v1::ScoreRequest::kKeyFieldNumber ? part.mutable_key()
                                                   : part.mutable_value();
  wire->set_dtype(v1::ToProtoDType(tensor.dtype));
  wire->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
  v1::SharedMemoryRange* range = wire->mutable_shared_memory();
  range->set_region(shared->region);
  range->set_offset(shared->offset);
  range->set_byte_size(shared->byte_size);
  part.AppendToString(&out.pending());
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

// Reads a length-delimited submessage into `message` (small ones: Timing,
// Error, SharedMemoryRange).
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

// Appends a packed run of shape dims (length-delimited varints).
bool ReadPackedShape(CodedInputStream& in, std::vector<int64_t>& shape) {
  uint32_t length;
  if (!in.ReadVarint32(&length)) return false;
  const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(length));
  while (in.BytesUntilLimit() > 0) {
    uint64_t v;
    if (!in.ReadVarint64(&v)) return false;
    shape.push_back(static_cast<int64_t>(v));
  }
  in.PopLimit(limit);
  return true;
}

// A response v1.Tensor's fields as read, before they become a Tensor or (with
// shared_memory set) a PlacedOutput.
struct TensorFields {
  int dtype_value = 0;
  std::vector<int64_t> shape;
  TensorBytes data;
  size_t size = 0;
  std::optional<v1::SharedMemoryRange> shared_memory;
};

// Reads one v1.Tensor message up to the current limit; the data bytes go
// straight from the received slices into the tensor's buffer.
absl::StatusOr<TensorFields> ReadTensorFields(
    CodedInputStream& in, const char* name,
    const std::shared_ptr<BufferPool>& pool) {
  TensorFields fields;
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const auto wire_type = WireFormatLite::GetTagWireType(tag);
    const bool length_delimited =
        wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (field == v1::Tensor::kDtypeFieldNumber &&
        wire_type == WireFormatLite::WIRETYPE_VARINT) {
      uint32_t v;
      if (!in.ReadVarint32(&v)) return DataLoss(absl::StrCat(name, ".dtype"));
      fields.dtype_value = static_cast<int>(v);
    } else if (field == v1::Tensor::kShapeFieldNumber &&
               wire_type == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t v;
      if (!in.ReadVarint64(&v)) return DataLoss(absl::StrCat(name, ".shape"));
      fields.shape.push_back(static_cast<int64_t>(v));
    } else if (field == v1::Tensor::kShapeFieldNumber && length_delimited) {
      if (!ReadPackedShape(in, fields.shape)) {
        return DataLoss(absl::StrCat(name, ".shape"));
      }
    } else if (field == v1::Tensor::kDataFieldNumber && length_delimited) {
      uint32_t length;
      if (!in.ReadVarint32(&length) ||
          static_cast<int>(length) > in.BytesUntilLimit()) {
        return DataLoss(absl::StrCat(name, ".data length"));
      }
      // A repeated field replaces the earlier one (proto3 merge semantics for
      // bytes).
      fields.size = length;
      fields.data = AllocateTensorBytes(fields.size, pool);
      if (fields.size > 0 &&
          !in.ReadRaw(fields.data.get(), static_cast<int>(fields.size))) {
        return DataLoss(absl::StrCat(name, ".data truncated"));
      }
    } else if (field == v1::Tensor::kSharedMemoryFieldNumber &&
               length_delimited) {
      // A repeated submessage merges into the earlier one, as protobuf's.
      if (!fields.shared_memory) fields.shared_memory.emplace();
      if (!ReadSmallMessage(in, *fields.shared_memory)) {
        return DataLoss(absl::StrCat(name, ".shared_memory"));
      }
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return DataLoss(absl::StrCat(name, " field ", field));
    }
  }
  if (!in.ConsumedEntireMessage()) return DataLoss(absl::StrCat(name, " end"));
  return fields;
}

absl::StatusOr<DType> ResponseDType(int value, const char* name) {
  std::optional<DType> dtype = v1::FromProtoDType(value);
  if (!dtype) {
    return absl::DataLossError(
        absl::StrCat("ScoreResponse.", name, ": unknown dtype ", value));
  }
  return *dtype;
}

// An in-band output: its bytes must match its shape.
absl::StatusOr<Tensor> ToTensor(TensorFields fields, const char* name) {
  absl::StatusOr<DType> dtype = ResponseDType(fields.dtype_value, name);
  if (!dtype.ok()) return dtype.status();
  absl::StatusOr<Tensor> tensor = Tensor::Adopt(
      *dtype, std::move(fields.shape), std::move(fields.data), fields.size);
  if (!tensor.ok()) {
    return absl::DataLossError(
        absl::StrCat("ScoreResponse.", name, ": ", tensor.status().message()));
  }
  return tensor;
}

// An output placed in shared memory: no bytes in the reply, and a shape whose
// bytes fit the range the server says it wrote them to.
absl::StatusOr<PlacedOutput> ToPlacedOutput(TensorFields fields, Output output,
                                            const char* name) {
  absl::StatusOr<DType> dtype = ResponseDType(fields.dtype_value, name);
  if (!dtype.ok()) return dtype.status();
  const std::string what = absl::StrCat("ScoreResponse.", name, ": ");
  if (fields.size > 0) {
    return absl::DataLossError(absl::StrCat(
        what, "shared_memory is set but data holds ", fields.size, " bytes"));
  }
  const v1::SharedMemoryRange& range = *fields.shared_memory;
  if (range.region().empty()) {
    return absl::DataLossError(
        absl::StrCat(what, "shared_memory.region is empty"));
  }
  const int64_t elements = NumElements(fields.shape);
  const uint64_t element_size = ElementSize(*dtype);
  // elements <= byte_size / element_size: no overflow of elements * size.
  if (elements < 0 ||
      static_cast<uint64_t>(elements) > range.byte_size() / element_size) {
    return absl::DataLossError(absl::StrCat(
        what, "shape ", ShapeString(fields.shape), " of ", DTypeName(*dtype),
        " does not fit shared_memory.byte_size ", range.byte_size()));
  }
  return PlacedOutput{
      output, *dtype, std::move(fields.shape),
      SharedMemoryRange{range.region(), range.offset(), range.byte_size()}};
}

// Stores one response output into `result`, in band or placed; a repeated
// field replaces the earlier one either way.
absl::Status StoreOutput(TensorFields fields, Output output, const char* name,
                         ScoreResult& result) {
  std::optional<Tensor>& in_band = output == Output::kLogits  ? result.logits
                                   : output == Output::kProbs ? result.probs
                                                              : result.context;
  in_band.reset();
  std::vector<PlacedOutput>& placed = result.placed;
  placed.erase(std::remove_if(placed.begin(), placed.end(),
                              [output](const PlacedOutput& p) {
                                return p.output == output;
                              }),
               placed.end());
  if (fields.shared_memory) {
    absl::StatusOr<PlacedOutput> out =
        ToPlacedOutput(std::move(fields), output, name);
    if (!out.ok()) return out.status();
    placed.push_back(*std::move(out));
    return absl::OkStatus();
  }
  absl::StatusOr<Tensor> tensor = ToTensor(std::move(fields), name);
  if (!tensor.ok()) return tensor.status();
  in_band = *std::move(tensor);
  return absl::OkStatus();
}

// The output a ScoreResponse field number holds, if any.
std::optional<Output> ResponseOutput(int field) {
  switch (field) {
    case v1::ScoreResponse::kLogitsFieldNumber:
      return Output::kLogits;
    case v1::ScoreResponse::kProbsFieldNumber:
      return Output::kProbs;
    case v1::ScoreResponse::kContextFieldNumber:
      return Output::kContext;
    default:
      return std::nullopt;
  }
}

v1::Output ToProtoOutput(Output output) {
  switch (output) {
    case Output::kLogits:
      return v1::LOGITS;
    case Output::kProbs:
      return v1::PROBS;
    case Output::kContext:
      return v1::CONTEXT;
  }
  return v1::OUTPUT_UNSPECIFIED;
}

}  // namespace

absl::StatusOr<grpc::ByteBuffer> EncodeScoreRequest(const ScoreRequest& request,
                                                    DataMode mode) {
  // Local checks only where a bad view would make us read memory we were not
  // given; the server validates everything else and names the field. A
  // tensor in shared memory sends no bytes of its own.
  const SharedInputs& shared = request.shared_inputs;
  const TensorView* value = request.value ? &*request.value : nullptr;
  if (shared.value.has_value() && value == nullptr) {
    return absl::InvalidArgumentError(
        "ScoreRequest.shared_inputs.value: set without a value tensor (its "
        "dtype and shape)");
  }
  const std::pair<const char*, const TensorView*> tensors[] = {
      {"query", shared.query ? nullptr : &request.query},
      {"key", shared.key ? nullptr : &request.key},
      {"value", shared.value ? nullptr : value}};
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

  AppendInput(out, v1::ScoreRequest::kQueryFieldNumber, request.query,
              shared.query, mode);
  AppendInput(out, v1::ScoreRequest::kKeyFieldNumber, request.key, shared.key,
              mode);
  if (value != nullptr) {
    AppendInput(out, v1::ScoreRequest::kValueFieldNumber, *value, shared.value,
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
  for (const OutputPlacement& placement : request.placements) {
    v1::OutputPlacement* wire = tail.add_placements();
    wire->set_output(ToProtoOutput(placement.output));
    v1::SharedMemoryRange* range = wire->mutable_range();
    range->set_region(placement.range.region);
    range->set_offset(placement.range.offset);
    range->set_byte_size(placement.range.byte_size);
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
    const std::optional<Output> output =
        length_delimited ? ResponseOutput(field) : std::nullopt;
    if (output) {
      const char* name = OutputName(*output);
      uint32_t length;
      if (!in.ReadVarint32(&length)) return DataLoss(name);
      const CodedInputStream::Limit limit =
          in.PushLimit(static_cast<int>(length));
      absl::StatusOr<TensorFields> fields = ReadTensorFields(in, name, pool);
      if (!fields.ok()) return fields.status();
      in.PopLimit(limit);
      if (absl::Status s =
              StoreOutput(*std::move(fields), *output, name, out.result);
          !s.ok()) {
        return s;
      }
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

// -----------------------------------------------------------------------------
// ScoreChunked replies.

namespace attnscore::client::internal {
namespace {

absl::Status ChunkLoss(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("malformed ScoreChunk: ", what));
}

std::optional<Output> FromWireOutput(int value) {
  switch (value) {
    case v1::LOGITS:
      return Output::kLogits;
    case v1::PROBS:
      return Output::kProbs;
    case v1::CONTEXT:
      return Output::kContext;
    default:
      return std::nullopt;
  }
}

}  // namespace

// A ScoreChunk's fields other than its data, as read so far.
struct ChunkAssembler::Header {
  int output = 0;  // wire number: 1 LOGITS, 2 PROBS, 3 CONTEXT
  int dtype_value = 0;
  std::vector<int64_t> shape;
  uint64_t offset = 0;
  std::optional<v1::SharedMemoryRange> shared_memory;
};

struct ChunkAssembler::Output {
  client::Output output = client::Output::kLogits;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  TensorBytes data;
  size_t size = 0;    // the whole output's bytes
  size_t filled = 0;  // bytes received
};

ChunkAssembler::ChunkAssembler(std::shared_ptr<BufferPool> pool,
                               size_t max_output_bytes)
    : pool_(std::move(pool)), max_output_bytes_(max_output_bytes) {}

ChunkAssembler::~ChunkAssembler() = default;

namespace {

// The output a chunk's header describes, checked: a known output, dtype and a
// shape of at most `max_bytes`. Sets *bytes.
absl::StatusOr<DType> CheckChunkOutput(int output, int dtype_value,
                                       const std::vector<int64_t>& shape,
                                       size_t max_bytes, size_t* bytes) {
  if (!FromWireOutput(output)) {
    return ChunkLoss(absl::StrCat("output ", output,
                                  " (expected LOGITS, PROBS or CONTEXT)"));
  }
  std::optional<DType> dtype = v1::FromProtoDType(dtype_value);
  if (!dtype) return ChunkLoss(absl::StrCat("unknown dtype ", dtype_value));
  const int64_t elements = NumElements(shape);
  const size_t element_size = ElementSize(*dtype);
  if (elements < 0 ||
      static_cast<uint64_t>(elements) > max_bytes / element_size) {
    return ChunkLoss(
        absl::StrCat("shape ", ShapeString(shape), " of ", DTypeName(*dtype),
                     " is over the ", max_bytes,
                     " bytes left of what the request's outputs can hold"));
  }
  *bytes = static_cast<size_t>(elements) * element_size;
  return *dtype;
}

}  // namespace

bool ChunkAssembler::IsCurrent(int wire_output) const {
  return current_ != nullptr && ToProtoOutput(current_->output) ==
                                    static_cast<v1::Output>(wire_output);
}

absl::Status ChunkAssembler::Store(Output& output) {
  absl::StatusOr<Tensor> tensor =
      Tensor::Adopt(output.dtype, std::move(output.shape),
                    std::move(output.data), output.size);
  if (!tensor.ok()) return ChunkLoss(tensor.status().message());
  std::optional<Tensor>& slot =
      output.output == client::Output::kLogits  ? result_.logits
      : output.output == client::Output::kProbs ? result_.probs
                                                : result_.context;
  slot = *std::move(tensor);
  return absl::OkStatus();
}

// The output `header` belongs to: the current one, or a new one begun (the
// current one then complete and stored). Null with *status set on error; null
// with OK for a chunk of no output.
ChunkAssembler::Output* ChunkAssembler::Locate(const Header& header,
                                               absl::Status* status) {
  const bool in_band = !header.shared_memory.has_value();
  if (header.output == 0) return nullptr;
  if (IsCurrent(header.output)) {
    if (header.dtype_value != v1::ToProtoDType(current_->dtype) ||
        header.shape != current_->shape) {
      *status = ChunkLoss(absl::StrCat(
          OutputName(current_->output), ": a chunk of dtype ",
          header.dtype_value, " and shape ", ShapeString(header.shape),
          " after its first of ", DTypeName(current_->dtype), " and shape ",
          ShapeString(current_->shape)));
      return nullptr;
    }
    return current_.get();
  }
  if (header.output <= last_output_) {
    *status = ChunkLoss(absl::StrCat("output ", header.output, " after output ",
                                     last_output_,
                                     " (expected each once, in order)"));
    return nullptr;
  }
  if (current_ != nullptr) {
    if (current_->filled != current_->size) {
      *status = ChunkLoss(absl::StrCat(
          OutputName(current_->output), ": ", current_->filled, " of ",
          current_->size, " bytes before output ", header.output, " began"));
      return nullptr;
    }
    *status = Store(*current_);
    current_.reset();
    if (!status->ok()) return nullptr;
  }
  size_t bytes = 0;
  absl::StatusOr<DType> dtype =
      CheckChunkOutput(header.output, header.dtype_value, header.shape,
                       max_output_bytes_ - output_bytes_, &bytes);
  if (!dtype.ok()) {
    *status = dtype.status();
    return nullptr;
  }
  output_bytes_ += bytes;
  last_output_ = header.output;
  auto output = std::make_unique<Output>();
  output->output = *FromWireOutput(header.output);
  output->dtype = *dtype;
  output->shape = header.shape;
  output->size = bytes;
  if (in_band) output->data = AllocateTensorBytes(bytes, pool_);
  current_ = std::move(output);
  return current_.get();
}

// A chunk's data field: the next bytes of its output, copied into place.
absl::Status ChunkAssembler::ReadData(CodedInputStream& in,
                                      const Header& header) {
  absl::Status status;
  Output* output = Locate(header, &status);
  if (!status.ok()) return status;
  if (output == nullptr) {
    return ChunkLoss("data before the chunk's output, dtype and shape");
  }
  if (header.shared_memory) {
    return ChunkLoss("both data and shared_memory");
  }
  uint32_t length;
  // At the top level there is no limit (-1): ReadRaw finds a short message.
  const int until = in.BytesUntilLimit();
  if (!in.ReadVarint32(&length) ||
      (until >= 0 && static_cast<int64_t>(length) > until)) {
    return ChunkLoss("data length");
  }
  if (header.offset != output->filled ||
      length > output->size - output->filled) {
    return ChunkLoss(absl::StrCat(
        OutputName(output->output), ": ", length, " bytes at offset ",
        header.offset, ", expected at most ", output->size - output->filled,
        " at offset ", output->filled, " of ", output->size));
  }
  if (length > 0 && !in.ReadRaw(output->data.get() + output->filled,
                                static_cast<int>(length))) {
    return ChunkLoss("data truncated");
  }
  output->filled += length;
  return absl::OkStatus();
}

// An output placed in shared memory: its one chunk, stored at once.
absl::Status ChunkAssembler::Place(const Header& header) {
  absl::Status status;
  if (IsCurrent(header.output)) {
    return ChunkLoss("shared_memory on a chunk of an output sent in band");
  }
  // Locate checks the order and stores the previous output.
  Output* output = Locate(header, &status);
  if (!status.ok()) return status;
  if (output == nullptr) return ChunkLoss("shared_memory without an output");
  TensorFields fields;
  fields.dtype_value = v1::ToProtoDType(output->dtype);
  fields.shape = output->shape;
  fields.shared_memory = *header.shared_memory;
  const client::Output which = output->output;
  current_.reset();
  absl::StatusOr<PlacedOutput> placed =
      ToPlacedOutput(std::move(fields), which, OutputName(which));
  if (!placed.ok()) return ChunkLoss(placed.status().message());
  result_.placed.push_back(*std::move(placed));
  return absl::OkStatus();
}

absl::Status ChunkAssembler::Add(grpc::ByteBuffer& message) {
  if (!error_.ok()) return error_;
  ++messages_;
  error_ = Read(message);
  if (!error_.ok()) refused_ = error_;
  message.Clear();
  return error_;
}

namespace {

// Reads one field of a chunk's header (output, dtype, shape, offset,
// shared_memory) into `header`. False if `tag` is none of those; else
// *status says whether it parsed.
bool ReadChunkHeaderField(CodedInputStream& in, uint32_t tag,
                          ChunkAssembler::Header& header,
                          absl::Status* status) {
  const int field = WireFormatLite::GetTagFieldNumber(tag);
  const auto wire_type = WireFormatLite::GetTagWireType(tag);
  const bool varint = wire_type == WireFormatLite::WIRETYPE_VARINT;
  const bool length_delimited =
      wire_type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
  uint32_t v32 = 0;
  uint64_t v64 = 0;
  bool ok = true;
  const char* name = nullptr;
  if (field == v1::ScoreChunk::kOutputFieldNumber && varint) {
    name = "output";
    ok = in.ReadVarint32(&v32);
    header.output = static_cast<int>(v32);
  } else if (field == v1::ScoreChunk::kDtypeFieldNumber && varint) {
    name = "dtype";
    ok = in.ReadVarint32(&v32);
    header.dtype_value = static_cast<int>(v32);
  } else if (field == v1::ScoreChunk::kShapeFieldNumber && varint) {
    name = "shape";
    ok = in.ReadVarint64(&v64);
    header.shape.push_back(static_cast<int64_t>(v64));
  } else if (field == v1::ScoreChunk::kShapeFieldNumber && length_delimited) {
    name = "shape";
    ok = ReadPackedShape(in, header.shape);
  } else if (field == v1::ScoreChunk::kOffsetFieldNumber && varint) {
    name = "offset";
    ok = in.ReadVarint64(&header.offset);
  } else if (field == v1::ScoreChunk::kSharedMemoryFieldNumber &&
             length_delimited) {
    name = "shared_memory";
    header.shared_memory.emplace();
    ok = ReadSmallMessage(in, *header.shared_memory);
  } else {
    return false;
  }
  *status = ok ? absl::OkStatus() : ChunkLoss(name);
  return true;
}

}  // namespace

// The chunk's data (ReadData), request_id and timing; every other field
// through ReadChunkHeaderField, unknown ones skipped. *has_data: it had data.
absl::Status ChunkAssembler::ReadFields(CodedInputStream& in, Header& header,
                                        bool* has_data) {
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) break;
    absl::Status status;
    if (ReadChunkHeaderField(in, tag, header, &status)) {
      if (!status.ok()) return status;
      continue;
    }
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool length_delimited = WireFormatLite::GetTagWireType(tag) ==
                                  WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    uint32_t length;
    if (field == v1::ScoreChunk::kDataFieldNumber && length_delimited) {
      if (absl::Status s = ReadData(in, header); !s.ok()) return s;
      *has_data = true;
    } else if (field == v1::ScoreChunk::kRequestIdFieldNumber &&
               length_delimited) {
      if (!in.ReadVarint32(&length) ||
          !in.ReadString(&result_.request_id, static_cast<int>(length))) {
        return ChunkLoss("request_id");
      }
    } else if (field == v1::ScoreChunk::kTimingFieldNumber &&
               length_delimited) {
      v1::Timing timing;
      if (!ReadSmallMessage(in, timing)) return ChunkLoss("timing");
      result_.timing =
          Timing{timing.queue_us(), timing.compute_us(), timing.batch_size()};
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return ChunkLoss(absl::StrCat("field ", field));
    }
  }
  if (!in.ConsumedEntireMessage()) return ChunkLoss("trailing bytes");
  return absl::OkStatus();
}

absl::Status ChunkAssembler::Read(grpc::ByteBuffer& message) {
  grpc::ProtoBufferReader reader(&message);
  if (!reader.status().ok()) return ChunkLoss(reader.status().error_message());
  CodedInputStream in(&reader);
  Header header;
  bool has_data = false;
  if (absl::Status s = ReadFields(in, header, &has_data); !s.ok()) return s;
  if (header.shared_memory) {
    if (has_data) return ChunkLoss("both data and shared_memory");
    return Place(header);
  }
  if (has_data) return absl::OkStatus();
  // No data field (proto3 leaves an empty one out): an empty output, or a
  // chunk of no output.
  absl::Status status;
  Output* output = Locate(header, &status);
  if (!status.ok()) return status;
  if (output != nullptr && header.offset != output->filled) {
    return ChunkLoss(absl::StrCat(OutputName(output->output),
                                  ": an empty chunk at offset ", header.offset,
                                  ", expected ", output->filled));
  }
  return absl::OkStatus();
}

absl::StatusOr<ScoreResult> ChunkAssembler::Finish() {
  if (!error_.ok()) return error_;
  if (current_ != nullptr) {
    if (current_->filled != current_->size) {
      error_ = ChunkLoss(
          absl::StrCat(OutputName(current_->output), ": the reply ended after ",
                       current_->filled, " of ", current_->size, " bytes"));
      return error_;
    }
    error_ = Store(*current_);
    current_.reset();
    if (!error_.ok()) return error_;
  }
  if (last_output_ == 0) {
    error_ = ChunkLoss("the reply ended without any output");
    return error_;
  }
  error_ = absl::FailedPreconditionError("ChunkAssembler: already finished");
  return std::move(result_);
}

}  // namespace attnscore::client::internal
