// Reading and writing safetensors files
// (https://github.com/huggingface/safetensors format: u64 little-endian header
// length, JSON header, raw little-endian tensor bytes). No LibTorch.
//
// Ownership: SafetensorsFile owns the file's bytes; Tensor::bytes views into
// them and lives as long as the SafetensorsFile. SafetensorsWriter copies
// nothing until Serialize/Write. Thread safety: const methods may be called
// concurrently; writers are single-threaded. Errors: absl::Status naming the
// file (origin), the tensor and the expected vs. actual value.
#ifndef ATTNSCORE_COMMON_SAFETENSORS_H_
#define ATTNSCORE_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnscore {

class SafetensorsFile {
 public:
  struct Tensor {
    std::string dtype;           // "F32", "F16", "BF16", "I32", "I64", ...
    std::vector<int64_t> shape;  // row-major
    std::string_view bytes;      // view into the file contents
    int64_t NumElements() const;
  };

  // Reads and validates a whole file before anything is used. INVALID_ARGUMENT
  // (naming the file, the tensor and the numbers) for: a header length over
  // 100 MB or past the end of the file; JSON nested deeper than 8 levels
  // (refused before parsing: nlohmann's parser recurses); a dim outside
  // [0, 2^63); a shape whose element count or byte size overflows int64; a
  // byte range that does not match the shape, ends before it begins or lies
  // past the payload; tensors that overlap, leave gaps or do not end at the
  // end of the file (the reference implementation's rule). NOT_FOUND when the
  // file cannot be opened.
  static absl::StatusOr<SafetensorsFile> Read(const std::string& path);
  // Same, over bytes already in memory; `origin` names them in error messages.
  static absl::StatusOr<SafetensorsFile> Parse(std::string contents,
                                               std::string origin);

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

  const std::string& origin() const { return origin_; }
  const std::map<std::string, std::string>& metadata() const {
    return metadata_;
  }
  // Tensor names in the file, sorted.
  std::vector<std::string> Names() const;
  // nullptr when absent.
  const Tensor* Find(std::string_view name) const;
  // NOT_FOUND naming the file and tensor when absent.
  absl::StatusOr<const Tensor*> Get(std::string_view name) const;
  // The tensor as float32 values (F32, F16 and BF16 are converted; integer
  // types are cast).
  absl::StatusOr<std::vector<float>> ReadFloats(std::string_view name) const;

 private:
  SafetensorsFile() = default;

  std::string origin_;
  // Heap-held so the views in tensors_ survive moves (a moved std::string may
  // be inline).
  std::unique_ptr<const std::string> contents_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Tensor, std::less<>> tensors_;
};

class SafetensorsWriter {
 public:
  // `bytes` must hold exactly product(shape) * element size of `dtype`.
  absl::Status Add(std::string name, std::string dtype,
                   std::vector<int64_t> shape, std::string_view bytes);
  absl::Status AddFloats(std::string name, std::vector<int64_t> shape,
                         const std::vector<float>& values);
  void SetMetadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }

  std::string Serialize() const;
  absl::Status Write(const std::string& path) const;

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Size in bytes of one element of a safetensors dtype name; 0 when unknown.
size_t SafetensorsElementSize(std::string_view dtype);

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_SAFETENSORS_H_
