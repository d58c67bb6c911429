// Small helpers every test folder shares: polling for a condition, reading a
// whole file, and a temporary directory that cleans up after itself. No
// LibTorch, no gRPC (target attnscore_test_util).
//
// Thread safety: WaitFor and ReadFile may be called from any thread; a TempDir
// belongs to one test. Errors: TempDir aborts the test binary when the
// directory cannot be created (nothing sensible can follow); ReadFile returns
// std::nullopt when the file cannot be read.
#ifndef ATTNSCORE_TESTS_TESTING_TEST_UTIL_H_
#define ATTNSCORE_TESTS_TESTING_TEST_UTIL_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace attnscore::testing {

// Polls `condition` every `poll` until it holds or `timeout` passes; returns
// its last value. For conditions on other threads or processes only: anything
// timed by the code under test should run on a FakeClock instead.
bool WaitFor(const std::function<bool()>& condition,
             absl::Duration timeout = absl::Seconds(10),
             absl::Duration poll = absl::Milliseconds(5));

// The whole file, or std::nullopt when it cannot be opened or read.
std::optional<std::string> ReadFile(const std::string& path);

// The whole file, or "" when it cannot be read (for assertions on contents).
std::string ReadFileOrEmpty(const std::string& path);

// Binds a Unix stream socket at `path` and closes it without unlinking, leaving
// the socket file behind (what a killed server leaves); false, with errno set,
// when it cannot.
bool LeaveUnixSocketFile(const std::string& path);

// The device the scoring and end-to-end tests compute on:
// $ATTNSCORE_TEST_DEVICE
// ("cuda" on the GPU machine, scripts/device-check.sh), "cpu" when unset.
std::string TestDevice();

// The compute paths to test on TestDevice(): both on the CPU (so the
// accelerator path's math is checked in every CI run), the batched one on a
// GPU (blocked runs on the CPU only).
std::vector<std::string> TestComputePaths();

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on
// destruction.
class TempDir {
 public:
  // `prefix` starts the directory's name, e.g. "attnscore-models-".
  explicit TempDir(const std::string& prefix = "attnscore-test-");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name.
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace attnscore::testing

#endif  // ATTNSCORE_TESTS_TESTING_TEST_UTIL_H_
