#include "server/service/kserve_codec.h"

#include <grpcpp/support/slice.h>

#include <memory>
#include <optional>
#include <utility>

#include "proto/attnscore/v1/slice_assembler.h"
#include "server/service/response_encoder.h"

namespace attnscore::service::kserve {
namespace {

const scoring::OutputTensor& Tensor(const scoring::ScoreResult& result,
                                    Output output) {
  switch (output) {
    case Output::kProbs:
      return *result.probs;
    case Output::kContext:
      return *result.context;
    case Output::kLogits:
      break;
  }
  return *result.logits;
}

void SetInt(inference::ModelInferResponse& head, const char* name,
            int64_t value) {
  (*head.mutable_parameters())[name].set_int64_param(value);
}

// Triton's parameters of an output placed in shared memory.
void DescribePlacement(const v1::SharedMemoryRange& range,
                       inference::ModelInferResponse::InferOutputTensor& meta) {
  auto& parameters = *meta.mutable_parameters();
  parameters["shared_memory_region"].set_string_param(range.region());
  parameters["shared_memory_offset"].set_int64_param(
      static_cast<int64_t>(range.offset()));
  parameters["shared_memory_byte_size"].set_int64_param(
      static_cast<int64_t>(range.byte_size()));
}

}  // namespace

grpc::ByteBuffer EncodeInferResponse(absl::string_view model_name,
                                     absl::string_view id,
                                     const std::vector<Output>& outputs,
                                     const scoring::ScoreResult& result,
                                     const BatchTiming& timing,
                                     const PlacedRanges& placed) {
  // Fields 1-5 by protobuf, then raw_output_contents (6) by hand: a tag and
  // length per output, its bytes a slice of their own.
  inference::ModelInferResponse head;
  head.set_model_name(model_name.data(), model_name.size());
  head.set_model_version(kModelVersion.data(), kModelVersion.size());
  head.set_id(id.data(), id.size());
  SetInt(head, "queue_us", timing.queue_us);
  SetInt(head, "compute_us", timing.compute_us);
  SetInt(head, "batch_size", timing.batch_size);
  for (Output output : outputs) {
    const scoring::OutputTensor& tensor = Tensor(result, output);
    inference::ModelInferResponse::InferOutputTensor* meta = head.add_outputs();
    meta->set_name(OutputName(output));
    meta->set_datatype(DatatypeName(tensor.dtype));
    meta->mutable_shape()->Add(tensor.shape.begin(), tensor.shape.end());
    if (const v1::SharedMemoryRange* range = placed.For(V1Output(output))) {
      DescribePlacement(*range, *meta);
    }
  }
  v1::SliceAssembler out;
  head.AppendToString(&out.pending());
  for (Output output : outputs) {
    out.AppendBytesField(
        inference::ModelInferResponse::kRawOutputContentsFieldNumber,
        placed.For(V1Output(output)) != nullptr
            ? grpc::Slice()
            : SliceOver(Tensor(result, output)));
  }
  return out.Finish();
}

absl::StatusOr<ValidatedRequest> KServeInferCodec::Parse(
    const grpc::ByteBuffer& request, const RequestLimits& limits,
    const scoring::ModelSet& models) {
  if (absl::Status parsed = ParseInferRequest(request, &request_);
      !parsed.ok()) {
    return parsed;
  }
  const std::vector<TensorBytesView> raw = request_.raw_views();
  absl::StatusOr<std::vector<std::optional<TensorBytesView>>> shared =
      ResolveSharedInputs();
  if (!shared.ok()) return shared.status();
  absl::StatusOr<MappedInfer> mapped =
      MapInferRequest(request_.message, limits, models, raw, *shared);
  if (!mapped.ok()) return mapped.status();
  outputs_ = std::move(mapped->outputs);
  absl::StatusOr<std::vector<ResolvedPlacement>> placements =
      ResolvePlacementList(mapped->placements, mapped->validated,
                           shared_memory_, owner_);
  if (!placements.ok()) return placements.status();
  placements_ = *std::move(placements);
  if (absl::Status s = CheckInputsApart(placements_, inputs_); !s.ok()) {
    return s;
  }
  OfferDestinations(placements_, &mapped->validated.item);
  return std::move(mapped->validated);
}

absl::StatusOr<std::vector<std::optional<TensorBytesView>>>
KServeInferCodec::ResolveSharedInputs() {
  absl::StatusOr<std::vector<SharedInputRequest>> requests =
      SharedInputRequests(request_.message);
  if (!requests.ok()) return requests.status();
  std::vector<std::optional<TensorBytesView>> shared;
  if (requests->empty()) return shared;
  shared.resize(static_cast<size_t>(request_.message.inputs_size()));
  for (const SharedInputRequest& input : *requests) {
    absl::StatusOr<ResolvedInput> resolved =
        ResolveInput(input.range, input.region_field, input.range_field,
                     shared_memory_, owner_);
    if (!resolved.ok()) return resolved.status();
    shared[static_cast<size_t>(input.input)] = resolved->Bytes();
    inputs_.push_back(*std::move(resolved));
  }
  return shared;
}

absl::StatusOr<grpc::ByteBuffer> KServeInferCodec::EncodeResult(
    const scoring::ScoreResult& result, const BatchTiming& timing) const {
  if (absl::Status s = CheckInputsIntact(inputs_); !s.ok()) return s;
  absl::StatusOr<PlacedRanges> placed = WritePlacements(placements_, result);
  if (!placed.ok()) return placed.status();
  return EncodeInferResponse(request_.message.model_name(),
                             request_.message.id(), outputs_, result, timing,
                             *placed);
}

}  // namespace attnscore::service::kserve
