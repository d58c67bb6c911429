#include "server/service/output_placement.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "server/scoring/resource_estimate.h"

namespace attnscore::service {
namespace {

bool Wanted(const scoring::ScoreSpec& spec, v1::Output output) {
  switch (output) {
    case v1::LOGITS:
      return spec.want_logits;
    case v1::PROBS:
      return spec.want_probs;
    case v1::CONTEXT:
      return spec.want_context;
    default:
      return false;
  }
}

// The output's bytes: [B, H, Lq, Lk] or [B, H, Lq, Dv] elements of the output
// dtype (validation capped their sum at --max-output-bytes).
uint64_t OutputBytes(const ValidatedRequest& validated, v1::Output output) {
  const scoring::ProblemSize size =
      scoring::ProblemSizeOf(validated.spec, validated.item);
  const int64_t last = output == v1::CONTEXT ? size.value_dim : size.key_len;
  return static_cast<uint64_t>(size.batch * size.heads * size.query_len *
                               last) *
         ElementSize(validated.spec.output_dtype);
}

// `owner`'s region of `range`, with the range within it; FAILED_PRECONDITION
// without a registry or with shared memory off.
absl::StatusOr<std::shared_ptr<const MappedRegion>> FindRange(
    const v1::SharedMemoryRange& range, const std::string& region_field,
    const std::string& range_field, const SharedMemoryRegistry* registry,
    absl::string_view owner) {
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region =
      registry != nullptr ? registry->Find(owner, range.region())
                          : SharedMemoryRegistry::Off();
  if (!region.ok()) {
    return absl::Status(
        region.status().code(),
        absl::StrCat(region_field, ": ", region.status().message()));
  }
  const uint64_t region_bytes = (*region)->spec().byte_size;
  if (range.offset() > region_bytes ||
      range.byte_size() > region_bytes - range.offset()) {
    return absl::InvalidArgumentError(absl::StrCat(
        range_field, ": expected offset + byte_size within the region's ",
        region_bytes, " bytes, got ", range.offset(), " + ",
        range.byte_size()));
  }
  return region;
}

absl::StatusOr<ResolvedPlacement> ResolveOne(
    const PlacementRequest& placement, const ValidatedRequest& validated,
    const SharedMemoryRegistry* registry, absl::string_view owner) {
  if (!Wanted(validated.spec, placement.output)) {
    return absl::InvalidArgumentError(absl::StrCat(
        placement.output_field, ": expected one of the request's outputs, got ",
        v1::Output_Name(placement.output).empty()
            ? std::to_string(placement.output)
            : v1::Output_Name(placement.output)));
  }
  const v1::SharedMemoryRange& range = placement.range;
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region = FindRange(
      range, placement.region_field, placement.range_field, registry, owner);
  if (!region.ok()) return region.status();
  const uint64_t needed = OutputBytes(validated, placement.output);
  if (range.byte_size() < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat(placement.size_field, ": expected at least the ",
                     v1::Output_Name(placement.output), " output's ", needed,
                     " bytes, got ", range.byte_size()));
  }
  ResolvedPlacement out;
  out.output = placement.output;
  out.region = *std::move(region);
  out.range = range;
  out.range.set_byte_size(needed);  // what is written; checked for overlap
  out.output_field = placement.output_field;
  out.range_field = placement.range_field;
  return out;
}

// Whether range `a` of region `region_a` and range `b` of `region_b` share
// bytes of one object: one region, or two registrations of the same object
// (each maps its own range of it, from its spec's offset).
bool Overlap(const MappedRegion& region_a, const v1::SharedMemoryRange& a,
             const MappedRegion& region_b, const v1::SharedMemoryRange& b) {
  if (!region_a.SameObject(region_b)) return false;
  const uint64_t start_a = region_a.spec().offset + a.offset();
  const uint64_t start_b = region_b.spec().offset + b.offset();
  return start_a < start_b + b.byte_size() && start_b < start_a + a.byte_size();
}

// The end of an overlap error: [offset, end) of `a` (the one refused), the
// other's range and where both are.
std::string OverlapDetail(const v1::SharedMemoryRange& a,
                          const std::string& other_field,
                          const v1::SharedMemoryRange& b) {
  const std::string ranges = absl::StrCat(
      "[", a.offset(), ", ", a.offset() + a.byte_size(), ") overlapping ",
      other_field, "'s [", b.offset(), ", ", b.offset() + b.byte_size(), ")");
  if (a.region() == b.region()) {
    return absl::StrCat(ranges, " of region \"", a.region(), "\"");
  }
  return absl::StrCat(ranges, " (regions \"", a.region(), "\" and \"",
                      b.region(), "\" map the same object, those bytes too)");
}

// INVALID_ARGUMENT when two placements name the same output or overlapping
// bytes of one object.
absl::Status CheckDisjoint(const std::vector<ResolvedPlacement>& placed) {
  for (size_t i = 0; i < placed.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      const v1::SharedMemoryRange& a = placed[i].range;
      const v1::SharedMemoryRange& b = placed[j].range;
      if (placed[i].output == placed[j].output) {
        return absl::InvalidArgumentError(
            absl::StrCat(placed[i].output_field,
                         ": expected each output placed at most once, got ",
                         v1::Output_Name(placed[i].output), " again (as in ",
                         placed[j].output_field, ")"));
      }
      if (Overlap(*placed[i].region, a, *placed[j].region, b)) {
        return absl::InvalidArgumentError(absl::StrCat(
            placed[i].range_field,
            ": expected bytes apart from the other placements', got ",
            OverlapDetail(a, placed[j].range_field, b)));
      }
    }
  }
  return absl::OkStatus();
}

const scoring::OutputTensor* TensorOf(const scoring::ScoreResult& result,
                                      v1::Output output) {
  const std::optional<scoring::OutputTensor>* tensor =
      output == v1::LOGITS  ? &result.logits
      : output == v1::PROBS ? &result.probs
                            : &result.context;
  return tensor->has_value() ? &**tensor : nullptr;
}

}  // namespace

absl::StatusOr<std::vector<ResolvedPlacement>> ResolvePlacementList(
    const std::vector<PlacementRequest>& requests,
    const ValidatedRequest& validated, const SharedMemoryRegistry* registry,
    absl::string_view owner) {
  std::vector<ResolvedPlacement> placed;
  placed.reserve(requests.size());
  for (const PlacementRequest& request : requests) {
    absl::StatusOr<ResolvedPlacement> one =
        ResolveOne(request, validated, registry, owner);
    if (!one.ok()) return one.status();
    placed.push_back(*std::move(one));
  }
  if (absl::Status s = CheckDisjoint(placed); !s.ok()) return s;
  return placed;
}

absl::StatusOr<ResolvedInput> ResolveInput(const v1::SharedMemoryRange& range,
                                           const std::string& region_field,
                                           const std::string& range_field,
                                           const SharedMemoryRegistry* registry,
                                           absl::string_view owner) {
  absl::StatusOr<std::shared_ptr<const MappedRegion>> region =
      FindRange(range, region_field, range_field, registry, owner);
  if (!region.ok()) return region.status();
  return ResolvedInput{*std::move(region), range, range_field};
}

absl::Status CheckInputsApart(const std::vector<ResolvedPlacement>& placements,
                              const std::vector<ResolvedInput>& inputs) {
  for (const ResolvedPlacement& placed : placements) {
    for (const ResolvedInput& input : inputs) {
      const v1::SharedMemoryRange& a = placed.range;
      const v1::SharedMemoryRange& b = input.range;
      if (Overlap(*placed.region, a, *input.region, b)) {
        return absl::InvalidArgumentError(absl::StrCat(
            placed.range_field, ": expected bytes apart from the inputs', got ",
            OverlapDetail(a, input.range_field, b)));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckInputsIntact(const std::vector<ResolvedInput>& inputs) {
  for (const ResolvedInput& input : inputs) {
    if (absl::Status s = input.region->CheckIntact(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ResolvedPlacement>> ResolvePlacements(
    const v1::ScoreRequest& request, const ValidatedRequest& validated,
    const SharedMemoryRegistry* registry, absl::string_view owner) {
  std::vector<PlacementRequest> requests(request.placements_size());
  for (int i = 0; i < request.placements_size(); ++i) {
    const std::string field = absl::StrCat("placements[", i, "]");
    PlacementRequest& out = requests[i];
    out.output = request.placements(i).output();
    out.range = request.placements(i).range();
    out.output_field = field + ".output";
    out.region_field = field + ".range.region";
    out.range_field = field + ".range";
    out.size_field = field + ".range.byte_size";
  }
  return ResolvePlacementList(requests, validated, registry, owner);
}

void OfferDestinations(const std::vector<ResolvedPlacement>& placements,
                       scoring::ScoreItem* item) {
  for (const ResolvedPlacement& placement : placements) {
    if (placement.output == v1::CONTEXT) continue;  // converted, then copied
    scoring::OutputDestination& destination = placement.output == v1::LOGITS
                                                  ? item->logits_destination
                                                  : item->probs_destination;
    destination.data = placement.region->At(placement.range.offset());
    destination.capacity = placement.range.byte_size();
    destination.keepalive = placement.region;
  }
}

absl::StatusOr<PlacedRanges> WritePlacements(
    const std::vector<ResolvedPlacement>& placements,
    const scoring::ScoreResult& result) {
  PlacedRanges ranges;
  for (const ResolvedPlacement& placement : placements) {
    const scoring::OutputTensor* tensor = TensorOf(result, placement.output);
    if (tensor == nullptr ||
        tensor->size_bytes != placement.range.byte_size()) {
      return absl::InternalError(absl::StrCat(
          "placing ", v1::Output_Name(placement.output), ": expected ",
          placement.range.byte_size(), " bytes, the scorer returned ",
          tensor == nullptr ? 0 : tensor->size_bytes));
    }
    const char* at = placement.region->At(placement.range.offset());
    if (absl::Status s =
            tensor->data == at
                ? placement.region->CheckIntact()  // written in place
                : placement.region->Write(placement.range.offset(),
                                          tensor->data, tensor->size_bytes);
        !s.ok()) {
      return s;
    }
    ranges.For(placement.output) = &placement.range;
  }
  return ranges;
}

}  // namespace attnscore::service
