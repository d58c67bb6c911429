// What a scoring request is, independent of how it is computed: the bias kind
// (a closed std::variant of per-kind specs), the relative-position parameter
// set as the API sees it (name, sizes, identity), tensor references and
// results. Part of attnscore_scoring_api: no LibTorch, no gRPC, so the service
// and its tests depend on this and never link LibTorch.
//
// Ownership: TensorRef does not own its bytes (the request does); an
// OutputTensor's bytes live while its `keepalive` does. RelativeModel and
// ModelSet are immutable and shared by std::shared_ptr, so a reload never
// disturbs a request that started on the previous set.
// Thread safety: all types are values or immutable after construction.
// Errors: none here; see validation.h.
#ifndef ATTNSCORE_SERVER_SCORING_SCORE_SPEC_H_
#define ATTNSCORE_SERVER_SCORING_SCORE_SPEC_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/dtype.h"
#include "common/layout.h"

namespace attnscore::scoring {

struct RelativeModelInfo {
  std::string name;
  std::string source;  // file it was loaded from (never shown to clients)
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t max_relative_positions = 0;  // P
};

// A Transformer-XL relative-position parameter set (labml
// RelativeMultiHeadAttention: key_pos_embeddings [2P,H,D], key_pos_bias
// [2P,H], query_pos_bias [H,D]) as the API sees it: its description and a
// unique identity. The scoring implementation derives the class that holds the
// tensors (relative_model.h); tests may derive stand-ins.
class RelativeModel {
 public:
  virtual ~RelativeModel() = default;
  RelativeModel(const RelativeModel&) = delete;
  RelativeModel& operator=(const RelativeModel&) = delete;

  const RelativeModelInfo& info() const { return info_; }
  // Unique per created model, for batch and cache keys (addresses may be
  // reused after a reload).
  uint64_t id() const { return id_; }

 protected:
  // Takes a fresh id.
  explicit RelativeModel(RelativeModelInfo info);

 private:
  const RelativeModelInfo info_;
  const uint64_t id_;
};

// The parameter sets a server serves, by name.
struct ModelSet {
  std::map<std::string, std::shared_ptr<const RelativeModel>, std::less<>>
      models;
  // nullptr when there is none of that name.
  std::shared_ptr<const RelativeModel> Find(std::string_view name) const;
};

// ALiBi: logits = scale * q.k - m_h * distance.
struct AlibiBias {
  std::vector<float> slopes;  // [H]; empty: the ALiBi paper's slopes for H
};
// Transformer-XL relative positions from a loaded parameter set.
struct RelativeBias {
  std::shared_ptr<const RelativeModel> model;  // required (never null once
                                               // validated)
};
// The closed set of bias kinds: handle them with std::visit (common/
// overloaded.h), so that a new kind fails to compile wherever it is not
// handled.
using Bias = std::variant<AlibiBias, RelativeBias>;

// Raw input bytes, row-major little-endian, shaped per the spec's layout. Not
// owned.
struct TensorRef {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t size_bytes = 0;
  // What validation errors call the bytes, after the tensor's name ("data";
  // "shared_memory.byte_size" when they are a shared-memory range).
  const char* bytes_field = "data";
};

// Everything about a request except its tensors. Requests batch together iff
// their specs and H, D, Dv, Lq, Lk agree (see BatchKey in validation.h).
struct ScoreSpec {
  Bias bias = AlibiBias{};
  Layout layout = Layout::kBHSD;
  bool causal = false;
  std::optional<float> scale;  // default 1/sqrt(D)
  bool want_logits = true;
  bool want_probs = false;
  bool want_context = false;
  DType output_dtype = DType::kFloat32;
};

// Memory the caller wants an output's bytes in (a client's shared memory):
// the scorer may write them there instead of into a buffer of its own, the
// result's tensor then viewing `data`; or it may ignore it, and the caller
// copies. Honoured for logits and probs when `data` is 64-byte aligned and
// `capacity` holds the item's output: the CPU blocked path writes an item
// scored on its own (Scorer::ItemsPerPass) there in place, other items' rows
// are copied there from the batch's output (from the device on a GPU). The
// caller answers for faults while writing there.
struct OutputDestination {
  void* data = nullptr;  // null: none
  size_t capacity = 0;
  std::shared_ptr<const void> keepalive;  // keeps `data` valid
};

struct ScoreItem {
  TensorRef query;                   // [B,H,Lq,D] in spec.layout
  TensorRef key;                     // [B,H,Lk,D]
  std::optional<TensorRef> value;    // [B,H,Lk,Dv]; required for context
  std::vector<int32_t> key_lengths;  // empty, or one per batch item
  // [B,H,Lq,Lk] in spec.output_dtype.
  OutputDestination logits_destination;
  OutputDestination probs_destination;
};

// A result tensor in row-major bytes of `dtype`. `data` stays valid while
// `keepalive` lives.
struct OutputTensor {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t size_bytes = 0;
  std::shared_ptr<const void> keepalive;
};

struct ScoreResult {
  std::optional<OutputTensor> logits;   // [B,H,Lq,Lk]
  std::optional<OutputTensor> probs;    // [B,H,Lq,Lk]
  std::optional<OutputTensor> context;  // [B,H,Lq,Dv] in spec.layout
};

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_SCORE_SPEC_H_
