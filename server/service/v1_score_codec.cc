#include "server/service/v1_score_codec.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/service/response_encoder.h"

namespace attnscore::service {
namespace {

// The first `n` bytes of `buffer` (fewer if it is shorter), without copying
// the rest.
std::string Prefix(const grpc::ByteBuffer& buffer, size_t n) {
  std::string out;
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& slice : slices) {
    if (out.size() >= n) break;
    const size_t take = std::min(n - out.size(), slice.size());
    out.append(reinterpret_cast<const char*>(slice.begin()), take);
  }
  return out;
}

}  // namespace

void V1ScoreCodec::Peek(const grpc::ByteBuffer& request) {
  // Tag of field 1, wire type 2; a varint length of at most 2 bytes covers
  // kMaxClientStringBytes.
  constexpr unsigned char kRequestIdTag = 0x0a;
  const std::string head = Prefix(request, 3 + kMaxClientStringBytes);
  if (head.size() < 2 || static_cast<unsigned char>(head[0]) != kRequestIdTag) {
    return;
  }
  uint64_t length = 0;
  size_t at = 1;
  for (int shift = 0; at < head.size() && shift <= 14; shift += 7) {
    const auto byte = static_cast<unsigned char>(head[at++]);
    length |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      id_ = head.substr(at, std::min<uint64_t>(length, kMaxClientStringBytes));
      return;
    }
  }
}

absl::StatusOr<ValidatedRequest> V1ScoreCodec::Parse(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  if (absl::Status parsed = ParseScoreRequest(request, &request_);
      !parsed.ok()) {
    return parsed;
  }
  id_ = request_.message.request_id().substr(0, kMaxClientStringBytes);
  RequestTensorBytes bytes = request_.tensor_bytes();
  if (absl::Status s = ResolveSharedInputs(&bytes); !s.ok()) return s;
  absl::StatusOr<ValidatedRequest> validated =
      ValidateRequest(request_.message, limits, models, bytes);
  if (!validated.ok()) return validated;
  absl::StatusOr<std::vector<ResolvedPlacement>> placements =
      ResolvePlacements(request_.message, *validated, shared_memory_, owner_);
  if (!placements.ok()) return placements.status();
  placements_ = *std::move(placements);
  if (absl::Status s = CheckInputsApart(placements_, inputs_); !s.ok()) {
    return s;
  }
  OfferDestinations(placements_, &validated->item);
  return validated;
}

absl::Status V1ScoreCodec::ResolveSharedInputs(RequestTensorBytes* bytes) {
  const v1::ScoreRequest& message = request_.message;
  const struct {
    const char* name;
    bool present;
    const v1::Tensor& tensor;
    std::optional<TensorBytesView>& view;
  } inputs[] = {{"query", message.has_query(), message.query(), bytes->query},
                {"key", message.has_key(), message.key(), bytes->key},
                {"value", message.has_value(), message.value(), bytes->value}};
  for (const auto& input : inputs) {
    if (!input.present || !input.tensor.has_shared_memory()) continue;
    const bool has_data = input.view.has_value() ? input.view->size > 0
                                                 : !input.tensor.data().empty();
    if (has_data) {
      return absl::InvalidArgumentError(absl::StrCat(
          input.name,
          ": expected its bytes in data or in shared_memory, got both"));
    }
    const std::string field = absl::StrCat(input.name, ".shared_memory");
    absl::StatusOr<ResolvedInput> resolved =
        ResolveInput(input.tensor.shared_memory(), field + ".region", field,
                     shared_memory_, owner_);
    if (!resolved.ok()) return resolved.status();
    input.view = resolved->Bytes("shared_memory.byte_size");
    inputs_.push_back(*std::move(resolved));
  }
  return absl::OkStatus();
}

namespace {

v1::Timing ToWire(const BatchTiming& timing) {
  v1::Timing wire;
  wire.set_queue_us(timing.queue_us);
  wire.set_compute_us(timing.compute_us);
  wire.set_batch_size(static_cast<int32_t>(timing.batch_size));
  return wire;
}

}  // namespace

absl::StatusOr<PlacedRanges> V1ScoreCodec::FinishPlacements(
    const scoring::ScoreResult& result) const {
  if (absl::Status s = CheckInputsIntact(inputs_); !s.ok()) return s;
  return WritePlacements(placements_, result);
}

absl::StatusOr<grpc::ByteBuffer> V1ScoreCodec::EncodeResult(
    const scoring::ScoreResult& result, const BatchTiming& timing) const {
  absl::StatusOr<PlacedRanges> placed = FinishPlacements(result);
  if (!placed.ok()) return placed.status();
  return EncodeScoreResponse(request_.message.request_id(), result,
                             ToWire(timing), *placed);
}

absl::StatusOr<std::vector<grpc::ByteBuffer>> V1ScoreCodec::EncodeChunks(
    const scoring::ScoreResult& result, const BatchTiming& timing,
    int64_t chunk_bytes) const {
  absl::StatusOr<PlacedRanges> placed = FinishPlacements(result);
  if (!placed.ok()) return placed.status();
  return EncodeScoreChunks(request_.message.request_id(), result,
                           ToWire(timing), *placed, chunk_bytes);
}

absl::StatusOr<std::vector<grpc::ByteBuffer>> V1ScoreCodec::EncodeChunksAhead(
    const scoring::ScoreResult& result, int64_t chunk_bytes,
    std::vector<int64_t>* row_ends) const {
  if (!placements_.empty()) {
    return absl::FailedPreconditionError(
        "outputs placed in shared memory are written after the compute");
  }
  return EncodeScoreChunks(request_.message.request_id(), result, v1::Timing(),
                           PlacedRanges(), chunk_bytes, row_ends);
}

grpc::ByteBuffer V1ScoreCodec::EncodeError(const absl::Status& status) const {
  return EncodeErrorResponse(id_, status);
}

}  // namespace attnscore::service
