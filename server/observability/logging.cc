#include "server/observability/logging.h"

#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <chrono>
#include <cstdint>
#include <ctime>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace attnscore::observability {
namespace {

// Fields of ScopedLogField objects alive on this thread, oldest first.
thread_local std::vector<std::pair<std::string, std::string>> tls_fields;

void Put(spdlog::memory_buf_t& out, std::string_view s) {
  out.append(s.data(), s.data() + s.size());
}

// The fields to print: the innermost of equal keys, in order of creation.
std::vector<const std::pair<std::string, std::string>*> VisibleFields() {
  std::vector<const std::pair<std::string, std::string>*> out;
  for (size_t i = 0; i < tls_fields.size(); ++i) {
    bool shadowed = false;
    for (size_t j = i + 1; j < tls_fields.size() && !shadowed; ++j) {
      shadowed = tls_fields[j].first == tls_fields[i].first;
    }
    if (!shadowed) out.push_back(&tls_fields[i]);
  }
  return out;
}

// "2024-05-01T12:34:56.123456Z": RFC 3339 in UTC with microseconds.
std::string Timestamp(spdlog::log_clock::time_point time) {
  const auto since_epoch = time.time_since_epoch();
  auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
  auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                    since_epoch - seconds)
                    .count();
  if (micros < 0) {  // before 1970: keep the fraction positive
    micros += 1000000;
    seconds -= std::chrono::seconds(1);
  }
  const std::time_t t = static_cast<std::time_t>(seconds.count());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  const int n =
      std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ",
                    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                    tm.tm_min, tm.tm_sec, static_cast<long long>(micros));
  return std::string(buf, n > 0 ? n : 0);
}

bool IsReservedKey(const std::string& key) {
  return key == "ts" || key == "level" || key == "logger" || key == "msg";
}

// One JSON object per line, members in this order: ts, level, logger, msg,
// then the scoped fields. A formatter rather than a pattern, because a
// pattern pastes the message in unescaped and a quote would break the line.
// Invalid UTF-8 becomes U+FFFD (one per maximal invalid subpart).
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    nlohmann::ordered_json line;
    line["ts"] = Timestamp(msg.time);
    const spdlog::string_view_t level =
        spdlog::level::to_string_view(msg.level);
    line["level"] = std::string(level.data(), level.size());
    line["logger"] =
        std::string(msg.logger_name.data(), msg.logger_name.size());
    line["msg"] = std::string(msg.payload.data(), msg.payload.size());
    for (const auto* field : VisibleFields()) {
      line[IsReservedKey(field->first) ? "_" + field->first : field->first] =
          field->second;
    }
    Put(dest, line.dump(-1, ' ', /*ensure_ascii=*/false,
                        nlohmann::json::error_handler_t::replace));
    Put(dest, "\n");
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }
};

// Text lines' " {key=value ...}" suffix: the %* flag.
class FieldsFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const auto fields = VisibleFields();
    if (fields.empty()) return;
    Put(dest, " {");
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i > 0) Put(dest, " ");
      Put(dest, fields[i]->first);
      Put(dest, "=");
      Put(dest, fields[i]->second);
    }
    Put(dest, "}");
  }

  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<FieldsFlag>();
  }
};

std::mutex& NamedLoggersMutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}
// Named loggers by name, with the default logger they were cloned from.
std::map<std::string, std::pair<std::shared_ptr<spdlog::logger>,
                                std::shared_ptr<spdlog::logger>>>&
NamedLoggers() {
  static auto* loggers =
      new std::map<std::string, std::pair<std::shared_ptr<spdlog::logger>,
                                          std::shared_ptr<spdlog::logger>>>;
  return *loggers;
}

}  // namespace

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view s) {
  const std::string text(s);
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "text") return LogFormat::kText;
  if (lower == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format \"", text, "\" is not one of: text, json"));
}

absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view s) {
  const std::string text(s);
  const std::string lower = absl::AsciiStrToLower(text);
  static constexpr std::pair<const char*, spdlog::level::level_enum> kLevels[] =
      {{"trace", spdlog::level::trace},       {"debug", spdlog::level::debug},
       {"info", spdlog::level::info},         {"warn", spdlog::level::warn},
       {"warning", spdlog::level::warn},      {"error", spdlog::level::err},
       {"critical", spdlog::level::critical}, {"off", spdlog::level::off}};
  for (const auto& [name, level] : kLevels) {
    if (lower == name) return level;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "log level \"", text,
      "\" is not one of: trace, debug, info, warn, error, critical, off"));
}

std::unique_ptr<spdlog::formatter> NewLogFormatter(LogFormat format) {
  if (format == LogFormat::kJson) return std::make_unique<JsonFormatter>();
  auto text = std::make_unique<spdlog::pattern_formatter>(
      spdlog::pattern_time_type::utc, "\n");
  text->add_flag<FieldsFlag>('*').set_pattern(
      "%Y-%m-%dT%H:%M:%S.%fZ %^%l%$ [%n] %v%*");
  return text;
}

absl::Status SetupLogging(LogFormat format, std::string_view level) {
  spdlog::sink_ptr sink;
  if (format == LogFormat::kText) {
    sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  } else {
    // Never colour codes inside JSON, even on a terminal.
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  }
  return SetupLogging(format, level, std::move(sink));
}

absl::Status SetupLogging(LogFormat format, std::string_view level,
                          spdlog::sink_ptr sink) {
  absl::StatusOr<spdlog::level::level_enum> parsed = ParseLogLevel(level);
  if (!parsed.ok()) return parsed.status();
  if (sink == nullptr) {
    return absl::InvalidArgumentError("SetupLogging: null sink");
  }
  sink->set_formatter(NewLogFormatter(format));
  // The sink filters nothing; the logger's level does.
  sink->set_level(spdlog::level::trace);
  auto logger =
      std::make_shared<spdlog::logger>(kDefaultLoggerName, std::move(sink));
  logger->set_level(*parsed);
  // Warnings and errors reach the sink at once even if a buffering sink is
  // passed in (stderr itself is unbuffered).
  logger->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(logger);
  spdlog::set_level(*parsed);
  return absl::OkStatus();
}

std::shared_ptr<spdlog::logger> NamedLogger(const std::string& name) {
  std::lock_guard<std::mutex> lock(NamedLoggersMutex());
  std::shared_ptr<spdlog::logger> current_default = spdlog::default_logger();
  if (name == current_default->name()) return current_default;
  auto& entry = NamedLoggers()[name];
  if (entry.first != nullptr && entry.second == current_default) {
    return entry.first;
  }
  // clone() shares the default logger's sinks and copies its level.
  std::shared_ptr<spdlog::logger> logger = current_default->clone(name);
  // Registered, so spdlog::set_level and friends reach it too.
  spdlog::drop(name);
  spdlog::register_logger(logger);
  entry = {logger, current_default};
  return logger;
}

ScopedLogField::ScopedLogField(std::string key, std::string value) {
  tls_fields.emplace_back(std::move(key), std::move(value));
}

ScopedLogField::~ScopedLogField() { tls_fields.pop_back(); }

}  // namespace attnscore::observability
