#include "server/cpu/allocator.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace attnscore::cpu {
namespace {

// Sanitizers serve malloc from their own allocators, which mallopt does not
// reach (ASan refuses it; TSan accepts it and ignores it).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

TEST(AllocatorTest, ChangesMallocUnlessTheOperatorSetIt) {
  EXPECT_TRUE(ChooseAllocator(std::nullopt).apply);
  EXPECT_TRUE(ChooseAllocator("glibc.cpu.hwcaps=-AVX512F").apply);
  for (const std::string tunables :
       {"glibc.malloc.trim_threshold=131072",
        "glibc.cpu.hwcaps=-AVX512F:glibc.malloc.mmap_threshold=65536",
        "glibc.malloc.arena_max=4"}) {
    const AllocatorChoice choice = ChooseAllocator(tunables);
    EXPECT_FALSE(choice.apply) << tunables;
    EXPECT_NE(choice.reason.find("GLIBC_TUNABLES"), std::string::npos)
        << choice.reason;
  }
}

int64_t MinorFaults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// Allocates 12 blocks of 1 MiB (what gRPC's reads of a large request add up
// to; under kKeptFreeBytes), writes every page, frees them all.
void AllocateTouchFree() {
  constexpr size_t kBlock = size_t{1} << 20;
  std::vector<volatile char*> blocks;
  for (int i = 0; i < 12; ++i) {
    auto* block = static_cast<volatile char*>(std::malloc(kBlock));
    ASSERT_NE(block, nullptr);
    for (size_t at = 0; at < kBlock; at += 4096) block[at] = 1;
    blocks.push_back(block);
  }
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    std::free(const_cast<char*>(*it));
  }
}

// With glibc's defaults each 1 MiB block is mmapped and unmapped again (or
// trimmed off the heap's top), so every round faults its 3,072 pages in anew.
TEST(AllocatorTest, FreedMemoryIsReusedWithoutPageFaults) {
  KeepFreedMemory();
  if (kSanitized) {
    GTEST_SKIP() << "a sanitizer's allocator serves malloc here";
  }
  if (std::getenv("GLIBC_TUNABLES") != nullptr) {
    GTEST_SKIP() << "GLIBC_TUNABLES is set: the operator's settings may apply";
  }
  ASSERT_EQ(AllocatorSetting().rfind(ChooseAllocator(std::nullopt).reason, 0),
            0u)
      << AllocatorSetting();
  AllocateTouchFree();  // the heap grows once
  const int64_t before = MinorFaults();
  AllocateTouchFree();
  EXPECT_LT(MinorFaults() - before, 64)
      << "freed memory went back to the kernel";
}

}  // namespace
}  // namespace attnscore::cpu
