// One budget of bytes held by all requests together (--max-inflight-bytes),
// with an optional cap on one client identity's share
// (--max-inflight-per-client): a request's wire bytes from before it is
// parsed, its predicted peak working memory while it waits and computes, and
// its reply until gRPC reports the reply sent. A request that does not fit is
// refused instead of letting many requests together exhaust the process's
// memory.
//
// A Lease is one request's share: taken with TryAcquire, resized with
// TryResize (growing may fail, shrinking never does) and given back when the
// Lease is destroyed or Released. Errors: RESOURCE_EXHAUSTED when the amount
// alone is over the total or the per-client cap (no retry can succeed);
// UNAVAILABLE when it would fit but the budget (or the client's share) is
// taken now (retry later). Messages name the flag and the byte counts.
//
// Ownership: a Lease shares ownership of its budget, so it may outlive the
// object that created it. Thread safety: every method of InflightBudget may
// be called from any thread; a Lease belongs to one thread at a time.
#ifndef ATTNSCORE_SERVER_SERVICE_INFLIGHT_BUDGET_H_
#define ATTNSCORE_SERVER_SERVICE_INFLIGHT_BUDGET_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace attnscore::service {

class InflightBudget : public std::enable_shared_from_this<InflightBudget> {
 public:
  class Lease;

  // `total` > 0; `per_client` 0 for no per-client cap, else in (0, total].
  // INVALID_ARGUMENT otherwise.
  static absl::StatusOr<std::shared_ptr<InflightBudget>> Create(
      int64_t total, int64_t per_client);

  // A lease of `bytes` (>= 0) for `client`, or the error above.
  absl::StatusOr<Lease> TryAcquire(const std::string& client, int64_t bytes);

  // Bytes held now by all leases, and by `client`'s.
  int64_t InUse() const;
  int64_t InUseBy(const std::string& client) const;

  // Blocks until no lease holds bytes or `deadline` passes; true if the
  // budget emptied.
  bool AwaitEmpty(absl::Time deadline) const;
  int64_t total() const { return total_; }
  int64_t per_client() const { return per_client_; }

 private:
  InflightBudget(int64_t total, int64_t per_client)
      : total_(total), per_client_(per_client) {}

  // Adds `delta` to `client`'s bytes if it fits (delta <= 0 always does).
  absl::Status Adjust(const std::string& client, int64_t current,
                      int64_t delta);

  const int64_t total_;
  const int64_t per_client_;
  mutable absl::Mutex mutex_;
  int64_t in_use_ ABSL_GUARDED_BY(mutex_) = 0;
  // Only clients holding bytes: the map cannot grow with every identity ever
  // seen.
  absl::flat_hash_map<std::string, int64_t> by_client_ ABSL_GUARDED_BY(mutex_);
};

class InflightBudget::Lease {
 public:
  Lease() = default;  // holds nothing
  Lease(Lease&& other) noexcept { *this = std::move(other); }
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { Release(); }

  // Changes the lease to `bytes`; on failure it keeps what it had.
  absl::Status TryResize(int64_t bytes);
  // Gives everything back; the lease then holds nothing.
  void Release();

  int64_t bytes() const { return bytes_; }

 private:
  friend class InflightBudget;
  Lease(std::shared_ptr<InflightBudget> budget, std::string client,
        int64_t bytes)
      : budget_(std::move(budget)), client_(std::move(client)), bytes_(bytes) {}

  std::shared_ptr<InflightBudget> budget_;
  std::string client_;
  int64_t bytes_ = 0;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_INFLIGHT_BUDGET_H_
