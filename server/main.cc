// attnscore-server: the AttentionScorer gRPC service with dynamic batching,
// relative-position models from --model-dir (reloaded on SIGHUP),
// grpc.health.v1, server reflection (--reflection) and Prometheus metrics;
// TLS, client certificates and bearer tokens (AddSecurityFlags, README
// "Security and limits"). SIGTERM/SIGINT
// drain: readiness goes NOT_SERVING, queued and in-flight requests are
// finished while new calls get UNAVAILABLE from the service, then the port
// closes; all within --shutdown-grace, and the process exits 0.
//
// Every flag can also be set through an environment variable (ATTNSCORE_<FLAG>,
// e.g. ATTNSCORE_LISTEN); a flag on the command line wins. `--help` lists them
// with their defaults. Exit codes: 0 after a drain, 1 when start-up fails (the
// device, the models, a port or a port file, the TLS or token files), 2 for a
// flag value the parser cannot check (the log level, the metrics address, the
// batcher's options, security flags that do not go together).
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
#include <cctype>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "attnscore/version.h"
#include "common/cli_checks.h"
#include "server/cpu/allocator.h"
#include "server/cpu/aten_capability.h"
#include "server/cpu/matched_kernels.h"
#include "server/observability/logging.h"
#include "server/observability/metrics.h"
#include "server/observability/metrics_server.h"
#include "server/observability/process_metrics.h"
#include "server/scoring/accelerator.h"
#include "server/scoring/aten_scorer.h"
#include "server/scoring/buffer_pool.h"
#include "server/scoring/model_loader.h"
#include "server/scoring/scorer.h"
#include "server/security/health_listener.h"
#include "server/security/server_security.h"
#include "server/security/unix_socket.h"
#include "server/service/attention_scorer_service.h"
#include "server/service/kserve_service.h"
#include "server/service/memory_limit.h"
#include "server/service/model_registry.h"
#include "server/service/service_metrics.h"

namespace attnscore {
namespace {

// Whether the CPU path's tiles spread over the intra-op threads: only where the
// scoring library is compiled with OpenMP (server/scoring/CMakeLists.txt).
#ifdef ATTNSCORE_PARALLEL_TILES
constexpr char kCpuTiles[] = "CPU tiles spread over them";
#else
constexpr char kCpuTiles[] =
    "CPU tiles on the batch thread: this build's scoring library has no OpenMP";
#endif

// Exit codes, as the comment at the top of this file says.
constexpr int kExitStartupFailed = 1;
constexpr int kExitBadFlag = 2;

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

// The readiness entry in grpc.health.v1: the service's own name.
const char* ReadinessService() {
  return v1::AttentionScorer::service_full_name();
}

int NumberOfCores() {
  return static_cast<int>(std::max(1U, std::thread::hardware_concurrency()));
}

// What the command line sets. The flags that configure the scorer and the
// service are bound to the members of their options structs, so their defaults
// are those structs' own (written once, in the struct); the rest belong to this
// binary.
struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string port_file;
  std::string listen_unix;  // also a Unix domain socket at this path
  std::string listen_unix_mode = "660";
  std::string metrics_listen = "127.0.0.1:9090";
  std::string metrics_port_file;
  // Intra-op threads for both the scorer and GetServerInfo. Shown in --help as
  // the number it resolves to, rather than ScorerOptions' 0.
  int threads = NumberOfCores();
  std::string model_dir;
  double shutdown_grace = 30;
  std::string log_format = "text";
  std::string log_level = "info";
  int64_t warmup_delay_ms = 0;
  security::SecurityOptions security;  // --tls-*, --auth-token-file
  std::string health_listen;           // plaintext health-only listener
  std::string health_port_file;
  bool reflection = false;
  scoring::ScorerOptions scorer;      // --device
  std::string compute_path = "auto";  // scorer.compute_path, by name
  std::string alibi_kernel = "auto";  // scorer.alibi_kernel, by name
  service::ServiceOptions service;    // --batch-workers, --max-*
  int64_t host_pool_bytes = -1;       // scoring::HostBufferPool's idle cap
  int64_t host_pool_decay_ms = scoring::BufferPool::kDefaultDecay.count();

  bool metrics_enabled() const {
    return !metrics_listen.empty() && metrics_listen != "off";
  }
};

// Binds `value` to the flag `name`, also read from $ATTNSCORE_<env>. Counts
// that are size_t in the options structs are parsed as int64_t like every other
// number: --help says INT for all of them, and a negative value fails the
// flag's range check (with its message) instead of the conversion.
template <typename T>
CLI::Option* AddFlag(CLI::App& app, const std::string& name, T& value,
                     const std::string& env, const std::string& help) {
  CLI::Option* option = nullptr;
  if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    // A converting option captures no default: give it the struct's.
    option = app.add_option<T, int64_t>(name, value, help)
                 ->default_str(std::to_string(value));
  } else {
    option = app.add_option(name, value, help);
  }
  return option->envname("ATTNSCORE_" + env);
}

// --listen, --port-file, --metrics-listen, --metrics-port-file.
void AddEndpointFlags(CLI::App& app, Flags& flags) {
  AddFlag(app, "--listen", flags.listen, "LISTEN",
          "gRPC address HOST:PORT; port 0 picks a free port "
          "(logged, and written to --port-file)");
  AddFlag(app, "--listen-unix", flags.listen_unix, "LISTEN_UNIX",
          "Also serve every service on a Unix domain socket at this path, "
          "for callers on the same host or pod (clients: unix:PATH); a "
          "stale socket there is replaced. Default: none");
  AddFlag(app, "--listen-unix-mode", flags.listen_unix_mode, "LISTEN_UNIX_MODE",
          "Permission bits of the --listen-unix socket, octal (connecting "
          "needs write access)");
  AddFlag(app, "--port-file", flags.port_file, "PORT_FILE",
          "Write the bound gRPC port to this file once the server accepts "
          "calls (default: none)");
  AddFlag(app, "--metrics-listen", flags.metrics_listen, "METRICS_LISTEN",
          "Prometheus /metrics address HOST:PORT (port 0: a free port); "
          "\"off\" or an empty value disables metrics");
  AddFlag(app, "--metrics-port-file", flags.metrics_port_file,
          "METRICS_PORT_FILE",
          "Write the bound metrics port to this file (default: none)");
}

// --threads, --batch-workers, --batch-worker-spin-us, --max-batch-size,
// --max-queue-delay-us, --max-queue: the batcher's options.
void AddBatchingFlags(CLI::App& app, Flags& flags) {
  batching::BatchSchedulerOptions& batching = flags.service.batching;
  AddFlag(app, "--threads", flags.threads, "THREADS",
          "LibTorch intra-op threads per batch "
          "(default: the number of cores)")
      ->check(checks::WholeNumber(1, INT_MAX));
  AddFlag(app, "--batch-workers", batching.num_batch_threads, "BATCH_WORKERS",
          "Threads computing batches; "
          "each batch uses --threads intra-op threads")
      ->check(checks::WholeNumber(1, INT_MAX));
  AddFlag(app, "--batch-worker-spin-us", batching.idle_spin_us,
          "BATCH_WORKER_SPIN_US",
          "How long a batch worker with no work spins before it sleeps, so "
          "that the next request starts without a thread wake-up (only while "
          "requests come that soon). For dedicated cores: the CPU it burns "
          "(attnscore_batch_worker_spin_seconds_total) counts against any CPU "
          "quota. 0: never spin")
      ->check(checks::WholeNumber(0, attnscore::batching::kMaxIdleSpinUs));
  AddFlag(app, "--max-batch-size", batching.max_batch_size, "MAX_BATCH_SIZE",
          "Most batch items (sum of the requests' B) computed together")
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--max-queue-delay-us", batching.max_queue_delay_us,
          "MAX_QUEUE_DELAY_US",
          "How long a batch is held open for more requests with the same "
          "signature; 0: a batch runs as soon as a worker is free, with "
          "whatever queued meanwhile")
      ->check(checks::WholeNumber(0));
  AddFlag(app, "--max-queue", batching.max_enqueued_tasks, "MAX_QUEUE",
          "Most requests waiting for compute; "
          "beyond it requests get UNAVAILABLE at once")
      ->check(checks::WholeNumber(1));
}

// --max-request-memory, --max-request-work, --max-inflight-bytes,
// --max-inflight-per-client, --host-pool-bytes, --host-pool-decay-ms,
// --max-stream-unsent-bytes: what requests may cost, alone and together.
void AddRequestBudgetFlags(CLI::App& app, Flags& flags) {
  service::ServiceOptions& service = flags.service;
  AddFlag(app, "--max-request-memory", service.limits.max_request_memory,
          "MAX_REQUEST_MEMORY",
          "Largest predicted peak working memory of one request in bytes "
          "(inputs, outputs, scratch); larger requests get RESOURCE_EXHAUSTED "
          "before anything is allocated")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--max-request-work", service.limits.max_request_work,
          "MAX_REQUEST_WORK",
          "Largest predicted compute work of one request (floating-point "
          "operations plus a per-item charge); larger requests get "
          "RESOURCE_EXHAUSTED")
      ->check(checks::WholeNumber(1));
  // Shown in --help as the number it resolves to on this machine.
  service.max_inflight_bytes = service::DefaultInflightBytes();
  AddFlag(app, "--max-inflight-bytes", service.max_inflight_bytes,
          "MAX_INFLIGHT_BYTES",
          "Bytes all requests together may hold (their bytes, predicted peak, "
          "unsent replies); a request that does not fit gets UNAVAILABLE at "
          "once. Default: half the container's memory limit (cgroup v2, v1) "
          "or of the RAM")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--max-inflight-per-client", service.max_inflight_per_client,
          "MAX_INFLIGHT_PER_CLIENT",
          "One caller identity's share of --max-inflight-bytes in bytes; "
          "0: no per-client cap, -1: half of --max-inflight-bytes with "
          "tokens or client certificates, no cap without (every caller is "
          "then the one identity 'anonymous')")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(-1));
  AddFlag(app, "--host-pool-bytes", flags.host_pool_bytes, "HOST_POOL_BYTES",
          "Idle host memory the scorer keeps for reuse (outputs, staged "
          "inputs, scratch), so that steady-state requests take no page "
          "faults; on top of --max-inflight-bytes. -1: a quarter of "
          "--max-inflight-bytes, at most 1 GiB; 0: none kept")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(-1));
  AddFlag(app, "--host-pool-decay-ms", flags.host_pool_decay_ms,
          "HOST_POOL_DECAY_MS",
          "How long an idle block of --host-pool-bytes is kept unused before "
          "it goes back to the kernel, so that memory taken for a burst is "
          "returned after it; 0: kept until the cap needs its room")
      ->check(checks::WholeNumber(0));
  AddFlag(app, "--max-stream-unsent-bytes", service.max_stream_unsent_bytes,
          "MAX_STREAM_UNSENT_BYTES",
          "Unsent reply bytes of one ScoreStream (replies still computing at "
          "their predicted size) above which the server stops reading it "
          "until the client reads")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--reply-chunk-bytes", service.reply_chunk_bytes,
          "REPLY_CHUNK_BYTES",
          "Output bytes per ScoreChunked message (whole rows, at least one): "
          "the client copies one chunk while the next is on the wire")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(1));
}

// --shm-prefix, --max-shm-regions, --max-shm-regions-per-client:
// shared-memory outputs for clients on the
// same host (RegisterSharedMemory).
void AddSharedMemoryFlags(CLI::App& app, Flags& flags) {
  service::SharedMemoryOptions& shm = flags.service.shared_memory;
  AddFlag(app, "--shm-prefix", shm.prefix, "SHM_PREFIX",
          "Turns on shared-memory outputs: clients may register POSIX "
          "shared-memory objects whose name starts with this prefix and have "
          "outputs written there instead of the reply. Default: empty (off)")
      ->check([](const std::string& prefix) -> std::string {
        for (const char c : prefix) {
          if (std::isalnum(static_cast<unsigned char>(c)) == 0 && c != '.' &&
              c != '_' && c != '-') {
            return "expected letters, digits, '.', '_' or '-'";
          }
        }
        return prefix.size() < service::kMaxObjectNameBytes
                   ? ""
                   : "expected a shorter prefix";
      });
  AddFlag(app, "--max-shm-regions", shm.max_regions, "MAX_SHM_REGIONS",
          "Most shared-memory regions registered at once, all clients "
          "together (at most 4096)")
      ->check(checks::WholeNumber(1, service::kMaxMappedRegions));
  AddFlag(app, "--max-shm-regions-per-client", shm.max_regions_per_client,
          "MAX_SHM_REGIONS_PER_CLIENT",
          "Most of them one caller identity may hold; -1: half of "
          "--max-shm-regions with tokens or client certificates, no cap "
          "without; 0: no per-client cap")
      ->check(checks::WholeNumber(-1, INT_MAX));
}

// --max-output-bytes, --max-heads, --max-head-dim, --max-seq-len, --model-dir:
// what a request may ask for.
void AddRequestFlags(CLI::App& app, Flags& flags) {
  service::RequestLimits& limits = flags.service.limits;
  AddFlag(app, "--max-output-bytes", limits.max_output_bytes,
          "MAX_OUTPUT_BYTES",
          "Largest response (all requested outputs); larger requests get "
          "RESOURCE_EXHAUSTED. "
          "gRPC's send and receive message limits are this plus 1 MiB")
      ->transform(checks::ByteSize())
      ->check(checks::WholeNumber(1, int64_t{INT_MAX} - kMessageOverheadBytes));
  AddFlag(app, "--max-heads", limits.max_heads, "MAX_HEADS",
          "Largest H per request")
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--max-head-dim", limits.max_head_dim, "MAX_HEAD_DIM",
          "Largest D (and Dv) per request")
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--max-seq-len", limits.max_seq_len, "MAX_SEQ_LEN",
          "Largest Lq and Lk per request")
      ->check(checks::WholeNumber(1));
  AddFlag(app, "--model-dir", flags.model_dir, "MODEL_DIR",
          "Directory of relative-position parameter sets "
          "NAME.safetensors / NAME.pt (model = file stem); reloaded on SIGHUP. "
          "Default: none (ALiBi only)");
  AddRequestBudgetFlags(app, flags);
  AddSharedMemoryFlags(app, flags);
}

// --shutdown-grace, --log-format, --log-level, --device, --compute-path,
// --alibi-kernel, --warmup-delay-ms.
void AddLifecycleFlags(CLI::App& app, Flags& flags) {
  AddFlag(app, "--shutdown-grace", flags.shutdown_grace, "SHUTDOWN_GRACE",
          "Seconds to finish queued and in-flight requests after "
          "SIGTERM/SIGINT before cancelling them")
      ->check(checks::NumberAtLeast(0));
  AddFlag(app, "--log-format", flags.log_format, "LOG_FORMAT",
          "text, or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}));
  AddFlag(app, "--log-level", flags.log_level, "LOG_LEVEL",
          "trace, debug (one line per request), info, warn, error, critical "
          "or off");
  AddFlag(app, "--device", flags.scorer.device, "DEVICE",
          "cpu, cuda or cuda:N; start-up fails if unavailable");
  AddFlag(app, "--compute-path", flags.compute_path, "COMPUTE_PATH",
          "auto (batched on CUDA, blocked on the CPU), blocked (tiles of "
          "query rows per head; the CPU only) or batched (whole batched "
          "products)")
      ->check(CLI::IsMember({"auto", "blocked", "batched"}));
  AddFlag(app, "--alibi-kernel", flags.alibi_kernel, "ALIBI_KERNEL",
          "auto (the batched path's ALiBi logits by the project's kernel "
          "where it runs: CUDA) or off (the library's products)")
      ->check(CLI::IsMember({"auto", "off"}));
  AddFlag(app, "--warmup-delay-ms", flags.warmup_delay_ms, "WARMUP_DELAY_MS",
          "Keep readiness NOT_SERVING this long before the warm-up compute "
          "(staged roll-outs, tests)")
      ->check(checks::WholeNumber(0));
}

// --tls-cert, --tls-key, --tls-client-ca, --tls-refresh-seconds,
// --auth-token-file, --allow-plaintext-tokens, --health-listen,
// --health-port-file, --reflection: who may call, over what.
void AddSecurityFlags(CLI::App& app, Flags& flags) {
  security::SecurityOptions& sec = flags.security;
  AddFlag(app, "--tls-cert", sec.tls_cert, "TLS_CERT",
          "PEM certificate chain: serve TLS (with --tls-key). Re-read when "
          "the file changes (every --tls-refresh-seconds) and checked on "
          "SIGHUP. Default: plaintext");
  AddFlag(app, "--tls-key", sec.tls_key, "TLS_KEY",
          "PEM private key of --tls-cert");
  AddFlag(app, "--tls-client-ca", sec.tls_client_ca, "TLS_CLIENT_CA",
          "PEM CA bundle: require client certificates signed by it (mutual "
          "TLS); without --auth-token-file the caller's identity is the "
          "certificate's subject");
  AddFlag(app, "--tls-refresh-seconds", sec.tls_refresh_seconds,
          "TLS_REFRESH_SECONDS",
          "How often the TLS files are re-read; new connections get a "
          "changed certificate within this time")
      ->check(checks::WholeNumber(1, 86400));
  AddFlag(app, "--auth-token-file", sec.auth_token_file, "AUTH_TOKEN_FILE",
          "Bearer tokens, one per line as TOKEN or NAME:TOKEN (# comments); "
          "every attnscore.v1 and KServe call needs 'authorization: Bearer "
          "<token>' (grpc.health.v1 does not). Re-read on SIGHUP");
  app.add_flag("--allow-plaintext-tokens", sec.allow_plaintext_tokens,
               "Accept --auth-token-file without TLS (tokens readable on "
               "the wire: a TLS-terminating proxy in front, or tests)")
      ->envname("ATTNSCORE_ALLOW_PLAINTEXT_TOKENS");
  AddFlag(app, "--health-listen", flags.health_listen, "HEALTH_LISTEN",
          "Also serve grpc.health.v1 alone, in plaintext, on HOST:PORT (for "
          "Kubernetes gRPC probes in front of a TLS port). Default: none");
  AddFlag(app, "--health-port-file", flags.health_port_file, "HEALTH_PORT_FILE",
          "Write the bound --health-listen port to this file");
  app.add_flag("--reflection", flags.reflection,
               "Serve gRPC server reflection (grpcurl and similar tools "
               "list and call methods without the .proto files)")
      ->envname("ATTNSCORE_REFLECTION");
}

// --help lists the flags in the order they are added here.
void AddFlags(CLI::App& app, Flags& flags) {
  // --help shows defaults; a flag given twice takes the last value (a wrapper's
  // defaults can be overridden by appending).
  app.option_defaults()->always_capture_default()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);
  AddEndpointFlags(app, flags);
  AddBatchingFlags(app, flags);
  AddRequestFlags(app, flags);
  AddLifecycleFlags(app, flags);
  AddSecurityFlags(app, flags);
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

// Waits for signals on its own thread: SIGHUP reloads the models (and runs
// `reload_security`: tokens and TLS files), the first
// SIGTERM/SIGINT asks main to drain, a second one exits at once (an operator
// who insists).
class SignalThread {
 public:
  SignalThread(service::ModelRegistry* models,
               std::function<void()> reload_security)
      : models_(models),
        reload_security_(std::move(reload_security)),
        thread_([this] { Loop(); }) {}
  ~SignalThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    thread_.join();
  }
  SignalThread(const SignalThread&) = delete;
  SignalThread& operator=(const SignalThread&) = delete;

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
    pthread_setname_np(pthread_self(), "attnscore-sig");
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
    if (reload_security_) reload_security_();
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
  const std::function<void()> reload_security_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool shutdown_requested_ = false;
  std::thread thread_;  // last: starts after the members it uses
};

// Message size limits and keepalive (see the constants above).
//
// gRPC's own guards, below the service's budgets (the in-flight budget and
// the per-request caps only see a request once gRPC has read it):
//   guard                                        value     why
//   GRPC_ARG_MAX_CONCURRENT_STREAMS              100       calls at once on
//                                                          one connection
//   ResourceQuota memory                         max(half the in-flight
//                                                budget, 2 messages): gRPC's
//                                                read and write buffers; under
//                                                pressure it shrinks windows
//   ResourceQuota threads                        256       threads gRPC may
//                                                          create
//   GRPC_ARG_MAX_CONNECTION_IDLE_MS              5 min     idle connections
//                                                          are closed (GOAWAY)
//   GRPC_ARG_MAX_CONNECTION_AGE_MS (+ jitter)    30 min    connections are
//                                                          recycled, so load
//                                                          rebalances
//   GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS         5 min     calls running at
//                                                          the age finish
//   GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_..._MS 10 s      a client pinging
//                                                          more often
//   GRPC_ARG_HTTP2_MAX_PING_STRIKES              2         than that twice is
//                                                          disconnected
// None has a flag: they bound abuse, not legitimate use (streams older than
// 35 min are ended with UNAVAILABLE and clients reconnect).
constexpr int kMaxConcurrentStreams = 100;
constexpr int kMaxQuotaThreads = 256;
constexpr int kMaxConnectionIdleMs = 5 * 60'000;
constexpr int kMaxConnectionAgeMs = 30 * 60'000;
constexpr int kMaxConnectionAgeGraceMs = 5 * 60'000;
constexpr int kMaxPingStrikes = 2;

void ConfigureChannels(grpc::ServerBuilder& builder, int64_t max_message_bytes,
                       int64_t max_inflight_bytes) {
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
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, kMaxPingStrikes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             kMaxConcurrentStreams);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             kMaxConnectionIdleMs);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             kMaxConnectionAgeMs);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             kMaxConnectionAgeGraceMs);
  // Room for two whole messages at least: a smaller quota would stall a
  // legitimate largest request.
  const int64_t quota_bytes =
      std::max(max_inflight_bytes / 2, 2 * max_message_bytes);
  grpc::ResourceQuota quota("attnscore");
  quota.Resize(static_cast<size_t>(quota_bytes));
  quota.SetMaxThreads(kMaxQuotaThreads);
  builder.SetResourceQuota(quota);
}

// The server's life: start-up, serving and drain, one step per method, in the
// order Run() takes them. A step that fails logs why and returns false; Run()
// turns that into the exit code.
//
// Ownership: members are declared in the order the steps make them, so that
// after a failed start-up they are destroyed in reverse: the gRPC server before
// the service it calls, the service before the scorer, models and metrics it
// uses. Thread safety: Run() on the main thread only.
class Server {
 public:
  explicit Server(Flags flags) : flags_(std::move(flags)) {}
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The exit code of a failed start-up. After a drain it does not return: it
  // exits the process with 0.
  int Run();

 private:
  bool SetUpLogging() const;
  bool CheckListenAddresses() const;
  bool CheckListenUnix();
  bool CreateScorer();
  bool LoadModels();
  void RegisterProcessMetrics();
  int CreateSecurity();
  bool CreateService();
  bool StartMetricsServer();
  bool StartGrpcServer();
  bool ServeUnixSocket(int bound);
  bool StartHealthListener();
  bool WritePortFile();
  bool WarmUp(SignalThread& signals);
  [[noreturn]] void DrainAndExit();

  // gRPC's send and receive limits: the largest response plus its small fields.
  int64_t max_message_bytes() const {
    return flags_.service.limits.max_output_bytes + kMessageOverheadBytes;
  }

  const Flags flags_;
  std::unique_ptr<scoring::Scorer> scorer_;
  // Gives back the host pool's unused blocks while no request comes.
  std::unique_ptr<scoring::IdleBlockReleaser> pool_releaser_;
  std::unique_ptr<service::ModelRegistry> models_;
  observability::Registry registry_;
  service::ServiceMetrics metrics_{registry_};
  // TLS credentials and the Authenticator the service asks on every call.
  std::unique_ptr<security::ServerSecurity> security_;
  std::unique_ptr<service::AttentionScorerService> service_;
  // The Open Inference Protocol on the same port and pipeline.
  std::unique_ptr<service::KServeService> kserve_;
  std::unique_ptr<observability::MetricsServer> metrics_server_;
  int port_ = 0;          // the bound gRPC port, set by BuildAndStart
  mode_t unix_mode_ = 0;  // --listen-unix-mode, parsed
  // --listen-unix's file, removed when the server stops; declared before
  // server_, so that a failed start-up stops the server first.
  std::unique_ptr<security::UnixSocketFile> unix_socket_;
  std::unique_ptr<grpc::Server> server_;
  // --health-listen, and the fan-out that gives it server_'s statuses.
  std::unique_ptr<security::HealthListener> health_listener_;
  std::unique_ptr<security::HealthFanout> health_fanout_;
  // server_'s health service, or health_fanout_ with --health-listen.
  grpc::HealthCheckServiceInterface* health_ = nullptr;
};

int Server::Run() {
  if (!SetUpLogging() || !CheckListenAddresses() || !CheckListenUnix()) {
    return kExitBadFlag;
  }
  // Before the slow steps: a wrong flag combination or file fails at once.
  if (const int code = CreateSecurity(); code != 0) return code;
  if (!CreateScorer() || !LoadModels()) return kExitStartupFailed;
  RegisterProcessMetrics();
  if (!CreateService()) return kExitBadFlag;
  if (!StartMetricsServer() || !StartGrpcServer() || !StartHealthListener() ||
      !WritePortFile()) {
    return kExitStartupFailed;
  }
  security::ServerSecurity* security = security_.get();
  SignalThread signals(models_.get(), [security] { security->Reload(); });
  if (!WarmUp(signals)) return kExitStartupFailed;
  signals.WaitForShutdownRequest();
  DrainAndExit();
}

// Before it, errors go to stderr: there is no logger yet.
bool Server::SetUpLogging() const {
  // --log-format was checked by the parser; --log-level is checked here.
  const absl::Status status = observability::SetupLogging(
      *observability::ParseLogFormat(flags_.log_format), flags_.log_level);
  if (status.ok()) return true;
  std::fprintf(stderr, "attnscore-server: --log-level: %s\n",
               status.ToString().c_str());
  return false;
}

// Checked before the slow steps, so that a typo fails at once, and by the
// project's rule rather than gRPC's, which takes a port past 65535 modulo
// 65536 (--listen 127.0.0.1:99999 served on port 34463).
bool Server::CheckListenAddresses() const {
  const std::pair<const char*, const std::string*> addresses[] = {
      {"--listen", &flags_.listen},
      {"--metrics-listen",
       flags_.metrics_enabled() ? &flags_.metrics_listen : nullptr},
      {"--health-listen",
       flags_.health_listen.empty() ? nullptr : &flags_.health_listen}};
  for (const auto& [flag, address] : addresses) {
    if (address == nullptr) continue;
    std::string host;
    int port = 0;
    const absl::Status status =
        observability::ParseHostPort(*address, &host, &port);
    if (!status.ok()) {
      spdlog::critical("{}: {}", flag, absl::StrCat(status.message()));
      return false;
    }
  }
  return true;
}

bool Server::CheckListenUnix() {
  if (flags_.listen_unix.empty()) return true;
  absl::StatusOr<mode_t> mode =
      security::ParseSocketMode(flags_.listen_unix_mode);
  absl::Status status = security::CheckUnixSocketPath(flags_.listen_unix);
  if (status.ok() && !mode.ok()) status = mode.status();
  if (status.ok()) {
    unix_mode_ = *mode;
    return true;
  }
  spdlog::critical("{}", std::string{status.message()});
  return false;
}

bool Server::CreateScorer() {
  scoring::ScorerOptions options = flags_.scorer;
  options.intra_op_threads = flags_.threads;
  // The flag's check admits only names ParseComputePath knows.
  options.compute_path = *scoring::ParseComputePath(flags_.compute_path);
  options.alibi_kernel = flags_.alibi_kernel != "off";
  absl::StatusOr<std::unique_ptr<scoring::Scorer>> scorer =
      scoring::CreateAtenScorer(options);
  if (!scorer.ok()) {
    spdlog::critical("--device {} --compute-path {}: {}", options.device,
                     flags_.compute_path, scorer.status().ToString());
    return false;
  }
  scorer_ = *std::move(scorer);
  spdlog::info("scorer: {}", scorer_->Describe());
  const int64_t pool =
      flags_.host_pool_bytes >= 0
          ? flags_.host_pool_bytes
          : std::min(int64_t{1} << 30, flags_.service.max_inflight_bytes / 4);
  scoring::HostBufferPool().SetMaxCachedBytes(static_cast<size_t>(pool));
  const std::chrono::milliseconds decay(flags_.host_pool_decay_ms);
  scoring::HostBufferPool().SetDecay(decay);
  if (decay.count() > 0) {
    pool_releaser_ = std::make_unique<scoring::IdleBlockReleaser>(
        std::max(decay / 4, std::chrono::milliseconds(1)));
  }
  spdlog::info(
      "host buffer pool: up to {} idle bytes kept for reuse, each for at most "
      "{} ms unused (0: no limit)",
      pool, decay.count());
  return true;
}

// The registry reloads through the same loader on SIGHUP.
bool Server::LoadModels() {
  absl::StatusOr<std::unique_ptr<service::ModelRegistry>> models =
      service::ModelRegistry::Create(
          flags_.model_dir,
          [](const std::string& dir) { return scoring::LoadModelDir(dir); });
  if (!models.ok()) {
    spdlog::critical("--model-dir {}: {}", flags_.model_dir,
                     models.status().ToString());
    return false;
  }
  models_ = *std::move(models);
  spdlog::info("models from {}: {}",
               flags_.model_dir.empty() ? "(no --model-dir)" : flags_.model_dir,
               service::ModelNames(*models_->Current()));
  return true;
}

// The series about the process itself; the service registers its own.
void Server::RegisterProcessMetrics() {
  const cpu::KernelInfo kernels = cpu::CurrentKernelInfo();
  spdlog::info("kernels: {}", cpu::KernelInfoLine(kernels));
  if (!kernels.below_cpu.empty()) {
    spdlog::warn("kernels below this CPU's: {}", kernels.below_cpu);
  }
  spdlog::info("allocator: {}", cpu::AllocatorSetting());
  registry_
      .AddGauge("attnscore_build_info", "Always 1; labels say what is running.",
                {"version", "device", "isa", "blas_core", "aten_capability"})
      .WithLabels({kVersion, scorer_->device(), kernels.isa, kernels.blas_core,
                   kernels.aten_capability})
      .Set(1);
  observability::AddProcessMetrics(registry_);
  const service::ModelRegistry* models = models_.get();
  registry_.AddCallbackGauge(
      "attnscore_models_loaded", "Relative-position models loaded.", [models] {
        return static_cast<double>(models->Current()->models.size());
      });
  // The pool's idle blocks are memory the process keeps on purpose (up to
  // --host-pool-bytes): RSS minus this is what the rest holds.
  registry_.AddCallbackGauge(
      "attnscore_host_pool_idle_bytes",
      "Idle host buffers kept for reuse (at most --host-pool-bytes).", [] {
        return static_cast<double>(
            scoring::HostBufferPool().stats().cached_bytes);
      });
  registry_.AddCallbackCounter(
      "attnscore_host_pool_decayed_bytes_total",
      "Idle host buffer bytes returned to the kernel after "
      "--host-pool-decay-ms unused.",
      [] {
        return static_cast<double>(
            scoring::HostBufferPool().stats().decayed_bytes);
      });
}

// TLS files, token file and their flags' combinations, checked before the
// ports open: 0, or the exit code (a flag combination that cannot work: 2; a
// file that is missing or unusable: 1).
int Server::CreateSecurity() {
  security::SecurityOptions options = flags_.security;
  options.unix_socket = !flags_.listen_unix.empty();
  absl::StatusOr<std::unique_ptr<security::ServerSecurity>> security =
      security::ServerSecurity::Create(options);
  if (!security.ok()) {
    spdlog::critical("{}", std::string{security.status().message()});
    return security.status().code() == absl::StatusCode::kInvalidArgument
               ? kExitBadFlag
               : kExitStartupFailed;
  }
  security_ = *std::move(security);
  spdlog::info("security: {}", security_->Describe());
  return 0;
}

// Starts the batch workers; fails on batcher options the parser cannot check.
bool Server::CreateService() {
  service::ServiceOptions options = flags_.service;
  options.kernels = cpu::CurrentKernelInfo();
  const security::Authenticator* authenticator = &security_->authenticator();
  // None where every caller is anonymous: the service then knows that the
  // per-client shares would only cap the whole server.
  if (authenticator->identifies_callers()) {
    options.authenticate =
        [authenticator](const grpc::CallbackServerContext& context) {
          return authenticator->Authenticate(context);
        };
  }
  options.max_message_bytes = max_message_bytes();
  options.intra_op_threads = flags_.threads;
  // On a GPU, inputs in shared memory go to the device by DMA, unstaged.
  if (absl::StartsWith(scorer_->device(), "cuda")) {
    options.shared_memory.page_lock = {scoring::PinHostMemory,
                                       scoring::UnpinHostMemory};
  }
  absl::StatusOr<std::unique_ptr<service::AttentionScorerService>> service =
      service::AttentionScorerService::Create(options, scorer_.get(),
                                              models_.get(), &metrics_);
  if (!service.ok()) {
    spdlog::critical("{}", service.status().ToString());
    return false;
  }
  service_ = *std::move(service);
  kserve_ =
      std::make_unique<service::KServeService>(service_.get(), models_.get());
  return true;
}

// Serves /metrics (unless disabled) and writes --metrics-port-file.
bool Server::StartMetricsServer() {
  if (!flags_.metrics_enabled()) return true;
  absl::StatusOr<std::unique_ptr<observability::MetricsServer>> started =
      observability::MetricsServer::Start(flags_.metrics_listen, &registry_);
  if (!started.ok()) {
    spdlog::critical("--metrics-listen {}: {}", flags_.metrics_listen,
                     started.status().ToString());
    return false;
  }
  metrics_server_ = *std::move(started);
  spdlog::info("metrics on {} (port {})", flags_.metrics_listen,
               metrics_server_->port());
  if (flags_.metrics_port_file.empty()) return true;
  const absl::Status status = WriteFileAtomically(
      flags_.metrics_port_file, absl::StrCat(metrics_server_->port(), "\n"));
  if (status.ok()) return true;
  spdlog::critical("--metrics-port-file: {}", status.ToString());
  return false;
}

// Reflection on one builder only, or on none: libgrpc++_reflection registers
// its plugin for every server as soon as it is loaded, so the plugin is
// removed here and added back only with --reflection.
class ReflectionOption : public grpc::ServerBuilderOption {
 public:
  explicit ReflectionOption(bool enabled) : enabled_(enabled) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    security::RemoveReflectionPlugins(plugins);
    if (enabled_) {
      plugins->push_back(
          std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>());
    }
  }

 private:
  const bool enabled_;
};

// Listens, with health (live, not yet ready) and, with --reflection,
// reflection.
bool Server::StartGrpcServer() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<ReflectionOption>(flags_.reflection));
  builder.AddListeningPort(flags_.listen, security_->credentials(), &port_);
  int unix_bound = 0;  // gRPC reports 1 for a bound Unix socket
  if (!flags_.listen_unix.empty()) {
    builder.AddListeningPort(absl::StrCat("unix:", flags_.listen_unix),
                             security_->unix_credentials(), &unix_bound);
  }
  builder.RegisterService(service_.get());
  builder.RegisterService(kserve_.get());
  ConfigureChannels(builder, max_message_bytes(),
                    service_->options().max_inflight_bytes);
  {
    // The socket file is born owner-only; ServeUnixSocket gives it its mode.
    const security::ScopedUmask owner_only(0177);
    server_ = builder.BuildAndStart();
  }
  // Ours once bound (removed when this server stops), never before: the path
  // may be another process's until then.
  if (unix_bound != 0) {
    unix_socket_ =
        std::make_unique<security::UnixSocketFile>(flags_.listen_unix);
  }
  if (server_ == nullptr || port_ == 0) {
    spdlog::critical(
        "--listen {}: cannot listen there (address in use or not local?)",
        flags_.listen);
    return false;
  }
  if (!ServeUnixSocket(unix_bound)) return false;
  health_ = server_->GetHealthCheckService();
  health_->SetServingStatus("", true);
  health_->SetServingStatus(ReadinessService(), false);
  spdlog::info(
      "attnscore-server {} listening on {} (port {}, {}), device {}, "
      "{} intra-op threads ({}), reflection {}",
      kVersion, flags_.listen, port_, security_->tls() ? "TLS" : "plaintext",
      scorer_->device(), flags_.threads, kCpuTiles,
      flags_.reflection ? "on" : "off");
  return true;
}

// --listen-unix: bound (gRPC's bound port for it), given its mode.
bool Server::ServeUnixSocket(int bound) {
  if (flags_.listen_unix.empty()) return true;
  absl::Status status =
      bound != 0 ? unix_socket_->SetMode(unix_mode_)
                 : absl::FailedPreconditionError(absl::StrCat(
                       "--listen-unix ", flags_.listen_unix,
                       ": cannot listen there (no such directory, not "
                       "writable, or a file that is not a socket?)"));
  if (!status.ok()) {
    spdlog::critical("{}", std::string{status.message()});
    return false;
  }
  spdlog::info("also listening on unix:{} (mode {:04o}, local connections)",
               flags_.listen_unix, unix_mode_);
  return true;
}

// --health-listen: grpc.health.v1 alone, in plaintext, mirroring server_'s
// statuses from now on (health_ becomes the fan-out).
bool Server::StartHealthListener() {
  if (flags_.health_listen.empty()) return true;
  absl::StatusOr<std::unique_ptr<security::HealthListener>> listener =
      security::HealthListener::Start(flags_.health_listen);
  if (!listener.ok()) {
    spdlog::critical("{}", std::string{listener.status().message()});
    server_->Shutdown(std::chrono::system_clock::now());
    return false;
  }
  health_listener_ = *std::move(listener);
  health_fanout_ = std::make_unique<security::HealthFanout>(
      std::vector<grpc::HealthCheckServiceInterface*>{
          server_->GetHealthCheckService(), health_listener_->health()});
  health_ = health_fanout_.get();
  health_->SetServingStatus("", true);
  health_->SetServingStatus(ReadinessService(), false);
  spdlog::info("grpc.health.v1 only, plaintext, on {} (port {})",
               flags_.health_listen, health_listener_->port());
  if (flags_.health_port_file.empty()) return true;
  const absl::Status status = WriteFileAtomically(
      flags_.health_port_file, absl::StrCat(health_listener_->port(), "\n"));
  if (status.ok()) return true;
  spdlog::critical("--health-port-file: {}", status.ToString());
  server_->Shutdown(std::chrono::system_clock::now());
  return false;
}

// Written once the server accepts calls: tests and scripts wait for it.
bool Server::WritePortFile() {
  if (flags_.port_file.empty()) return true;
  const absl::Status status =
      WriteFileAtomically(flags_.port_file, absl::StrCat(port_, "\n"));
  if (status.ok()) return true;
  spdlog::critical("--port-file: {}", status.ToString());
  server_->Shutdown();
  return false;
}

// Readiness goes SERVING only after the warm-up compute, and not at all when a
// shutdown was asked for meanwhile.
bool Server::WarmUp(SignalThread& signals) {
  if (flags_.warmup_delay_ms > 0) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds(flags_.warmup_delay_ms));
  }
  if (const absl::Status status = service_->WarmUp(); !status.ok()) {
    spdlog::critical("{}", status.ToString());
    server_->Shutdown(std::chrono::system_clock::now());
    service_->Shutdown();
    return false;
  }
  if (!signals.shutdown_requested()) {
    health_->SetServingStatus(ReadinessService(), true);
    spdlog::info("ready: warm-up done, {} SERVING", ReadinessService());
  }
  return true;
}

void Server::DrainAndExit() {
  const auto drain_start = std::chrono::steady_clock::now();
  health_->SetServingStatus(ReadinessService(), false);
  // Open streams answer their new requests with UNAVAILABLE from now on (and
  // unary calls that still get in); everything accepted is answered.
  service_->StartDrain();
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::microseconds(
                            static_cast<int64_t>(flags_.shutdown_grace * 1e6));
  // The accepted requests are answered first, while gRPC still starts calls:
  // one already on the wire gets UNAVAILABLE from the service instead of being
  // cancelled by the shutdown below.
  service_->AwaitAnswered(absl::FromChrono(deadline));
  // Refuses new calls at once, waits for the running ones (open streams) until
  // the grace deadline, then cancels what is left. Returns when every call is
  // done.
  server_->Shutdown(deadline);
  // Anything still queued (requests of cancelled calls) is answered or dropped;
  // workers joined.
  service_->Shutdown();
  server_->Wait();
  const double drain_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                    drain_start)
          .count();
  if (drain_seconds > flags_.shutdown_grace) {
    spdlog::warn(
        "drain took {:.3f} s, over --shutdown-grace {} s: "
        "late calls were cancelled",
        drain_seconds, flags_.shutdown_grace);
  }
  if (metrics_server_ != nullptr) metrics_server_->Stop();
  // gRPC unlinks the socket as its listener closes; should a version not, the
  // file goes here (_Exit below runs no destructor).
  if (unix_socket_ != nullptr) unix_socket_->Remove();
  spdlog::info("stopped after a {:.3f} s drain", drain_seconds);
  // Every call is answered and every batch worker joined: exit now. gRPC
  // 1.51's global teardown (run by the destructors) joins an executor thread
  // parked in epoll_wait until its next timer, which delayed the exit by up to
  // 10 s after large responses, time an orchestrator spends waiting.
  spdlog::shutdown();
  std::fflush(nullptr);
  std::_Exit(0);
}

// Parses the command line and runs the server; the exit code.
int ParseFlagsAndRun(int argc, char** argv) {
  CLI::App app{
      "attnscore-server: attention scores over gRPC "
      "(ALiBi and Transformer-XL relative position bias), "
      "with dynamic batching."};
  Flags flags;
  AddFlags(app, flags);
  CLI11_PARSE(app, argc, argv);
  // CLI11 takes an empty variable for an unset one; --metrics-listen's help
  // promises that an empty value turns metrics off.
  const char* metrics_env = std::getenv("ATTNSCORE_METRICS_LISTEN");
  if (app.get_option("--metrics-listen")->count() == 0 &&
      metrics_env != nullptr && *metrics_env == '\0') {
    flags.metrics_listen.clear();
  }
  Server server(flags);
  return server.Run();
}

}  // namespace
}  // namespace attnscore

// Blocks the handled signals before anything else runs: the executable's
// .preinit_array runs after the libraries are loaded and before any of their
// initialisers (LibTorch's take most of a start-up's first 0.3 s). So every
// thread (gRPC, LibTorch, OpenMP, httplib) inherits the mask and only the
// signal thread takes these signals, and a SIGHUP sent to a starting pod
// (deploy/README.md's reload loop) waits for that thread instead of killing
// the process; main's re-execution keeps the mask and any pending signal.
// Only the loading itself comes before it.
void BlockHandledSignalsEarly(int /*argc*/, char** /*argv*/, char** /*envp*/) {
  const sigset_t handled = attnscore::HandledSignals();
  pthread_sigmask(SIG_BLOCK, &handled, nullptr);
}
__attribute__((section(".preinit_array"), used)) void (*const kBlockSignals)(
    int, char**, char**) = &BlockHandledSignalsEarly;

int main(int argc, char** argv) {
  // The handled signals are blocked already (BlockHandledSignalsEarly).
  // May re-execute this binary once, onto matrix kernels for this CPU's
  // instruction set (server/cpu/matched_kernels.h).
  attnscore::cpu::EnsureMatchedKernels(argc, argv);
  // Before any thread allocates (server/cpu/allocator.h).
  attnscore::cpu::KeepFreedMemory();
  // A client that hangs up mid-response must not kill the server.
  signal(SIGPIPE, SIG_IGN);
  // Debian builds Abseil without NDEBUG, which leaves absl::Mutex's deadlock
  // detector on: every Lock (gRPC takes several per call) updates a
  // process-wide lock graph under a global lock. A debugging aid; off, as in
  // release builds of Abseil.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  try {
    return attnscore::ParseFlagsAndRun(argc, argv);
  } catch (const std::exception& e) {
    // Errors are absl::Status throughout; an exception that still gets here
    // (say, std::bad_alloc at start-up) fails start-up with a message rather
    // than an abort.
    std::fprintf(stderr, "attnscore-server: %s\n", e.what());
    return attnscore::kExitStartupFailed;
  }
}
