#include "server/service/memory_limit.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace attnscore::service {
namespace {

// A whole-file integer ("12345\n"); nullopt for "max", garbage or <= 0.
std::optional<int64_t> ParseBytes(const std::optional<std::string>& text) {
  if (!text.has_value()) return std::nullopt;
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &value) ||
      value <= 0) {
    return std::nullopt;
  }
  return value;
}

// MemTotal of /proc/meminfo, in bytes.
std::optional<int64_t> ParseMemTotal(const std::optional<std::string>& text) {
  if (!text.has_value()) return std::nullopt;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (!absl::ConsumePrefix(&line, "MemTotal:")) continue;
    line = absl::StripAsciiWhitespace(line);
    const bool kb = absl::ConsumeSuffix(&line, "kB");
    int64_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value) ||
        value <= 0) {
      return std::nullopt;
    }
    return kb ? value * 1024 : value;
  }
  return std::nullopt;
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

absl::StatusOr<MemoryLimit> MemoryLimitFrom(const MemorySources& sources) {
  const std::optional<int64_t> ram = ParseMemTotal(sources.proc_meminfo);
  // A cgroup "limit" above the RAM is no limit (v1 writes ~2^63 for none).
  auto usable = [&](std::optional<int64_t> limit) {
    return limit.has_value() && (!ram.has_value() || *limit <= *ram);
  };
  if (std::optional<int64_t> v2 = ParseBytes(sources.cgroup2_memory_max);
      usable(v2)) {
    return MemoryLimit{*v2, "cgroup v2 memory.max"};
  }
  if (std::optional<int64_t> v1 = ParseBytes(sources.cgroup1_limit_in_bytes);
      usable(v1)) {
    return MemoryLimit{*v1, "cgroup v1 memory.limit_in_bytes"};
  }
  if (ram.has_value()) return MemoryLimit{*ram, "MemTotal of /proc/meminfo"};
  return absl::NotFoundError(
      "memory limit: expected a cgroup memory limit or MemTotal in "
      "/proc/meminfo, got neither");
}

MemorySources ReadMemorySources(absl::string_view root) {
  MemorySources sources;
  sources.cgroup2_memory_max =
      ReadFile(absl::StrCat(root, "/sys/fs/cgroup/memory.max"));
  sources.cgroup1_limit_in_bytes = ReadFile(
      absl::StrCat(root, "/sys/fs/cgroup/memory/memory.limit_in_bytes"));
  sources.proc_meminfo = ReadFile(absl::StrCat(root, "/proc/meminfo"));
  return sources;
}

int64_t DefaultInflightBytes() {
  absl::StatusOr<MemoryLimit> limit = MemoryLimitFrom(ReadMemorySources());
  return InflightBudgetFor(limit.ok() ? limit->bytes : int64_t{4} << 30);
}

}  // namespace attnscore::service
