#include "tests/testing/proc_stats.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace attnscore::testing {

std::optional<int64_t> ReadProcStatusBytes(pid_t pid,
                                           const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  const std::string prefix = field + ":";
  while (std::getline(in, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    std::istringstream rest(line.substr(prefix.size()));
    int64_t kib = 0;
    std::string unit;
    if (!(rest >> kib >> unit) || unit != "kB") return std::nullopt;
    return kib * 1024;
  }
  return std::nullopt;
}

MemoryFigures ReadMemory(pid_t pid) {
  MemoryFigures figures;
  figures.rss_bytes = ReadProcStatusBytes(pid, "VmRSS").value_or(0);
  figures.hwm_bytes = ReadProcStatusBytes(pid, "VmHWM").value_or(0);
  return figures;
}

std::string MiB(int64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f MiB",
                static_cast<double>(bytes) / (1 << 20));
  return text;
}

RssSampler::RssSampler(pid_t pid, absl::Duration period)
    : pid_(pid), period_(period), thread_([this] {
        while (!stop_.load()) {
          const std::optional<int64_t> rss = ReadProcStatusBytes(pid_, "VmRSS");
          if (rss.has_value()) {
            int64_t seen = peak_.load();
            while (*rss > seen && !peak_.compare_exchange_weak(seen, *rss)) {
            }
            samples_.fetch_add(1);
          }
          std::this_thread::sleep_for(absl::ToChronoNanoseconds(period_));
        }
      }) {}

RssSampler::~RssSampler() { Stop(); }

void RssSampler::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

}  // namespace attnscore::testing
