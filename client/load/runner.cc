#include "client/load/runner.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"

namespace attnscore::client::load {
namespace {

using Clock = std::chrono::steady_clock;

// Distinct error messages kept; beyond, they are only counted (a flood of
// unique messages, e.g. with request ids in them, must not grow the report
// without bound).
constexpr size_t kMaxDistinctErrors = 50;
constexpr size_t kMaxMessageChars = 200;
// After the drain timeout, how long cancelled calls get to report back.
constexpr auto kCancelWait = std::chrono::seconds(10);
// Streams re-opened after one ended, over the whole run (a server restart
// should not end a streaming run; a server that refuses every stream should not
// make us spin).
constexpr int kMaxStreamReopens = 16;

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

// Everything completions touch; shared with the callbacks so that a late one
// never dangles.
class Shared {
 public:
  Shared(const Workload& workload, bool recording) : recording_(recording) {
    for (const Workload::Kind& kind : workload.kinds()) {
      result_.kind_names.push_back(kind.name);
    }
    result_.by_kind.resize(workload.kinds().size());
    for (int slot = workload.output_slots() - 1; slot >= 0; --slot) {
      free_output_slots_.push_back(slot);
    }
  }

  std::mutex& mutex() { return mutex_; }
  std::condition_variable& cv() { return cv_; }
  int in_flight() const { return in_flight_; }  // REQUIRES: mutex() held

  // Counts a request in flight and gives it a free output slot (-1 when
  // outputs come in the reply). A run has at least as many slots as requests
  // in flight (RunLoad checks), so one is always free.
  // REQUIRES: mutex() held.
  int AddInFlight() {
    ++in_flight_;
    if (free_output_slots_.empty()) return -1;
    const int slot = free_output_slots_.back();
    free_output_slots_.pop_back();
    return slot;
  }

  // One request's outcome; `timing` for successes. Its output slot is free
  // again: the server has answered (or the request was abandoned, when a late
  // write into the slot can only repeat bytes that nobody reads).
  void Complete(size_t kind, Clock::time_point intended, int output_slot,
                const absl::Status& status, const Timing* timing) {
    const Clock::time_point now = Clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    RecordLocked(kind, Nanos(now - intended), status, timing);
    last_completion_ = std::max(last_completion_, now);
    --in_flight_;
    if (output_slot >= 0) free_output_slots_.push_back(output_slot);
    cv_.notify_all();
  }

  // A request that never got on the wire (its stream ended, or Write failed).
  void FailUnsent(size_t kind, Clock::time_point intended, int output_slot,
                  const absl::Status& status) {
    Complete(kind, intended, output_slot, status, nullptr);
  }

  void RecordSendLag(Clock::duration lag) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (recording_) result_.send_lag_ns.Record(Nanos(lag));
  }

  LoadResult& result() {
    return result_;
  }  // REQUIRES: no call in flight, or mutex() held
  Clock::time_point last_completion() const { return last_completion_; }

 private:
  void RecordLocked(size_t kind, int64_t latency_ns, const absl::Status& status,
                    const Timing* timing) {
    if (!recording_) return;
    for (Stats* stats : {&result_.all, &result_.by_kind[kind]}) {
      ++stats->count;
      stats->latency_ns.Record(latency_ns);
      if (status.ok()) {
        ++stats->ok;
        if (timing != nullptr) {
          const int64_t queue_ns = timing->queue_us * 1000;
          const int64_t compute_ns = timing->compute_us * 1000;
          stats->queue_ns.Record(queue_ns);
          stats->compute_ns.Record(compute_ns);
          stats->overhead_ns.Record(
              std::max<int64_t>(0, latency_ns - queue_ns - compute_ns));
          stats->batch_size.Record(timing->batch_size);
        }
      } else {
        ++stats->errors;
      }
    }
    ++result_.status_codes[absl::StatusCodeToString(status.code())];
    if (!status.ok()) {
      std::string key =
          absl::StrCat(absl::StatusCodeToString(status.code()), ": ",
                       status.message().substr(0, kMaxMessageChars));
      auto it = result_.error_messages.find(key);
      if (it != result_.error_messages.end()) {
        ++it->second;
      } else if (result_.error_messages.size() < kMaxDistinctErrors) {
        result_.error_messages.emplace(std::move(key), 1);
      } else {
        ++result_.error_messages_dropped;
      }
    }
  }

  const bool recording_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int in_flight_ = 0;
  std::vector<int> free_output_slots_;  // guarded by mutex_
  Clock::time_point last_completion_{};
  LoadResult result_;
};

// When request i is due, relative to the start (open loop).
class Arrivals {
 public:
  explicit Arrivals(const LoadOptions& options)
      : options_(options), rng_(options.seed) {}
  Clock::duration Next() {
    const double seconds = offset_s_;
    if (options_.arrival == Arrival::kPoisson) {
      offset_s_ += std::exponential_distribution<double>(options_.rate)(rng_);
    } else {
      offset_s_ = static_cast<double>(++count_) / options_.rate;
    }
    return std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(seconds));
  }

 private:
  const LoadOptions& options_;
  std::mt19937_64 rng_;
  double offset_s_ = 0;
  uint64_t count_ = 0;
};

// ScoreStream transport: requests spread round-robin over the streams,
// responses matched to their request by request_id. Each stream has its own
// Slot (pending requests, ended flag); a re-opened stream gets a new Slot, so a
// late end of the old call cannot claim new requests.
class StreamPool {
 public:
  StreamPool(Client& client, std::shared_ptr<Shared> shared, int streams)
      : client_(client),
        shared_(std::move(shared)),
        slots_(static_cast<size_t>(streams)) {}

  absl::Status OpenAll() {
    for (size_t s = 0; s < slots_.size(); ++s) {
      if (absl::Status st = Open(s); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // Sends a request; its outcome is recorded when its response (or its stream's
  // end) comes.
  void Send(const ScoreRequest& request, size_t kind,
            Clock::time_point intended, int output_slot,
            absl::Duration write_timeout) {
    const size_t s = next_++ % slots_.size();
    if (absl::Status status = EnsureOpen(s); !status.ok()) {
      shared_->FailUnsent(kind, intended, output_slot, status);
      return;
    }
    std::shared_ptr<Slot> slot = slots_[s];
    {
      std::lock_guard<std::mutex> lock(slot->mutex);
      slot->pending.emplace(request.request_id,
                            Pending{kind, intended, output_slot});
    }
    if (absl::Status status = slot->stream->Write(request, write_timeout);
        !status.ok()) {
      bool ours = false;
      {
        std::lock_guard<std::mutex> lock(slot->mutex);
        ours = slot->pending.erase(request.request_id) > 0;
      }
      // Not ours any more: the stream's end has already reported it.
      if (ours) shared_->FailUnsent(kind, intended, output_slot, status);
    }
  }

  void CloseAll(absl::Duration timeout) {
    for (auto& slot : slots_) {
      if (slot != nullptr) slot->stream->WritesDone();
    }
    const absl::Time deadline = absl::Now() + timeout;
    for (auto& slot : slots_) {
      if (slot == nullptr) continue;
      if (!slot->stream
               ->Finish(std::max(deadline - absl::Now(), absl::ZeroDuration()))
               .ok()) {
        slot->stream->Cancel();
      }
    }
  }

  void CancelAll() {
    for (auto& slot : slots_) {
      if (slot != nullptr) slot->stream->Cancel();
    }
  }

  // Destroys the streams (each waits, bounded, for its call to end).
  void Reset() {
    for (auto& slot : slots_) {
      if (slot != nullptr) slot->stream.reset();
    }
  }

 private:
  struct Pending {
    size_t kind;
    Clock::time_point intended;
    int output_slot;
  };
  struct Slot {
    std::mutex mutex;
    std::unordered_map<std::string, Pending> pending;  // guarded by mutex
    bool ended = false;                                // guarded by mutex
    std::unique_ptr<Stream> stream;                    // dispatcher thread only
  };

  absl::Status EnsureOpen(size_t s) {
    if (slots_[s] != nullptr) {
      std::lock_guard<std::mutex> lock(slots_[s]->mutex);
      if (!slots_[s]->ended) return absl::OkStatus();
    }
    if (reopens_ >= kMaxStreamReopens) {
      return absl::UnavailableError(
          "ScoreStream ended and the re-open budget is spent");
    }
    ++reopens_;
    return Open(s);
  }

  absl::Status Open(size_t s) {
    if (slots_[s] != nullptr) {
      // Waits (bounded) for the old call's callbacks to stop before its Slot is
      // dropped.
      slots_[s]->stream.reset();
      slots_[s] = nullptr;
    }
    auto slot = std::make_shared<Slot>();
    std::shared_ptr<Shared> shared = shared_;
    StreamOptions options;
    options.on_response = [slot, shared](StreamResponse response) {
      std::optional<Pending> pending;
      {
        std::lock_guard<std::mutex> lock(slot->mutex);
        auto it = slot->pending.find(response.request_id);
        if (it == slot->pending.end()) return;  // not ours (already reported)
        pending = it->second;
        slot->pending.erase(it);
      }
      if (response.result.ok()) {
        shared->Complete(pending->kind, pending->intended, pending->output_slot,
                         absl::OkStatus(), &response.result->timing);
      } else {
        shared->Complete(pending->kind, pending->intended, pending->output_slot,
                         response.result.status(), nullptr);
      }
    };
    // Runs on a gRPC thread and never waits for `slot`'s stream: it only
    // touches the map.
    options.on_done = [slot, shared](const absl::Status& status) {
      std::unordered_map<std::string, Pending> orphans;
      {
        std::lock_guard<std::mutex> lock(slot->mutex);
        slot->ended = true;
        orphans.swap(slot->pending);
      }
      const absl::Status reported =
          status.ok()
              ? absl::UnavailableError("ScoreStream ended before answering")
              : status;
      for (const auto& [id, pending] : orphans) {
        shared->Complete(pending.kind, pending.intended, pending.output_slot,
                         reported, nullptr);
      }
    };
    absl::StatusOr<std::unique_ptr<Stream>> stream =
        client_.OpenStream(std::move(options));
    if (!stream.ok()) return stream.status();
    slot->stream = *std::move(stream);
    slots_[s] = std::move(slot);
    return absl::OkStatus();
  }

  Client& client_;
  std::shared_ptr<Shared> shared_;
  std::vector<std::shared_ptr<Slot>> slots_;  // null until opened
  size_t next_ = 0;
  int reopens_ = 0;
};

// One phase's fixed parts: where requests go and how long it may send.
struct Phase {
  Client& client;
  const Workload& workload;
  const LoadOptions& options;
  bool recording;
  std::shared_ptr<Shared> shared;
  std::shared_ptr<CancellationToken> cancel;  // unary calls, at the drain
  std::unique_ptr<StreamPool> pool;           // null: unary Score calls
  Clock::time_point start;
  Clock::time_point end;  // no sends from then on
};

// A request about to go: when it was meant to, and its output slot (-1:
// outputs in the reply).
struct Outgoing {
  Clock::time_point intended;
  int output_slot = -1;
};

// Waits until the next request may go (open loop: until it is due, then) and
// until fewer than `concurrency` are in flight, and counts it in flight.
// Returns its intended send time and output slot, or nullopt when the phase's
// end comes first (then ++*not_sent for an open-loop request that was due but
// found no slot).
std::optional<Outgoing> AcquireSendSlot(const Phase& phase, Arrivals& arrivals,
                                        int64_t* not_sent) {
  const bool open_loop = phase.options.rate > 0;
  Shared& shared = *phase.shared;
  Clock::time_point intended;
  std::unique_lock<std::mutex> lock(shared.mutex());
  if (open_loop) {
    intended = phase.start + arrivals.Next();
    if (intended >= phase.end) return std::nullopt;
    // Sleep until due (nothing to wake us early: the run goes on regardless).
    lock.unlock();
    std::this_thread::sleep_until(intended);
    lock.lock();
  }
  if (!shared.cv().wait_until(lock, phase.end, [&] {
        return shared.in_flight() < phase.options.concurrency;
      })) {
    if (open_loop) ++*not_sent;  // due, but no slot before the end
    return std::nullopt;
  }
  if (!open_loop) {
    if (Clock::now() >= phase.end) return std::nullopt;
    intended = Clock::now();
  }
  const int output_slot = shared.AddInFlight();
  return Outgoing{intended, output_slot};
}

// Sends request number `sent` (a kind picked by the workload) over the stream
// pool or as a unary call; its outcome is recorded when it completes.
void SendRequest(const Phase& phase, int64_t sent, const Outgoing& send) {
  const size_t kind_index = phase.workload.Pick(static_cast<uint64_t>(sent));
  const Workload::Kind& kind = phase.workload.kinds()[kind_index];
  ScoreRequest request = kind.request;
  request.request_id =
      absl::StrCat(phase.recording ? "load-" : "warmup-", sent);
  if (send.output_slot >= 0) {
    request.placements =
        phase.workload.PlacementsFor(kind_index, send.output_slot);
  }
  const Clock::time_point intended = send.intended;
  const int output_slot = send.output_slot;
  phase.shared->RecordSendLag(Clock::now() - intended);
  if (phase.pool != nullptr) {
    phase.pool->Send(request, kind_index, intended, output_slot,
                     phase.options.timeout);
    return;
  }
  CallOptions call;
  call.timeout = phase.options.timeout;
  call.cancellation = phase.cancel;
  // The callback holds the kind's tensor memory: a call outliving this run
  // stays valid.
  phase.client.ScoreAsync(
      request, call,
      [shared = phase.shared, data = kind.data, kind_index, intended,
       output_slot](absl::StatusOr<ScoreResult> result) {
        if (result.ok()) {
          shared->Complete(kind_index, intended, output_slot, absl::OkStatus(),
                           &result->timing);
        } else {
          shared->Complete(kind_index, intended, output_slot, result.status(),
                           nullptr);
        }
      });
}

// Drain: every request answered, or cancelled after the drain timeout.
// Returns how many were still in flight then.
int64_t Drain(const Phase& phase) {
  int64_t cancelled_at_drain = 0;
  Shared& shared = *phase.shared;
  if (phase.pool != nullptr) phase.pool->CloseAll(phase.options.drain_timeout);
  {
    std::unique_lock<std::mutex> lock(shared.mutex());
    const auto drained = [&] { return shared.in_flight() == 0; };
    if (!shared.cv().wait_for(
            lock, absl::ToChronoNanoseconds(phase.options.drain_timeout),
            drained)) {
      cancelled_at_drain = shared.in_flight();
      lock.unlock();
      phase.cancel->Cancel();
      if (phase.pool != nullptr) phase.pool->CancelAll();
      lock.lock();
      shared.cv().wait_for(lock, kCancelWait, drained);
    }
  }
  if (phase.pool != nullptr) phase.pool->Reset();
  return cancelled_at_drain;
}

// One run of the workload (the warm-up or the measured one): send until
// `total` or the time bound, then drain.
absl::StatusOr<LoadResult> RunPhase(Client& client, const Workload& workload,
                                    const LoadOptions& options,
                                    bool recording) {
  Phase phase{client,
              workload,
              options,
              recording,
              std::make_shared<Shared>(workload, recording),
              std::make_shared<CancellationToken>(),
              nullptr,
              {},
              {}};
  if (options.stream) {
    phase.pool = std::make_unique<StreamPool>(client, phase.shared,
                                              std::max(1, options.streams));
    if (absl::Status s = phase.pool->OpenAll(); !s.ok()) return s;
  }
  const bool open_loop = options.rate > 0;
  phase.start = Clock::now();
  absl::Duration bound = options.max_duration;
  if (options.duration > absl::ZeroDuration()) {
    bound = std::min(bound, options.duration);
  }
  phase.end = phase.start + absl::ToChronoNanoseconds(bound);

  Arrivals arrivals(options);
  int64_t sent = 0;
  int64_t not_sent = 0;
  while (options.total == 0 || sent < options.total) {
    std::optional<Outgoing> send = AcquireSendSlot(phase, arrivals, &not_sent);
    if (!send) break;
    SendRequest(phase, sent, *send);
    ++sent;
  }
  if (open_loop && options.total > 0) not_sent = options.total - sent;
  const int64_t cancelled_at_drain = Drain(phase);

  std::lock_guard<std::mutex> lock(phase.shared->mutex());
  LoadResult result = phase.shared->result();
  const Clock::time_point last =
      std::max(phase.shared->last_completion(), phase.start);
  result.elapsed = absl::FromChrono(last - phase.start);
  result.not_sent = not_sent;
  result.cancelled_at_drain = cancelled_at_drain;
  result.open_loop = open_loop;
  return result;
}

}  // namespace

absl::StatusOr<LoadResult> RunLoad(Client& client, const Workload& workload,
                                   const LoadOptions& options) {
  if (options.concurrency < 1) {
    return absl::InvalidArgumentError("concurrency must be >= 1");
  }
  if (options.total < 0 ||
      (options.total == 0 && options.duration <= absl::ZeroDuration())) {
    return absl::InvalidArgumentError(
        "give a request count (> 0) or a duration");
  }
  if (options.rate < 0) return absl::InvalidArgumentError("rate must be >= 0");
  if (workload.output_slots() > 0 &&
      workload.output_slots() < options.concurrency) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the workload has ", workload.output_slots(),
        " output slots in shared memory, fewer than the concurrency, ",
        options.concurrency));
  }
  if (options.max_duration <= absl::ZeroDuration() ||
      options.max_duration == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("max duration must be finite and > 0");
  }
  if (options.drain_timeout < absl::ZeroDuration() ||
      options.drain_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError("drain timeout must be finite and >= 0");
  }
  if (options.warmup > 0) {
    LoadOptions warmup = options;
    warmup.total = options.warmup;
    warmup.duration = absl::ZeroDuration();
    warmup.rate = 0;
    absl::StatusOr<LoadResult> ignored =
        RunPhase(client, workload, warmup, /*recording=*/false);
    if (!ignored.ok()) return ignored.status();
  }
  return RunPhase(client, workload, options, /*recording=*/true);
}

}  // namespace attnscore::client::load
