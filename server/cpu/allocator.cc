#include "server/cpu/allocator.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnscore::cpu {

AllocatorChoice ChooseAllocator(const std::optional<std::string>& tunables) {
  if (tunables.has_value() && absl::StrContains(*tunables, "glibc.malloc.")) {
    return {false, "malloc settings from GLIBC_TUNABLES (operator)"};
  }
  return {true, absl::StrCat("malloc keeps up to ", kKeptFreeBytes >> 20,
                             " MiB freed per heap, blocks under ",
                             kHeapBlockBytes >> 20, " MiB from the heap")};
}

namespace {

// Written once by KeepFreedMemory before any thread starts.
std::string& Setting() {
  static std::string* setting =
      new std::string("malloc defaults (KeepFreedMemory not called)");
  return *setting;
}

}  // namespace

void KeepFreedMemory() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  AllocatorChoice choice = ChooseAllocator(
      tunables == nullptr ? std::nullopt
                          : std::optional<std::string>(tunables));
  if (!choice.apply) {
    Setting() = std::move(choice.reason);
    return;
  }
  const int64_t cores = sysconf(_SC_NPROCESSORS_ONLN);
  const int heaps = static_cast<int>(std::max<int64_t>(2, cores));
  // mallopt returns 1 on success; sanitizers' allocators ignore it.
  const bool set =
      mallopt(M_MMAP_THRESHOLD, static_cast<int>(kHeapBlockBytes)) == 1 &&
      mallopt(M_TRIM_THRESHOLD, static_cast<int>(kKeptFreeBytes)) == 1 &&
      mallopt(M_ARENA_MAX, heaps) == 1;
  Setting() = set ? absl::StrCat(choice.reason, ", ", heaps, " heaps")
                  : "malloc defaults (mallopt not supported by this allocator)";
}

std::string AllocatorSetting() { return Setting(); }

}  // namespace attnscore::cpu
