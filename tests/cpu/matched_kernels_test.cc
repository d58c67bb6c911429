// End to end: binaries that call EnsureMatchedKernels (a probe, and the real
// attnscore-server) run on kernels for this CPU's instruction set with nothing
// set, keep an operator's own OPENBLAS_CORETYPE, and get the matched kernels
// on a BLAS that detects the generic core (simulated, as on a CPU the library
// does not know).
#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "gtest/gtest.h"
#include "server/cpu/cpu_features.h"
#include "server/cpu/kernel_choice.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::cpu {
namespace {

using testing::CommandResult;
using testing::RunCommand;
using testing::ServerOptions;
using testing::ServerProcess;

// Runs the probe under /usr/bin/env with the kernel variables removed and
// `assignments` (NAME=VALUE) added; its "key=value" report.
std::map<std::string, std::string> RunProbe(
    const std::vector<std::string>& assignments) {
  std::vector<std::string> argv = {
      "/usr/bin/env",     "-u", kOpenblasCoretypeEnv, "-u",
      kAtenCapabilityEnv, "-u", kOmpWaitPolicyEnv,    "-u",
      kGompSpinCountEnv};
  argv.insert(argv.end(), assignments.begin(), assignments.end());
  argv.push_back(ATTNSCORE_KERNEL_PROBE_BIN);
  const CommandResult result = RunCommand(argv);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  std::map<std::string, std::string> report;
  std::istringstream lines(result.output);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) {
      report[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  EXPECT_EQ(report["product"], "262144") << result.output;
  return report;
}

// What the choice must be on this machine with nothing set.
struct Expected {
  std::string isa;
  std::string aten;  // "AVX512" on AVX-512 CPUs, else ATen's own choice
  int min_blas_level = 0;
};
Expected ForThisCpu() {
  const CpuFeatures features = DetectCpuFeatures();
  Expected e;
  e.isa = IsaName(features);
  e.aten = HasAvx512Core(features) ? "AVX512"
           : HasAvx2Fma(features)  ? "AVX2"
                                   : "NO AVX";
  const std::string core = BlasCoreFor(features);
  e.min_blas_level = core.empty() ? 0 : *BlasCoreLevel(core);
  return e;
}

// Whether the OpenBLAS checks apply: always with Debian's LibTorch (built on
// OpenBLAS); with another LibTorch, when the process loaded an OpenBLAS (a pip
// LibTorch carries MKL, which reads no OPENBLAS_CORETYPE and reports no core).
bool UsesOpenBlas(const std::string& reported_core) {
  return ATTNSCORE_DEBIAN_TORCH || !reported_core.empty();
}

// ATen's name for its baseline capability: "NO AVX" in 1.13, "DEFAULT" in 2.x.
bool IsAtenDefault(const std::string& name) {
  return name == "NO AVX" || name == "DEFAULT";
}

int LevelOf(const std::string& core) {
  const std::optional<int> level = BlasCoreLevel(core);
  EXPECT_TRUE(level.has_value()) << "unknown core " << core;
  return level.value_or(-1);
}

TEST(MatchedKernelsProbeTest, WithNothingSetRunsOnKernelsForTheIsa) {
  const Expected expected = ForThisCpu();
  std::map<std::string, std::string> report = RunProbe({});
  EXPECT_EQ(report["isa"], expected.isa);
  if (UsesOpenBlas(report["blas_core"])) {
    EXPECT_GE(LevelOf(report["blas_core"]), expected.min_blas_level)
        << report["blas_core"];
  }
  EXPECT_EQ(report["aten_capability"], expected.aten);
  EXPECT_NE(report["blas_core_source"], "operator");
  EXPECT_EQ(report["omp_wait"],
            std::string(kGompSpinCountEnv) + "=" + kServerSpinCount);
  EXPECT_EQ(report["omp_wait_source"], "server");
  EXPECT_EQ(report["below"], "") << "nothing the operator set";
}

TEST(MatchedKernelsProbeTest, OperatorSettingsAreKept) {
  std::map<std::string, std::string> report =
      RunProbe({"OPENBLAS_CORETYPE=Prescott", "ATEN_CPU_CAPABILITY=default",
                "OMP_WAIT_POLICY=passive"});
  if (UsesOpenBlas(report["blas_core"])) {
    EXPECT_EQ(report["blas_core"], "Prescott");
    EXPECT_EQ(report["blas_core_source"], "operator");
  } else {
    EXPECT_EQ(report["blas_core_source"], "library");
  }
  EXPECT_TRUE(IsAtenDefault(report["aten_capability"]))
      << report["aten_capability"];
  EXPECT_EQ(report["aten_capability_source"], "operator");
  EXPECT_EQ(report["omp_wait"], "OMP_WAIT_POLICY=passive");
  EXPECT_EQ(report["omp_wait_source"], "operator");
  // What the settings cost is said, setting by setting.
  const CpuFeatures features = DetectCpuFeatures();
  EXPECT_EQ(UsesOpenBlas(report["blas_core"]) && !BlasCoreFor(features).empty(),
            report["below"].find("OPENBLAS_CORETYPE (the operator's) runs "
                                 "Prescott kernels") != std::string::npos)
      << report["below"];
  EXPECT_EQ(HasAvx512Core(features),
            report["below"].find("ATEN_CPU_CAPABILITY (the operator's)") !=
                std::string::npos)
      << report["below"];
}

TEST(MatchedKernelsProbeTest, ALibraryThatDetectsTheGenericCoreIsCorrected) {
  const CpuFeatures features = DetectCpuFeatures();
  std::map<std::string, std::string> report =
      RunProbe({std::string(kSimulateLibraryCoreEnv) + "=Prescott"});
  if (!UsesOpenBlas(report["blas_core"])) {
    EXPECT_EQ(report["blas_core_source"], "library") << "nothing simulated";
    return;
  }
  if (BlasCoreFor(features).empty()) {
    EXPECT_EQ(report["blas_core"], "Prescott") << "nothing better to pick";
    return;
  }
  EXPECT_EQ(report["blas_core"], BlasCoreFor(features));
  EXPECT_EQ(report["blas_core_source"], "cpuid");
}

TEST(MatchedKernelsProbeTest, AnEarlierReexecutionIsNeverRepeated) {
  std::map<std::string, std::string> report =
      RunProbe({"OPENBLAS_CORETYPE=Prescott",
                std::string(kReexecMarkerEnv) + "=matched:blas"});
  // (Without OpenBLAS no BLAS re-execution is ever chosen; see
  // KernelChoiceTest.AnotherBlasIsLeftToItsOwnDispatch.)
  if (!UsesOpenBlas(report["blas_core"])) return;
  EXPECT_EQ(report["blas_core"], "Prescott");
  EXPECT_EQ(report["blas_core_source"], "cpuid");
}

// Sets (or, with nullptr, removes) an environment variable for the servers
// this test starts, and restores it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value == nullptr) {
      unsetenv(name);
    } else {
      setenv(name, value, 1);
    }
  }
  ~ScopedEnv() {
    if (old_.has_value()) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

v1::KernelInfo ServerKernels(ServerProcess& server) {
  auto stub = v1::AttentionScorer::NewStub(server.NewChannel());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(20));
  v1::ServerInfo info;
  const grpc::Status status =
      stub->GetServerInfo(&context, v1::GetServerInfoRequest(), &info);
  EXPECT_TRUE(status.ok()) << status.error_message();
  return info.kernels();
}

// A /proc comm file's name, without its newline.
std::string Comm(const std::string& path) {
  return std::string(
      absl::StripTrailingAsciiWhitespace(testing::ReadFileOrEmpty(path)));
}

int ThreadsNamed(pid_t pid, const std::string& name) {
  int count = 0;
  const std::string tasks = absl::StrCat("/proc/", pid, "/task");
  for (const auto& task : std::filesystem::directory_iterator(tasks)) {
    if (Comm(task.path().string() + "/comm") == name) ++count;
  }
  return count;
}

TEST(MatchedKernelsServerTest, ServerWithNothingSetReportsMatchedKernels) {
  ScopedEnv no_core(kOpenblasCoretypeEnv, nullptr);
  ScopedEnv no_aten(kAtenCapabilityEnv, nullptr);
  ScopedEnv no_policy(kOmpWaitPolicyEnv, nullptr);
  ScopedEnv no_spin(kGompSpinCountEnv, nullptr);
  ServerOptions options;
  options.metrics = true;
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  const Expected expected = ForThisCpu();
  const v1::KernelInfo kernels = ServerKernels(**server);
  EXPECT_EQ(kernels.isa(), expected.isa);
  if (UsesOpenBlas(kernels.blas_core())) {
    EXPECT_GE(LevelOf(kernels.blas_core()), expected.min_blas_level)
        << kernels.blas_core();
    if (expected.min_blas_level >= 2) {
      EXPECT_NE(kernels.blas_core(), "Prescott");
    }
  }
  EXPECT_NE(kernels.blas_core_source(), "operator");
  EXPECT_EQ(kernels.aten_capability(), expected.aten);
  EXPECT_FALSE(kernels.cpu_model().empty());
  EXPECT_EQ(kernels.omp_wait(),
            std::string(kGompSpinCountEnv) + "=" + kServerSpinCount);
  EXPECT_EQ(kernels.omp_wait_source(), "server");
  EXPECT_EQ(kernels.below_cpu(), "") << "nothing the operator set";
  // The build-info metric carries the same choice.
  absl::StatusOr<std::string> metrics = (*server)->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_NE(metrics->find("blas_core=\"" + kernels.blas_core() + "\""),
            std::string::npos)
      << *metrics;
  EXPECT_NE(metrics->find("isa=\"" + kernels.isa() + "\""), std::string::npos);
  // Re-executed under its own name ("exe" after an exec of /proc/self/exe
  // would hide it from ps, top and pkill), its batch workers named.
  const pid_t pid = (*server)->pid();
  EXPECT_EQ(Comm(absl::StrCat("/proc/", pid, "/comm")), "attnscore-serve");
  EXPECT_GE(ThreadsNamed(pid, "attnscore-batch"), 1);
  EXPECT_EQ(ThreadsNamed(pid, "attnscore-sig"), 1);
}

TEST(MatchedKernelsServerTest, ServerKeepsTheOperatorsCoreType) {
  ScopedEnv core(kOpenblasCoretypeEnv, "Prescott");
  ScopedEnv no_aten(kAtenCapabilityEnv, nullptr);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const v1::KernelInfo kernels = ServerKernels(**server);
  if (!UsesOpenBlas(kernels.blas_core())) {
    EXPECT_EQ(kernels.blas_core_source(), "library");
    return;
  }
  EXPECT_EQ(kernels.blas_core(), "Prescott");
  EXPECT_EQ(kernels.blas_core_source(), "operator");
  // What it costs is reported, where the CPU has better kernels.
  const std::string target = BlasCoreFor(DetectCpuFeatures());
  if (target.empty()) {
    EXPECT_EQ(kernels.below_cpu(), "");
  } else {
    const std::string expected = absl::StrCat(
        "OPENBLAS_CORETYPE (the operator's) runs Prescott kernels on a CPU "
        "with ",
        IsaName(DetectCpuFeatures()), ": unset it for ", target, "'s");
    EXPECT_NE(kernels.below_cpu().find(expected), std::string::npos)
        << kernels.below_cpu();
  }
}

}  // namespace
}  // namespace attnscore::cpu
