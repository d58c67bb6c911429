#include "tests/observability/prometheus_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace attnscore::testing {
namespace {

constexpr int kStartAttempts = 3;  // a port picked as free may be taken
constexpr absl::Duration kPollInterval = absl::Milliseconds(200);
constexpr int kHttpTimeoutSeconds = 5;
constexpr absl::Duration kGrace = absl::Seconds(10);  // SIGTERM to SIGKILL
constexpr size_t kLogTailBytes = 4000;

// The value of a query result holding exactly one sample, if it does.
std::optional<double> SingleSampleValue(const nlohmann::json& result) {
  if (result.size() != 1) return std::nullopt;
  const nlohmann::json& value = result[0]["value"];
  if (!value.is_array() || value.size() != 2 || !value[1].is_string()) {
    return std::nullopt;
  }
  // Prometheus spells values as strings: "42", "NaN", "+Inf".
  return std::strtod(value[1].get<std::string>().c_str(), nullptr);
}

std::string Tail(const std::string& s) {
  return s.size() <= kLogTailBytes ? s
                                   : "..." + s.substr(s.size() - kLogTailBytes);
}

// Prometheus durations accept milliseconds; a whole second at least keeps
// us away from its minimums.
std::string PrometheusDuration(absl::Duration d) {
  return absl::StrCat(absl::ToInt64Milliseconds(d), "ms");
}

std::string ConfigYaml(const PrometheusOptions& options) {
  const std::string interval = PrometheusDuration(options.scrape_interval);
  std::vector<std::string> quoted;
  for (const std::string& target : options.targets) {
    quoted.push_back(absl::StrCat("\"", target, "\""));
  }
  // scrape_timeout set explicitly: its 10 s default exceeds short intervals,
  // which prometheus rejects.
  return absl::StrCat(
      "global:\n"
      "  scrape_interval: ",
      interval, "\n", "  scrape_timeout: ", interval, "\n",
      "  evaluation_interval: ", interval, "\n",
      "scrape_configs:\n"
      "  - job_name: \"",
      options.job, "\"\n", "    metrics_path: \"", options.metrics_path, "\"\n",
      "    static_configs:\n"
      "      - targets: [",
      absl::StrJoin(quoted, ", "), "]\n");
}

// fork + exec with stdout/stderr to `log_path`, every other inherited
// descriptor closed (so prometheus holds none of our listening sockets), and
// SIGKILL when the starting thread dies.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args,
                            const std::string& log_path) {
  // Everything the child needs is prepared before fork: after it, only
  // async-signal-safe calls.
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (const std::string& arg : args) {
    argv.push_back(const_cast<char*>(arg.c_str()));
  }
  argv.push_back(nullptr);
  const int64_t max_fd = sysconf(_SC_OPEN_MAX);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // parent already gone
    const int log_fd =
        open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int null_fd = open("/dev/null", O_RDONLY);
    if (log_fd < 0 || null_fd < 0) _exit(127);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    for (int64_t fd = 3; fd < max_fd && fd < 65536; ++fd) {
      close(static_cast<int>(fd));
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

bool PrometheusHarness::Available(const std::string& binary) {
  return access(binary.c_str(), X_OK) == 0;
}

absl::StatusOr<std::unique_ptr<PrometheusHarness>> PrometheusHarness::Start(
    const PrometheusOptions& options) {
  if (!Available(options.binary)) {
    return absl::FailedPreconditionError(absl::StrCat(
        options.binary, " is not installed (Debian package prometheus)"));
  }
  if (options.targets.empty()) {
    return absl::InvalidArgumentError("PrometheusOptions.targets is empty");
  }
  absl::Status last_error;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    std::unique_ptr<PrometheusHarness> harness(new PrometheusHarness);
    last_error = harness->StartOnce(options);
    if (last_error.ok()) return harness;
    // Only a lost race for the port is worth another try.
    if (harness->Log().find("address already in use") == std::string::npos) {
      break;
    }
  }
  return last_error;
}

absl::Status PrometheusHarness::StartOnce(const PrometheusOptions& options) {
  absl::StatusOr<int> port = PickFreeLoopbackPort();
  if (!port.ok()) return port.status();
  port_ = *port;
  const std::string config_path = dir_.File("prometheus.yml");
  {
    std::ofstream config(config_path);
    config << ConfigYaml(options);
    if (!config) {
      return absl::InternalError(absl::StrCat("cannot write ", config_path));
    }
  }
  const std::vector<std::string> args = {
      options.binary,
      "--config.file=" + config_path,
      "--storage.tsdb.path=" + dir_.File("data"),
      absl::StrCat("--web.listen-address=127.0.0.1:", port_),
      "--log.level=info",
  };
  absl::StatusOr<pid_t> pid = Spawn(args, dir_.File("prometheus.log"));
  if (!pid.ok()) return pid.status();
  pid_ = *pid;

  httplib::Client client("127.0.0.1", port_);
  client.set_connection_timeout(1, 0);
  client.set_read_timeout(1, 0);
  bool exited = false;
  bool ready = false;
  WaitFor(
      [&] {
        if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
          pid_ = -1;
          exited = true;
          return true;
        }
        httplib::Result answer = client.Get("/-/ready");
        ready = answer && answer->status == 200;
        return ready;
      },
      options.startup_timeout, kPollInterval);
  if (ready) return absl::OkStatus();
  return absl::UnavailableError(
      absl::StrCat("prometheus on 127.0.0.1:", port_,
                   exited ? " exited during start-up" : " not ready in time",
                   "; its log:\n", Tail(Log())));
}

PrometheusHarness::~PrometheusHarness() { Kill(); }

void PrometheusHarness::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  const bool exited =
      WaitFor([this] { return waitpid(pid_, nullptr, WNOHANG) == pid_; },
              kGrace, absl::Milliseconds(20));
  if (!exited) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
}

std::string PrometheusHarness::Log() const {
  return ReadFileOrEmpty(dir_.File("prometheus.log"));
}

absl::StatusOr<nlohmann::json> PrometheusHarness::GetApi(
    const std::string& path, const std::string& query_param) {
  httplib::Client client("127.0.0.1", port_);
  client.set_connection_timeout(kHttpTimeoutSeconds, 0);
  client.set_read_timeout(kHttpTimeoutSeconds, 0);
  httplib::Params params;
  if (!query_param.empty()) params.emplace("query", query_param);
  httplib::Result result = client.Get(path, params, httplib::Headers{});
  if (!result) {
    return absl::UnavailableError(absl::StrCat(
        "GET ", path, " on prometheus: ", httplib::to_string(result.error())));
  }
  nlohmann::json body = nlohmann::json::parse(result->body, nullptr,
                                              /*allow_exceptions=*/false);
  if (body.is_discarded() || result->status != 200 ||
      body.value("status", "") != "success") {
    return absl::InternalError(
        absl::StrCat("GET ", path, " on prometheus: HTTP ", result->status,
                     ": ", result->body));
  }
  return body["data"];
}

absl::StatusOr<nlohmann::json> PrometheusHarness::Query(
    const std::string& promql) {
  absl::StatusOr<nlohmann::json> data = GetApi("/api/v1/query", promql);
  if (!data.ok()) return data.status();
  if (!data->contains("result") || !(*data)["result"].is_array()) {
    return absl::InternalError(
        absl::StrCat("query ", promql, ": no result array in ", data->dump()));
  }
  return (*data)["result"];
}

absl::StatusOr<nlohmann::json> PrometheusHarness::Targets() {
  return GetApi("/api/v1/targets", "");
}

absl::StatusOr<double> PrometheusHarness::WaitForValue(
    const std::string& promql, absl::Duration timeout,
    const std::function<bool(double)>& done) {
  std::string last = "(no answer)";
  std::optional<double> value;
  WaitFor(
      [&] {
        absl::StatusOr<nlohmann::json> result = Query(promql);
        if (!result.ok()) {
          last = result.status().ToString();
          return false;
        }
        last = result->dump();
        value = SingleSampleValue(*result);
        return value.has_value() && (done == nullptr || done(*value));
      },
      timeout, kPollInterval);
  if (value.has_value() && (done == nullptr || done(*value))) return *value;
  absl::StatusOr<nlohmann::json> targets = Targets();
  return absl::DeadlineExceededError(absl::StrCat(
      "prometheus query ", promql,
      " did not return the expected single sample within ",
      absl::FormatDuration(timeout), "; last result: ", last, "; targets: ",
      targets.ok() ? targets->dump() : targets.status().ToString(),
      "; prometheus log:\n", Tail(Log())));
}

absl::Status CheckMetricsWithPromtool(const std::string& exposition,
                                      const std::string& promtool) {
  if (access(promtool.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        promtool, " is not installed (Debian package prometheus)"));
  }
  const TempDir dir("attnscore-exposition-");
  const std::string path = dir.File("exposition.txt");
  {
    std::ofstream out(path, std::ios::binary);
    out << exposition;
  }
  const std::string command =
      absl::StrCat("'", promtool, "' check metrics < '", path, "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  int status = -1;
  if (pipe != nullptr) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
    status = pclose(pipe);
  }
  if (status == 0 && output.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "promtool check metrics (exit status ", status, "): ", output));
}

absl::StatusOr<int> PickFreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const int error = errno;
    close(fd);
    return absl::InternalError(
        absl::StrCat("bind 127.0.0.1:0: ", std::strerror(error)));
  }
  close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

}  // namespace attnscore::testing
