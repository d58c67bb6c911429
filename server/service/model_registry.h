// The relative-position parameter sets the server serves, reloadable at run
// time (SIGHUP). How a directory becomes a ModelSet is injected (main.cc passes
// scoring::LoadModelDir), so the service layer never links LibTorch.
//
// Ownership: the current ModelSet is immutable and shared: Current() hands out
// a shared_ptr, so a request keeps the set (and models) it started with while a
// reload swaps in a new one. Thread safety: every method may be called from any
// thread. Reload() runs the (slow) loading without holding the lock; only the
// swap is locked. Concurrent Reload() calls are serialised. Errors: Reload()
// returns the loader's error (naming the broken file) and keeps the current
// set; a set holding a model named kReservedModelName ("alibi", the Open
// Inference Protocol's built-in ALiBi model) is refused the same way
// (INVALID_ARGUMENT naming its file), by Create() and Reload().
#ifndef ATTNSCORE_SERVER_SERVICE_MODEL_REGISTRY_H_
#define ATTNSCORE_SERVER_SERVICE_MODEL_REGISTRY_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/scoring/score_spec.h"

namespace attnscore::service {

// The one model name a relative-position parameter set may not have.
inline constexpr char kReservedModelName[] = "alibi";

class ModelRegistry {
 public:
  // Reads every parameter set in a directory; fails as a whole (naming the
  // broken file) if any file fails. Called by Create and by each Reload, from
  // the calling thread, never concurrently with itself for one registry.
  using Loader =
      std::function<absl::StatusOr<std::shared_ptr<const scoring::ModelSet>>(
          const std::string& dir)>;

  // Loads `dir` with `loader`; an empty `dir` serves no models (ALiBi only)
  // and never calls the loader. INVALID_ARGUMENT for an empty loader, else the
  // loader's error.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(std::string dir,
                                                               Loader loader);

  // A registry over a fixed set (tests). Reload() re-reads nothing and returns
  // OK.
  explicit ModelRegistry(std::shared_ptr<const scoring::ModelSet> models);

  // The set to use for one request. Never null.
  std::shared_ptr<const scoring::ModelSet> Current() const
      ABSL_LOCKS_EXCLUDED(mutex_);

  // Re-reads the directory with the loader and swaps the new set in; on
  // failure the current set stays.
  absl::Status Reload() ABSL_LOCKS_EXCLUDED(reload_mutex_, mutex_);

  const std::string& dir() const { return dir_; }

 private:
  ModelRegistry(std::string dir, Loader loader,
                std::shared_ptr<const scoring::ModelSet> models);

  const std::string dir_;
  const Loader loader_;  // empty for a fixed set
  // Held across a whole Reload so that two reloads cannot finish out of order.
  absl::Mutex reload_mutex_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const scoring::ModelSet> models_ ABSL_GUARDED_BY(mutex_);
};

// "a, b, c" (sorted), or "(none)": for logs and error messages.
std::string ModelNames(const scoring::ModelSet& models);

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_MODEL_REGISTRY_H_
