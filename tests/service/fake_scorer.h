// Test support: a scoring::Scorer without LibTorch whose results are a cheap
// function of the inputs, so tests can check that batched results are split
// back to the right requests. Only float32 BHSD inputs and float32 outputs.
//   logits[b,h,i,j]  = 1000 * q[b,h,i,0] + k[b,h,j,0]
//   probs[b,h,i,j]   = 0.5
//   context[b,h,i,d] = v[b,h,0,d]
// Records each call; can be held (ScoreBatch blocks until Release, or until
// the call's StopFn returns true: then it returns CANCELLED, as the real
// scorer does between tiles, and the call records `stopped`). Fails any batch
// holding a request whose first query value is kPoison; throws std::bad_alloc
// for kThrowBadAlloc and std::runtime_error for kThrow (a scorer must not, but
// the service must survive one that does). ScoreObserved can tell its
// observer some rows before the hold and the rest after (ObserveRows).
//
// Thread safety: every method may be called from any thread.
#ifndef ATTNSCORE_TESTS_SERVICE_FAKE_SCORER_H_
#define ATTNSCORE_TESTS_SERVICE_FAKE_SCORER_H_

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "server/scoring/scorer.h"

namespace attnscore::service::testing {

class FakeScorer final : public scoring::Scorer {
 public:
  static constexpr float kPoison = -999.0f;
  static constexpr float kThrowBadAlloc = -998.0f;
  static constexpr float kThrow = -997.0f;

  struct Call {
    size_t num_items = 0;  // requests
    int64_t batch = 0;     // sum of their B
    bool relative = false;
    bool stopped = false;    // left early because its StopFn returned true
    std::thread::id thread;  // the thread that called
  };

  using scoring::Scorer::ScoreBatch;
  absl::StatusOr<std::vector<scoring::ScoreResult>> ScoreBatch(
      const scoring::ScoreSpec& spec,
      absl::Span<const scoring::ScoreItem> items,
      const scoring::StopFn& stop) override {
    if (absl::Status held = RecordAndHold(spec, items, stop); !held.ok()) {
      return held;
    }
    if (absl::Status failed = Failures(items); !failed.ok()) return failed;
    return Compute(spec, items);
  }

  // After ObserveRows(first): as the blocked path, the observer is told the
  // result's buffers, then `first` rows, then (past the hold, which comes in
  // between) all of them; context is not observed. Otherwise ScoreBatch.
  absl::StatusOr<std::vector<scoring::ScoreResult>> ScoreObserved(
      const scoring::ScoreSpec& spec, const scoring::ScoreItem& item,
      const scoring::StopFn& stop, scoring::RowObserver& observer) override {
    const auto items = absl::MakeConstSpan(&item, 1);
    int64_t first = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      first = observed_first_rows_;
    }
    if (first < 0 || spec.want_context) return ScoreBatch(spec, items, stop);
    std::vector<scoring::ScoreResult> results = Compute(spec, items);
    observer.OnOutputs(results.front());
    observer.OnRows(first);
    if (absl::Status held = RecordAndHold(spec, items, stop); !held.ok()) {
      return held;
    }
    if (absl::Status failed = Failures(items); !failed.ok()) return failed;
    const auto& q = item.query.shape;
    observer.OnRows(q[0] * q[1] * q[2]);
    return results;
  }
  // ScoreObserved tells its observer `first` rows before the hold (-1: not
  // observed, the default).
  void ObserveRows(int64_t first) {
    std::lock_guard<std::mutex> lock(mutex_);
    observed_first_rows_ = first;
  }

  size_t ItemsPerPass(
      absl::Span<const scoring::ScoreItem> items) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return items_per_pass_ == 0 ? items.size()
                                : std::min(items_per_pass_, items.size());
  }
  // Passes of `n` items (0: the whole batch, the default).
  void SetItemsPerPass(size_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    items_per_pass_ = n;
  }

  std::string device() const override { return "fake"; }

  void Hold() { HoldFrom(0); }
  // Holds calls from the `index`th (0-based) on; earlier ones run.
  void HoldFrom(size_t index) {
    std::lock_guard<std::mutex> lock(mutex_);
    held_ = true;
    hold_from_ = index;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mutex_);
    held_ = false;
    cv_.notify_all();
  }
  // Waits (at most 10 s) until ScoreBatch has been entered `n` times in total.
  bool WaitForCalls(size_t n) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, std::chrono::seconds(10),
                        [&] { return calls_.size() >= n; });
  }
  // Waits (at most 10 s) until some call has been stopped by its StopFn.
  bool WaitForStopped() {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const Call& call : calls_) {
        if (call.stopped) return true;
      }
      return false;
    });
  }
  std::vector<Call> calls() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

 private:
  // Records the call; while held, waits, asking `stop` now and then as the
  // real scorer does between tiles (CANCELLED once it says so).
  absl::Status RecordAndHold(const scoring::ScoreSpec& spec,
                             absl::Span<const scoring::ScoreItem> items,
                             const scoring::StopFn& stop) {
    Call call;
    call.thread = std::this_thread::get_id();
    call.num_items = items.size();
    call.relative = std::holds_alternative<scoring::RelativeBias>(spec.bias);
    for (const scoring::ScoreItem& item : items) {
      call.batch += item.query.shape[0];
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      calls_.push_back(call);
      const size_t index = calls_.size() - 1;
      cv_.notify_all();
      // Held: ask the StopFn now and then, as the real scorer does between
      // tiles.
      while (held_ && index >= hold_from_) {
        if (stop && stop()) {
          calls_[index].stopped = true;
          cv_.notify_all();
          return absl::CancelledError("stopped between tiles");
        }
        cv_.wait_for(lock, std::chrono::milliseconds(5));
      }
    }
    return absl::OkStatus();
  }

  // kPoison, kThrowBadAlloc and kThrow.
  static absl::Status Failures(absl::Span<const scoring::ScoreItem> items) {
    for (const scoring::ScoreItem& item : items) {
      const float first = First(item.query);
      if (first == kPoison) return absl::InternalError("poisoned request");
      if (first == kThrowBadAlloc) throw std::bad_alloc();
      if (first == kThrow) throw std::runtime_error("fake scorer exception");
    }
    return absl::OkStatus();
  }

  static float First(const scoring::TensorRef& t) {
    float v;
    std::memcpy(&v, t.data, sizeof(v));
    return v;
  }
  static float At(const scoring::TensorRef& t, int64_t index) {
    float v;
    std::memcpy(&v, static_cast<const char*>(t.data) + index * sizeof(float),
                sizeof(v));
    return v;
  }

  // One buffer per output for the whole batch; each item's result views its
  // part of it, the way the real scorer splits a batch output without copying.
  static std::vector<scoring::ScoreResult> Compute(
      const scoring::ScoreSpec& spec,
      absl::Span<const scoring::ScoreItem> items) {
    std::vector<scoring::ScoreResult> results(items.size());
    size_t total = 0;
    for (const scoring::ScoreItem& item : items) {
      const auto& q = item.query.shape;
      const auto& k = item.key.shape;
      total += q[0] * q[1] * q[2] * k[2] * 2;
      if (spec.want_context) total += q[0] * q[1] * q[2] * item.value->shape[3];
    }
    auto buffer = std::make_shared<std::vector<float>>(total);
    float* out = buffer->data();
    for (size_t n = 0; n < items.size(); ++n) {
      const scoring::ScoreItem& item = items[n];
      const int64_t b = item.query.shape[0], h = item.query.shape[1],
                    lq = item.query.shape[2], d = item.query.shape[3],
                    lk = item.key.shape[2];
      auto view = [&](std::vector<int64_t> shape, int64_t count) {
        scoring::OutputTensor t;
        t.dtype = DType::kFloat32;
        t.shape = std::move(shape);
        t.data = out;
        t.size_bytes = count * sizeof(float);
        t.keepalive = buffer;
        out += count;
        return t;
      };
      const int64_t scores = b * h * lq * lk;
      if (spec.want_logits) {
        scoring::OutputTensor t = view({b, h, lq, lk}, scores);
        float* p = static_cast<float*>(const_cast<void*>(t.data));
        for (int64_t bh = 0; bh < b * h; ++bh) {
          for (int64_t i = 0; i < lq; ++i) {
            for (int64_t j = 0; j < lk; ++j) {
              *p++ = 1000 * At(item.query, (bh * lq + i) * d) +
                     At(item.key, (bh * lk + j) * d);
            }
          }
        }
        results[n].logits = t;
      }
      if (spec.want_probs) {
        scoring::OutputTensor t = view({b, h, lq, lk}, scores);
        std::fill_n(static_cast<float*>(const_cast<void*>(t.data)), scores,
                    0.5f);
        results[n].probs = t;
      }
      if (spec.want_context) {
        const int64_t dv = item.value->shape[3];
        scoring::OutputTensor t = view({b, h, lq, dv}, b * h * lq * dv);
        float* p = static_cast<float*>(const_cast<void*>(t.data));
        for (int64_t bh = 0; bh < b * h; ++bh) {
          for (int64_t i = 0; i < lq; ++i) {
            for (int64_t e = 0; e < dv; ++e) {
              *p++ = At(*item.value, bh * lk * dv + e);
            }
          }
        }
        results[n].context = t;
      }
    }
    return results;
  }

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool held_ = false;
  size_t hold_from_ = 0;
  size_t items_per_pass_ = 0;
  int64_t observed_first_rows_ = -1;
  std::vector<Call> calls_;
};

}  // namespace attnscore::service::testing

#endif  // ATTNSCORE_TESTS_SERVICE_FAKE_SCORER_H_
