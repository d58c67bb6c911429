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
//   RESOURCE_EXHAUSTED: the file asks for more memory than StateDictLimits
//     allows (a zip bomb, many views of one storage, a pickle that fills the
//     interpreter's tables), or an allocation failed.
#ifndef ATTNSCORE_SERVER_SCORING_STATE_DICT_H_
#define ATTNSCORE_SERVER_SCORING_STATE_DICT_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace attnscore::scoring {

// What loading one file may allocate, checked before each allocation.
//
// Every zip record the load reads (data.pkl, each storage) counts with the
// uncompressed size its central directory declares, checked before it is
// inflated; miniz inflates into a buffer of exactly that size and fails if the
// data inflates to more. Every tensor counts with the bytes of its contiguous
// copy. Together they may not pass 2 x the file's size + slack_bytes: a
// torch.save file stores its records uncompressed and its tensors view
// disjoint parts of them, so an honest file needs at most 2 x its size; the
// slack covers compressed re-zips and expand()ed views. Many views of one
// storage add up, so they cannot multiply a small file into gigabytes.
struct StateDictLimits {
  int64_t slack_bytes = int64_t{1} << 30;
};

// Reads a torch.save()'d state_dict (zip format). Errors name the file and what
// was wrong.
absl::StatusOr<std::map<std::string, at::Tensor>> LoadStateDict(
    const std::string& path, const StateDictLimits& limits = {});

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_STATE_DICT_H_
