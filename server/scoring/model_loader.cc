#include "server/scoring/model_loader.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/safetensors.h"
#include "server/scoring/relative_model.h"
#include "server/scoring/state_dict.h"

namespace attnscore::scoring {
namespace {

constexpr std::array<const char*, 3> kTensorNames = {
    kKeyPosEmbeddings, kKeyPosBias, kQueryPosBias};

// Picks `prefix + name`, or, without a prefix, the one key that ends in ".name"
// (a parameter set nested in a bigger model's state_dict); several candidates
// are an error naming them.
absl::StatusOr<std::string> ResolveKey(const std::vector<std::string>& keys,
                                       const std::string& source,
                                       const std::string& prefix,
                                       const std::string& name) {
  const std::string wanted = prefix + name;
  if (std::find(keys.begin(), keys.end(), wanted) != keys.end()) return wanted;
  std::vector<std::string> candidates;
  if (prefix.empty()) {
    const std::string suffix = "." + name;
    for (const std::string& key : keys) {
      if (key.size() > suffix.size() &&
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
        candidates.push_back(key);
      }
    }
    if (candidates.size() == 1) return candidates[0];
  }
  if (candidates.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": no tensor '", wanted, "' (expected ", kKeyPosEmbeddings,
        " [2P,H,D], ", kKeyPosBias, " [2P,H] and ", kQueryPosBias, " [H,D]",
        prefix.empty() ? "" : " under prefix '" + prefix + "'", ")"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": ", candidates.size(), " tensors end in '", name,
      "'; choose one with a prefix: ", absl::StrJoin(candidates, ", ")));
}

// Safetensors' floating dtype names; F64 is not an API DType but loads fine.
at::ScalarType SafetensorsScalarType(const std::string& dtype) {
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "F64") return at::kDouble;
  return at::kFloat;
}

absl::StatusOr<std::shared_ptr<const RelativeModel>> LoadSafetensors(
    const std::string& path, std::string name, const std::string& prefix) {
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Read(path);
  if (!file.ok()) return file.status();
  std::vector<at::Tensor> tensors;
  for (const char* tensor_name : kTensorNames) {
    absl::StatusOr<std::string> key =
        ResolveKey(file->Names(), path, prefix, tensor_name);
    if (!key.ok()) return key.status();
    const SafetensorsFile::Tensor& t = *file->Find(*key);
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16" &&
        t.dtype != "F64") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", *key, "' has dtype ", t.dtype,
                       ", expected F32, F16, BF16 or F64"));
    }
    // from_blob views the file buffer; the float32 conversion below owns its
    // copy.
    at::Tensor view = at::from_blob(
        const_cast<char*>(t.bytes.data()), t.shape,
        at::TensorOptions().dtype(SafetensorsScalarType(t.dtype)));
    tensors.push_back(view.to(at::kFloat).clone());
  }
  return AtenRelativeModel::Create(std::move(name), path, tensors[0],
                                   tensors[1], tensors[2]);
}

absl::StatusOr<std::shared_ptr<const RelativeModel>> LoadPt(
    const std::string& path, std::string name, const std::string& prefix) {
  absl::StatusOr<std::map<std::string, at::Tensor>> state = LoadStateDict(path);
  if (!state.ok()) return state.status();
  std::vector<std::string> keys;
  keys.reserve(state->size());
  for (const auto& entry : *state) keys.push_back(entry.first);
  std::vector<at::Tensor> tensors;
  for (const char* tensor_name : kTensorNames) {
    absl::StatusOr<std::string> key =
        ResolveKey(keys, path, prefix, tensor_name);
    if (!key.ok()) return key.status();
    const at::Tensor& t = state->at(*key);
    if (!at::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor '", *key, "' has dtype ",
          c10::toString(t.scalar_type()), ", expected a floating type"));
    }
    tensors.push_back(t);
  }
  return AtenRelativeModel::Create(std::move(name), path, tensors[0],
                                   tensors[1], tensors[2]);
}

// The parameter files in `dir`, sorted.
absl::StatusOr<std::vector<std::filesystem::path>> ParameterFiles(
    const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model directory '", dir, "' does not exist"));
  }
  std::vector<fs::path> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    const std::string ext = entry.path().extension().string();
    if (entry.is_regular_file() && (ext == ".safetensors" || ext == ".pt")) {
      files.push_back(entry.path());
    }
  }
  if (ec) return absl::UnavailableError(absl::StrCat(dir, ": ", ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const RelativeModel>> LoadRelativeModel(
    const std::string& path, std::string name, const std::string& prefix) {
  try {
    const std::string ext = std::filesystem::path(path).extension().string();
    if (ext == ".safetensors") {
      return LoadSafetensors(path, std::move(name), prefix);
    }
    if (ext == ".pt" || ext == ".pth") {
      return LoadPt(path, std::move(name), prefix);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unknown parameter file type '", ext,
                     "', expected .safetensors or .pt"));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<std::shared_ptr<const ModelSet>> LoadModelDir(
    const std::string& dir, const std::string& prefix) {
  absl::StatusOr<std::vector<std::filesystem::path>> files =
      ParameterFiles(dir);
  if (!files.ok()) return files.status();
  auto set = std::make_shared<ModelSet>();
  for (const std::filesystem::path& path : *files) {
    std::string name = path.stem().string();
    if (set->models.count(name) != 0) {
      return absl::AlreadyExistsError(
          absl::StrCat(dir, ": two parameter files define model '", name, "'"));
    }
    absl::StatusOr<std::shared_ptr<const RelativeModel>> model =
        LoadRelativeModel(path.string(), name, prefix);
    if (!model.ok()) return model.status();
    set->models.emplace(std::move(name), *std::move(model));
  }
  return std::shared_ptr<const ModelSet>(std::move(set));
}

}  // namespace attnscore::scoring
