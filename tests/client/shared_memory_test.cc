// SharedMemoryRegion without a server: the POSIX object it creates (seen
// through /dev/shm and a second, independent mapping), its errors, View's
// bounds checks and the unlink on destruction.
#include "client/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnscore::client {
namespace {

using ::testing::HasSubstr;

// A key no other test process uses: ctest runs tests in parallel.
std::string TestKey(const char* what) {
  return absl::StrCat("attnscore-test-", getpid(), "-", what);
}

std::string ShmPath(const std::string& key) {
  return absl::StrCat("/dev/shm/", key);
}

TEST(SharedMemoryRegionTest, CreatesASharedObjectOfThatSize) {
  const std::string key = TestKey("create");
  absl::StatusOr<SharedMemoryRegion> region =
      SharedMemoryRegion::Create(key, 10000);
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ(region->key(), key);
  EXPECT_EQ(region->size(), 10000u);
  ASSERT_NE(region->data(), nullptr);

  struct stat st {};
  ASSERT_EQ(stat(ShmPath(key).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 10000);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // this user only
  // Its pages are reserved, not left for the first touch to allocate.
  EXPECT_GE(st.st_blocks * 512, 10000);

  // Writes through the region are what another mapping of the object reads:
  // the server's view of it.
  for (size_t i = 0; i < region->size(); ++i) {
    region->data()[i] = static_cast<uint8_t>(i * 7);
  }
  const int fd = shm_open(("/" + key).c_str(), O_RDONLY, 0);
  ASSERT_GE(fd, 0);
  void* other = mmap(nullptr, 10000, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  ASSERT_NE(other, MAP_FAILED);
  EXPECT_EQ(std::memcmp(other, region->data(), 10000), 0);
  munmap(other, 10000);

  const SharedMemoryRegistration registration = region->Registration("out");
  EXPECT_EQ(registration.name, "out");
  EXPECT_EQ(registration.key, key);
  EXPECT_EQ(registration.offset, 0u);
  EXPECT_EQ(registration.byte_size, 10000u);
}

TEST(SharedMemoryRegionTest, AnExistingKeyIsAlreadyExistsAndStaysIntact) {
  const std::string key = TestKey("exists");
  absl::StatusOr<SharedMemoryRegion> first =
      SharedMemoryRegion::Create(key, 4096);
  ASSERT_TRUE(first.ok()) << first.status();
  first->data()[0] = 42;
  absl::StatusOr<SharedMemoryRegion> second =
      SharedMemoryRegion::Create(key, 8192);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(second.status().message(), HasSubstr("/" + key));
  EXPECT_THAT(second.status().message(), HasSubstr(std::strerror(EEXIST)));
  // The failed Create neither unlinked nor resized the first one's object.
  struct stat st {};
  ASSERT_EQ(stat(ShmPath(key).c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 4096);
  EXPECT_EQ(first->data()[0], 42);
}

TEST(SharedMemoryRegionTest, RejectsBadKeysAndSizes) {
  for (const std::string& key :
       {std::string(), std::string("a/b"), std::string("/lead"),
        std::string("nul\0inside", 10), std::string(256, 'k')}) {
    absl::Status s = SharedMemoryRegion::Create(key, 4096).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << key;
    EXPECT_THAT(s.message(), HasSubstr("key")) << key;
  }
  const std::string key = TestKey("zero");
  absl::Status s = SharedMemoryRegion::Create(key, 0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(key));
  EXPECT_FALSE(std::filesystem::exists(ShmPath(key)));
  // 255 bytes is the most a name may have.
  const std::string longest = TestKey("long") + std::string(200, 'x');
  ASSERT_LE(longest.size(), 255u);
  EXPECT_TRUE(SharedMemoryRegion::Create(
                  longest + std::string(255 - longest.size(), 'y'), 4096)
                  .ok());
}

TEST(SharedMemoryRegionTest, DestructionUnmapsAndUnlinksOnlyTheOwner) {
  const std::string key = TestKey("unlink");
  {
    absl::StatusOr<SharedMemoryRegion> created =
        SharedMemoryRegion::Create(key, 4096);
    ASSERT_TRUE(created.ok()) << created.status();
    SharedMemoryRegion owner = *std::move(created);
    {
      // The moved-from regions let go of nothing.
      SharedMemoryRegion moved = std::move(owner);
      EXPECT_EQ(owner.data(), nullptr);  // NOLINT(bugprone-use-after-move)
      EXPECT_EQ(owner.size(), 0u);       // NOLINT(bugprone-use-after-move)
      owner = std::move(moved);
    }
    EXPECT_TRUE(std::filesystem::exists(ShmPath(key)));
    EXPECT_EQ(owner.size(), 4096u);
    owner.data()[4095] = 1;  // still mapped

    // Assigning over a region releases the object it had.
    const std::string replaced_key = TestKey("replaced");
    absl::StatusOr<SharedMemoryRegion> replaced =
        SharedMemoryRegion::Create(replaced_key, 4096);
    ASSERT_TRUE(replaced.ok()) << replaced.status();
    EXPECT_TRUE(std::filesystem::exists(ShmPath(replaced_key)));
    *replaced = std::move(owner);
    EXPECT_FALSE(std::filesystem::exists(ShmPath(replaced_key)));
    EXPECT_TRUE(std::filesystem::exists(ShmPath(key)));
    EXPECT_EQ(replaced->key(), key);
  }
  EXPECT_FALSE(std::filesystem::exists(ShmPath(key)));
  // The key is free again.
  EXPECT_TRUE(SharedMemoryRegion::Create(key, 4096).ok());
}

// Three pages.
constexpr size_t kRegionBytes = 3 * size_t{4096};

class ViewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<SharedMemoryRegion> region =
        SharedMemoryRegion::Create(TestKey("view"), kRegionBytes);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = std::make_unique<SharedMemoryRegion>(*std::move(region));
  }

  // float32 [2, 3] (24 bytes) at `offset` with `byte_size` bytes of room.
  static PlacedOutput Placed(uint64_t offset, uint64_t byte_size) {
    return PlacedOutput{Output::kProbs,
                        DType::kFloat32,
                        {2, 3},
                        SharedMemoryRange{"out", offset, byte_size}};
  }

  std::unique_ptr<SharedMemoryRegion> region_;
};

TEST_F(ViewTest, ViewsThePlacedBytes) {
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  std::memcpy(region_->data() + 100, values.data(), 24);
  absl::StatusOr<TensorView> view = region_->View(Placed(100, 64));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->data, region_->data() + 100);
  EXPECT_EQ(view->size_bytes, 24u);  // the output's bytes, not the room
  EXPECT_EQ(view->dtype, DType::kFloat32);
  EXPECT_THAT(view->shape, ::testing::ElementsAre(2, 3));
  EXPECT_TRUE(view->Validate().ok());
  EXPECT_EQ(view->ToFloats(), values);

  // Registered from 4096 on: offsets count from there.
  view = region_->View(Placed(100, 24), 4096);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->data, region_->data() + 4096 + 100);

  // Exactly at the end.
  view = region_->View(Placed(kRegionBytes - 24, 24));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->data, region_->data() + kRegionBytes - 24);

  PlacedOutput half = Placed(0, 12);
  half.dtype = DType::kBFloat16;
  view = region_->View(half);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->size_bytes, 12u);
}

TEST_F(ViewTest, RejectsRangesOutsideTheRegion) {
  const uint64_t size = kRegionBytes;
  for (const auto& [placed, registered_offset] :
       {std::pair{Placed(size - 23, 24), uint64_t{0}},  // one byte over
        std::pair{Placed(size, 24), uint64_t{0}},       // past the end
        std::pair{Placed(0, size + 1), uint64_t{0}},    // room too big
        std::pair{Placed(4096, 8192), uint64_t{1}},     // shifted over
        std::pair{Placed(0, 24), size + 1},             // bad registration
        std::pair{Placed(~uint64_t{0} - 8, 24), uint64_t{0}},  // wraps
        std::pair{Placed(24, ~uint64_t{0} - 8), uint64_t{0}}}) {
    SCOPED_TRACE(absl::StrCat(placed.range.offset, " +", placed.range.byte_size,
                              " @", registered_offset));
    absl::Status s = region_->View(placed, registered_offset).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("outside"));
    EXPECT_THAT(s.message(), HasSubstr("'out'"));
    EXPECT_THAT(s.message(), HasSubstr(region_->key()));
  }
}

TEST_F(ViewTest, RejectsShapesTheRangeCannotHold) {
  absl::Status s = region_->View(Placed(0, 23)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("[2, 3]"));
  EXPECT_THAT(s.message(), HasSubstr("23 bytes"));

  PlacedOutput negative = Placed(0, 64);
  negative.shape = {2, -3};
  EXPECT_EQ(region_->View(negative).status().code(),
            absl::StatusCode::kInvalidArgument);
  PlacedOutput overflowing = Placed(0, 64);
  overflowing.shape = {int64_t{1} << 40, int64_t{1} << 40};
  EXPECT_EQ(region_->View(overflowing).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attnscore::client
