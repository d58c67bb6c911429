// Process-wide logging set-up on spdlog: human-readable text, or exactly one
// valid JSON object per line for log shippers:
//   {"ts":"2024-05-01T12:34:56.123456Z","level":"info","logger":"attnscore",
//    "msg":"...","request_id":"..."}
// Everything here writes through spdlog's default logger, so code logs with
// plain spdlog::info(...) and gets the configured format.
//
// Ownership: spdlog's registry owns the loggers and sinks configured here.
// Thread safety: SetupLogging replaces the default logger; call it once at
// start-up, before other threads log (spdlog does not make replacing the
// logger safe against concurrent use of the old one). Logging itself,
// NamedLogger and ScopedLogField are safe from any thread.
// Errors: ParseLogFormat and ParseLogLevel return INVALID_ARGUMENT naming the
// accepted values; SetupLogging returns those errors and changes nothing.
#ifndef ATTNSCORE_SERVER_OBSERVABILITY_LOGGING_H_
#define ATTNSCORE_SERVER_OBSERVABILITY_LOGGING_H_

#include <spdlog/common.h>
#include <spdlog/formatter.h>
#include <spdlog/logger.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace attnscore::observability {

enum class LogFormat { kText, kJson };

// The default logger's name, the "logger" of every line it writes.
inline constexpr char kDefaultLoggerName[] = "attnscore";

// "text" or "json".
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view s);

// "trace", "debug", "info", "warn" (or "warning"), "error", "critical", "off".
absl::StatusOr<spdlog::level::level_enum> ParseLogLevel(std::string_view s);

// Makes spdlog's default logger (named kDefaultLoggerName) write `format` at
// `level` and above to stderr. Text goes through a colour sink, which colours
// only when stderr is a terminal.
absl::Status SetupLogging(LogFormat format, std::string_view level);

// The same, writing to `sink` instead of stderr (tests, other destinations).
absl::Status SetupLogging(LogFormat format, std::string_view level,
                          spdlog::sink_ptr sink);

// A formatter for `format`, for sinks configured by hand. Text lines look
// like `2024-05-01T12:34:56.123456Z info [attnscore] message {key=value}`.
std::unique_ptr<spdlog::formatter> NewLogFormatter(LogFormat format);

// A logger that writes through the default logger's sinks under another name
// (the "logger" field), e.g. "batching". Created on first use; the same
// logger afterwards. REQUIRES: SetupLogging has run (a later SetupLogging
// rebuilds named loggers on the next call; cached pointers keep the old
// sinks).
std::shared_ptr<spdlog::logger> NamedLogger(const std::string& name);

// Adds `key` = `value` to every line this thread logs while the object lives,
// e.g. ScopedLogField field("request_id", request.request_id()). JSON lines
// get it as a string member (keys ts, level, logger and msg are prefixed with
// "_"; the innermost of equal keys wins); text lines end in {key=value ...}.
// Only synchronous loggers (the ones made here) see it: the line must be
// formatted on the thread that logs it. Must be destroyed on the thread that
// made it, in reverse order of creation (as scoped objects are).
class ScopedLogField {
 public:
  ScopedLogField(std::string key, std::string value);
  ~ScopedLogField();
  ScopedLogField(const ScopedLogField&) = delete;
  ScopedLogField& operator=(const ScopedLogField&) = delete;
};

}  // namespace attnscore::observability

#endif  // ATTNSCORE_SERVER_OBSERVABILITY_LOGGING_H_
