// The memory this process may use, for the default of --max-inflight-bytes:
// the container's limit (cgroup v2 memory.max, else cgroup v1
// memory.limit_in_bytes), else the machine's RAM (MemTotal in /proc/meminfo);
// a cgroup limit above the RAM (v1 writes ~2^63 for "none") counts as none.
// The default budget is half of it: the other half is headroom for the process
// itself (LibTorch, gRPC's buffers, the models, allocator slack).
//
// Pure functions over file contents, plus one reader of the real files under
// a root directory (tests point it at fake files). Thread safety: pure.
// Errors: NOT_FOUND when no source gives a number.
#ifndef ATTNSCORE_SERVER_SERVICE_MEMORY_LIMIT_H_
#define ATTNSCORE_SERVER_SERVICE_MEMORY_LIMIT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnscore::service {

// The contents of the files that may say how much memory there is; nullopt
// for a file that is absent.
struct MemorySources {
  std::optional<std::string> cgroup2_memory_max;      // "max" or bytes
  std::optional<std::string> cgroup1_limit_in_bytes;  // bytes
  std::optional<std::string> proc_meminfo;            // "MemTotal: N kB"
};

struct MemoryLimit {
  int64_t bytes = 0;
  std::string source;  // "cgroup v2 memory.max", ...: for the start-up log
};

absl::StatusOr<MemoryLimit> MemoryLimitFrom(const MemorySources& sources);

// Reads `root`/sys/fs/cgroup/memory.max,
// `root`/sys/fs/cgroup/memory/memory.limit_in_bytes and `root`/proc/meminfo
// ("" for the real ones).
MemorySources ReadMemorySources(absl::string_view root = "");

// Half of `limit` (the other half is the process's headroom).
inline int64_t InflightBudgetFor(int64_t limit) { return limit / 2; }

// InflightBudgetFor(MemoryLimitFrom(ReadMemorySources())), or 2 GiB when no
// source gives a number.
int64_t DefaultInflightBytes();

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_MEMORY_LIMIT_H_
