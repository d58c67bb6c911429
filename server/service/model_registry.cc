#include "server/service/model_registry.h"

#include <utility>
#include <vector>

#include "absl/strings/str_join.h"

namespace attnscore::service {

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(
    std::string dir) {
  std::shared_ptr<const scoring::ModelSet> models;
  if (dir.empty()) {
    models = std::make_shared<const scoring::ModelSet>();
  } else {
    absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> loaded =
        scoring::LoadModelDir(dir);
    if (!loaded.ok()) return loaded.status();
    models = *std::move(loaded);
  }
  return std::unique_ptr<ModelRegistry>(
      new ModelRegistry(std::move(dir), std::move(models)));
}

ModelRegistry::ModelRegistry(std::shared_ptr<const scoring::ModelSet> models)
    : ModelRegistry("", std::move(models)) {}

ModelRegistry::ModelRegistry(std::string dir,
                             std::shared_ptr<const scoring::ModelSet> models)
    : dir_(std::move(dir)), models_(std::move(models)) {}

std::shared_ptr<const scoring::ModelSet> ModelRegistry::Current() const {
  absl::MutexLock lock(&mutex_);
  return models_;
}

absl::Status ModelRegistry::Reload() {
  if (dir_.empty()) return absl::OkStatus();
  absl::MutexLock reload_lock(&reload_mutex_);
  absl::StatusOr<std::shared_ptr<const scoring::ModelSet>> loaded =
      scoring::LoadModelDir(dir_);
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
  for (const auto& [name, model] : models.models) names.push_back(name);
  return absl::StrJoin(names, ", ");
}

}  // namespace attnscore::service
