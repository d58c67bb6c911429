// Loads Transformer-XL relative-position parameter sets from files. This
// header is LibTorch-free; its definitions live in attnscore_scoring (the
// tensors are ATen's): main.cc wires LoadModelDir into the service's model
// registry, which itself never links LibTorch.
//
// Thread safety: reentrant. Errors: INVALID_ARGUMENT naming the file, the
// tensor and the expected shape; NOT_FOUND for a missing file or directory.
#ifndef ATTNSCORE_SERVER_SCORING_MODEL_LOADER_H_
#define ATTNSCORE_SERVER_SCORING_MODEL_LOADER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/scoring/score_spec.h"

namespace attnscore::scoring {

// Loads one parameter set from a .safetensors file (the three tensor names,
// optionally under `prefix`, e.g. "layers.3.attn.") or a labml
// `torch.save(module.state_dict())` .pt file.
absl::StatusOr<std::shared_ptr<const RelativeModel>> LoadRelativeModel(
    const std::string& path, std::string name, const std::string& prefix = "");

// Every NAME.safetensors / NAME.pt in a directory; the name is the file stem.
// Fails as a whole (naming the broken file) if any file fails: a reload keeps
// the previous set.
absl::StatusOr<std::shared_ptr<const ModelSet>> LoadModelDir(
    const std::string& dir, const std::string& prefix = "");

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_MODEL_LOADER_H_
