// attnscore-server: the AttentionScorer gRPC service with dynamic batching,
// relative-position models from --model-dir (reloaded on SIGHUP),
// grpc.health.v1, server reflection and Prometheus metrics. SIGTERM/SIGINT
// drain: readiness goes NOT_SERVING, new calls are refused, queued and
// in-flight requests are finished within --shutdown-grace, and the process
// exits 0.
//
// Every flag can also be set through an environment variable (ATTNSCORE_<FLAG>,
// e.g. ATTNSCORE_LISTEN); a flag on the command line wins. `--help` lists them
// with their defaults.
//
// Threads: SIGHUP, SIGTERM and SIGINT are blocked in every thread (the mask is
// set before any thread starts and inherited) and taken by one signal thread
// with sigtimedwait, so reloads and shutdown run as ordinary code, not in a
// signal handler.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/observability/logging.h"
#include "server/observability/metrics.h"
#include "server/observability/metrics_server.h"
#include "server/scoring/scorer.h"
#include "server/service/attention_scorer_service.h"
#include "server/service/model_registry.h"
#include "server/service/service_metrics.h"

#ifndef ATTNSCORE_VERSION
#define ATTNSCORE_VERSION "unknown"
#endif

namespace attnscore {
namespace {

// Room for a response's small fields (ids, shapes, timing) on top of
// --max-output-bytes.
constexpr int64_t kMessageOverheadBytes = int64_t{1} << 20;
// Server keepalive: ping an idle connection every minute and drop it if no
// answer comes within 20 s (finds dead clients behind NATs); let clients ping
// as often as every 10 s, with or without calls in flight, without being
// disconnected for it.
constexpr int kKeepaliveTimeMs = 60'000;
constexpr int kKeepaliveTimeoutMs = 20'000;
constexpr int kMinClientPingIntervalMs = 10'000;

struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string port_file;
  std::string metrics_listen = "127.0.0.1:9090";
  std::string metrics_port_file;
  int threads =
      static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int batch_workers = 1;
  int64_t max_batch_size = 32;
  int64_t max_queue_delay_us = 2000;
  int64_t max_queue = 256;
  int64_t max_output_bytes = int64_t{256} << 20;
  int64_t max_heads = 256;
  int64_t max_head_dim = 1024;
  int64_t max_seq_len = 16384;
  std::string model_dir;
  double shutdown_grace = 30;
  std::string log_format = "text";
  std::string log_level = "info";
  std::string device = "cpu";
  int64_t warmup_delay_ms = 0;
};

void AddFlags(CLI::App& app, Flags& flags) {
  // --help shows defaults; a flag given twice takes the last value (a wrapper's
  // defaults can be overridden by appending).
  app.option_defaults()->always_capture_default()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);
  auto add = [&app](const std::string& name, auto& value,
                    const std::string& env, const std::string& help) {
    return app.add_option(name, value, help)->envname("ATTNSCORE_" + env);
  };
  add("--listen", flags.listen, "LISTEN",
      "gRPC address HOST:PORT; port 0 picks a free port (logged, and written "
      "to --port-file)");
  add("--port-file", flags.port_file, "PORT_FILE",
      "Write the bound gRPC port to this file once the server accepts calls "
      "(default: none)");
  add("--metrics-listen", flags.metrics_listen, "METRICS_LISTEN",
      "Prometheus /metrics address HOST:PORT (port 0: a free port); \"off\" "
      "or an empty value disables metrics");
  add("--metrics-port-file", flags.metrics_port_file, "METRICS_PORT_FILE",
      "Write the bound metrics port to this file (default: none)");
  add("--threads", flags.threads, "THREADS",
      "LibTorch intra-op threads per batch (default: the number of cores)")
      ->check(CLI::PositiveNumber);
  add("--batch-workers", flags.batch_workers, "BATCH_WORKERS",
      "Threads computing batches; each batch uses --threads intra-op threads")
      ->check(CLI::PositiveNumber);
  add("--max-batch-size", flags.max_batch_size, "MAX_BATCH_SIZE",
      "Most batch items (sum of the requests' B) computed together")
      ->check(CLI::PositiveNumber);
  add("--max-queue-delay-us", flags.max_queue_delay_us, "MAX_QUEUE_DELAY_US",
      "How long a request waits for others with the same signature before its "
      "batch runs")
      ->check(CLI::NonNegativeNumber);
  add("--max-queue", flags.max_queue, "MAX_QUEUE",
      "Most requests waiting for compute; beyond it requests get UNAVAILABLE "
      "at once")
      ->check(CLI::PositiveNumber);
  add("--max-output-bytes", flags.max_output_bytes, "MAX_OUTPUT_BYTES",
      "Largest response (all requested outputs); larger requests get "
      "RESOURCE_EXHAUSTED. gRPC's "
      "send and receive message limits are this plus 1 MiB")
      ->check(CLI::Range(int64_t{1}, int64_t{INT_MAX} - kMessageOverheadBytes));
  add("--max-heads", flags.max_heads, "MAX_HEADS", "Largest H per request")
      ->check(CLI::PositiveNumber);
  add("--max-head-dim", flags.max_head_dim, "MAX_HEAD_DIM",
      "Largest D (and Dv) per request")
      ->check(CLI::PositiveNumber);
  add("--max-seq-len", flags.max_seq_len, "MAX_SEQ_LEN",
      "Largest Lq and Lk per request")
      ->check(CLI::PositiveNumber);
  add("--model-dir", flags.model_dir, "MODEL_DIR",
      "Directory of relative-position parameter sets NAME.safetensors / "
      "NAME.pt (model = file "
      "stem); reloaded on SIGHUP. Default: none (ALiBi only)");
  add("--shutdown-grace", flags.shutdown_grace, "SHUTDOWN_GRACE",
      "Seconds to finish queued and in-flight requests after SIGTERM/SIGINT "
      "before cancelling "
      "them")
      ->check(CLI::NonNegativeNumber);
  add("--log-format", flags.log_format, "LOG_FORMAT",
      "text, or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}));
  add("--log-level", flags.log_level, "LOG_LEVEL",
      "trace, debug (one line per request), info, warn, error, critical or "
      "off");
  add("--device", flags.device, "DEVICE",
      "cpu, cuda or cuda:N; start-up fails if unavailable");
  add("--warmup-delay-ms", flags.warmup_delay_ms, "WARMUP_DELAY_MS",
      "Keep readiness NOT_SERVING this long before the warm-up compute (staged "
      "roll-outs, tests)")
      ->check(CLI::NonNegativeNumber);
}

// Writes `content` so that a reader never sees a partial file: a temporary,
// then rename.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& content) {
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << content;
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

// The signals this process takes synchronously; blocked in every thread.
sigset_t HandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

// Waits for signals on its own thread: SIGHUP reloads the models, the first
// SIGTERM/SIGINT asks main to drain, a second one exits at once (an operator
// who insists).
class SignalThread {
 public:
  explicit SignalThread(service::ModelRegistry* models)
      : models_(models), thread_([this] { Loop(); }) {}
  ~SignalThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    thread_.join();
  }

  // Blocks until SIGTERM or SIGINT arrives.
  void WaitForShutdownRequest() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [this] { return shutdown_requested_; });
  }
  bool shutdown_requested() {
    std::lock_guard<std::mutex> lock(mutex_);
    return shutdown_requested_;
  }

 private:
  void Loop() {
    const sigset_t set = HandledSignals();
    // Short waits, so that the destructor's stop_ is seen promptly.
    const timespec timeout{0, 100'000'000};
    while (true) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;
      }
      const int sig = sigtimedwait(&set, nullptr, &timeout);
      if (sig < 0) continue;  // EAGAIN (timeout) or EINTR
      if (sig == SIGHUP) {
        Reload();
        continue;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (shutdown_requested_) {
        spdlog::warn("second {}: exiting without finishing the drain",
                     strsignal(sig));
        spdlog::shutdown();
        std::_Exit(1);
      }
      spdlog::info("{}: draining", strsignal(sig));
      shutdown_requested_ = true;
      cv_.notify_all();
    }
  }

  void Reload() {
    if (models_->dir().empty()) {
      spdlog::info("SIGHUP: no --model-dir, nothing to reload");
      return;
    }
    absl::Status status = models_->Reload();
    if (status.ok()) {
      spdlog::info("SIGHUP: reloaded {}: models {}", models_->dir(),
                   service::ModelNames(*models_->Current()));
    } else {
      spdlog::error("SIGHUP: reload of {} failed, keeping models {}: {}",
                    models_->dir(), service::ModelNames(*models_->Current()),
                    status.ToString());
    }
  }

  service::ModelRegistry* const models_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool shutdown_requested_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

int Run(const Flags& flags) {
  if (absl::Status s = observability::SetupLogging(
          *observability::ParseLogFormat(flags.log_format), flags.log_level);
      !s.ok()) {
    std::fprintf(stderr, "attnscore-server: --log-level: %s\n",
                 s.ToString().c_str());
    return 2;
  }
  const bool metrics_enabled =
      !flags.metrics_listen.empty() && flags.metrics_listen != "off";
  if (metrics_enabled) {
    std::string host;
    int port = 0;
    if (absl::Status s =
            observability::ParseHostPort(flags.metrics_listen, &host, &port);
        !s.ok()) {
      spdlog::critical("--metrics-listen: {}", s.ToString());
      return 2;
    }
  }

  scoring::ScorerOptions scorer_options;
  scorer_options.device = flags.device;
  scorer_options.intra_op_threads = flags.threads;
  absl::StatusOr<std::unique_ptr<scoring::Scorer>> scorer =
      scoring::Scorer::Create(scorer_options);
  if (!scorer.ok()) {
    spdlog::critical("--device {}: {}", flags.device,
                     scorer.status().ToString());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<service::ModelRegistry>> models =
      service::ModelRegistry::Create(flags.model_dir);
  if (!models.ok()) {
    spdlog::critical("--model-dir {}: {}", flags.model_dir,
                     models.status().ToString());
    return 1;
  }
  spdlog::info("models from {}: {}",
               flags.model_dir.empty() ? "(no --model-dir)" : flags.model_dir,
               service::ModelNames(*(*models)->Current()));

  observability::Registry registry;
  service::ServiceMetrics metrics(registry);
  registry
      .AddGauge("attnscore_build_info", "Always 1; labels say what is running.",
                {"version", "device"})
      .WithLabels({ATTNSCORE_VERSION, (*scorer)->device()})
      .Set(1);
  service::ModelRegistry* model_registry = models->get();
  registry.AddCallbackGauge(
      "attnscore_models_loaded", "Relative-position models loaded.",
      [model_registry] {
        return static_cast<double>(model_registry->Current()->models.size());
      });

  const int64_t max_message_bytes =
      flags.max_output_bytes + kMessageOverheadBytes;
  service::ServiceOptions options;
  options.limits.max_heads = flags.max_heads;
  options.limits.max_head_dim = flags.max_head_dim;
  options.limits.max_seq_len = flags.max_seq_len;
  options.limits.max_output_bytes = flags.max_output_bytes;
  options.batching.max_batch_size = static_cast<size_t>(flags.max_batch_size);
  options.batching.batch_timeout_micros = flags.max_queue_delay_us;
  options.batching.max_enqueued_tasks = static_cast<size_t>(flags.max_queue);
  options.batching.num_batch_threads = flags.batch_workers;
  options.max_message_bytes = max_message_bytes;
  options.intra_op_threads = flags.threads;
  absl::StatusOr<std::unique_ptr<service::AttentionScorerService>> service =
      service::AttentionScorerService::Create(options, scorer->get(),
                                              model_registry, &metrics);
  if (!service.ok()) {
    spdlog::critical("{}", service.status().ToString());
    return 2;
  }

  std::unique_ptr<observability::MetricsServer> metrics_server;
  if (metrics_enabled) {
    absl::StatusOr<std::unique_ptr<observability::MetricsServer>> started =
        observability::MetricsServer::Start(flags.metrics_listen, &registry);
    if (!started.ok()) {
      spdlog::critical("--metrics-listen {}: {}", flags.metrics_listen,
                       started.status().ToString());
      return 1;
    }
    metrics_server = *std::move(started);
    spdlog::info("metrics on {} (port {})", flags.metrics_listen,
                 metrics_server->port());
    if (!flags.metrics_port_file.empty()) {
      if (absl::Status s =
              WriteFileAtomically(flags.metrics_port_file,
                                  absl::StrCat(metrics_server->port(), "\n"));
          !s.ok()) {
        spdlog::critical("--metrics-port-file: {}", s.ToString());
        return 1;
      }
    }
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(flags.listen, grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(service->get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             kKeepaliveTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
      kMinClientPingIntervalMs);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    spdlog::critical(
        "--listen {}: cannot listen there (address in use or not local?)",
        flags.listen);
    return 1;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(service::kServiceName, false);
  spdlog::info(
      "attnscore-server {} listening on {} (port {}), device {}, {} intra-op "
      "threads",
      ATTNSCORE_VERSION, flags.listen, port, (*scorer)->device(),
      flags.threads);
  if (!flags.port_file.empty()) {
    if (absl::Status s =
            WriteFileAtomically(flags.port_file, absl::StrCat(port, "\n"));
        !s.ok()) {
      spdlog::critical("--port-file: {}", s.ToString());
      server->Shutdown();
      return 1;
    }
  }

  SignalThread signals(model_registry);
  if (flags.warmup_delay_ms > 0) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds(flags.warmup_delay_ms));
  }
  if (absl::Status s = (*service)->WarmUp(); !s.ok()) {
    spdlog::critical("{}", s.ToString());
    server->Shutdown(std::chrono::system_clock::now());
    (*service)->Shutdown();
    return 1;
  }
  if (!signals.shutdown_requested()) {
    health->SetServingStatus(service::kServiceName, true);
    spdlog::info("ready: warm-up done, {} SERVING", service::kServiceName);
  }

  signals.WaitForShutdownRequest();
  const auto drain_start = std::chrono::steady_clock::now();
  health->SetServingStatus(service::kServiceName, false);
  // Refuses new calls at once, waits for the running ones (whose requests the
  // batch workers keep computing) until the grace deadline, then cancels what
  // is left. Returns when every call is done.
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::microseconds(
                       static_cast<int64_t>(flags.shutdown_grace * 1e6)));
  // Anything still queued (requests of cancelled calls) is answered or dropped;
  // workers joined.
  (*service)->Shutdown();
  server->Wait();
  const double drain_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                    drain_start)
          .count();
  if (drain_seconds > flags.shutdown_grace) {
    spdlog::warn(
        "drain took {:.3f} s, over --shutdown-grace {} s: late calls were "
        "cancelled",
        drain_seconds, flags.shutdown_grace);
  }
  if (metrics_server != nullptr) metrics_server->Stop();
  spdlog::info("stopped after a {:.3f} s drain", drain_seconds);
  // Every call is answered and every batch worker joined: exit now. gRPC
  // 1.51's global teardown (run by the destructors below) joins an executor
  // thread parked in epoll_wait until its next timer, which delayed the exit by
  // up to 10 s after large responses, time an orchestrator spends waiting.
  spdlog::shutdown();
  std::fflush(nullptr);
  std::_Exit(0);
}

}  // namespace
}  // namespace attnscore

int main(int argc, char** argv) {
  // Before any thread exists, so that every thread (gRPC, LibTorch, OpenMP,
  // httplib) inherits the mask and only the signal thread takes these signals.
  const sigset_t handled = attnscore::HandledSignals();
  pthread_sigmask(SIG_BLOCK, &handled, nullptr);
  // A client that hangs up mid-response must not kill the server.
  signal(SIGPIPE, SIG_IGN);

  CLI::App app{
      "attnscore-server: attention scores over gRPC (ALiBi and Transformer-XL "
      "relative "
      "position bias), with dynamic batching."};
  attnscore::Flags flags;
  attnscore::AddFlags(app, flags);
  CLI11_PARSE(app, argc, argv);
  return attnscore::Run(flags);
}
