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

namespace attnscore::observability {
namespace {

// Fields of ScopedLogField objects alive on this thread, oldest first.
thread_local std::vector<std::pair<std::string, std::string>> tls_fields;

// Writes into spdlog's buffer or a std::string alike.
void Put(spdlog::memory_buf_t& out, std::string_view s) {
  out.append(s.data(), s.data() + s.size());
}
void Put(std::string& out, std::string_view s) { out.append(s); }

// Length of the valid UTF-8 sequence at s[i], or 0 with `*bad` set to the
// length of its longest valid prefix (at least 1), which is replaced by one
// U+FFFD ("substitution of maximal subparts", Unicode ch. 3).
size_t Utf8SequenceLength(std::string_view s, size_t i, size_t* bad) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t b0 = byte(i);
  size_t length = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    length = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    length = 3;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no UTF-16 surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    length = 4;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k < length; ++k) {
    const bool ok = i + k < s.size() && byte(i + k) >= (k == 1 ? lo : 0x80) &&
                    byte(i + k) <= (k == 1 ? hi : 0xBF);
    if (!ok) {
      *bad = k;
      return 0;
    }
  }
  return length;
}

template <typename Out>
void AppendJsonStringTo(std::string_view s, Out& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  Put(out, "\"");
  size_t run_start = 0;  // bytes copied verbatim are flushed in runs
  size_t i = 0;
  const auto flush = [&](size_t end) {
    if (end > run_start) Put(out, s.substr(run_start, end - run_start));
  };
  while (i < s.size()) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
      ++i;
      continue;
    }
    if (c >= 0x80) {
      size_t bad = 0;
      const size_t length = Utf8SequenceLength(s, i, &bad);
      if (length > 0) {
        i += length;
        continue;
      }
      flush(i);
      Put(out, "\\ufffd");
      i += bad;
      run_start = i;
      continue;
    }
    flush(i);
    switch (c) {
      case '"':
        Put(out, "\\\"");
        break;
      case '\\':
        Put(out, "\\\\");
        break;
      case '\n':
        Put(out, "\\n");
        break;
      case '\r':
        Put(out, "\\r");
        break;
      case '\t':
        Put(out, "\\t");
        break;
      case '\b':
        Put(out, "\\b");
        break;
      case '\f':
        Put(out, "\\f");
        break;
      default: {  // other control characters and DEL
        const char escaped[] = {'\\', 'u',          '0',
                                '0',  kHex[c >> 4], kHex[c & 15]};
        Put(out, std::string_view(escaped, sizeof(escaped)));
      }
    }
    ++i;
    run_start = i;
  }
  flush(i);
  Put(out, "\"");
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
void AppendTimestamp(spdlog::log_clock::time_point time,
                     spdlog::memory_buf_t& out) {
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
  Put(out, std::string_view(buf, n > 0 ? n : 0));
}

bool IsReservedKey(const std::string& key) {
  return key == "ts" || key == "level" || key == "logger" || key == "msg";
}

// One JSON object per line. A formatter rather than a pattern, because a
// pattern pastes the message in unescaped and a quote would break the line.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg,
              spdlog::memory_buf_t& dest) override {
    Put(dest, "{\"ts\":\"");
    AppendTimestamp(msg.time, dest);
    Put(dest, "\",\"level\":");
    const spdlog::string_view_t level =
        spdlog::level::to_string_view(msg.level);
    AppendJsonStringTo(std::string_view(level.data(), level.size()), dest);
    Put(dest, ",\"logger\":");
    AppendJsonStringTo(
        std::string_view(msg.logger_name.data(), msg.logger_name.size()), dest);
    Put(dest, ",\"msg\":");
    AppendJsonStringTo(std::string_view(msg.payload.data(), msg.payload.size()),
                       dest);
    for (const auto* field : VisibleFields()) {
      Put(dest, ",");
      AppendJsonStringTo(
          IsReservedKey(field->first) ? "_" + field->first : field->first,
          dest);
      Put(dest, ":");
      AppendJsonStringTo(field->second, dest);
    }
    Put(dest, "}\n");
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

void AppendJsonString(std::string_view s, std::string& out) {
  AppendJsonStringTo(s, out);
}

}  // namespace attnscore::observability
