// InflightBudget (totals, per-client caps, leases that resize and give back)
// and the derivation of its default from the container's memory limit
// (memory_limit.h), on fake cgroup and /proc files. No gRPC, no LibTorch.
#include "server/service/inflight_budget.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/service/memory_limit.h"

namespace attnscore::service {
namespace {

using ::testing::HasSubstr;

constexpr char kMemInfo[] =
    "MemTotal:       16384000 kB\n"
    "MemFree:         1000000 kB\n";
constexpr int64_t kMemTotal = int64_t{16384000} * 1024;

TEST(InflightBudgetTest, RefusesWhatDoesNotFitAndTakesItBackOnRelease) {
  auto budget = InflightBudget::Create(1000, 0);
  ASSERT_TRUE(budget.ok()) << budget.status();
  auto a = (*budget)->TryAcquire("a", 600);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*budget)->InUse(), 600);
  // Fits alone, not now: retry later.
  auto b = (*budget)->TryAcquire("b", 500);
  EXPECT_TRUE(absl::IsUnavailable(b.status())) << b.status();
  EXPECT_THAT(b.status().message(),
              HasSubstr("600 of --max-inflight-bytes 1000"));
  // Never fits: no retry helps.
  auto huge = (*budget)->TryAcquire("b", 1001);
  EXPECT_TRUE(absl::IsResourceExhausted(huge.status())) << huge.status();
  EXPECT_THAT(huge.status().message(), HasSubstr("1001"));
  a->Release();
  EXPECT_EQ((*budget)->InUse(), 0);
  b = (*budget)->TryAcquire("b", 500);
  EXPECT_TRUE(b.ok()) << b.status();
}

TEST(InflightBudgetTest, LeasesResizeAndGiveBackWhenDestroyed) {
  auto budget = InflightBudget::Create(1000, 0);
  ASSERT_TRUE(budget.ok());
  {
    auto lease = (*budget)->TryAcquire("a", 100);
    ASSERT_TRUE(lease.ok());
    EXPECT_TRUE(lease->TryResize(900).ok());
    EXPECT_EQ((*budget)->InUse(), 900);
    // A failed growth keeps what it had.
    EXPECT_TRUE(absl::IsResourceExhausted(lease->TryResize(2000)));
    EXPECT_EQ(lease->bytes(), 900);
    EXPECT_TRUE(lease->TryResize(10).ok());
    EXPECT_EQ((*budget)->InUse(), 10);
    InflightBudget::Lease moved = *std::move(lease);
    EXPECT_EQ(moved.bytes(), 10);
    EXPECT_EQ((*budget)->InUse(), 10);
  }
  EXPECT_EQ((*budget)->InUse(), 0);
  EXPECT_EQ((*budget)->InUseBy("a"), 0);
}

TEST(InflightBudgetTest, PerClientCapLeavesRoomForOthers) {
  auto budget = InflightBudget::Create(1000, 400);
  ASSERT_TRUE(budget.ok());
  auto a1 = (*budget)->TryAcquire("a", 300);
  ASSERT_TRUE(a1.ok());
  auto a2 = (*budget)->TryAcquire("a", 200);
  EXPECT_TRUE(absl::IsUnavailable(a2.status())) << a2.status();
  EXPECT_THAT(a2.status().message(),
              HasSubstr("300 of --max-inflight-per-client 400"));
  auto alone = (*budget)->TryAcquire("c", 401);
  EXPECT_TRUE(absl::IsResourceExhausted(alone.status())) << alone.status();
  auto b = (*budget)->TryAcquire("b", 400);
  EXPECT_TRUE(b.ok()) << b.status();
  EXPECT_EQ((*budget)->InUseBy("a"), 300);
  EXPECT_EQ((*budget)->InUseBy("b"), 400);
}

TEST(InflightBudgetTest, RejectsBadOptions) {
  EXPECT_FALSE(InflightBudget::Create(0, 0).ok());
  EXPECT_FALSE(InflightBudget::Create(100, 101).ok());
  EXPECT_FALSE(InflightBudget::Create(100, -1).ok());
}

// The drain's wait: at once when empty, the deadline while a lease holds
// bytes, and the moment another thread gives the last bytes back.
TEST(InflightBudgetTest, AwaitEmptyWaitsForTheLastLease) {
  auto budget = InflightBudget::Create(1000, 0);
  ASSERT_TRUE(budget.ok()) << budget.status();
  EXPECT_TRUE((*budget)->AwaitEmpty(absl::InfinitePast()));
  auto a = (*budget)->TryAcquire("a", 100);
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = (*budget)->TryAcquire("b", 200);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_FALSE((*budget)->AwaitEmpty(absl::Now() + absl::Milliseconds(20)));
  std::thread release([&] {
    a->Release();
    absl::SleepFor(absl::Milliseconds(20));
    b->Release();
  });
  EXPECT_TRUE((*budget)->AwaitEmpty(absl::Now() + absl::Seconds(60)));
  EXPECT_EQ((*budget)->InUse(), 0);
  release.join();
}

TEST(InflightBudgetTest, ConcurrentLeasesBalanceToZero) {
  auto budget = InflightBudget::Create(1 << 20, 0);
  ASSERT_TRUE(budget.ok());
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 1000; ++i) {
        auto lease = (*budget)->TryAcquire(std::to_string(t), 100);
        if (lease.ok()) lease->TryResize(50).IgnoreError();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ((*budget)->InUse(), 0);
}

TEST(MemoryLimitTest, CgroupV2LimitWins) {
  MemorySources sources;
  sources.cgroup2_memory_max = "4294967296\n";
  sources.cgroup1_limit_in_bytes = "1073741824\n";
  sources.proc_meminfo = kMemInfo;
  auto limit = MemoryLimitFrom(sources);
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(limit->bytes, int64_t{4} << 30);
  EXPECT_EQ(limit->source, "cgroup v2 memory.max");
  EXPECT_EQ(InflightBudgetFor(limit->bytes), int64_t{2} << 30);
}

TEST(MemoryLimitTest, UnlimitedCgroupV2FallsBackToV1ThenRam) {
  MemorySources sources;
  sources.cgroup2_memory_max = "max\n";
  sources.cgroup1_limit_in_bytes = "1073741824\n";
  sources.proc_meminfo = kMemInfo;
  auto limit = MemoryLimitFrom(sources);
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(limit->bytes, int64_t{1} << 30);
  EXPECT_EQ(limit->source, "cgroup v1 memory.limit_in_bytes");

  // v1's "no limit" is ~2^63: above the RAM, so the RAM counts.
  sources.cgroup2_memory_max.reset();
  sources.cgroup1_limit_in_bytes = "9223372036854771712\n";
  limit = MemoryLimitFrom(sources);
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(limit->bytes, kMemTotal);
  EXPECT_EQ(limit->source, "MemTotal of /proc/meminfo");
}

TEST(MemoryLimitTest, GarbageIsIgnoredAndNothingIsNotFound) {
  MemorySources sources;
  sources.cgroup2_memory_max = "lots";
  sources.cgroup1_limit_in_bytes = "-5";
  sources.proc_meminfo = "MemFree: 10 kB\n";
  EXPECT_TRUE(absl::IsNotFound(MemoryLimitFrom(sources).status()));
  EXPECT_TRUE(absl::IsNotFound(MemoryLimitFrom(MemorySources()).status()));
}

TEST(MemoryLimitTest, ReadsTheFilesUnderARoot) {
  const std::filesystem::path root =
      std::filesystem::path(::testing::TempDir()) / "memory_limit_root";
  std::filesystem::remove_all(root);
  std::filesystem::create_directories(root / "sys/fs/cgroup");
  std::filesystem::create_directories(root / "proc");
  std::ofstream(root / "sys/fs/cgroup/memory.max") << "2147483648\n";
  std::ofstream(root / "proc/meminfo") << kMemInfo;
  MemorySources sources = ReadMemorySources(root.string());
  EXPECT_EQ(sources.cgroup2_memory_max, "2147483648\n");
  EXPECT_FALSE(sources.cgroup1_limit_in_bytes.has_value());
  auto limit = MemoryLimitFrom(sources);
  ASSERT_TRUE(limit.ok());
  EXPECT_EQ(limit->bytes, int64_t{2} << 30);
  EXPECT_GT(DefaultInflightBytes(), 0);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace attnscore::service
