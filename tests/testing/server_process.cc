#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpc/health/v1/health.grpc.pb.h"

extern char** environ;

namespace attnscore::testing {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(10);
// SIGTERM first (the server drains in milliseconds when idle), then SIGKILL.
// Short: a server that has sent large responses sometimes spends 10 s in gRPC's
// shutdown after its drain, which tests need not wait for.
constexpr absl::Duration kStopGrace = absl::Seconds(3);
constexpr size_t kLogTail = 4000;

std::string Tail(const std::string& text) {
  return text.size() <= kLogTail ? text
                                 : "..." + text.substr(text.size() - kLogTail);
}

// The environment without ATTNSCORE_* (server and CLI both read those) and
// GRPC_EXPERIMENTS, which a client program may have set for itself
// (client::PreferBoundedSocketReads): children run with gRPC's defaults.
std::vector<std::string> CleanEnvironment() {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!absl::StartsWith(*e, "ATTNSCORE_") &&
        !absl::StartsWith(*e, "GRPC_EXPERIMENTS=")) {
      env.emplace_back(*e);
    }
  }
  return env;
}

// Spawns `argv` with stdout and stderr appended to `log_path`. The child gets
// SIGKILL when the thread that spawned it dies (PR_SET_PDEATHSIG), so a test
// killed by ctest's timeout leaves no server behind; callers spawn from the
// test's main thread.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            const std::string& log_path) {
  // Everything the child needs is prepared before fork: between fork and exec
  // only async-signal-safe calls are allowed (the parent has gRPC threads).
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  const std::vector<std::string> env_strings = CleanEnvironment();
  std::vector<char*> env;
  env.reserve(env_strings.size() + 1);
  for (const std::string& e : env_strings) {
    env.push_back(const_cast<char*>(e.c_str()));
  }
  env.push_back(nullptr);
  const int log_fd =
      open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    return absl::InternalError(
        absl::StrCat("open ", log_path, ": ", std::strerror(errno)));
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execve(args[0], args.data(), env.data());
    _exit(127);
  }
  close(log_fd);
  if (null_fd >= 0) close(null_fd);
  return pid;
}

// waitpid with a time limit; the exit code, 128 + signal, or nullopt on
// timeout.
std::optional<int> WaitPid(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
    if (r < 0 && errno != EINTR) return -1;  // not our child any more
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(kPollInterval);
  }
}

// The port in a port file. The server writes "<port>\n" and renames the file
// into place; until the newline is there the file is not complete.
absl::StatusOr<int> ReadPortFile(const std::string& path) {
  const std::string text = ReadFileOrEmpty(path);
  int port = 0;
  if (text.empty() || text.back() != '\n' ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &port) || port <= 0) {
    return absl::UnavailableError(absl::StrCat(path, ": no port yet"));
  }
  return port;
}

}  // namespace

std::string ServerBinary() { return ATTNSCORE_SERVER_BIN; }

std::string CliBinary() {
#ifdef ATTNSCORE_CLI_BIN
  return ATTNSCORE_CLI_BIN;
#else
  return "";
#endif
}

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const ServerOptions& options, absl::Duration timeout) {
  std::unique_ptr<ServerProcess> server(new ServerProcess());
  server->dir_ = std::make_unique<TempDir>();
  const std::string port_file = server->dir_->File("port");
  const std::string metrics_port_file = server->dir_->File("metrics_port");
  std::vector<std::string> argv = {ServerBinary(),
                                   "--listen",
                                   absl::StrCat("127.0.0.1:", options.port),
                                   "--port-file",
                                   port_file,
                                   "--threads",
                                   absl::StrCat(options.threads),
                                   "--log-level",
                                   options.log_level,
                                   "--shutdown-grace",
                                   "5"};
  if (options.metrics) {
    argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0",
                             "--metrics-port-file", metrics_port_file});
  } else {
    argv.insert(argv.end(), {"--metrics-listen", ""});
  }
  if (!options.model_dir.empty()) {
    argv.insert(argv.end(), {"--model-dir", options.model_dir});
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());

  absl::StatusOr<pid_t> pid = Spawn(argv, server->dir_->File("server.log"));
  if (!pid.ok()) return pid.status();
  server->pid_ = *pid;

  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<int> port = ReadPortFile(port_file);
    absl::StatusOr<int> metrics_port = options.metrics
                                           ? ReadPortFile(metrics_port_file)
                                           : absl::StatusOr<int>(0);
    if (port.ok() && metrics_port.ok()) {
      server->port_ = *port;
      server->metrics_port_ = *metrics_port;
      break;
    }
    if (!server->running()) {
      return absl::InternalError(
          absl::StrCat("attnscore-server exited with ", server->exit_code_,
                       " before listening: ", Tail(server->Log())));
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "attnscore-server wrote no port file within ",
          absl::FormatDuration(timeout), ": ", Tail(server->Log())));
    }
    std::this_thread::sleep_for(kPollInterval);
  }
  if (options.wait_ready) {
    if (absl::Status s = server->WaitReady(deadline - absl::Now()); !s.ok()) {
      return s;
    }
  }
  return server;
}

ServerProcess::~ServerProcess() {
  if (pid_ <= 0 || exit_code_ >= 0) return;
  kill(pid_, SIGTERM);
  if (!WaitPid(pid_, kStopGrace)) {
    kill(pid_, SIGKILL);
    WaitPid(pid_, absl::Seconds(10));
  }
}

bool ServerProcess::running() {
  if (exit_code_ >= 0) return false;
  std::optional<int> code = WaitPid(pid_, absl::ZeroDuration());
  if (!code) return true;
  exit_code_ = *code;
  return false;
}

std::shared_ptr<grpc::Channel> ServerProcess::NewChannel() const {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomChannel(target(), grpc::InsecureChannelCredentials(),
                                   args);
}

absl::Status ServerProcess::WaitReady(absl::Duration timeout) {
  const std::shared_ptr<grpc::Channel> channel = NewChannel();
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last = absl::UnknownError("not probed");
  while (absl::Now() < deadline) {
    if (!running()) {
      return absl::InternalError(absl::StrCat("attnscore-server exited with ",
                                              exit_code_, ": ", Tail(Log())));
    }
    const absl::Duration call_timeout =
        std::min(absl::Seconds(2),
                 std::max(deadline - absl::Now(), absl::Milliseconds(1)));
    absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
        status = CheckHealth(channel, kReadinessService, call_timeout);
    if (status.ok() &&
        *status == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    last = status.ok()
               ? absl::UnavailableError(
                     grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                         *status))
               : status.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "attnscore-server not ready within ", absl::FormatDuration(timeout), " (",
      last.ToString(), "): ", Tail(Log())));
}

void ServerProcess::Signal(int signal) {
  if (running()) kill(pid_, signal);
}

absl::StatusOr<int> ServerProcess::Wait(absl::Duration timeout) {
  if (exit_code_ >= 0) return exit_code_;
  std::optional<int> code = WaitPid(pid_, timeout);
  if (!code) {
    return absl::DeadlineExceededError(
        absl::StrCat("attnscore-server still running after ",
                     absl::FormatDuration(timeout)));
  }
  exit_code_ = *code;
  return exit_code_;
}

std::string ServerProcess::Log() const {
  return ReadFileOrEmpty(dir_->File("server.log"));
}

bool ServerProcess::WaitForLog(const std::string& text,
                               absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (absl::StrContains(Log(), text)) return true;
    if (absl::Now() >= deadline) return false;
    std::this_thread::sleep_for(kPollInterval);
  }
}

absl::StatusOr<std::string> ServerProcess::ScrapeMetrics() const {
  if (metrics_port_ <= 0) {
    return absl::FailedPreconditionError("no metrics port");
  }
  return HttpGet(metrics_port_, "/metrics");
}

double ServerProcess::SumMetric(const std::string& exposition,
                                const std::string& name) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::StartsWith(line, name)) continue;
    absl::string_view rest = line.substr(name.size());
    // `name` may go on into the labels ("m{code=\"OK\"") to pick the series
    // with those first labels.
    const absl::string_view follow =
        absl::StrContains(name, '{') ? ",} " : "{ ";
    if (!rest.empty() && !absl::StrContains(follow, rest.front())) {
      continue;  // a longer name or label value
    }
    const size_t space = rest.rfind(' ');
    double value = 0;
    if (space != absl::string_view::npos &&
        absl::SimpleAtod(rest.substr(space + 1), &value)) {
      sum += value;
    }
  }
  return sum;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
            const std::string& service, absl::Duration timeout) {
  std::unique_ptr<grpc::health::v1::Health::Stub> stub =
      grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return response.status();
}

absl::StatusOr<std::string> HttpGet(int port, const std::string& path,
                                    absl::Duration timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  // Bounded reads and writes (at least 1 ms: a zero timeval means no limit): a
  // stuck server fails the request instead of hanging the test.
  const timeval tv = absl::ToTimeval(std::max(timeout, absl::Milliseconds(1)));
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  const std::string request =
      absl::StrCat("GET ", path,
                   " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("send to port ", port));
  }
  std::string response;
  char buf[65536];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      close(fd);
      return absl::DeadlineExceededError(
          absl::StrCat("read from port ", port, " timed out"));
    }
    response.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos || !absl::StartsWith(response, "HTTP/1.")) {
    return absl::DataLossError(
        absl::StrCat("not an HTTP response: ", Tail(response)));
  }
  const absl::string_view status_line =
      absl::string_view(response).substr(0, response.find("\r\n"));
  const std::vector<absl::string_view> status_parts =
      absl::StrSplit(status_line, absl::MaxSplits(' ', 2));
  if (status_parts.size() < 2 || status_parts[1] != "200") {
    return absl::UnavailableError(
        absl::StrCat("GET ", path, ": ", status_line));
  }
  return response.substr(body + 4);
}

CommandResult RunCommand(const std::vector<std::string>& argv,
                         absl::Duration timeout) {
  CommandResult result;
  TempDir dir;
  const std::string log = dir.File("output");
  absl::StatusOr<pid_t> pid = Spawn(argv, log);
  if (!pid.ok()) {
    result.output = pid.status().ToString();
    return result;
  }
  std::optional<int> code = WaitPid(*pid, timeout);
  if (!code) {
    result.timed_out = true;
    kill(*pid, SIGKILL);
    code = WaitPid(*pid, absl::Seconds(10));
  }
  result.exit_code = code.value_or(-1);
  result.output = ReadFileOrEmpty(log);
  return result;
}

CommandResult RunServerUntilExit(const std::vector<std::string>& args,
                                 absl::Duration timeout) {
  std::vector<std::string> argv = {ServerBinary(), "--listen", "127.0.0.1:0",
                                   "--metrics-listen", "off"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, timeout);
}

}  // namespace attnscore::testing
