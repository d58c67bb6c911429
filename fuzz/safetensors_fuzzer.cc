// libFuzzer target: safetensors parsing (common/safetensors.h). Any input
// must give a file or an error; a parsed file's every tensor must read back
// as floats within its own bytes (ASan checks the reads).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<attnscore::SafetensorsFile> file =
      attnscore::SafetensorsFile::Parse(
          std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.ok()) return 0;
  for (const std::string& name : file->Names()) {
    const attnscore::SafetensorsFile::Tensor* tensor = file->Find(name);
    // Reading floats allocates 4 bytes an element: skip huge zero-byte
    // shapes (e.g. [2^40, 0] is empty, but [2^40] of U8 cannot be here: its
    // bytes would have to be in the input).
    if (tensor != nullptr && tensor->NumElements() <= (int64_t{1} << 24)) {
      (void)file->ReadFloats(name);
    }
  }
  return 0;
}
