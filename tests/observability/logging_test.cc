#include "server/observability/logging.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace attnscore::observability {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Routes the default logger into a string for one test.
class CapturedLog {
 public:
  explicit CapturedLog(LogFormat format, const char* level = "trace")
      : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
    absl::Status status = SetupLogging(format, level, sink_);
    EXPECT_TRUE(status.ok()) << status;
  }
  ~CapturedLog() {
    // Leave the process logging to stderr, not to a dead stream.
    EXPECT_TRUE(SetupLogging(LogFormat::kText, "info").ok());
  }
  std::vector<std::string> lines() const { return Lines(out_.str()); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

// Parses one line as a JSON object, failing the test if it is not one.
nlohmann::json ParseLine(const std::string& line) {
  nlohmann::json parsed = nlohmann::json::parse(line, nullptr,
                                                /*allow_exceptions=*/false);
  EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << line;
  EXPECT_TRUE(parsed.is_object()) << line;
  return parsed;
}

const std::regex& TimestampPattern() {
  static const std::regex pattern(
      R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)");
  return pattern;
}

TEST(LoggingTest, ParsesLogFormat) {
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(*ParseLogFormat("JSON"), LogFormat::kJson);
  for (const char* bad : {"", "yaml", "jsonl", " json"}) {
    absl::StatusOr<LogFormat> format = ParseLogFormat(bad);
    EXPECT_EQ(format.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(format.status().message(), HasSubstr("text, json"));
    EXPECT_THAT(format.status().message(),
                HasSubstr("\"" + std::string(bad) + "\""));
  }
}

TEST(LoggingTest, ParsesLogLevel) {
  EXPECT_EQ(*ParseLogLevel("trace"), spdlog::level::trace);
  EXPECT_EQ(*ParseLogLevel("debug"), spdlog::level::debug);
  EXPECT_EQ(*ParseLogLevel("info"), spdlog::level::info);
  EXPECT_EQ(*ParseLogLevel("warn"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("WARNING"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_EQ(*ParseLogLevel("critical"), spdlog::level::critical);
  EXPECT_EQ(*ParseLogLevel("off"), spdlog::level::off);
  absl::StatusOr<spdlog::level::level_enum> bad = ParseLogLevel("verbose");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(),
              HasSubstr("trace, debug, info, warn, error, critical, off"));
}

TEST(LoggingTest, BadLevelChangesNothing) {
  CapturedLog log(LogFormat::kJson);
  auto before = spdlog::default_logger();
  EXPECT_EQ(SetupLogging(LogFormat::kText, "loud").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(spdlog::default_logger(), before);
}

TEST(LoggingTest, JsonLinesSurviveNastyMessages) {
  struct Case {
    std::string message;
    std::string expected;  // what the parsed "msg" must be
  };
  const std::vector<Case> cases = {
      {"plain", "plain"},
      {"", ""},
      {"he said \"hi\"", "he said \"hi\""},
      {"C:\\path\\to\\file \\\" \\n", "C:\\path\\to\\file \\\" \\n"},
      {"two\nlines\r\nand\ttab", "two\nlines\r\nand\ttab"},
      {"controls \x01\x1f\x7f\b\f", "controls \x01\x1f\x7f\b\f"},
      {std::string("nul\0byte", 8), std::string("nul\0byte", 8)},
      {"{\"json\":[\"inside\"]} }", "{\"json\":[\"inside\"]} }"},
      {"ünïcødé 日本語 🎉 \u2028", "ünïcødé 日本語 🎉 \u2028"},
      // Invalid UTF-8: each maximal invalid subpart becomes one U+FFFD.
      {"bad \xff\xfe end", "bad \uFFFD\uFFFD end"},
      {"truncated \xe6\x97", "truncated \uFFFD"},
      {"truncated \xf0\x9f\x8e then", "truncated \uFFFD then"},
      {"overlong \xc0\xaf", "overlong \uFFFD\uFFFD"},
      {"surrogate \xed\xa0\x80", "surrogate \uFFFD\uFFFD\uFFFD"},
      {"too big \xf4\x90\x80\x80", "too big \uFFFD\uFFFD\uFFFD\uFFFD"},
      {"lone continuation \x80 x", "lone continuation \uFFFD x"},
  };
  CapturedLog log(LogFormat::kJson);
  for (const Case& c : cases) spdlog::info("{}", c.message);
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), cases.size());  // one line per message, always
  for (size_t i = 0; i < cases.size(); ++i) {
    nlohmann::json line = ParseLine(lines[i]);
    ASSERT_TRUE(line.contains("msg")) << lines[i];
    EXPECT_EQ(line["msg"], cases[i].expected) << lines[i];
    EXPECT_EQ(line["level"], "info");
    EXPECT_EQ(line["logger"], kDefaultLoggerName);
    EXPECT_TRUE(
        std::regex_match(line["ts"].get<std::string>(), TimestampPattern()))
        << line["ts"];
    EXPECT_EQ(line.size(), 4u) << lines[i];
  }
}

// The exact bytes of a line: compact, members in a fixed order, JSON escapes,
// non-ASCII kept as UTF-8, invalid UTF-8 replaced by U+FFFD.
TEST(LoggingTest, JsonLineLayoutIsExact) {
  CapturedLog log(LogFormat::kJson);
  {
    ScopedLogField field("request_id", "r\"1");
    spdlog::info("a\"b\\c\n\x01 é \xff");
  }
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  const std::string prefix = "{\"ts\":\"";
  const size_t ts_length = std::string("2024-05-01T12:34:56.123456Z").size();
  ASSERT_GT(lines[0].size(), prefix.size() + ts_length);
  EXPECT_EQ(lines[0].substr(0, prefix.size()), prefix);
  EXPECT_TRUE(std::regex_match(lines[0].substr(prefix.size(), ts_length),
                               TimestampPattern()))
      << lines[0];
  EXPECT_EQ(lines[0].substr(prefix.size() + ts_length),
            "\",\"level\":\"info\",\"logger\":\"attnscore\","
            "\"msg\":\"a\\\"b\\\\c\\n\\u0001 é \xEF\xBF\xBD\","
            "\"request_id\":\"r\\\"1\"}");
}

TEST(LoggingTest, LevelsFilterAndAreNamed) {
  CapturedLog log(LogFormat::kJson, "warn");
  spdlog::debug("hidden");
  spdlog::info("hidden");
  spdlog::warn("shown {}", 1);
  spdlog::error("shown {}", 2);
  spdlog::critical("shown {}", 3);
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(ParseLine(lines[0])["level"], "warning");
  EXPECT_EQ(ParseLine(lines[1])["level"], "error");
  EXPECT_EQ(ParseLine(lines[2])["level"], "critical");
  EXPECT_EQ(ParseLine(lines[2])["msg"], "shown 3");
}

TEST(LoggingTest, ScopedFieldsBecomeJsonMembers) {
  CapturedLog log(LogFormat::kJson);
  {
    ScopedLogField request("request_id", "req-\"1\"");
    spdlog::info("accepted");
    {
      ScopedLogField inner("request_id", "req-2");
      ScopedLogField reserved("msg", "not the message");
      spdlog::info("nested");
    }
    spdlog::info("outer again");
  }
  spdlog::info("no fields");
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 4u);
  nlohmann::json first = ParseLine(lines[0]);
  EXPECT_EQ(first["request_id"], "req-\"1\"");
  nlohmann::json nested = ParseLine(lines[1]);
  EXPECT_EQ(nested["request_id"], "req-2");
  EXPECT_EQ(nested["msg"], "nested");
  EXPECT_EQ(nested["_msg"], "not the message");
  EXPECT_EQ(ParseLine(lines[2])["request_id"], "req-\"1\"");
  EXPECT_FALSE(ParseLine(lines[3]).contains("request_id"));
}

TEST(LoggingTest, FieldsAreThreadLocal) {
  CapturedLog log(LogFormat::kJson);
  ScopedLogField mine("request_id", "main");
  std::thread([] { spdlog::info("other thread"); }).join();
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_FALSE(ParseLine(lines[0]).contains("request_id"));
}

TEST(LoggingTest, NamedLoggersShareTheSinkUnderTheirName) {
  CapturedLog log(LogFormat::kJson);
  NamedLogger("batching")->info("from the batcher");
  EXPECT_EQ(NamedLogger("batching"), NamedLogger("batching"));
  EXPECT_EQ(NamedLogger(kDefaultLoggerName), spdlog::default_logger());
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(ParseLine(lines[0])["logger"], "batching");
}

TEST(LoggingTest, ConcurrentLinesNeverInterleave) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 250;
  CapturedLog log(LogFormat::kJson);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      ScopedLogField field("thread", std::to_string(t));
      for (int i = 0; i < kPerThread; ++i) {
        spdlog::info("message \"{}\"\nfrom {}", i, t);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kPerThread));
  std::vector<int> per_thread(kThreads);
  for (const std::string& line : lines) {
    nlohmann::json parsed = ParseLine(line);
    const int t = std::stoi(parsed["thread"].get<std::string>());
    EXPECT_THAT(parsed["msg"].get<std::string>(),
                HasSubstr("\nfrom " + std::to_string(t)));
    ++per_thread[t];
  }
  for (int count : per_thread) EXPECT_EQ(count, kPerThread);
}

TEST(LoggingTest, TextFormat) {
  CapturedLog log(LogFormat::kText);
  {
    ScopedLogField field("request_id", "r1");
    spdlog::info("hello {}", "world");
  }
  spdlog::warn("bare");
  const std::vector<std::string> lines = log.lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(std::regex_match(
      lines[0],
      std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z info )"
                 R"(\[attnscore\] hello world \{request_id=r1\})")))
      << lines[0];
  EXPECT_THAT(lines[1], ::testing::EndsWith(" warning [attnscore] bare"));
}

// The real destination: stderr, exactly one JSON object per line.
TEST(LoggingTest, JsonToStderr) {
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(SetupLogging(LogFormat::kJson, "info").ok());
  spdlog::info("to stderr with \"quotes\"\nand a newline");
  spdlog::debug("filtered");
  spdlog::error("second");
  const std::string captured = ::testing::internal::GetCapturedStderr();
  ASSERT_TRUE(SetupLogging(LogFormat::kText, "info").ok());
  const std::vector<std::string> lines = Lines(captured);
  ASSERT_EQ(lines.size(), 2u) << captured;
  EXPECT_EQ(ParseLine(lines[0])["msg"],
            "to stderr with \"quotes\"\nand a newline");
  EXPECT_EQ(ParseLine(lines[1])["level"], "error");
  EXPECT_EQ(captured.back(), '\n');
}

}  // namespace
}  // namespace attnscore::observability
