#include "server/service/inflight_budget.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace attnscore::service {

absl::StatusOr<std::shared_ptr<InflightBudget>> InflightBudget::Create(
    int64_t total, int64_t per_client) {
  if (total <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_inflight_bytes: expected > 0, got ", total));
  }
  if (per_client < 0 || per_client > total) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_inflight_per_client: expected 0 (no cap) or 1..",
                     total, " (max_inflight_bytes), got ", per_client));
  }
  return std::shared_ptr<InflightBudget>(new InflightBudget(total, per_client));
}

absl::StatusOr<InflightBudget::Lease> InflightBudget::TryAcquire(
    const std::string& client, int64_t bytes) {
  if (absl::Status s = Adjust(client, 0, bytes); !s.ok()) return s;
  return Lease(shared_from_this(), client, bytes);
}

int64_t InflightBudget::InUse() const {
  absl::MutexLock lock(&mutex_);
  return in_use_;
}

bool InflightBudget::AwaitEmpty(absl::Time deadline) const {
  absl::MutexLock lock(&mutex_);
  const auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return in_use_ == 0;
  };
  return mutex_.AwaitWithDeadline(absl::Condition(&empty), deadline);
}

int64_t InflightBudget::InUseBy(const std::string& client) const {
  absl::MutexLock lock(&mutex_);
  auto it = by_client_.find(client);
  return it == by_client_.end() ? 0 : it->second;
}

absl::Status InflightBudget::Adjust(const std::string& client, int64_t current,
                                    int64_t delta) {
  const int64_t wanted = current + delta;
  // Alone over a cap: no wait can make it fit.
  if (delta > 0 && wanted > total_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs ", wanted, " bytes in flight, more than the server's ",
        "--max-inflight-bytes ", total_));
  }
  if (delta > 0 && per_client_ > 0 && wanted > per_client_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request needs ", wanted, " bytes in flight, more than the server's ",
        "--max-inflight-per-client ", per_client_));
  }
  absl::MutexLock lock(&mutex_);
  int64_t& mine = by_client_[client];
  if (delta > 0 && in_use_ + delta > total_) {
    if (mine == 0) by_client_.erase(client);
    return absl::UnavailableError(absl::StrCat(
        "server busy: ", in_use_, " of --max-inflight-bytes ", total_,
        " bytes in flight, request needs ", delta, " more; retry later"));
  }
  if (delta > 0 && per_client_ > 0 && mine + delta > per_client_) {
    const int64_t held = mine;
    if (mine == 0) by_client_.erase(client);
    return absl::UnavailableError(absl::StrCat(
        "client busy: it holds ", held, " of --max-inflight-per-client ",
        per_client_, " bytes in flight, request needs ", delta,
        " more; retry later"));
  }
  in_use_ += delta;
  mine += delta;
  if (mine == 0) by_client_.erase(client);
  return absl::OkStatus();
}

InflightBudget::Lease& InflightBudget::Lease::operator=(
    Lease&& other) noexcept {
  if (this != &other) {
    Release();
    budget_ = std::move(other.budget_);
    client_ = std::move(other.client_);
    bytes_ = other.bytes_;
    other.budget_.reset();
    other.bytes_ = 0;
  }
  return *this;
}

absl::Status InflightBudget::Lease::TryResize(int64_t bytes) {
  if (budget_ == nullptr) {
    return absl::FailedPreconditionError("resize of an empty lease");
  }
  if (absl::Status s = budget_->Adjust(client_, bytes_, bytes - bytes_);
      !s.ok()) {
    return s;
  }
  bytes_ = bytes;
  return absl::OkStatus();
}

void InflightBudget::Lease::Release() {
  if (budget_ == nullptr) return;
  // Shrinking always succeeds.
  budget_->Adjust(client_, bytes_, -bytes_).IgnoreError();
  budget_.reset();
  bytes_ = 0;
}

}  // namespace attnscore::service
