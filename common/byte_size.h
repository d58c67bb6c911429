// Byte counts as operators write them: "1073741824", "512Mi", "2GiB", "1G".
// Flags and environment variables that take bytes (the server's budgets and
// limits, the CLI's --chunked-reply-bytes) read them through ParseByteSize, so
// that the quantity a Kubernetes manifest gives the container can be given to
// the server as written. No LibTorch, no gRPC, no CLI11.
//
// Units (case-insensitive, optionally after a space): b; k, kb, m, mb, g, gb,
// t, tb, p, pb, e, eb are powers of 1000 and ki, kib, mi, mib, ..., ei, eib
// powers of 1024, as in Kubernetes quantities. A number with a unit may have a
// fraction ("1.5Gi") if it comes to whole bytes. A plain integer, negative
// included, is returned as written: the flag's own range check then names the
// values it accepts (-1 is some flags' "automatic").
//
// Thread safety: pure functions.
// Errors: INVALID_ARGUMENT naming what was expected and what was given; a
// value over INT64_MAX bytes is OUT_OF_RANGE, saying so.
#ifndef ATTNSCORE_COMMON_BYTE_SIZE_H_
#define ATTNSCORE_COMMON_BYTE_SIZE_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnscore {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_BYTE_SIZE_H_
