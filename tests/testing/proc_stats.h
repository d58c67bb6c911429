// Test support: a process's memory as Linux reports it in /proc/<pid>/status
// (VmRSS: resident now; VmHWM: the peak resident size since the process
// started), and a background sampler that records the largest VmRSS seen while
// an attack runs. For the hostile-input and fault suites, which bound a real
// server's memory. No gRPC, no LibTorch (compiled into the tests that use it).
//
// Ownership: an RssSampler owns its thread; the destructor stops and joins it.
// Thread safety: ReadProcStatusBytes may be called from any thread; an
// RssSampler's peak() and samples() from any thread, Stop() and the destructor
// from its owner's.
// Errors: std::nullopt when the process or the field is gone (the process
// exited); a sampler just keeps what it saw.
#ifndef ATTNSCORE_TESTS_TESTING_PROC_STATS_H_
#define ATTNSCORE_TESTS_TESTING_PROC_STATS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>

#include "absl/time/time.h"

namespace attnscore::testing {

// A "kB" field of /proc/<pid>/status ("VmRSS", "VmHWM", ...) in bytes.
std::optional<int64_t> ReadProcStatusBytes(pid_t pid, const std::string& field);

// VmRSS and VmHWM now (0 when unreadable).
struct MemoryFigures {
  int64_t rss_bytes = 0;
  int64_t hwm_bytes = 0;
};
MemoryFigures ReadMemory(pid_t pid);

// "123.4 MiB".
std::string MiB(int64_t bytes);

// Samples VmRSS of `pid` every `period` on its own thread until destroyed or
// Stop(); peak() is the largest sample (VmHWM is the exact peak, but it covers
// the process's whole life; the sampler's peak covers one phase).
class RssSampler {
 public:
  explicit RssSampler(pid_t pid,
                      absl::Duration period = absl::Milliseconds(20));
  ~RssSampler();
  RssSampler(const RssSampler&) = delete;
  RssSampler& operator=(const RssSampler&) = delete;

  void Stop();
  int64_t peak() const { return peak_.load(); }
  int64_t samples() const { return samples_.load(); }

 private:
  const pid_t pid_;
  const absl::Duration period_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> peak_{0};
  std::atomic<int64_t> samples_{0};
  std::thread thread_;  // last: starts after the members it uses
};

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_TESTING_PROC_STATS_H_
