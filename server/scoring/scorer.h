// The scoring core's LibTorch-free facade: what the service layer and the
// benchmarks call. It takes raw tensor bytes (as they arrive off the wire),
// scores a batch of requests that share one ScoreSpec in a single pass, and
// returns output buffers that the caller can hand to gRPC without copying (each
// OutputTensor keeps its memory alive through `keepalive`).
//
// Semantics (positions, masks, ALiBi and Transformer-XL relative bias, scale,
// outputs) are those of attention.h; see there.
//
// Ownership: Scorer is created once and shared; RelativeModel and ModelSet are
// immutable and held by shared_ptr, so a reload never disturbs a request that
// started on the previous set. Thread safety: Scorer::ScoreBatch may be called
// from many threads at once. Errors: absl::Status. INVALID_ARGUMENT names the
// field and the expected vs. actual value; INTERNAL wraps an unexpected
// LibTorch exception. No exception escapes this interface.
#ifndef ATTNSCORE_SERVER_SCORING_SCORER_H_
#define ATTNSCORE_SERVER_SCORING_SCORER_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/dtype.h"

namespace attnscore::scoring {

enum class Layout { kBHSD, kBSHD, kSBHD };
enum class BiasKind { kAlibi, kRelative };

const char* LayoutName(Layout layout);

// Batch, heads, sequence length and head dim of a shape given in `layout`.
// REQUIRES: shape.size() == 4.
struct Dims {
  int64_t batch = 0, heads = 0, seq = 0, dim = 0;
};
Dims DimsOf(const std::vector<int64_t>& shape, Layout layout);

// A Transformer-XL relative-position parameter set (labml
// RelativeMultiHeadAttention): key_pos_embeddings [2P,H,D], key_pos_bias
// [2P,H], query_pos_bias [H,D]. Opaque here.
class RelativeModel;

struct RelativeModelInfo {
  std::string name;
  std::string source;  // file it was loaded from
  int64_t heads = 0;
  int64_t head_dim = 0;
  int64_t max_relative_positions = 0;  // P
};

const RelativeModelInfo& GetInfo(const RelativeModel& model);

// Loads one parameter set from a .safetensors file (the three tensor names,
// optionally under `prefix`, e.g. "layers.3.attn.") or a labml
// `torch.save(module.state_dict())` .pt file.
absl::StatusOr<std::shared_ptr<const RelativeModel>> LoadRelativeModel(
    const std::string& path, std::string name, const std::string& prefix = "");

// Every NAME.safetensors / NAME.pt in a directory; the name is the file stem.
struct ModelSet {
  std::map<std::string, std::shared_ptr<const RelativeModel>, std::less<>>
      models;
  std::shared_ptr<const RelativeModel> Find(std::string_view name) const;
};
// Fails as a whole (naming the broken file) if any file fails: a reload keeps
// the previous set.
absl::StatusOr<std::shared_ptr<const ModelSet>> LoadModelDir(
    const std::string& dir, const std::string& prefix = "");

// Raw input bytes, row-major little-endian, shaped per `layout`. Not owned.
struct TensorRef {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t size_bytes = 0;
};

// Everything about a request except its tensors. Requests batch together iff
// their specs and H, D, Dv, Lq, Lk agree (see BatchKey).
struct ScoreSpec {
  BiasKind bias = BiasKind::kAlibi;
  std::vector<float>
      alibi_slopes;  // empty: the ALiBi paper's slopes for H heads
  std::shared_ptr<const RelativeModel> model;  // required for kRelative
  Layout layout = Layout::kBHSD;
  bool causal = false;
  std::optional<float> scale;  // default 1/sqrt(D)
  bool want_logits = true;
  bool want_probs = false;
  bool want_context = false;
  DType output_dtype = DType::kFloat32;
};

struct ScoreItem {
  TensorRef query;                   // [B,H,Lq,D] in spec.layout
  TensorRef key;                     // [B,H,Lk,D]
  std::optional<TensorRef> value;    // [B,H,Lk,Dv]; required for context
  std::vector<int32_t> key_lengths;  // empty, or one per batch item
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

// Validates one item against the spec (dtypes, ranks, shapes vs. byte counts,
// H/D agreement, key_lengths, causal Lq <= Lk, relative model shape, values
// finite) before any allocation.
absl::Status ValidateItem(const ScoreSpec& spec, const ScoreItem& item);

// Items with equal keys (and equal specs) can share one ScoreBatch call.
std::string BatchKey(const ScoreSpec& spec, const ScoreItem& item);

struct ScorerOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  int intra_op_threads = 0;    // 0: the number of cores
};

class Scorer {
 public:
  // FAILED_PRECONDITION with a clear message when the device is not available.
  static absl::StatusOr<std::unique_ptr<Scorer>> Create(
      const ScorerOptions& options);
  virtual ~Scorer() = default;

  // Scores items that share `spec` (and BatchKey) in one pass, concatenated
  // along the batch axis. Returns one result per item, in order; each result's
  // tensors view the shared batch output where they are contiguous in it, so
  // splitting costs no copy.
  virtual absl::StatusOr<std::vector<ScoreResult>> ScoreBatch(
      const ScoreSpec& spec, absl::Span<const ScoreItem> items) = 0;

  virtual std::string device() const = 0;
};

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_SCORER_H_
