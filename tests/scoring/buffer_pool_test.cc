// BufferPool (server/scoring/buffer_pool.h): size classes, reuse without new
// allocations, the idle cap, trimming, decay of unused blocks (on a fake
// clock), memory leaving the process, and concurrent use; the pooled tensors
// of host_tensor.h returning their blocks when the last reference drops; and
// IdleBlockReleaser.
#include "server/scoring/buffer_pool.h"

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/scoring/host_tensor.h"
#include "tests/testing/test_util.h"

namespace attnscore::scoring {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(BufferPoolTest, CapacityClassesWasteAtMostAnEighth) {
  EXPECT_EQ(BufferPool::CapacityFor(1), BufferPool::kAlignment);
  EXPECT_EQ(BufferPool::CapacityFor(100), 128u);
  EXPECT_EQ(BufferPool::CapacityFor(BufferPool::kMinPooledBytes),
            BufferPool::kMinPooledBytes);
  EXPECT_EQ(BufferPool::CapacityFor(64 * kMiB), 64 * kMiB);
  EXPECT_EQ(BufferPool::CapacityFor(64 * kMiB + 1), 72 * kMiB);
  for (size_t bytes = BufferPool::kMinPooledBytes; bytes < 512 * kMiB;
       bytes = bytes * 3 / 2 + 12345) {
    const size_t capacity = BufferPool::CapacityFor(bytes);
    EXPECT_GE(capacity, bytes);
    EXPECT_LE(capacity, bytes + bytes / 8) << bytes;
    EXPECT_EQ(capacity % BufferPool::kAlignment, 0u);
  }
}

TEST(BufferPoolTest, ReleasedBlocksAreReusedWithinTheirClass) {
  BufferPool pool(256 * kMiB);
  size_t capacity = 0;
  void* first = pool.Acquire(10 * kMiB, &capacity);
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % BufferPool::kAlignment, 0u);
  std::memset(first, 1, capacity);  // the whole capacity is usable
  pool.Release(first, capacity);
  EXPECT_EQ(pool.stats().cached_bytes, capacity);

  size_t again = 0;
  void* second = pool.Acquire(10 * kMiB - 1000, &again);  // same class
  EXPECT_EQ(second, first);
  EXPECT_EQ(again, capacity);
  BufferPool::Stats stats = pool.stats();
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 1u);
  EXPECT_EQ(stats.cached_bytes, 0u);

  size_t other = 0;
  void* bigger = pool.Acquire(40 * kMiB, &other);  // another class: fresh
  EXPECT_NE(bigger, second);
  pool.Release(second, again);
  pool.Release(bigger, other);
  stats = pool.stats();
  EXPECT_EQ(stats.cached_blocks, 2u);
  EXPECT_EQ(stats.cached_bytes, again + other);
}

TEST(BufferPoolTest, IdleBytesStayUnderTheCap) {
  BufferPool pool(16 * kMiB);
  std::vector<std::pair<void*, size_t>> blocks;
  for (int i = 0; i < 5; ++i) {
    size_t capacity = 0;
    void* block = pool.Acquire(6 * kMiB, &capacity);
    blocks.emplace_back(block, capacity);
  }
  for (const auto& [block, capacity] : blocks) pool.Release(block, capacity);
  EXPECT_EQ(pool.stats().cached_blocks, 2u);  // 2 x 6 MiB <= 16 MiB < 3 x
  EXPECT_LE(pool.stats().cached_bytes, 16 * kMiB);

  pool.SetMaxCachedBytes(7 * kMiB);  // trims now
  EXPECT_EQ(pool.stats().cached_blocks, 1u);
  pool.SetMaxCachedBytes(0);
  EXPECT_EQ(pool.stats().cached_bytes, 0u);
  size_t capacity = 0;
  void* block = pool.Acquire(6 * kMiB, &capacity);
  pool.Release(block, capacity);  // nothing kept with a zero cap
  EXPECT_EQ(pool.stats().cached_blocks, 0u);
}

// A steady_clock reading the test moves by hand.
struct FakeClock {
  BufferPool::TimePoint now{std::chrono::hours(1)};
  BufferPool::Clock AsClock() {
    return [this] { return now; };
  }
};

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(BufferPoolTest, BlocksUnusedForTheDecayPeriodAreLetGo) {
  FakeClock clock;
  BufferPool pool(256 * kMiB, seconds(10), clock.AsClock());
  size_t capacity = 0;
  void* a = pool.Acquire(4 * kMiB, &capacity);
  void* b = pool.Acquire(4 * kMiB, &capacity);
  void* c = pool.Acquire(4 * kMiB, &capacity);
  pool.Release(a, capacity);  // idle since 0 s
  clock.now += seconds(4);
  pool.Release(b, capacity);  // since 4 s
  clock.now += seconds(4);
  pool.Release(c, capacity);  // since 8 s
  EXPECT_EQ(pool.ReleaseIdle(), 0u);
  clock.now += seconds(2);  // 10 s: a has been idle for the whole period
  EXPECT_EQ(pool.ReleaseIdle(), capacity);
  BufferPool::Stats stats = pool.stats();
  EXPECT_EQ(stats.cached_blocks, 2u);
  EXPECT_EQ(stats.cached_bytes, 2 * capacity);
  EXPECT_EQ(stats.decayed_bytes, capacity);

  // Reuse takes the most recent block, so a steady load keeps its own.
  size_t again = 0;
  EXPECT_EQ(pool.Acquire(4 * kMiB, &again), c);
  clock.now += seconds(100);
  EXPECT_EQ(pool.ReleaseIdle(), capacity);  // b
  pool.Release(c, again);                   // idle again from now
  EXPECT_EQ(pool.ReleaseIdle(), 0u);
  stats = pool.stats();
  EXPECT_EQ(stats.cached_blocks, 1u);
  EXPECT_EQ(stats.decayed_bytes, 2 * capacity);
}

// Without ReleaseIdle: Acquire and Release check, at most every decay / 4.
TEST(BufferPoolTest, AcquireAndReleaseLetDecayedBlocksGo) {
  FakeClock clock;
  BufferPool pool(256 * kMiB, seconds(8), clock.AsClock());
  size_t small = 0;
  size_t large = 0;
  void* old_block = pool.Acquire(1 * kMiB, &small);
  pool.Release(old_block, small);
  clock.now += seconds(8);
  void* block = pool.Acquire(16 * kMiB, &large);  // another class: a miss
  EXPECT_EQ(pool.stats().cached_blocks, 0u);      // the old one went
  EXPECT_EQ(pool.stats().decayed_bytes, small);
  pool.Release(block, large);

  // Checked at most every 2 s: a block that decays in between waits.
  clock.now += seconds(1);
  old_block = pool.Acquire(1 * kMiB, &small);  // a miss; no check due
  pool.Release(old_block, small);
  clock.now += seconds(7);  // `block` idle 8 s; last check 8 s ago: due
  pool.Release(pool.Acquire(1 * kMiB, &small), small);
  EXPECT_EQ(pool.stats().decayed_bytes, small + large);
  EXPECT_EQ(pool.stats().cached_blocks, 1u);
}

TEST(BufferPoolTest, ZeroDecayKeepsBlocksUntilTheCapNeedsRoom) {
  FakeClock clock;
  BufferPool pool(256 * kMiB, seconds(10), clock.AsClock());
  size_t capacity = 0;
  void* block = pool.Acquire(4 * kMiB, &capacity);
  pool.Release(block, capacity);
  pool.SetDecay(milliseconds(0));
  clock.now += std::chrono::hours(24);
  EXPECT_EQ(pool.ReleaseIdle(), 0u);
  EXPECT_EQ(pool.stats().cached_blocks, 1u);

  pool.SetDecay(seconds(1));  // applies now: the block has been idle a day
  EXPECT_EQ(pool.stats().cached_blocks, 0u);
  EXPECT_EQ(pool.stats().decayed_bytes, capacity);
}

// Resident anonymous memory of this process, in bytes.
size_t RssAnonBytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  size_t kib = 0;
  while (status >> key) {
    if (key == "RssAnon:") {
      status >> kib;
      return kib << 10;
    }
    status.ignore(1 << 10, '\n');
  }
  return 0;
}

// A block the pool lets go leaves the process at once: it was mapped for
// itself, not carved out of a heap that malloc keeps.
TEST(BufferPoolTest, ALetGoBlockLeavesTheProcess) {
  if (!BufferPool::kMapsBlocks) {
    GTEST_SKIP() << "AddressSanitizer: blocks come from its heap";
  }
  FakeClock clock;
  BufferPool pool(256 * kMiB, seconds(10), clock.AsClock());
  size_t capacity = 0;
  void* block = pool.Acquire(64 * kMiB, &capacity);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(block) % 4096, 0u);
  std::memset(block, 1, capacity);
  pool.Release(block, capacity);
  const size_t kept = RssAnonBytes();
  clock.now += seconds(10);
  ASSERT_EQ(pool.ReleaseIdle(), capacity);
  const size_t after = RssAnonBytes();
  EXPECT_GE(kept, after + 60 * kMiB) << kept << " -> " << after;
}

TEST(IdleBlockReleaserTest, GivesBackTheProcessPoolsUnusedBlocks) {
  HostBufferPool().SetDecay(milliseconds(50));
  const uint64_t decayed = HostBufferPool().stats().decayed_bytes;
  size_t capacity = 0;
  void* block = HostBufferPool().Acquire(2 * kMiB, &capacity);
  HostBufferPool().Release(block, capacity);
  {
    IdleBlockReleaser releaser(milliseconds(10));
    EXPECT_TRUE(testing::WaitFor(
        [&] { return HostBufferPool().stats().decayed_bytes > decayed; },
        absl::Seconds(10)));
  }
  EXPECT_EQ(HostBufferPool().stats().cached_bytes, 0u);
  HostBufferPool().SetDecay(BufferPool::kDefaultDecay);
}

// The hooks see each mapped block once when it is mapped and once as it goes
// (decay, the cap, trimming, the pool's end), never on reuse, and never a
// small block.
TEST(BufferPoolTest, BlockHooksSeeEachMappingAndUnmapping) {
  if (!BufferPool::kMapsBlocks) {
    GTEST_SKIP() << "AddressSanitizer: blocks come from its heap";
  }
  std::vector<std::pair<void*, size_t>> mapped;
  std::vector<std::pair<void*, size_t>> unmapped;
  FakeClock clock;
  {
    BufferPool pool(8 * kMiB, seconds(10), clock.AsClock());
    pool.SetBlockHooks(
        {[&](void* b, size_t c) { mapped.emplace_back(b, c); },
         [&](void* b, size_t c) { unmapped.emplace_back(b, c); }});
    size_t capacity = 0;
    size_t small = 0;
    void* a = pool.Acquire(4 * kMiB, &capacity);
    pool.Release(pool.Acquire(1000, &small), small);  // not mapped
    ASSERT_EQ(mapped.size(), 1u);
    EXPECT_EQ(mapped[0], std::make_pair(a, capacity));
    pool.Release(a, capacity);
    EXPECT_EQ(pool.Acquire(4 * kMiB, &capacity), a);  // reused: no hook
    EXPECT_EQ(mapped.size(), 1u);
    void* b = pool.Acquire(4 * kMiB, &capacity);
    void* c = pool.Acquire(4 * kMiB, &capacity);
    EXPECT_EQ(mapped.size(), 3u);
    pool.Release(a, capacity);
    pool.Release(b, capacity);
    EXPECT_TRUE(unmapped.empty());
    pool.Release(c, capacity);  // over the 8 MiB cap: goes at once
    ASSERT_EQ(unmapped.size(), 1u);
    EXPECT_EQ(unmapped[0], std::make_pair(c, capacity));
    clock.now += seconds(10);
    EXPECT_EQ(pool.ReleaseIdle(), 2 * capacity);  // a and b decay
    EXPECT_EQ(unmapped.size(), 3u);
    pool.Release(pool.Acquire(4 * kMiB, &capacity), capacity);
    EXPECT_EQ(mapped.size(), 4u);
  }  // the pool's end unmaps the last idle block
  ASSERT_EQ(unmapped.size(), 4u);
  EXPECT_EQ(unmapped.back(), mapped.back());
}

TEST(BufferPoolTest, SmallBlocksAreNotKept) {
  BufferPool pool(64 * kMiB);
  size_t capacity = 0;
  void* block = pool.Acquire(1000, &capacity);
  EXPECT_EQ(capacity, 1024u);
  pool.Release(block, capacity);
  EXPECT_EQ(pool.stats().cached_blocks, 0u);
  EXPECT_EQ(pool.stats().misses, 0u);
}

TEST(BufferPoolTest, ConcurrentAcquireAndRelease) {
  BufferPool pool(64 * kMiB);
  std::vector<std::thread> threads;
  threads.reserve(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 200; ++i) {
        size_t capacity = 0;
        const size_t bytes = (1 + (i + t) % 3) * kMiB;
        auto* block =
            static_cast<unsigned char*>(pool.Acquire(bytes, &capacity));
        block[0] = static_cast<unsigned char>(t);
        block[bytes - 1] = static_cast<unsigned char>(i);
        pool.Release(block, capacity);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const BufferPool::Stats stats = pool.stats();
  EXPECT_EQ(stats.hits + stats.misses, 800u);
  EXPECT_LE(stats.cached_bytes, 64 * kMiB);
  EXPECT_GT(stats.hits, 0u);
}

// The process pool behind PooledEmpty: a released output is the next one's
// memory.
TEST(HostTensorTest, PooledTensorsReturnTheirBlocks) {
  at::Tensor t = PooledEmpty({8, 8, 512, 512}, at::kFloat);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.numel(), 8 * 8 * 512 * 512);
  t.fill_(2.0);
  EXPECT_EQ(t.sum().item<double>(), 2.0 * t.numel());
  const void* data = t.data_ptr();
  const uint64_t hits = HostBufferPool().stats().hits;
  std::vector<at::Tensor> handles = {t};  // a second handle to the block
  handles.clear();                        // dropping it releases nothing
  EXPECT_EQ(HostBufferPool().stats().hits, hits);
  EXPECT_EQ(HostBufferPool().stats().cached_blocks, 0u);
  t.reset();
  const at::Tensor reused = PooledEmpty({8, 8, 512, 512}, at::kFloat);
  EXPECT_EQ(reused.data_ptr(), data);
  EXPECT_EQ(HostBufferPool().stats().hits, hits + 1);

  // Contiguous float32 stays itself; another dtype is a pooled copy.
  EXPECT_TRUE(PooledContiguousAs(reused, at::kFloat).is_same(reused));
  reused.fill_(1.5);
  const at::Tensor half = PooledContiguousAs(reused, at::kHalf);
  EXPECT_EQ(half.scalar_type(), at::kHalf);
  EXPECT_EQ(half.to(at::kFloat).max().item<float>(), 1.5F);
  EXPECT_EQ(PooledEmpty({0, 4}, at::kFloat).numel(), 0);
  EXPECT_EQ(AcquireFloats(0).get(), nullptr);
}

}  // namespace
}  // namespace attnscore::scoring
