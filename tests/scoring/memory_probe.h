// Runs scoring_memory_probe (memory_probe.cc) in a child process, so that
// the request's peak is its own: for the tests of either compute path, which
// define ATTNSCORE_MEMORY_PROBE as the probe's path (tests/scoring/CMakeLists).
//
// Thread safety: none needed (a test's thread). Errors: a failed run is a
// test failure, and the figures come back as -1.
#ifndef ATTNSCORE_TESTS_SCORING_MEMORY_PROBE_H_
#define ATTNSCORE_TESTS_SCORING_MEMORY_PROBE_H_

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

#ifndef ATTNSCORE_MEMORY_PROBE
#error "ATTNSCORE_MEMORY_PROBE (scoring_memory_probe's path) is required"
#endif

namespace attnscore::scoring {

struct ProbedMemory {
  int64_t growth = -1;    // bytes the request took at its peak
  int64_t estimate = -1;  // the scorer's prediction of them (held: the
                          // in-flight budget's charge for them)
};

// `args` as memory_probe.cc's usage line says; `held` requests whose results
// are kept together (ATTNSCORE_PROBE_HELD).
inline ProbedMemory ProbeMemory(const std::string& args, int held = 1) {
  const std::string command =
      absl::StrCat("ATTNSCORE_PROBE_HELD=", held, " timeout 300 ",
                   ATTNSCORE_MEMORY_PROBE, " ", args);
  FILE* pipe = popen(command.c_str(), "r");
  ProbedMemory out;
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return out;
  }
  if (std::fscanf(pipe, "growth %" SCNd64 " estimate %" SCNd64, &out.growth,
                  &out.estimate) != 2) {
    out = ProbedMemory();
  }
  EXPECT_EQ(pclose(pipe), 0) << command;
  return out;
}

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_TESTS_SCORING_MEMORY_PROBE_H_
