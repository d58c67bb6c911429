#include "server/scoring/score_spec.h"

#include <atomic>
#include <utility>

namespace attnscore::scoring {
namespace {

uint64_t NextModelId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

RelativeModel::RelativeModel(RelativeModelInfo info)
    : info_(std::move(info)), id_(NextModelId()) {}

std::shared_ptr<const RelativeModel> ModelSet::Find(
    std::string_view name) const {
  auto it = models.find(name);
  return it == models.end() ? nullptr : it->second;
}

}  // namespace attnscore::scoring
