// A loaded Transformer-XL relative-position parameter set (labml
// RelativeMultiHeadAttention's key_pos_embeddings [2P,H,D], key_pos_bias
// [2P,H], query_pos_bias [H,D]) as ATen tensors: the scoring implementation's
// RelativeModel (score_spec.h). The loaders (model_loader.h) create these.
//
// Ownership: immutable once created; shared through std::shared_ptr<const
// RelativeModel>. Thread safety: all methods are const and safe to call
// concurrently. Errors: Create returns INVALID_ARGUMENT naming the source,
// tensor and expected shape.
#ifndef ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_
#define ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// The parameters' names in labml's state_dict and in .safetensors files.
inline constexpr char kKeyPosEmbeddings[] = "key_pos_embeddings";
inline constexpr char kKeyPosBias[] = "key_pos_bias";
inline constexpr char kQueryPosBias[] = "query_pos_bias";

class AtenRelativeModel final : public RelativeModel {
 public:
  // Validates shapes and finiteness and converts to contiguous float32.
  // `source` names the origin in errors.
  static absl::StatusOr<std::shared_ptr<const AtenRelativeModel>> Create(
      std::string name, std::string source,
      const at::Tensor& key_pos_embeddings, const at::Tensor& key_pos_bias,
      const at::Tensor& query_pos_bias);

  // [2P,H,D]
  const at::Tensor& key_pos_embeddings() const { return key_pos_embeddings_; }
  // [2P,H]
  const at::Tensor& key_pos_bias() const { return key_pos_bias_; }
  // The embeddings by head and transposed, in panels, for the CPU decode
  // kernel's pass over one head's (PanelDots in row_loops.h): [H, 2P/W, D,
  // W] with W = kPanelCols (2P rounded up, zeros past it). And the bias by
  // head: [H,2P]. A second copy of the parameters, made once per model;
  // undefined for a model on an accelerator.
  const at::Tensor& key_pos_embeddings_panels() const {
    return key_pos_embeddings_panels_;
  }
  const at::Tensor& key_pos_bias_by_head() const {
    return key_pos_bias_by_head_;
  }
  // [H,D]
  const at::Tensor& query_pos_bias() const { return query_pos_bias_; }

 private:
  AtenRelativeModel(RelativeModelInfo info, at::Tensor key_pos_embeddings,
                    at::Tensor key_pos_bias, at::Tensor query_pos_bias);

  const at::Tensor key_pos_embeddings_;
  const at::Tensor key_pos_bias_;
  const at::Tensor query_pos_bias_;
  const at::Tensor key_pos_embeddings_panels_;
  const at::Tensor key_pos_bias_by_head_;
};

// The ATen model behind an API model, or nullptr when `model` is another
// implementation (e.g. a test's stand-in): callers turn that into a status.
const AtenRelativeModel* AsAten(const RelativeModel& model);
std::shared_ptr<const AtenRelativeModel> AsAten(
    const std::shared_ptr<const RelativeModel>& model);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_RELATIVE_MODEL_H_
