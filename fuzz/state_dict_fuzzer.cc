// libFuzzer target: the torch.save reader (server/scoring/state_dict.h): the
// zip central directory, PyTorchStreamReader (miniz), and the pickle
// interpreter. LoadStateDict reads a path, so each input goes to a file of
// this process's own; the load limit is lowered so that a hostile input that
// gets past the checks cannot take more than the fuzzer's memory limit.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "server/scoring/state_dict.h"

namespace {

const std::string& InputPath() {
  static const std::string* const path = [] {
    const char* dir = std::getenv("TMPDIR");
    return new std::string(std::string(dir != nullptr ? dir : "/tmp") +
                           "/attnscore_fuzz_state_dict_" +
                           std::to_string(getpid()) + ".pt");
  }();
  return *path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = InputPath();
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return 0;
  const bool written = std::fwrite(data, 1, size, out) == size;
  if (std::fclose(out) != 0 || !written) return 0;
  attnscore::scoring::StateDictLimits limits;
  limits.slack_bytes = int64_t{64} << 20;
  (void)attnscore::scoring::LoadStateDict(path, limits);
  std::remove(path.c_str());
  return 0;
}
