// Test support: relative-position parameter sets without LibTorch or files.
// The service layer only reads a model's description (RelativeModel::info())
// and identity; the FakeScorer never reads its tensors, so a stand-in that has
// no tensors at all exercises every service path that a loaded model does.
//
// Ownership: ModelSets and models are shared, immutable values.
// Thread safety: immutable after construction.
#ifndef ATTNSCORE_TESTS_SERVICE_FAKE_MODELS_H_
#define ATTNSCORE_TESTS_SERVICE_FAKE_MODELS_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>

#include "server/scoring/score_spec.h"

namespace attnscore::service::testing {

// A RelativeModel that is only its description: what LoadRelativeModel would
// report for a file with key_pos_embeddings [2P, H, D].
class FakeRelativeModel final : public scoring::RelativeModel {
 public:
  explicit FakeRelativeModel(scoring::RelativeModelInfo info)
      : RelativeModel(std::move(info)) {}
};

// The description of a parameter set named `name`, as if loaded from
// `source`, with H heads, head dim D and P relative positions.
inline scoring::RelativeModelInfo FakeModelInfo(
    const std::string& name, const std::string& source, int64_t heads,
    int64_t head_dim, int64_t max_relative_positions) {
  scoring::RelativeModelInfo info;
  info.name = name;
  info.source = source;
  info.heads = heads;
  info.head_dim = head_dim;
  info.max_relative_positions = max_relative_positions;
  return info;
}

// A ModelSet of stand-ins, keyed by their names.
inline std::shared_ptr<const scoring::ModelSet> FakeModelSet(
    std::initializer_list<scoring::RelativeModelInfo> infos) {
  auto set = std::make_shared<scoring::ModelSet>();
  for (const scoring::RelativeModelInfo& info : infos) {
    set->models[info.name] = std::make_shared<const FakeRelativeModel>(info);
  }
  return set;
}

}  // namespace attnscore::service::testing

#endif  // ATTNSCORE_TESTS_SERVICE_FAKE_MODELS_H_
