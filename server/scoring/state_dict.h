// Reading `torch.save(module.state_dict())` .pt files (PyTorch's zip format,
// the torch.save default since 1.6) into name -> at::Tensor, without Python.
// LibTorch's own pickle_load cannot do this (it turns collections.OrderedDict
// into None), so state_dict.cc carries a small, strict pickle interpreter that
// accepts only what torch.save emits for a flat dict of tensors.
//
// Ownership: every returned tensor is a contiguous CPU tensor that owns its
// memory; nothing views the file, which is closed on return. Names that Python
// saved as the same tensor object come back as the same at::Tensor (as
// torch.load returns them). requires_grad is not restored.
//
// Thread safety: LoadStateDict keeps no state; concurrent calls are safe.
//
// Errors: absl::Status whose message starts with the path; no exception
// escapes.
//   NOT_FOUND: the file cannot be opened.
//   UNIMPLEMENTED: a legacy non-zip torch.save file (re-save it with the zip
//     format), or a big-endian archive.
//   INVALID_ARGUMENT: not a PyTorch zip archive, or its pickle holds something
//     other than a flat str -> tensor dict (another global, opcode or value).
//   DATA_LOSS: the archive is damaged or inconsistent (truncated zip or pickle,
//     a storage record missing or of the wrong size, a view outside its
//     storage).
//   RESOURCE_EXHAUSTED: an allocation failed.
#ifndef ATTNSCORE_SERVER_SCORING_STATE_DICT_H_
#define ATTNSCORE_SERVER_SCORING_STATE_DICT_H_

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace attnscore::scoring {

// Reads a torch.save()'d state_dict (zip format). Errors name the file and what
// was wrong.
absl::StatusOr<std::map<std::string, at::Tensor>> LoadStateDict(
    const std::string& path);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_STATE_DICT_H_
