// CLI11 checks shared by the server's flags and the attnscore CLI's, with
// messages that say what was expected and what was given (CLI11's own
// PositiveNumber prints "not in range 0.000000 to 1.797693e+308"). Header-only,
// for the two binaries' flag definitions; everything else stays free of CLI11.
//
// Thread safety: the validators are values; use them from one thread.
// Errors: a rejected value makes CLI11 exit with its usage error, naming the
// flag (or its ATTNSCORE_* variable) and the message below.
#ifndef ATTNSCORE_COMMON_CLI_CHECKS_H_
#define ATTNSCORE_COMMON_CLI_CHECKS_H_

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/byte_size.h"

namespace attnscore::checks {

// A byte count with an optional unit (common/byte_size.h), turned into the
// plain number the option then stores and range-checks.
inline CLI::Validator ByteSize() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        absl::StatusOr<int64_t> bytes = ParseByteSize(value);
        if (!bytes.ok()) return absl::StrCat(bytes.status().message());
        value = std::to_string(*bytes);
        return "";
      },
      "BYTES (e.g. 536870912, 512Mi, 2GiB, 1G)");
}

// A whole number in [min, max].
inline CLI::Validator WholeNumber(
    int64_t min, int64_t max = std::numeric_limits<int64_t>::max()) {
  return CLI::Validator(
      [min, max](std::string& value) -> std::string {
        int64_t number = 0;
        if (!absl::SimpleAtoi(value, &number)) {
          return absl::StrCat("expected a whole number, got '", value, "'");
        }
        if (number < min || number > max) {
          return max == std::numeric_limits<int64_t>::max()
                     ? absl::StrCat("expected at least ", min, ", got ", value)
                     : absl::StrCat("expected ", min, " to ", max, ", got ",
                                    value);
        }
        return "";
      },
      "");
}

// A finite number >= min (seconds, rates).
inline CLI::Validator NumberAtLeast(double min) {
  return CLI::Validator(
      [min](std::string& value) -> std::string {
        double number = 0;
        if (!absl::SimpleAtod(value, &number) || !std::isfinite(number)) {
          return absl::StrCat("expected a number, got '", value, "'");
        }
        if (number < min) {
          return absl::StrCat("expected at least ", min, ", got ", value);
        }
        return "";
      },
      "");
}

}  // namespace attnscore::checks

#endif  // ATTNSCORE_COMMON_CLI_CHECKS_H_
