#include "common/byte_size.h"

#include <array>
#include <cstdint>
#include <limits>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace attnscore {
namespace {

constexpr absl::string_view kExpected =
    "expected a number of bytes such as 1073741824, 512Mi, 2GiB or 1G";

// The unit's factor (no unit: bytes), or 0 when it is not a unit.
absl::uint128 UnitFactor(absl::string_view unit) {
  if (unit.empty() || absl::EqualsIgnoreCase(unit, "b")) return 1;
  static constexpr std::array<char, 6> kPrefixes = {'k', 'm', 'g',
                                                    't', 'p', 'e'};
  absl::uint128 decimal = 1;
  absl::uint128 binary = 1;
  for (const char prefix : kPrefixes) {
    decimal *= 1000;
    binary *= 1024;
    if (absl::ascii_tolower(unit[0]) != prefix) continue;
    const absl::string_view rest = unit.substr(1);
    if (rest.empty() || absl::EqualsIgnoreCase(rest, "b")) return decimal;
    if (absl::EqualsIgnoreCase(rest, "i") ||
        absl::EqualsIgnoreCase(rest, "ib")) {
      return binary;
    }
    return 0;
  }
  return 0;
}

}  // namespace

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  const absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  int64_t plain = 0;
  if (absl::SimpleAtoi(trimmed, &plain)) return plain;
  // Digits, an optional fraction, then the unit.
  size_t end = 0;
  while (end < trimmed.size() &&
         (absl::ascii_isdigit(static_cast<unsigned char>(trimmed[end])) ||
          trimmed[end] == '.')) {
    ++end;
  }
  const absl::string_view number = trimmed.substr(0, end);
  const absl::uint128 factor =
      UnitFactor(absl::StripLeadingAsciiWhitespace(trimmed.substr(end)));
  const size_t dot = number.find('.');
  const absl::string_view whole = number.substr(0, dot);
  const absl::string_view fraction = dot == absl::string_view::npos
                                         ? absl::string_view()
                                         : number.substr(dot + 1);
  // At most 18 fraction digits, so that every product below fits in 128 bits
  // (factor <= 2^60).
  if (factor == 0 || whole.empty() || absl::StrContains(fraction, '.') ||
      (dot != absl::string_view::npos && fraction.empty()) ||
      fraction.size() > 18) {
    return absl::InvalidArgumentError(
        absl::StrCat(kExpected, ", got '", trimmed, "'"));
  }
  constexpr auto kMax =
      static_cast<absl::uint128>(std::numeric_limits<int64_t>::max());
  absl::uint128 whole_value = 0;
  for (const char digit : whole) {
    whole_value = whole_value * 10 + (digit - '0');
    if (whole_value > kMax) break;  // too large whatever the unit
  }
  absl::uint128 fraction_value = 0;
  absl::uint128 scale = 1;
  for (const char digit : fraction) {
    fraction_value = fraction_value * 10 + (digit - '0');
    scale *= 10;
  }
  const absl::uint128 fraction_bytes = fraction_value * factor;
  if (fraction_bytes % scale != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kExpected, ", got '", trimmed,
                     "', which is not a whole number of bytes"));
  }
  const absl::uint128 bytes =
      whole_value > kMax ? kMax + 1
                         : whole_value * factor + fraction_bytes / scale;
  if (bytes > kMax) {
    return absl::OutOfRangeError(
        absl::StrCat("expected at most ", std::numeric_limits<int64_t>::max(),
                     " bytes (8Ei less one), got '", trimmed, "'"));
  }
  return static_cast<int64_t>(bytes);
}

}  // namespace attnscore
