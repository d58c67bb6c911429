// What the load tester sends: one or more request kinds (shapes), each with a
// weight, built from presets or custom "B,H,Lq,Lk,D" shapes. Every kind's q/k/v
// are generated once (deterministic pseudo-random values from the seed) and
// shared by all requests of that kind, so generating load costs no allocation
// per request. UseSharedInputs moves them into a shared-memory region that the
// server reads in place; UseSharedOutputs has the server write the outputs
// there too, into one slot per request in flight.
//
// Presets (H8 D64, causal, the shapes of an LLM serving path):
//   decode       B1 Lq1 Lk2048     one KV-cache decode step
//   prefill512   B1 Lq512 Lk512
//   prefill2048  B1 Lq2048 Lk2048  (float32 logits: 128 MiB per response)
//   mixed        decode 90%, prefill512 9%, prefill2048 1%
//
// Ownership: a Workload owns the tensor memory its requests view; it must
// outlive every call made with them.
// Thread safety: const methods may be called concurrently.
// Errors: INVALID_ARGUMENT naming the bad preset, shape or option.
#ifndef ATTNSCORE_CLIENT_LOAD_WORKLOAD_H_
#define ATTNSCORE_CLIENT_LOAD_WORKLOAD_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/client.h"

namespace attnscore::client::load {

struct RequestShape {
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t query_len = 1;
  int64_t key_len = 2048;
  int64_t head_dim = 64;
};

// "B,H,Lq,Lk,D" with an optional ":weight" (default 1).
absl::StatusOr<std::pair<RequestShape, double>> ParseShape(
    absl::string_view text);

struct WorkloadOptions {
  std::string
      preset;  // decode | prefill512 | prefill2048 | mixed | "" (shapes only)
  std::vector<std::string> shapes;  // custom kinds, "B,H,Lq,Lk,D[:weight]"
  std::string mode = "alibi";       // alibi | relative
  std::string model;                // relative: the server's parameter set
  bool causal = true;
  Outputs outputs;
  DType dtype = DType::kFloat32;
  std::optional<DType> output_dtype;
  uint64_t seed = 1;
};

class Workload {
 public:
  struct Kind {
    std::string name;  // "decode", "prefill512", or "B1,H8,Lq16,Lk16,D64"
    RequestShape shape;
    double weight = 1;
    ScoreRequest request;  // views over `data`; request_id left empty
    std::shared_ptr<std::vector<uint8_t>> data;
    int64_t request_bytes = 0;   // q + k (+ v) bytes
    int64_t response_bytes = 0;  // requested outputs, in the output dtype
    // The outputs the server returns (logits when none is asked for), in the
    // response's order, with their bytes.
    std::vector<std::pair<Output, size_t>> output_bytes;
  };

  static absl::StatusOr<Workload> Create(const WorkloadOptions& options);

  const std::vector<Kind>& kinds() const { return kinds_; }

  // The bytes one shared-memory region needs to hold every kind's inputs (each
  // kind's from a 4096-byte boundary, each input from a 64-byte one).
  size_t SharedInputBytes() const;
  // Copies every kind's inputs to `base`, the first of SharedInputBytes()
  // bytes of a region registered as `region`, and has its requests name them
  // there (ScoreRequest::shared_inputs) instead of carrying their bytes.
  void UseSharedInputs(const std::string& region, uint8_t* base);

  // The bytes of one output slot: every kind's outputs, each from a 64-byte
  // boundary, rounded up to 4096.
  size_t SharedOutputSlotBytes() const;
  // The bytes a region needs for the inputs and `output_slots` output slots
  // after them, the first at the inputs' end rounded up to 4096: slot k
  // starts at SharedBytes(k).
  size_t SharedBytes(int output_slots) const;
  // Has requests place their outputs in the region registered as `region`
  // (UseSharedInputs' too): `slots` slots, one per request in flight, which
  // the caller hands out (PlacementsFor) so that no two requests in flight
  // share one.
  void UseSharedOutputs(const std::string& region, int slots);
  // 0 unless UseSharedOutputs.
  int output_slots() const { return output_slots_; }
  // The placements of kind `kind`'s outputs in slot `slot`, which must be in
  // [0, output_slots()).
  std::vector<OutputPlacement> PlacementsFor(size_t kind, int slot) const;

  const WorkloadOptions& options() const { return options_; }
  // The kind of request number `index`: a deterministic weighted choice (a hash
  // of the seed and the index), so that runs with equal options send the same
  // sequence.
  size_t Pick(uint64_t index) const;

 private:
  WorkloadOptions options_;
  std::vector<Kind> kinds_;
  std::vector<double> cumulative_;  // normalised cumulative weights
  std::string output_region_;       // UseSharedOutputs
  size_t output_offset_ = 0;
  size_t output_slot_bytes_ = 0;
  int output_slots_ = 0;
};

}  // namespace attnscore::client::load

#endif  // ATTNSCORE_CLIENT_LOAD_WORKLOAD_H_
