#include "common/byte_size.h"

#include <CLI/CLI.hpp>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/cli_checks.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnscore {
namespace {

using ::testing::HasSubstr;

TEST(ByteSizeTest, PlainIntegersPassAsWritten) {
  EXPECT_EQ(*ParseByteSize("1073741824"), int64_t{1} << 30);
  EXPECT_EQ(*ParseByteSize(" 0 "), 0);
  EXPECT_EQ(*ParseByteSize("-1"), -1);  // the flag's range check decides
  EXPECT_EQ(*ParseByteSize("9223372036854775807"),
            std::numeric_limits<int64_t>::max());
}

TEST(ByteSizeTest, UnitsAreKubernetesQuantities) {
  EXPECT_EQ(*ParseByteSize("512Mi"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("2Gi"), int64_t{2} << 30);
  EXPECT_EQ(*ParseByteSize("2 gib"), int64_t{2} << 30);
  EXPECT_EQ(*ParseByteSize("1G"), 1'000'000'000);
  EXPECT_EQ(*ParseByteSize("1GB"), 1'000'000'000);
  EXPECT_EQ(*ParseByteSize("64k"), 64'000);
  EXPECT_EQ(*ParseByteSize("64Ki"), 65'536);
  EXPECT_EQ(*ParseByteSize("3T"), 3'000'000'000'000);
  EXPECT_EQ(*ParseByteSize("1Ti"), int64_t{1} << 40);
  EXPECT_EQ(*ParseByteSize("1Pi"), int64_t{1} << 50);
  EXPECT_EQ(*ParseByteSize("7Ei"), int64_t{7} << 60);
  EXPECT_EQ(*ParseByteSize("100b"), 100);
}

TEST(ByteSizeTest, FractionsThatComeToWholeBytes) {
  EXPECT_EQ(*ParseByteSize("1.5Gi"), int64_t{3} << 29);
  EXPECT_EQ(*ParseByteSize("0.5Ki"), 512);
  EXPECT_EQ(*ParseByteSize("2.25M"), 2'250'000);
  const absl::StatusOr<int64_t> third = ParseByteSize("0.3Ki");
  ASSERT_EQ(third.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(third.status().message(),
              HasSubstr("got '0.3Ki', which is not a whole number of bytes"));
}

TEST(ByteSizeTest, RejectsWhatIsNotAByteCount) {
  for (const char* text :
       {"", "Mi", "12x", "12 MiBs", "1.2.3Mi", "1.Mi", ".5Mi", "-1Mi", "1e9",
        "0x10", "1.5", "5 mega", "Gi2"}) {
    const absl::StatusOr<int64_t> bytes = ParseByteSize(text);
    ASSERT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << text << "'";
    EXPECT_THAT(bytes.status().message(),
                HasSubstr("expected a number of bytes such as 1073741824, "
                          "512Mi, 2GiB or 1G, got '"))
        << text;
  }
}

TEST(ByteSizeTest, MoreThanInt64IsOutOfRange) {
  for (const char* text : {"8Ei", "9223372036854775808", "10E",
                           "99999999999999999999999Ki", "8388608Ti"}) {
    const absl::StatusOr<int64_t> bytes = ParseByteSize(text);
    EXPECT_EQ(bytes.status().code(), absl::StatusCode::kOutOfRange) << text;
    EXPECT_THAT(
        bytes.status().message(),
        HasSubstr(
            "expected at most 9223372036854775807 bytes (8Ei less one), got '"))
        << text;
  }
  EXPECT_EQ(*ParseByteSize("7.5Ei"), int64_t{15} << 59);
}

// The CLI11 checks the server's and the CLI's flags use: an option given a
// size stores the number; a bad value exits with a message naming it.
struct Parsed {
  int64_t value = -7;
  std::string error;  // empty: parsed
};

Parsed ParseFlag(const CLI::Validator& transform, const CLI::Validator& check,
                 const std::string& given) {
  CLI::App app;
  Parsed parsed;
  CLI::Option* option = app.add_option("--bytes", parsed.value);
  if (!transform.get_description().empty()) option->transform(transform);
  option->check(check);
  std::vector<std::string> args = {given,
                                   "--bytes"};  // parse() reads backwards
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    parsed.error = e.what();
  }
  return parsed;
}

TEST(CliChecksTest, ByteSizeFlagsTakeUnitsAndKeepTheirRange) {
  EXPECT_EQ(
      ParseFlag(checks::ByteSize(), checks::WholeNumber(1), "512Mi").value,
      int64_t{512} << 20);
  EXPECT_EQ(ParseFlag(checks::ByteSize(), checks::WholeNumber(-1), "-1").value,
            -1);
  const Parsed negative =
      ParseFlag(checks::ByteSize(), checks::WholeNumber(1), "-5");
  EXPECT_THAT(negative.error, HasSubstr("expected at least 1, got -5"));
  const Parsed bad =
      ParseFlag(checks::ByteSize(), checks::WholeNumber(1), "5 mega");
  EXPECT_THAT(bad.error,
              HasSubstr("expected a number of bytes such as "
                        "1073741824, 512Mi, 2GiB or 1G, got '5 mega'"));
}

TEST(CliChecksTest, WholeNumberNamesItsRange) {
  const CLI::Validator none;
  EXPECT_EQ(ParseFlag(none, checks::WholeNumber(0, 10), "10").value, 10);
  EXPECT_THAT(ParseFlag(none, checks::WholeNumber(0, 10), "11").error,
              HasSubstr("expected 0 to 10, got 11"));
  EXPECT_THAT(ParseFlag(none, checks::WholeNumber(0), "1.5").error,
              HasSubstr("expected a whole number, got '1.5'"));
}

TEST(CliChecksTest, NumberAtLeastTakesFractionsAndRejectsBelowOrNotFinite) {
  CLI::App app;
  double seconds = -1;
  app.add_option("--seconds", seconds)->check(checks::NumberAtLeast(0));
  std::vector<std::string> args = {"2.5", "--seconds"};
  app.parse(args);
  EXPECT_EQ(seconds, 2.5);
  for (const char* given : {"-0.5", "nan", "inf"}) {
    std::vector<std::string> bad = {given, "--seconds"};
    try {
      app.parse(bad);
      ADD_FAILURE() << given << " was accepted";
    } catch (const CLI::ParseError& e) {
      EXPECT_THAT(std::string(e.what()),
                  HasSubstr(std::string(given) == "-0.5"
                                ? "expected at least 0, got -0.5"
                                : "expected a number, got '"))
          << given;
    }
  }
}

}  // namespace
}  // namespace attnscore
