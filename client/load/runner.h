// The load tester's engine. Two ways to generate load:
//
// - Closed loop (ghz's model, no --rate): `concurrency` requests in flight;
//   each completion starts the next. Latency is measured from the actual send.
// - Open loop (--rate R): request i is due at start + i/R (or Poisson
//   arrivals), whatever the server does; latency is measured from that
//   intended time, so a stall shows up in every request that should have been
//   sent during it instead of in one slow sample (no coordinated omission).
//   `concurrency` caps requests in flight; a request that waits for a slot
//   keeps its intended start, and the wait is reported as send lag.
//
// Both run until `total` requests or `duration`, whichever comes first, and are
// bounded in time in every case: no more requests are sent after
// `max_duration`, and requests still unanswered `drain_timeout` after that are
// cancelled and reported.
//
// When the workload places outputs in shared memory (Workload::
// UseSharedOutputs), each request in flight holds one output slot of its own
// from its send to its completion.
//
// Ownership: RunLoad borrows the Client and the Workload.
// Thread safety: RunLoad may be called from one thread at a time per Client;
// completions are recorded from gRPC threads under a lock.
// Errors: RunLoad fails only for unusable options (INVALID_ARGUMENT, also for
// fewer output slots than `concurrency`) or when no stream can be opened;
// request failures are results, counted by status code and message.
#ifndef ATTNSCORE_CLIENT_LOAD_RUNNER_H_
#define ATTNSCORE_CLIENT_LOAD_RUNNER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/load/histogram.h"
#include "client/load/workload.h"

namespace attnscore::client::load {

enum class Arrival { kConstant, kPoisson };

struct LoadOptions {
  int concurrency = 50;  // -c: most requests in flight
  int64_t total = 200;   // -n: 0 = no count limit (needs a duration)
  absl::Duration duration = absl::ZeroDuration();  // -z: 0 = until `total`
  double rate = 0;  // -r: requests/s, open loop; 0 = closed loop
  Arrival arrival = Arrival::kConstant;
  bool stream = false;  // over ScoreStream instead of unary Score
  int streams = 1;      // streams used with `stream` (one per connection)
  absl::Duration timeout =
      absl::Seconds(20);  // per request (unary: the gRPC deadline)
  int64_t warmup = 0;     // closed-loop requests before measuring
  absl::Duration max_duration = absl::Minutes(10);
  absl::Duration drain_timeout = absl::Seconds(30);
  uint64_t seed = 1;  // Poisson arrivals
};

// Latency and the server's Timing for one set of requests (all, or one request
// kind).
struct Stats {
  int64_t count = 0;
  int64_t ok = 0;
  int64_t errors = 0;
  LogHistogram latency_ns;   // every request, successful or not
  LogHistogram queue_ns;     // server Timing.queue_us (successful requests)
  LogHistogram compute_ns;   // server Timing.compute_us
  LogHistogram overhead_ns;  // latency - queue - compute: network,
                             // (de)serialization, client
  LogHistogram batch_size;   // server Timing.batch_size
};

struct LoadResult {
  absl::Duration elapsed;  // first send to last completion
  Stats all;
  std::vector<std::string> kind_names;
  std::vector<Stats> by_kind;                     // parallel to kind_names
  std::map<std::string, int64_t> status_codes;    // "OK", "UNAVAILABLE", ...
  std::map<std::string, int64_t> error_messages;  // "UNAVAILABLE: <message>"
  int64_t error_messages_dropped = 0;  // beyond the distinct-message cap
  LogHistogram send_lag_ns;            // actual - intended send (open loop)
  int64_t not_sent = 0;            // open loop: due after the run's time bound
  int64_t cancelled_at_drain = 0;  // still unanswered after drain_timeout
  bool open_loop = false;
  double error_rate() const {
    return all.count == 0 ? 0.0
                          : static_cast<double>(all.errors) /
                                static_cast<double>(all.count);
  }
  double rps() const {
    const double s = absl::ToDoubleSeconds(elapsed);
    return s > 0 ? static_cast<double>(all.count) / s : 0.0;
  }
};

absl::StatusOr<LoadResult> RunLoad(Client& client, const Workload& workload,
                                   const LoadOptions& options);

}  // namespace attnscore::client::load

#endif  // ATTNSCORE_CLIENT_LOAD_RUNNER_H_
