#include "server/observability/process_metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace attnscore::observability {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// /proc/self/stat's fields after the command name (which may hold spaces and
// parentheses, hence the last ')'): index 0 is field 3 (state).
std::vector<std::string> StatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  std::vector<std::string> fields;
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  for (std::string field; rest >> field;) fields.push_back(field);
  return fields;
}

// Field `number` of /proc/self/stat as proc(5) numbers them (from 1).
double StatField(int number) {
  const std::vector<std::string> fields = StatFields();
  const size_t index = static_cast<size_t>(number - 3);
  if (number < 3 || index >= fields.size()) return kNaN;
  return std::strtod(fields[index].c_str(), nullptr);
}

double ClockTicks() { return static_cast<double>(sysconf(_SC_CLK_TCK)); }

// The system's boot time, seconds since the epoch ("btime" in /proc/stat).
double BootTime() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double seconds = kNaN;
      in >> seconds;
      return seconds;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return kNaN;
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return kNaN;
  int count = 0;
  while (const dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count - 1;  // not the descriptor reading the directory
}

double MaxFds() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return kNaN;
  return static_cast<double>(limit.rlim_cur);
}

}  // namespace

void AddProcessMetrics(Registry& registry) {
  // Fields 14 (utime), 15 (stime) and 22 (starttime) count clock ticks; 23
  // (vsize) is bytes and 24 (rss) pages.
  registry.AddCallbackCounter(
      "process_cpu_seconds_total",
      "Total user and system CPU time spent in seconds.",
      [] { return (StatField(14) + StatField(15)) / ClockTicks(); });
  registry.AddCallbackGauge(
      "process_resident_memory_bytes", "Resident memory size in bytes.", [] {
        return StatField(24) * static_cast<double>(sysconf(_SC_PAGESIZE));
      });
  registry.AddCallbackGauge("process_virtual_memory_bytes",
                            "Virtual memory size in bytes.",
                            [] { return StatField(23); });
  const double start = BootTime() + StatField(22) / ClockTicks();
  registry.AddCallbackGauge(
      "process_start_time_seconds",
      "Start time of the process since unix epoch in seconds.",
      [start] { return start; });
  registry.AddCallbackGauge("process_open_fds",
                            "Number of open file descriptors.", OpenFds);
  registry.AddCallbackGauge("process_max_fds",
                            "Maximum number of open file descriptors.", MaxFds);
}

}  // namespace attnscore::observability
