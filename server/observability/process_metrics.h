// The standard process_* series that Prometheus' own client libraries export
// (prometheus-cpp has none), read from /proc at scrape time:
//   process_cpu_seconds_total        user plus system CPU time
//   process_resident_memory_bytes    resident set size
//   process_virtual_memory_bytes     virtual memory size
//   process_start_time_seconds       start time, seconds since the epoch
//   process_open_fds                 open file descriptors
//   process_max_fds                  the soft limit on them
//
// Ownership: registers callback metrics in `registry`, which owns them.
// Thread safety: the callbacks read /proc only; any thread may scrape.
// Errors: none; a value that cannot be read is exposed as NaN (Linux always
// has /proc/self, so this means a broken container, which the NaN shows).
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_PROCESS_METRICS_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_PROCESS_METRICS_H_

#include "server/observability/metrics.h"

namespace attnscore::observability {

// REQUIRES: called once per registry (the names are callback metrics).
void AddProcessMetrics(Registry& registry);

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_PROCESS_METRICS_H_
