#include "server/service/model_registry.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore::service {
namespace {

// A set the service can publish: no parameter set may take the name of the
// built-in ALiBi model of the Open Inference Protocol endpoint.
absl::Status CheckPublishable(const std::string& dir,
                              const scoring::ModelSet& models) {
  const std::shared_ptr<const scoring::RelativeModel> clash =
      models.Find(kReservedModelName);
  if (clash == nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "--model-dir ", dir, ": a relative-position parameter set named \"",
      kReservedModelName, "\" (", clash->info().source,
      ") clashes with the built-in ALiBi model \"", kReservedModelName,
      "\" of the Open Inference Protocol endpoint; rename the file"));
}

// The loader's set for `dir`, if the service can publish it.
absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> LoadPublishable(
    const ModelRegistry::Loader& loader, const std::string& dir) {
  absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> loaded = loader(dir);
  if (!loaded.ok()) return loaded.status();
  if (absl::Status s = CheckPublishable(dir, **loaded); !s.ok()) return s;
  return loaded;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    std::string dir, Loader loader) {
  if (!loader) {
    return absl::InvalidArgumentError("ModelRegistry: a loader is required");
  }
  std::shared_ptr<const scoring::ModelSet> models;
  if (dir.empty()) {
    models = std::make_shared<const scoring::ModelSet>();
  } else {
    absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> loaded =
        LoadPublishable(loader, dir);
    if (!loaded.ok()) return loaded.status();
    models = *std::move(loaded);
  }
  return std::unique_ptr<ModelRegistry>(
      new ModelRegistry(std::move(dir), std::move(loader), std::move(models)));
}

ModelRegistry::ModelRegistry(std::shared_ptr<const scoring::ModelSet> models)
    : ModelRegistry("", nullptr, std::move(models)) {}

ModelRegistry::ModelRegistry(std::string dir, Loader loader,
                             std::shared_ptr<const scoring::ModelSet> models)
    : dir_(std::move(dir)),
      loader_(std::move(loader)),
      models_(std::move(models)) {}

std::shared_ptr<const scoring::ModelSet> ModelRegistry::Current() const {
  absl::MutexLock lock(&mutex_);
  return models_;
}

absl::Status ModelRegistry::Reload() {
  if (dir_.empty()) return absl::OkStatus();
  absl::MutexLock reload_lock(&reload_mutex_);
  absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> loaded =
      LoadPublishable(loader_, dir_);
  if (!loaded.ok()) return loaded.status();
  std::shared_ptr<const scoring::ModelSet> previous;
  {
    absl::MutexLock lock(&mutex_);
    previous = std::exchange(models_, *std::move(loaded));
  }
  // `previous` is released here, outside the lock; requests still holding it
  // keep it alive.
  return absl::OkStatus();
}

std::string ModelNames(const scoring::ModelSet& models) {
  if (models.models.empty()) return "(none)";
  std::vector<absl::string_view> names;
  names.reserve(models.models.size());
  for (const auto& [name, model] : models.models) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

}  // namespace attnscore::service
