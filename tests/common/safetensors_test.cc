#include "common/safetensors.h"

#include <cstring>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace attnscore {
namespace {

using ::testing::HasSubstr;

std::string Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddFloats("q", {2, 3}, {1, 2, 3, 4, 5, 6}).ok());
  const uint16_t halves[2] = {0x3c00, 0xc000};  // 1.0, -2.0
  ASSERT_TRUE(
      writer
          .Add("h", "F16", {2},
               std::string_view(reinterpret_cast<const char*>(halves), 4))
          .ok());
  const int32_t ints[3] = {7, -1, 0};
  ASSERT_TRUE(
      writer
          .Add("lengths", "I32", {3},
               std::string_view(reinterpret_cast<const char*>(ints), 12))
          .ok());
  writer.SetMetadata("mode", "alibi");
  const std::string bytes = writer.Serialize();
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);  // payload aligned

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, "mem");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("mode"), "alibi");
  EXPECT_THAT(file->Names(), ::testing::ElementsAre("h", "lengths", "q"));
  EXPECT_EQ(file->Find("q")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(*file->ReadFloats("q"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(*file->ReadFloats("h"), (std::vector<float>{1, -2}));
  EXPECT_EQ(*file->ReadFloats("lengths"), (std::vector<float>{7, -1, 0}));
  EXPECT_EQ(file->Get("nope").status().code(), absl::StatusCode::kNotFound);
  // Views stay valid after the file object moves.
  SafetensorsFile moved = *std::move(file);
  EXPECT_EQ(*moved.ReadFloats("q"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST(SafetensorsTest, RejectsMalformedFilesWithPreciseErrors) {
  EXPECT_THAT(
      std::string(SafetensorsFile::Parse("abc", "f").status().message()),
      HasSubstr("f: not a safetensors file: 3 bytes"));
  std::string huge(8, '\0');
  huge[0] = '\x7f';
  EXPECT_THAT(std::string(SafetensorsFile::Parse(huge, "f").status().message()),
              HasSubstr("header length"));
  auto with_header = [](const std::string& json, size_t payload) {
    std::string out(8, '\0');
    const uint64_t n = json.size();
    std::memcpy(out.data(), &n, 8);
    return out + json + std::string(payload, '\0');
  };
  EXPECT_THAT(std::string(SafetensorsFile::Parse(with_header("[1]", 0), "f")
                              .status()
                              .message()),
              HasSubstr("not a JSON object"));
  EXPECT_THAT(
      std::string(
          SafetensorsFile::Parse(
              with_header(
                  R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                  4),
              "f")
              .status()
              .message()),
      HasSubstr("f: tensor 't': 4 bytes, expected 8 for F32 [2]"));
  EXPECT_THAT(
      std::string(
          SafetensorsFile::Parse(
              with_header(
                  R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})",
                  4),
              "f")
              .status()
              .message()),
      HasSubstr("outside payload"));
  EXPECT_THAT(
      std::string(
          SafetensorsFile::Parse(
              with_header(
                  R"({"t":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}})",
                  1),
              "f")
              .status()
              .message()),
      HasSubstr("unknown dtype Q8"));
  EXPECT_EQ(SafetensorsFile::Read("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  SafetensorsWriter writer;
  EXPECT_THAT(std::string(writer.Add("t", "F32", {3}, Bytes({1, 2})).message()),
              HasSubstr("8 bytes, expected 12"));
}

// A file with `json` as its header and `payload` zero bytes after it.
std::string WithHeader(const std::string& json, size_t payload) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(payload, '\0');
}

std::string ParseError(const std::string& bytes) {
  absl::Status status = SafetensorsFile::Parse(bytes, "m.safetensors").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  return std::string{status.message()};
}

TEST(SafetensorsHostileTest, ElementCountOverflowingInt64IsRefused) {
  // 2^32 * 2^32 elements wraps to 0 in int64 arithmetic, which would match
  // the empty byte range.
  EXPECT_THAT(
      ParseError(
          WithHeader(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],)"
                     R"("data_offsets":[0,0]}})",
                     0)),
      HasSubstr("m.safetensors: tensor 't': shape [4294967296,4294967296] "
                "overflows int64 at dim 1 (size 4294967296)"));
}

TEST(SafetensorsHostileTest, ByteSizeOverflowingInt64IsRefused) {
  // 2^62 elements fit in int64, 2^62 * 4 bytes do not (and wrap to 0).
  EXPECT_THAT(
      ParseError(
          WithHeader(R"({"t":{"dtype":"F32","shape":[4611686018427387904],)"
                     R"("data_offsets":[0,0]}})",
                     0)),
      HasSubstr("tensor 't': shape [4611686018427387904] has "
                "4611686018427387904 elements of 4 bytes: the byte size "
                "overflows int64"));
}

TEST(SafetensorsHostileTest, DimsPastInt64AndNegativeDimsAreRefused) {
  EXPECT_THAT(ParseError(WithHeader(
                  R"({"t":{"dtype":"U8","shape":[18446744073709551615],)"
                  R"("data_offsets":[0,0]}})",
                  0)),
              HasSubstr("tensor 't': bad shape [18446744073709551615]: dims "
                        "must be integers in [0, 2^63)"));
  EXPECT_THAT(
      ParseError(WithHeader(
          R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0)),
      HasSubstr("tensor 't': bad shape [-1]"));
}

TEST(SafetensorsHostileTest, DeeplyNestedHeaderIsRefusedBeforeParsing) {
  // A million levels would overflow the stack of a recursive parser; the
  // depth is checked first, so this returns an error instead.
  const size_t levels = 1000000;
  const std::string nested = R"({"__metadata__":{"k":)" +
                             std::string(levels, '[') +
                             std::string(levels, ']') + "}}";
  EXPECT_THAT(
      ParseError(WithHeader(nested, 0)),
      HasSubstr("m.safetensors: header nests JSON deeper than 8 levels"));
  // Brackets inside strings do not count; 8 levels are accepted.
  const std::string ok = R"({"__metadata__":{"k":"[[[[[[[[[[[[[[","j":)" +
                         std::string(6, '[') + std::string(6, ']') + "}}";
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Parse(WithHeader(ok, 0), "m");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata().at("k"), "[[[[[[[[[[[[[[");
  EXPECT_EQ(file->metadata().at("j"), "[[[[[[]]]]]]");
  // An escaped quote does not end the string (so the brackets after it are
  // still inside it).
  const std::string escaped = R"({"__metadata__":{"k":"\"[[[[[[[[[[[[[["}})";
  EXPECT_TRUE(SafetensorsFile::Parse(WithHeader(escaped, 0), "m").ok());
}

TEST(SafetensorsHostileTest, OverlappingOffsetsAreRefused) {
  // Both tensors claim bytes [0, 4): aliasing, which the format forbids.
  EXPECT_THAT(
      ParseError(
          WithHeader(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                     8)),
      HasSubstr("m.safetensors: tensor 'b' data_offsets [0,8] overlap tensor "
                "'a' (expected begin 4)"));
  EXPECT_THAT(
      ParseError(
          WithHeader(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                     8)),
      HasSubstr("tensor 'b' data_offsets [4,8] overlap tensor 'a' (expected "
                "begin 8)"));
}

TEST(SafetensorsHostileTest, GapsTrailingBytesAndReversedOffsetsAreRefused) {
  EXPECT_THAT(
      ParseError(WithHeader(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
      HasSubstr("tensor 'a' data_offsets [4,8] leave a gap after the payload "
                "start (expected begin 0)"));
  EXPECT_THAT(
      ParseError(WithHeader(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12)),
      HasSubstr("m.safetensors: tensors cover 4 bytes of a 12-byte payload"));
  EXPECT_THAT(
      ParseError(WithHeader(
          R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8)),
      HasSubstr("tensor 'a': data_offsets [8,4] end before they begin"));
  EXPECT_THAT(
      ParseError(WithHeader(
          R"({"a":{"dtype":"F32","shape":[1],)"
          R"("data_offsets":[18446744073709551612,18446744073709551615]}})",
          8)),
      HasSubstr("data_offsets [18446744073709551612,18446744073709551615] "
                "outside payload of 8 bytes"));
  // Out of order in the header is fine: only the byte ranges must tile.
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(
      WithHeader(R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 8),
      "m");
  EXPECT_TRUE(file.ok()) << file.status();
}

TEST(SafetensorsHostileTest, AbsurdHeaderLengthsAreRefused) {
  std::string bytes(16, '\0');
  const uint64_t over_limit = uint64_t{1} << 40;
  std::memcpy(bytes.data(), &over_limit, 8);
  EXPECT_THAT(ParseError(bytes),
              HasSubstr("m.safetensors: header length 1099511627776 exceeds "
                        "the 104857600-byte limit of the format"));
  const uint64_t past_end = 9;
  std::memcpy(bytes.data(), &past_end, 8);
  EXPECT_THAT(ParseError(bytes),
              HasSubstr("header length 9 exceeds the 8 bytes after the length "
                        "field"));
  const uint64_t max = ~uint64_t{0};
  std::memcpy(bytes.data(), &max, 8);
  EXPECT_THAT(ParseError(bytes),
              HasSubstr("header length 18446744073709551615"));
}

TEST(SafetensorsHostileTest, LongUntrustedTextIsCutInMessages) {
  const std::string long_dtype(100000, 'Q');
  const std::string message =
      ParseError(WithHeader(R"({"t":{"dtype":")" + long_dtype +
                                R"(","shape":[],"data_offsets":[0,0]}})",
                            0));
  EXPECT_THAT(message, HasSubstr("unknown dtype QQQ"));
  EXPECT_LT(message.size(), 400u);
}

TEST(SafetensorsHostileTest, WriterRefusesOverflowingShapes) {
  SafetensorsWriter writer;
  EXPECT_THAT(
      std::string(
          writer.Add("t", "F32", {int64_t{1} << 62, 4}, std::string_view())
              .message()),
      HasSubstr("overflows int64 at dim 1"));
}

}  // namespace
}  // namespace attnscore
