// The placements of an attnscore.v1 ScoreRequest (outputs written into
// registered shared-memory regions instead of the reply): checked against the
// validated request and the caller's regions before the request is queued,
// and carried out when its result is encoded.
//
// Ownership: a ResolvedPlacement holds its region's mapping, so the bytes can
// be written even if the client unregisters the region meanwhile. Thread
// safety: pure functions. Errors: INVALID_ARGUMENT naming
// `placements[i].<field>` with the expected and actual value; NOT_FOUND for a
// region the caller has not registered; FAILED_PRECONDITION when shared memory
// is off; ABORTED when a region shrank while being written (the scorer's
// writes included).
#ifndef ATTNSCORE_SERVER_SERVICE_OUTPUT_PLACEMENT_H_
#define ATTNSCORE_SERVER_SERVICE_OUTPUT_PLACEMENT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "attnscore/v1/attnscore.pb.h"
#include "server/scoring/score_spec.h"
#include "server/service/request_validation.h"
#include "server/service/response_encoder.h"
#include "server/service/shared_memory.h"

namespace attnscore::service {

struct ResolvedPlacement {
  v1::Output output = v1::OUTPUT_UNSPECIFIED;
  std::shared_ptr<const MappedRegion> region;
  v1::SharedMemoryRange range;            // byte_size: the output's bytes
  std::string output_field, range_field;  // for CheckDisjoint's errors
};

// One placement as a protocol asked for it, and how its errors name its
// parts (attnscore.v1: "placements[i].output", ...; the Open Inference
// Protocol: "outputs[i].parameters.shared_memory_region", ...).
struct PlacementRequest {
  v1::Output output = v1::OUTPUT_UNSPECIFIED;
  v1::SharedMemoryRange range;
  std::string output_field, region_field, range_field, size_field;
};

// Each of `requests`: a wanted output at most once, a region of `owner`'s, a
// range within the region that holds the whole output, and no two ranges
// overlapping. Empty when there are none (and then `registry` may be null).
absl::StatusOr<std::vector<ResolvedPlacement>> ResolvePlacementList(
    const std::vector<PlacementRequest>& requests,
    const ValidatedRequest& validated, const SharedMemoryRegistry* registry,
    absl::string_view owner);

// An input the scorer reads in place from a region, and how errors name its
// range.
struct ResolvedInput {
  std::shared_ptr<const MappedRegion> region;
  v1::SharedMemoryRange range;
  std::string range_field;

  // Its bytes, at region->At(range.offset()); `bytes_field` names them in
  // validation errors (scoring::TensorRef::bytes_field).
  TensorBytesView Bytes(const char* bytes_field = "data") const {
    return TensorBytesView{region->At(range.offset()), range.byte_size(),
                           std::nullopt, bytes_field};
  }
};

// An input read from shared memory (attnscore.v1's Tensor.shared_memory, the
// Open Inference Protocol's input parameters): `owner`'s region
// `range.region()`, with the range within it. Whoever reads its bytes checks
// CheckInputsIntact afterwards. Errors as for a placement, naming
// `region_field` and `range_field`.
absl::StatusOr<ResolvedInput> ResolveInput(const v1::SharedMemoryRange& range,
                                           const std::string& region_field,
                                           const std::string& range_field,
                                           const SharedMemoryRegistry* registry,
                                           absl::string_view owner);

// INVALID_ARGUMENT when a placed output would be written over an input's
// bytes of the same object, through one region or two registrations of it:
// the scorer writes outputs in place while it still reads the inputs.
absl::Status CheckInputsApart(const std::vector<ResolvedPlacement>& placements,
                              const std::vector<ResolvedInput>& inputs);

// CheckIntact of each input's region, after the scorer read them: a region
// that broke meanwhile (its object truncated) gave it zero pages instead of
// the client's bytes. ABORTED then.
absl::Status CheckInputsIntact(const std::vector<ResolvedInput>& inputs);

// ResolvePlacementList of an attnscore.v1 request's `placements`.
absl::StatusOr<std::vector<ResolvedPlacement>> ResolvePlacements(
    const v1::ScoreRequest& request, const ValidatedRequest& validated,
    const SharedMemoryRegistry* registry, absl::string_view owner);

// Offers `item`'s scorer the placed logits and probs ranges as destinations
// (scoring::OutputDestination), so that it may write them in place.
void OfferDestinations(const std::vector<ResolvedPlacement>& placements,
                       scoring::ScoreItem* item);

// Writes the placed outputs of `result` into their regions (nothing to copy
// for one the scorer wrote in place) and says which outputs the reply carries
// as ranges instead of bytes. ABORTED when a region broke (shared_memory.h).
absl::StatusOr<PlacedRanges> WritePlacements(
    const std::vector<ResolvedPlacement>& placements,
    const scoring::ScoreResult& result);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_OUTPUT_PLACEMENT_H_
