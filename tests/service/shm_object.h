// A POSIX shared-memory object for tests, as a client would create it
// (shm_open, ftruncate, mmap), unlinked when it goes; its name starts with
// kShmTestPrefix (the prefix the tests give the server). Not thread-safe.
#ifndef ATTNSCORE_TESTS_SERVICE_SHM_OBJECT_H_
#define ATTNSCORE_TESTS_SERVICE_SHM_OBJECT_H_

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace attnscore::service::testing {

inline constexpr char kShmTestPrefix[] = "attnscore-test-";

// A POSIX shared-memory object of `size` bytes, unlinked when it goes.
class ShmObject {
 public:
  explicit ShmObject(size_t size)
      : key_(absl::StrCat(kShmTestPrefix, getpid(), "-", next_++)) {
    const int fd = shm_open(path().c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    data_ = static_cast<char*>(
        mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    EXPECT_NE(data_, MAP_FAILED);
    size_ = size;
    close(fd);
  }
  ~ShmObject() {
    munmap(data_, size_);
    shm_unlink(path().c_str());
  }
  ShmObject(const ShmObject&) = delete;
  ShmObject& operator=(const ShmObject&) = delete;

  const std::string& key() const { return key_; }
  std::string path() const { return "/" + key_; }
  const char* data() const { return data_; }
  char* data() { return data_; }
  // Shrinks the object, as a misbehaving client could.
  void Truncate(size_t size) const {
    const int fd = shm_open(path().c_str(), O_RDWR, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    close(fd);
  }

 private:
  static inline int next_ = 0;
  const std::string key_;
  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace attnscore::service::testing

#endif  // ATTNSCORE_TESTS_SERVICE_SHM_OBJECT_H_
