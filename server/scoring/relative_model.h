// A loaded Transformer-XL relative-position parameter set (labml
// RelativeMultiHeadAttention's key_pos_embeddings [2P,H,D], key_pos_bias
// [2P,H], query_pos_bias [H,D]) as ATen tensors.
//
// Ownership: immutable once created; shared through std::shared_ptr<const
// RelativeModel>. Thread safety: all methods are const and safe to call
// concurrently. Errors: Create/Load return INVALID_ARGUMENT naming the file,
// tensor and expected shape.
#ifndef ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_
#define ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/scoring/scorer.h"

namespace attnscore::scoring {

class RelativeModel {
 public:
  // Validates shapes and converts to contiguous float32. `source` names the
  // origin in errors.
  static absl::StatusOr<std::shared_ptr<const RelativeModel>> Create(
      std::string name, std::string source,
      const at::Tensor& key_pos_embeddings, const at::Tensor& key_pos_bias,
      const at::Tensor& query_pos_bias);

  const RelativeModelInfo& info() const { return info_; }
  // Unique per created model, for cache keys (addresses may be reused after a
  // reload).
  uint64_t id() const { return id_; }
  const at::Tensor& key_pos_embeddings() const {
    return key_pos_embeddings_;
  }                                                                 // [2P,H,D]
  const at::Tensor& key_pos_bias() const { return key_pos_bias_; }  // [2P,H]
  const at::Tensor& query_pos_bias() const { return query_pos_bias_; }  // [H,D]

 private:
  RelativeModel() = default;

  RelativeModelInfo info_;
  uint64_t id_ = 0;
  at::Tensor key_pos_embeddings_;
  at::Tensor key_pos_bias_;
  at::Tensor query_pos_bias_;
};

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_
