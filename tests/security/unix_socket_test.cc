// server/security/unix_socket.h: the flag checks, the file's mode and removal.
#include "server/security/unix_socket.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace attnscore::security {
namespace {

using ::attnscore::testing::LeaveUnixSocketFile;
using ::attnscore::testing::TempDir;

mode_t ModeOf(const std::string& path) {
  struct stat info {};
  EXPECT_EQ(lstat(path.c_str(), &info), 0) << path;
  return info.st_mode;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST(ParseSocketModeTest, TakesOctalPermissionBits) {
  EXPECT_EQ(*ParseSocketMode("660"), 0660u);
  EXPECT_EQ(*ParseSocketMode("0600"), 0600u);
  EXPECT_EQ(*ParseSocketMode("0o777"), 0777u);
  EXPECT_EQ(*ParseSocketMode("0"), 0u);
}

TEST(ParseSocketModeTest, RefusesAnythingElseNamingTheFlagAndTheValue) {
  for (const char* bad : {"", "0o", "8", "660x", "1000", "07777", "-1", "rw"}) {
    const absl::StatusOr<mode_t> mode = ParseSocketMode(bad);
    ASSERT_FALSE(mode.ok()) << bad;
    EXPECT_EQ(mode.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(mode.status().message().find("--listen-unix-mode"),
              absl::string_view::npos);
    EXPECT_NE(mode.status().message().find(absl::StrCat("\"", bad, "\"")),
              absl::string_view::npos)
        << mode.status();
  }
}

TEST(CheckUnixSocketPathTest, AcceptsPathsUpToTheKernelsLimit) {
  EXPECT_TRUE(CheckUnixSocketPath("/run/attnscore/attnscore.sock").ok());
  EXPECT_TRUE(CheckUnixSocketPath(std::string(kMaxUnixSocketPath, 'a')).ok());
  const absl::Status long_path =
      CheckUnixSocketPath(std::string(kMaxUnixSocketPath + 1, 'a'));
  EXPECT_EQ(long_path.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(long_path.message().find("108 bytes"), absl::string_view::npos)
      << long_path;
  EXPECT_NE(long_path.message().find("at most 107"), absl::string_view::npos);
  EXPECT_EQ(CheckUnixSocketPath("").code(), absl::StatusCode::kInvalidArgument);
}

TEST(UnixSocketFileTest, SetsTheModeAndRemovesTheSocketOnce) {
  const TempDir dir("attnscore-unix-");
  const std::string path = dir.File("s.sock");
  ASSERT_TRUE(LeaveUnixSocketFile(path)) << std::strerror(errno);
  {
    UnixSocketFile file(path);
    ASSERT_TRUE(file.SetMode(0640).ok());
    EXPECT_TRUE(S_ISSOCK(ModeOf(path)));
    EXPECT_EQ(ModeOf(path) & 0777, 0640u);
    file.Remove();
    EXPECT_FALSE(Exists(path));
    // A second server's socket at the same path afterwards is not ours.
    ASSERT_TRUE(LeaveUnixSocketFile(path)) << std::strerror(errno);
  }  // the destructor: Remove() already ran
  EXPECT_TRUE(Exists(path));
}

TEST(UnixSocketFileTest, NeverRemovesOrChangesAFileThatIsNotASocket) {
  const TempDir dir("attnscore-unix-");
  const std::string path = dir.File("data");
  std::ofstream(path) << "keep me\n";
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  {
    UnixSocketFile file(path);
    const absl::Status status = file.SetMode(0666);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(status.message().find("no socket there"),
              absl::string_view::npos);
  }
  ASSERT_TRUE(Exists(path));
  EXPECT_EQ(ModeOf(path) & 0777, 0600u);
  const UnixSocketFile missing(dir.File("missing.sock"));
  EXPECT_EQ(missing.SetMode(0600).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ScopedUmaskTest, RestoresThePreviousMask) {
  const mode_t before = umask(0022);
  {
    const ScopedUmask owner_only(0177);
    EXPECT_EQ(umask(0177), 0177u);
  }
  EXPECT_EQ(umask(before), 0022u);
}

}  // namespace
}  // namespace attnscore::security
