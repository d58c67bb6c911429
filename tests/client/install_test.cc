// `cmake --install` of the client component into a temporary prefix, then
// client/examples built against it with find_package(attnscore) and run against
// a real server: what another team's C++ service does to use attnscore.
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::testing {
namespace {

using ::testing::HasSubstr;

TEST(InstallTest, ExampleBuildsAgainstTheInstalledPackageAndScores) {
  TempDir dir;
  const std::string prefix = dir.File("prefix");
  const std::string build = dir.File("build");
  CommandResult run =
      RunCommand({ATTNSCORE_CMAKE, "--install", ATTNSCORE_BINARY_DIR,
                  "--component", "attnscore_client", "--prefix", prefix},
                 absl::Seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  for (const char* file :
       {"include/attnscore/client/client.h",
        "include/attnscore/client/shared_memory.h",
        "include/attnscore/client/tensor.h",
        "include/attnscore/client/torch_adapter.h",
        "include/attnscore/common/dtype.h", "include/attnscore/common/layout.h",
        "include/attnscore/common/aten_dtype.h",
        "lib/cmake/attnscore/attnscore-config.cmake",
        "lib/cmake/attnscore/attnscore-config-version.cmake"}) {
    EXPECT_TRUE(std::filesystem::exists(prefix + "/" + file)) << file;
  }

  run = RunCommand(
      {ATTNSCORE_CMAKE, "-S",
       std::string(ATTNSCORE_SOURCE_DIR) + "/client/examples", "-B", build,
       "-G", "Ninja",
       std::string("-DCMAKE_MAKE_PROGRAM=") + ATTNSCORE_MAKE_PROGRAM,
       "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_PREFIX_PATH=" + prefix},
      absl::Seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  // -j2: the machine's cores are shared.
  run = RunCommand({ATTNSCORE_CMAKE, "--build", build, "-j", "2"},
                   absl::Seconds(240));
  ASSERT_EQ(run.exit_code, 0) << run.output;

  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  run = RunCommand({build + "/score_example", (*server)->target()},
                   absl::Seconds(60));
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_THAT(run.output, HasSubstr("probs[0, 0, 3, :] = "));
}

}  // namespace
}  // namespace attnscore::testing
