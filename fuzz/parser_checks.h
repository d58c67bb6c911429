// What the request fuzzers share: their input (the first byte chooses how many
// slices, 1-4, the rest is cut into, as gRPC may hand a message over in
// several), and the check of a parser's scan against a separate pass.
//
// Ownership: the slices copy the bytes. Thread safety: none needed. Errors: a
// failed check traps.
#ifndef ATTNSCORE_FUZZ_PARSER_CHECKS_H_
#define ATTNSCORE_FUZZ_PARSER_CHECKS_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "server/scoring/validation.h"
#include "server/service/pooled_wire.h"

namespace attnscore::fuzz {

struct SlicedInput {
  grpc::ByteBuffer buffer;  // the message's bytes, in slices
  std::string bytes;        // the same bytes, whole
};

// REQUIRES: size > 0.
inline SlicedInput SliceInput(const uint8_t* data, size_t size) {
  const size_t pieces = data[0] % 4 + 1;
  SlicedInput input;
  input.bytes.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < pieces; ++i) {
    const size_t begin = input.bytes.size() * i / pieces;
    const size_t end = input.bytes.size() * (i + 1) / pieces;
    slices.emplace_back(input.bytes.data() + begin, end - begin);
  }
  input.buffer = grpc::ByteBuffer(slices.data(), slices.size());
  return input;
}

// Traps unless the scan the parser made of `t` while copying equals a separate
// pass over its block.
inline void CheckScan(const service::ParsedTensorBytes& t) {
  if (!t.scan.has_value()) return;
  scoring::FiniteScanner scanner(t.scan->dtype);
  scanner.Consume(t.block.get(), t.size);
  const scoring::FiniteScan whole = scanner.Finish();
  if (whole.first_non_finite != t.scan->first_non_finite) __builtin_trap();
  if (whole.first_non_finite == scoring::FiniteScan::kAllFinite &&
      whole.max_abs != t.scan->max_abs) {
    __builtin_trap();
  }
}

}  // namespace attnscore::fuzz

#endif  // ATTNSCORE_FUZZ_PARSER_CHECKS_H_
