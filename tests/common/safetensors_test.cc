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

}  // namespace
}  // namespace attnscore
