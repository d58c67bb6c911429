// main() for test binaries that compute: the matrix kernels matched to the CPU
// (EnsureMatchedKernels, which may re-execute the binary once), then every
// test. Replaces GTest::gmock_main.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/cpu/matched_kernels.h"

int main(int argc, char** argv) {
  attnscore::cpu::EnsureMatchedKernels(argc, argv);
  ::testing::InitGoogleMock(&argc, argv);
  return RUN_ALL_TESTS();
}
