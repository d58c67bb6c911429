#include "server/cpu/kernel_choice.h"

#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/cpu/cpu_features.h"
#include "server/cpu/kernel_info.h"

namespace attnscore::cpu {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

CpuFeatures Sse() {
  CpuFeatures f;
  f.x86_64 = true;
  return f;
}
CpuFeatures Avx2() {
  CpuFeatures f = Sse();
  f.avx = f.avx2 = f.fma = true;
  return f;
}
CpuFeatures Avx512() {
  CpuFeatures f = Avx2();
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = true;
  return f;
}
CpuFeatures Avx512Bf16() {
  CpuFeatures f = Avx512();
  f.avx512_bf16 = true;
  return f;
}

TEST(CpuFeaturesTest, IsaNameIsTheWidestUsableSet) {
  EXPECT_EQ(IsaName(CpuFeatures()), "none");
  EXPECT_EQ(IsaName(Sse()), "sse");
  CpuFeatures avx = Sse();
  avx.avx = true;
  EXPECT_EQ(IsaName(avx), "avx");
  EXPECT_EQ(IsaName(Avx2()), "avx2");
  EXPECT_EQ(IsaName(Avx512()), "avx512");
  EXPECT_EQ(IsaName(Avx512Bf16()), "avx512_bf16");
  // AVX-512F alone (Knights Landing has no BW/VL/DQ) is not SkylakeX-class.
  CpuFeatures knl = Avx2();
  knl.avx512f = true;
  EXPECT_EQ(IsaName(knl), "avx2");
  // AVX2 without FMA does not run Haswell kernels.
  CpuFeatures no_fma = Avx2();
  no_fma.fma = false;
  EXPECT_EQ(IsaName(no_fma), "avx");
}

TEST(KernelChoiceTest, BlasCoreForEachFeatureSet) {
  EXPECT_EQ(BlasCoreFor(Sse()), "");
  EXPECT_EQ(BlasCoreFor(Avx2()), "Haswell");
  EXPECT_EQ(BlasCoreFor(Avx512()), "SkylakeX");
  EXPECT_EQ(BlasCoreFor(Avx512Bf16()), "Cooperlake");
}

TEST(KernelChoiceTest, BlasCoreLevelsAreCaseInsensitiveAndUnknownNamesNull) {
  EXPECT_EQ(BlasCoreLevel("Prescott"), 0);
  EXPECT_EQ(BlasCoreLevel("PRESCOTT"), 0);
  EXPECT_EQ(BlasCoreLevel("Unknown"), 0);
  EXPECT_EQ(BlasCoreLevel("Sandybridge"), 1);
  EXPECT_EQ(BlasCoreLevel("Haswell"), 2);
  EXPECT_EQ(BlasCoreLevel("Zen"), 2);
  EXPECT_EQ(BlasCoreLevel("SkylakeX"), 3);
  EXPECT_EQ(BlasCoreLevel("Cooperlake"), 3);
  EXPECT_EQ(BlasCoreLevel("SapphireRapids"), 3);
  EXPECT_EQ(BlasCoreLevel("FutureLake"), std::nullopt);
  EXPECT_EQ(BlasCoreLevel(""), std::nullopt);
}

// The operator's OpenMP wait: the kernel choices alone decide.
KernelEnv OmpSet() {
  KernelEnv env;
  env.gomp_spincount = "300000";
  return env;
}

TEST(KernelChoiceTest, NoAvx2KeepsTheGenericKernelsAndDoesNotReexecute) {
  const KernelDecision d = ChooseKernels(Sse(), "Prescott", OmpSet());
  EXPECT_FALSE(d.reexec);
  EXPECT_THAT(d.set_env, IsEmpty());
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
  EXPECT_EQ(d.aten_source, ChoiceSource::kLibrary);
  EXPECT_EQ(d.omp_source, ChoiceSource::kOperator);
}

TEST(KernelChoiceTest, OpenMpSpinCountIsTheServersUnlessTheOperatorSetOne) {
  // Unset: re-execute for the spin count alone, on any CPU.
  const KernelDecision d = ChooseKernels(Sse(), "Prescott", KernelEnv());
  EXPECT_TRUE(d.reexec);
  EXPECT_THAT(d.set_env,
              UnorderedElementsAre(Pair(kGompSpinCountEnv, kServerSpinCount),
                                   Pair(kReexecMarkerEnv, "matched:omp")));
  EXPECT_EQ(d.omp_source, ChoiceSource::kServer);
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
  // Either variable from the operator wins.
  for (bool policy : {false, true}) {
    KernelEnv env;
    if (policy) {
      env.omp_wait_policy = "active";
    } else {
      env.gomp_spincount = "0";
    }
    const KernelDecision kept = ChooseKernels(Avx2(), "Haswell", env);
    EXPECT_FALSE(kept.reexec) << policy;
    EXPECT_EQ(kept.omp_source, ChoiceSource::kOperator) << policy;
  }
  // After the re-execution: the server's, and never again.
  KernelEnv after;
  after.gomp_spincount = kServerSpinCount;
  after.reexec_marker = "matched:omp";
  const KernelDecision done = ChooseKernels(Sse(), "Prescott", after);
  EXPECT_FALSE(done.reexec);
  EXPECT_EQ(done.omp_source, ChoiceSource::kServer);
  after.reexec_marker = "matched:aten";
  EXPECT_EQ(ChooseKernels(Sse(), "Prescott", after).omp_source,
            ChoiceSource::kOperator);
}

TEST(KernelChoiceTest, Avx2CpuOnGenericCoreGetsHaswellAndAtenIsLeftAtItsAvx2) {
  const KernelDecision d = ChooseKernels(Avx2(), "Prescott", OmpSet());
  EXPECT_TRUE(d.reexec);
  EXPECT_THAT(d.set_env,
              UnorderedElementsAre(Pair(kOpenblasCoretypeEnv, "Haswell"),
                                   Pair(kReexecMarkerEnv, "matched:blas")));
  EXPECT_EQ(d.blas_source, ChoiceSource::kCpuid);
  EXPECT_EQ(d.aten_source, ChoiceSource::kLibrary);
}

TEST(KernelChoiceTest, Avx2CpuOnAKnownCoreIsLeftAlone) {
  for (const char* core : {"Haswell", "Zen", "SkylakeX", "FutureLake", ""}) {
    const KernelDecision d = ChooseKernels(Avx2(), core, OmpSet());
    EXPECT_FALSE(d.reexec) << core;
    EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary) << core;
  }
}

TEST(KernelChoiceTest, Avx512CpuOnGenericCoreGetsSkylakeXAndAtenAvx512) {
  for (const char* core : {"Prescott", "Sandybridge", "Haswell", "Unknown"}) {
    const KernelDecision d = ChooseKernels(Avx512(), core, OmpSet());
    EXPECT_TRUE(d.reexec) << core;
    EXPECT_THAT(d.set_env, UnorderedElementsAre(
                               Pair(kOpenblasCoretypeEnv, "SkylakeX"),
                               Pair(kAtenCapabilityEnv, "avx512"),
                               Pair(kReexecMarkerEnv, "matched:blas,aten")))
        << core;
    EXPECT_EQ(d.blas_source, ChoiceSource::kCpuid);
    EXPECT_EQ(d.aten_source, ChoiceSource::kCpuid);
  }
}

TEST(KernelChoiceTest, Avx512Bf16CpuOnGenericCoreGetsCooperlake) {
  const KernelDecision d = ChooseKernels(Avx512Bf16(), "Prescott", OmpSet());
  EXPECT_TRUE(d.reexec);
  EXPECT_THAT(d.set_env, UnorderedElementsAre(
                             Pair(kOpenblasCoretypeEnv, "Cooperlake"),
                             Pair(kAtenCapabilityEnv, "avx512"),
                             Pair(kReexecMarkerEnv, "matched:blas,aten")));
}

TEST(KernelChoiceTest, Avx512CpuOnAnAvx512CoreOnlyRaisesAten) {
  // SkylakeX and Cooperlake are the same level: no re-execution for the BLAS.
  const KernelDecision d = ChooseKernels(Avx512Bf16(), "SkylakeX", OmpSet());
  EXPECT_TRUE(d.reexec);
  EXPECT_THAT(d.set_env,
              UnorderedElementsAre(Pair(kAtenCapabilityEnv, "avx512"),
                                   Pair(kReexecMarkerEnv, "matched:aten")));
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
  EXPECT_EQ(d.aten_source, ChoiceSource::kCpuid);
}

TEST(KernelChoiceTest, OperatorSettingsAlwaysWin) {
  KernelEnv env = OmpSet();
  env.openblas_coretype = "Prescott";
  env.aten_cpu_capability = "avx2";
  const KernelDecision d = ChooseKernels(Avx512Bf16(), "Prescott", env);
  EXPECT_FALSE(d.reexec);
  EXPECT_THAT(d.set_env, IsEmpty());
  EXPECT_EQ(d.blas_source, ChoiceSource::kOperator);
  EXPECT_EQ(d.aten_source, ChoiceSource::kOperator);
}

TEST(KernelChoiceTest, OperatorBlasCoreIsKeptWhileAtenIsStillMatched) {
  KernelEnv env = OmpSet();
  env.openblas_coretype = "Haswell";
  const KernelDecision d = ChooseKernels(Avx512(), "Haswell", env);
  EXPECT_TRUE(d.reexec);
  EXPECT_THAT(d.set_env,
              UnorderedElementsAre(Pair(kAtenCapabilityEnv, "avx512"),
                                   Pair(kReexecMarkerEnv, "matched:aten")));
  EXPECT_EQ(d.blas_source, ChoiceSource::kOperator);
}

TEST(KernelChoiceTest, AlreadyReexecutedNeverReexecutesAgain) {
  KernelEnv env;
  env.openblas_coretype = "SkylakeX";
  env.aten_cpu_capability = "avx512";
  env.reexec_marker = "matched:blas,aten";
  // Even if the library still reports a generic core (it did not know the
  // forced one), the process goes on rather than looping.
  const KernelDecision d = ChooseKernels(Avx512(), "Prescott", env);
  EXPECT_FALSE(d.reexec);
  EXPECT_EQ(d.blas_source, ChoiceSource::kCpuid);
  EXPECT_EQ(d.aten_source, ChoiceSource::kCpuid);

  env.reexec_marker = "matched:aten";
  env.openblas_coretype = "Haswell";
  const KernelDecision aten_only = ChooseKernels(Avx512(), "Haswell", env);
  EXPECT_FALSE(aten_only.reexec);
  EXPECT_EQ(aten_only.blas_source, ChoiceSource::kOperator);
  EXPECT_EQ(aten_only.aten_source, ChoiceSource::kCpuid);
}

TEST(KernelChoiceTest, AForeignMarkerValueStopsReexecution) {
  KernelEnv env;
  env.reexec_marker = "1";
  const KernelDecision d = ChooseKernels(Avx512(), "Prescott", env);
  EXPECT_FALSE(d.reexec);
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
}

TEST(KernelChoiceTest, SimulatedUnknownCpuTakesTwoStepsAndThenStops) {
  KernelEnv env;  // the OpenMP wait unset: matched in step 2 as well
  env.simulate_library_core = "Prescott";
  // Step 1: make the library load with the generic core.
  const KernelDecision simulate = ChooseKernels(Avx512(), "SkylakeX", env);
  EXPECT_TRUE(simulate.reexec);
  EXPECT_THAT(simulate.set_env,
              UnorderedElementsAre(Pair(kOpenblasCoretypeEnv, "Prescott"),
                                   Pair(kReexecMarkerEnv, "simulated")));
  // Step 2: the library reports Prescott; the variable is ours, not the
  // operator's, so the choice is made from cpuid.
  env.openblas_coretype = "Prescott";
  env.reexec_marker = "simulated";
  const KernelDecision match = ChooseKernels(Avx512(), "Prescott", env);
  EXPECT_TRUE(match.reexec);
  EXPECT_THAT(
      match.set_env,
      UnorderedElementsAre(Pair(kOpenblasCoretypeEnv, "SkylakeX"),
                           Pair(kAtenCapabilityEnv, "avx512"),
                           Pair(kGompSpinCountEnv, kServerSpinCount),
                           Pair(kReexecMarkerEnv, "matched:blas,aten,omp")));
  // Step 3: done.
  env.openblas_coretype = "SkylakeX";
  env.aten_cpu_capability = "avx512";
  env.gomp_spincount = kServerSpinCount;
  env.reexec_marker = "matched:blas,aten,omp";
  EXPECT_FALSE(ChooseKernels(Avx512(), "SkylakeX", env).reexec);
}

TEST(KernelChoiceTest, SimulationIsIgnoredWhenTheOperatorSetTheCore) {
  KernelEnv env = OmpSet();
  env.simulate_library_core = "Prescott";
  env.openblas_coretype = "Haswell";
  env.aten_cpu_capability = "avx2";
  const KernelDecision d = ChooseKernels(Avx512(), "Haswell", env);
  EXPECT_FALSE(d.reexec);
  EXPECT_EQ(d.blas_source, ChoiceSource::kOperator);
}

// A BLAS that is not OpenBLAS (no openblas_get_corename: a pip LibTorch's
// MKL) reads no OPENBLAS_CORETYPE: the operator's value and the simulation
// are not applied to it, and only ATen and OpenMP are matched.
TEST(KernelChoiceTest, AnotherBlasIsLeftToItsOwnDispatch) {
  KernelEnv env = OmpSet();
  env.openblas_coretype = "Prescott";
  KernelDecision d = ChooseKernels(Avx512(), "", env);
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
  EXPECT_THAT(d.set_env,
              UnorderedElementsAre(Pair(kAtenCapabilityEnv, "avx512"),
                                   Pair(kReexecMarkerEnv, "matched:aten")));
  EXPECT_NE(d.reason.find("not OpenBLAS"), std::string::npos) << d.reason;
  EXPECT_NE(d.reason.find("has no effect"), std::string::npos) << d.reason;
  // Re-executed for ATen: the operator's OPENBLAS_CORETYPE still chose
  // nothing.
  env.reexec_marker = "matched:aten";
  d = ChooseKernels(Avx512(), "", env);
  EXPECT_FALSE(d.reexec);
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
  EXPECT_EQ(d.aten_source, ChoiceSource::kCpuid);
  env = OmpSet();
  env.simulate_library_core = "Prescott";
  d = ChooseKernels(Avx2(), "", env);
  EXPECT_FALSE(d.reexec) << d.reason;
  EXPECT_EQ(d.blas_source, ChoiceSource::kLibrary);
}

KernelInfo Running(std::string core, std::string core_source, std::string aten,
                   std::string aten_source) {
  KernelInfo info;
  info.blas_core = std::move(core);
  info.blas_core_source = std::move(core_source);
  info.aten_capability = std::move(aten);
  info.aten_capability_source = std::move(aten_source);
  return info;
}

TEST(KernelChoiceTest, AnOperatorCoreBelowTheCpuIsNamedWithTheBetterOne) {
  // The environment of a machine pinned for older CPUs, on an AVX-512 one.
  const std::string below = OperatorKernelsBelowCpu(
      Avx512Bf16(), Running("Haswell", "operator", "AVX512", "cpuid"));
  EXPECT_THAT(below, HasSubstr("OPENBLAS_CORETYPE (the operator's) runs "
                               "Haswell kernels on a CPU with avx512_bf16"));
  EXPECT_THAT(below, HasSubstr("unset it for Cooperlake's"));
  EXPECT_THAT(below, Not(HasSubstr("ATEN_CPU_CAPABILITY")));
  EXPECT_THAT(OperatorKernelsBelowCpu(
                  Avx512(), Running("Prescott", "operator", "AVX2", "library")),
              HasSubstr("unset it for SkylakeX's"));
  EXPECT_THAT(OperatorKernelsBelowCpu(
                  Avx2(), Running("Core2", "operator", "AVX2", "library")),
              HasSubstr("unset it for Haswell's"));
}

TEST(KernelChoiceTest, AnOperatorAtenBelowAvx512IsNamed) {
  const std::string below = OperatorKernelsBelowCpu(
      Avx512(), Running("SkylakeX", "library", "AVX2", "operator"));
  EXPECT_EQ(below,
            "ATEN_CPU_CAPABILITY (the operator's) runs ATen's AVX2 kernels on "
            "a CPU with AVX-512: unset it for its AVX512 ones");
  // Both at once: one sentence each.
  EXPECT_THAT(
      OperatorKernelsBelowCpu(
          Avx512Bf16(), Running("Haswell", "operator", "NO AVX", "operator")),
      AllOf(HasSubstr("Haswell kernels"), HasSubstr("; ATEN_CPU_CAPABILITY"),
            HasSubstr("ATen's NO AVX kernels")));
}

TEST(KernelChoiceTest,
     NothingIsSaidOfChoicesThatCostNothingOrAreNotTheOperators) {
  // The operator's core at the CPU's level (SkylakeX and Cooperlake are one).
  EXPECT_EQ(
      OperatorKernelsBelowCpu(
          Avx512Bf16(), Running("SkylakeX", "operator", "AVX512", "operator")),
      "");
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Avx2(), Running("Haswell", "operator", "AVX2", "operator")),
            "");
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Avx2(), Running("Zen", "operator", "AVX2", "operator")),
            "");
  // Below the CPU but not the operator's: the library's or a failed exec's,
  // which the start-up line already reports.
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Avx512Bf16(), Running("Haswell", "library", "AVX2", "library")),
            "");
  // A core this table does not know (a newer library's), no OpenBLAS, no
  // better kernels to name, an unknown ATen capability.
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Avx512(), Running("Zen5", "operator", "", "operator")),
            "");
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Avx512(), Running("", "operator", "AVX512", "operator")),
            "");
  EXPECT_EQ(OperatorKernelsBelowCpu(
                Sse(), Running("Prescott", "operator", "NO AVX", "operator")),
            "");
}

}  // namespace
}  // namespace attnscore::cpu
