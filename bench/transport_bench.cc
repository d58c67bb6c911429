// Transport: how fast the project's C++ client receives large Score responses
// from the real attnscore-server (compute included), against a naive protobuf
// echo server answering the same request with a ScoreResponse of the same
// bytes, in the same run. Issue 10 D: for responses of 16 MiB and more the
// server is to deliver >= 3x the echo's bytes/s, and float16/bfloat16 outputs
// are to halve the bytes and the time.
//
// The echo is what a team writes in an afternoon: a synchronous generated
// service that builds the ScoreResponse as a protobuf message per call (the
// logits bytes copied into the `bytes` field) and lets gRPC serialize it, with
// gRPC's default channel arguments. It computes nothing. Cases:
//   server/<size>/<dtype>  attnscore-server, the attnscore::client::Client
//   echo/<size>/<dtype>    the echo, the same Client (so the difference is the
//                          server side alone)
//   naive/<size>/<dtype>   the echo, the generated stub (the naive pair)
//   socket/<size>/<dtype>  the floor: a plain TCP socket pair moving the same
//                          bytes per round trip (a 1-byte request, the reply's
//                          bytes from and into reused buffers, received with
//                          the faster of two read sizes: counter read_KiB),
//                          with no framing, encoding, compute or allocation;
//                          no server delivers them over loopback TCP faster
//   unix/<size>/<dtype>    attnscore-server, the same Client, over the server's
//                          --listen-unix socket (target unix:PATH): a client
//                          on the same host or pod
//   unixsocket/<size>/<dtype>  the floor of those: socket/'s pair, a Unix one
//   shm/<size>/<dtype>     attnscore-server, the same Client, the logits placed
//                          in a registered shared-memory region (the server
//                          runs with --shm-prefix attnscore-bench-) and read
//                          there by the client: no reply bytes on the socket
// over loopback TCP, with ALiBi logits [1, H, 1024, 1024] from D = 1 inputs
// (compute small next to the bytes). Every case first checks that the echo
// (or the shared-memory region) holds exactly the server's bytes. Counters: MiB
// per response, the server's reported compute_ms, and per call the CPU time and
// minor page faults of this process (client_*: the client, and the in-process
// echo) and of the server (server_*), which say what a call costs whatever else
// a shared machine runs.
//
//   build/bench/attnscore_bench_transport [--sizes_mib 16,64]
//       [--server_threads N] [--client_arg grpc.NAME=INT]...
//       [--echo_arg grpc.NAME=INT]... [--smoke] [--benchmark_filter=REGEX]
//
// The server is the attnscore-server built in this tree (started through
// tests/testing/server_process.h on a free loopback port, with
// --shm-prefix attnscore-bench-; the first shm/ case creates and registers
// the region). --client_arg adds
// a gRPC channel argument to both Clients (ClientOptions::channel_args) and
// --echo_arg one to the echo server: for tuning experiments only.
//
// The server also runs with --listen-unix /tmp/attnscore-bench-<pid>.sock for
// the unix/ cases (it removes the file when it stops).
//
// --smoke uses tiny shapes (KiB) so that a ctest run checks the wiring only.
// Each case runs 3 repetitions (unless --benchmark_repetitions says
// otherwise); the table at the end takes the best of each and prints the
// ratios (echo or naive time / server time: the server's speed-up; float32
// time / this dtype's), with the load average, since the figures need a quiet
// machine.
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "client/client.h"
#include "client/shared_memory.h"
#include "common/dtype.h"
#include "tests/testing/server_process.h"

namespace attnscore::bench {
namespace {

namespace ac = ::attnscore::client;

// ---------------------------------------------------------------------------
// The naive echo server.

// Answers Score with logits of the request's output shape [B, H, Lq, Lk] and
// dtype whose bytes are the payload registered for that byte count (the real
// server's answer to the same request), copied into the message on every call.
class NaiveEchoService final : public v1::AttentionScorer::Service {
 public:
  // REQUIRES: before any call of that size (the map is read under the lock).
  void SetPayload(std::string payload) {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t size = payload.size();
    payloads_[size] = std::make_shared<const std::string>(std::move(payload));
  }

  grpc::Status Score(grpc::ServerContext* /*context*/,
                     const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override {
    const auto& q = request->query().shape();
    const auto& k = request->key().shape();
    if (q.size() != 4 || k.size() != 4) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "echo: expected 4-d query and key (BHSD)");
    }
    const v1::DType dtype = request->output_dtype() != v1::DTYPE_UNSPECIFIED
                                ? request->output_dtype()
                                : request->query().dtype();
    const int64_t element = dtype == v1::FLOAT32 ? 4 : 2;
    const int64_t bytes = q[0] * q[1] * q[2] * k[2] * element;
    std::shared_ptr<const std::string> payload;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = payloads_.find(static_cast<size_t>(bytes));
      if (it != payloads_.end()) payload = it->second;
    }
    if (payload == nullptr) {
      return grpc::Status(
          grpc::StatusCode::FAILED_PRECONDITION,
          absl::StrCat("echo: no payload of ", bytes, " bytes"));
    }
    v1::Tensor* logits = response->mutable_logits();
    logits->set_dtype(dtype);
    for (int64_t d : {q[0], q[1], q[2], k[2]}) logits->add_shape(d);
    logits->set_data(*payload);  // the naive copy into the message
    return grpc::Status::OK;
  }

 private:
  std::mutex mutex_;
  std::map<size_t, std::shared_ptr<const std::string>> payloads_;
};

struct EchoServer {
  NaiveEchoService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

// gRPC's defaults but for the message limits, which a naive server raises too
// (the default 4 MiB receive limit does not matter here: requests are small).
// `args`: --echo_arg, for experiments only (what a server-side argument does
// on a server without compute); none by default.
std::unique_ptr<EchoServer> StartEchoServer(
    const std::vector<std::pair<std::string, int>>& args) {
  auto echo = std::make_unique<EchoServer>();
  grpc::ServerBuilder builder;
  for (const auto& [name, value] : args) {
    builder.AddChannelArgument(name, value);
  }
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &echo->port);
  builder.SetMaxReceiveMessageSize(-1);
  builder.SetMaxSendMessageSize(-1);
  builder.RegisterService(&echo->service);
  echo->server = builder.BuildAndStart();
  if (echo->server == nullptr || echo->port == 0) {
    std::fprintf(stderr, "echo server: cannot listen on 127.0.0.1\n");
    std::abort();
  }
  return echo;
}

// ---------------------------------------------------------------------------
// The socket floor.

// A connected loopback TCP pair (TCP_NODELAY and the kernel's buffer sizing,
// as gRPC's), or a Unix stream pair, and a thread that answers each 1-byte
// request with `bytes` bytes from one reused buffer. The client receives with
// whichever read size moves the bytes faster on this machine, measured at
// construction: the whole remaining reply per recv, or at most
// kSmallReadBytes per recv (on a Linux 6.18 VM, 64 KiB reads received 64 MiB
// over loopback TCP in 11-13 ms, whole-reply reads in 25 ms: a receiver
// inside one long recv holds the socket, so the kernel's receive processing
// queues behind its copy). Aborts on any socket error: a floor measured on a
// broken pair measures nothing. Not thread-safe: one caller of RoundTrip.
class SocketFloor {
 public:
  SocketFloor(size_t bytes, bool unix_pair)
      : send_(bytes, '\x5a'), receive_(bytes) {
    if (unix_pair) {
      int fds[2];
      Check(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
      client_fd_ = fds[0];
      server_fd_ = fds[1];
    } else {
      ConnectTcp();
    }
    thread_ = std::thread([this] { Serve(); });
    read_bytes_ = FasterReadSize();
  }
  ~SocketFloor() {
    shutdown(client_fd_, SHUT_RDWR);  // Serve's recv sees the end
    thread_.join();
    close(client_fd_);
    close(server_fd_);
  }
  SocketFloor(const SocketFloor&) = delete;
  SocketFloor& operator=(const SocketFloor&) = delete;

  // A request byte out, the reply's bytes in.
  void RoundTrip() {
    const char request = 'r';
    Check(send(client_fd_, &request, 1, MSG_NOSIGNAL) == 1, "send request");
    Check(Transfer(client_fd_, receive_.data(), receive_.size(),
                   /*sending=*/false, read_bytes_),
          "receive reply");
  }

  // The most bytes one recv asks for: kSmallReadBytes, or the whole reply.
  size_t read_bytes() const { return read_bytes_; }

  static constexpr size_t kSmallReadBytes = size_t{64} << 10;

 private:
  // The read size whose best of kCalibrationTrips round trips was faster.
  size_t FasterReadSize() {
    constexpr int kCalibrationTrips = 3;
    double best[2] = {1e30, 1e30};
    const size_t sizes[2] = {receive_.size(), kSmallReadBytes};
    for (int trip = 0; trip < kCalibrationTrips; ++trip) {
      for (int i = 0; i < 2; ++i) {
        read_bytes_ = sizes[i];
        best[i] = std::min(best[i], TimedRoundTrip());
      }
    }
    return best[1] < best[0] ? sizes[1] : sizes[0];
  }

  // RoundTrip's wall time in seconds.
  double TimedRoundTrip() {
    const auto start = std::chrono::steady_clock::now();
    RoundTrip();
    const std::chrono::duration<double> took =
        std::chrono::steady_clock::now() - start;
    return took.count();
  }

  void ConnectTcp() {
    const int listener = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    auto* generic = reinterpret_cast<sockaddr*>(&address);
    Check(listener >= 0 && bind(listener, generic, length) == 0 &&
              getsockname(listener, generic, &length) == 0 &&
              listen(listener, 1) == 0,
          "listen");
    client_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    Check(client_fd_ >= 0 && connect(client_fd_, generic, length) == 0,
          "connect");
    server_fd_ = accept(listener, nullptr, nullptr);
    Check(server_fd_ >= 0, "accept");
    close(listener);
    const int one = 1;
    for (int fd : {client_fd_, server_fd_}) {
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
  }

  static void Check(bool ok, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "socket floor: %s: %s\n", what, std::strerror(errno));
    std::abort();
  }

  // Moves all `size` bytes, at most `step` per call; false when the peer
  // closed the connection.
  static bool Transfer(int fd, char* data, size_t size, bool sending,
                       size_t step = SIZE_MAX) {
    size_t done = 0;
    while (done < size) {
      const size_t want = std::min(size - done, step);
      const ssize_t n = sending ? send(fd, data + done, want, MSG_NOSIGNAL)
                                : recv(fd, data + done, want, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }

  void Serve() {
    char request = 0;
    while (Transfer(server_fd_, &request, 1, /*sending=*/false)) {
      if (!Transfer(server_fd_, send_.data(), send_.size(), /*sending=*/true)) {
        return;
      }
    }
  }

  std::vector<char> send_;
  std::vector<char> receive_;
  size_t read_bytes_ = SIZE_MAX;  // set by FasterReadSize
  int client_fd_ = -1;
  int server_fd_ = -1;
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// Cases.

struct Case {
  std::string name;  // "16MiB" (of float32 output)
  int64_t h = 1;
  int64_t l = 1;  // Lq = Lk
};

struct Output {
  const char* name;
  ac::DType dtype;
};
constexpr Output kOutputs[] = {{"f32", ac::DType::kFloat32},
                               {"f16", ac::DType::kFloat16},
                               {"bf16", ac::DType::kBFloat16}};

// Inputs of one case: float32 [1, H, L, 1] query and key (D = 1: the compute
// is small next to the [1, H, L, L] output).
struct Inputs {
  ac::Tensor query;
  ac::Tensor key;
};

struct Globals {
  std::unique_ptr<testing::ServerProcess> server;
  std::unique_ptr<EchoServer> echo;
  std::unique_ptr<ac::Client> server_client;
  std::unique_ptr<ac::Client> unix_client;  // the server's --listen-unix
  std::unique_ptr<ac::Client> echo_client;
  // The naive pair's client: the generated stub, gRPC's default arguments.
  std::unique_ptr<v1::AttentionScorer::Stub> naive_stub;
  std::map<std::string, Inputs> inputs;  // by case name
  // The shm/ cases' region, registered with the server as kShmRegionName by
  // the first of them; null until then.
  std::unique_ptr<ac::SharedMemoryRegion> region;
  size_t region_bytes = 0;  // the largest float32 output of the cases
};

// The server's --shm-prefix and the region's key and registered name.
constexpr const char* kShmPrefix = "attnscore-bench-";
constexpr const char* kShmRegionName = "bench";

Globals& G() {
  static Globals* globals = new Globals();
  return *globals;
}

const Inputs& InputsFor(const Case& c) {
  auto it = G().inputs.find(c.name);
  if (it != G().inputs.end()) return it->second;
  std::vector<float> values(static_cast<size_t>(c.h * c.l));
  for (size_t i = 0; i < values.size(); ++i) {
    values[i] = static_cast<float>(i % 17) * 0.125f - 1.0f;
  }
  Inputs in{
      *ac::Tensor::FromFloats(ac::DType::kFloat32, {1, c.h, c.l, 1}, values),
      *ac::Tensor::FromFloats(ac::DType::kFloat32, {1, c.h, c.l, 1}, values)};
  return G().inputs.emplace(c.name, std::move(in)).first->second;
}

ac::ScoreRequest RequestFor(const Case& c, const Output& out) {
  const Inputs& in = InputsFor(c);
  ac::ScoreRequest request;
  request.bias = ac::Alibi{};
  request.query = in.query.view();
  request.key = in.key.view();
  request.output_dtype = out.dtype;
  return request;
}

// One call; aborts on failure (a benchmark of failing calls measures nothing).
// Adds the server's reported compute time to *compute_us when given.
ac::Tensor Call(ac::Client& client, const ac::ScoreRequest& request,
                const char* who, int64_t* compute_us = nullptr) {
  absl::StatusOr<ac::ScoreResult> result = client.Score(request);
  if (!result.ok() || !result->logits) {
    std::fprintf(stderr, "%s: Score failed: %s\n", who,
                 result.status().ToString().c_str());
    std::abort();
  }
  if (compute_us != nullptr) *compute_us += result->timing.compute_us;
  return *std::move(result->logits);
}

// Registers the server's answer as the echo's payload and checks that the echo
// returns the same bytes.
void PrepareEcho(const Case& c, const Output& out) {
  const ac::ScoreRequest request = RequestFor(c, out);
  const ac::Tensor logits = Call(*G().server_client, request, "server");
  G().echo->service.SetPayload(std::string(
      static_cast<const char*>(logits.data()), logits.size_bytes()));
  const ac::Tensor echoed = Call(*G().echo_client, request, "echo");
  if (echoed.size_bytes() != logits.size_bytes() ||
      echoed.shape() != logits.shape() ||
      std::memcmp(echoed.data(), logits.data(), logits.size_bytes()) != 0) {
    std::fprintf(stderr, "%s/%s: the echo's bytes differ from the server's\n",
                 c.name.c_str(), out.name);
    std::abort();
  }
}

// CPU seconds (user + system) and minor page faults `pid` has had so far,
// from /proc (CPU in clock ticks, 10 ms: fine over a benchmark's many
// iterations); zeros if unreadable.
struct Usage {
  double cpu_seconds = 0;
  double minor_faults = 0;
};
Usage ProcessUsage(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  const std::string stat((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces; the fields after it do not.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return {};
  const std::vector<std::string> fields =
      absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
  // proc(5) fields 10 (minflt), 14 (utime), 15 (stime); fields[0] is field 3.
  Usage usage;
  double utime = 0, stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtod(fields[7], &usage.minor_faults) ||
      !absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return {};
  }
  usage.cpu_seconds =
      (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  return usage;
}

// What the calls of one benchmark cost in CPU time and page faults, in this
// process (the client, and the in-process echo server) and in the
// attnscore-server. On loopback the transfer is CPU-bound, so these say what a
// call costs whatever else the machine runs; wall time on a loaded machine
// does not.
class UsageMeter {
 public:
  UsageMeter()
      : client_(ProcessUsage(getpid())),
        server_(ProcessUsage(G().server->pid())) {}

  void Report(benchmark::State& state) const {
    const Usage client = ProcessUsage(getpid());
    const Usage server = ProcessUsage(G().server->pid());
    const double n =
        static_cast<double>(std::max<int64_t>(state.iterations(), 1));
    state.counters["client_cpu_ms"] =
        (client.cpu_seconds - client_.cpu_seconds) * 1e3 / n;
    state.counters["server_cpu_ms"] =
        (server.cpu_seconds - server_.cpu_seconds) * 1e3 / n;
    state.counters["client_faults"] =
        (client.minor_faults - client_.minor_faults) / n;
    state.counters["server_faults"] =
        (server.minor_faults - server_.minor_faults) / n;
  }

 private:
  const Usage client_;
  const Usage server_;
};

// The request as the naive client builds it: a protobuf message holding
// copies of the tensors.
v1::ScoreRequest NaiveRequestFor(const Case& c, const Output& out) {
  const Inputs& in = InputsFor(c);
  v1::ScoreRequest request;
  request.mutable_alibi();
  for (const ac::Tensor* t : {&in.query, &in.key}) {
    v1::Tensor* field =
        t == &in.query ? request.mutable_query() : request.mutable_key();
    field->set_dtype(v1::FLOAT32);
    for (int64_t d : t->shape()) field->add_shape(d);
    field->set_data(t->data(), t->size_bytes());
  }
  request.add_outputs(v1::LOGITS);
  request.set_output_dtype(out.dtype == ac::DType::kFloat32   ? v1::FLOAT32
                           : out.dtype == ac::DType::kFloat16 ? v1::FLOAT16
                                                              : v1::BFLOAT16);
  return request;
}

// The naive pair: the generated stub against the echo server (the response
// parsed by protobuf into a std::string).
void BM_NaivePair(benchmark::State& state, const Case& c, Output out) {
  PrepareEcho(c, out);
  const v1::ScoreRequest request = NaiveRequestFor(c, out);
  size_t bytes = 0;
  const UsageMeter meter;
  for (auto _ : state) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
    v1::ScoreResponse response;
    const grpc::Status status =
        G().naive_stub->Score(&context, request, &response);
    if (!status.ok()) {
      std::fprintf(stderr, "naive: Score failed: %s\n",
                   status.error_message().c_str());
      std::abort();
    }
    bytes = response.logits().data().size();
    benchmark::DoNotOptimize(response.logits().data().data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes));
  state.counters["MiB"] = static_cast<double>(bytes) / (1 << 20);
  meter.Report(state);
}

// The socket floor for the reply of `c` in `out`'s dtype: TCP, or a Unix pair.
void BM_Socket(benchmark::State& state, const Case& c, Output out,
               bool unix_pair) {
  const size_t bytes =
      static_cast<size_t>(c.h * c.l * c.l) * ElementSize(out.dtype);
  SocketFloor floor(bytes, unix_pair);
  for (auto _ : state) floor.RoundTrip();
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes));
  state.counters["MiB"] = static_cast<double>(bytes) / (1 << 20);
  state.counters["read_KiB"] =
      static_cast<double>(std::min(floor.read_bytes(), bytes)) / 1024;
}

// The counters of a case whose calls each received `bytes`: MiB per call,
// and the server's own compute time per call (the echo reports none: the rest
// of the time is transport, encoding and decoding), then `meter`'s.
void ReportCalls(benchmark::State& state, size_t bytes, int64_t compute_us,
                 const UsageMeter& meter) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes));
  state.counters["MiB"] = static_cast<double>(bytes) / (1 << 20);
  const double iterations =
      static_cast<double>(std::max<int64_t>(state.iterations(), 1));
  state.counters["compute_ms"] =
      static_cast<double>(compute_us) / 1e3 / iterations;
  meter.Report(state);
}

// Who answers a BM_Receive case, and over what.
enum class Via { kServer, kServerUnix, kEcho };

void BM_Receive(benchmark::State& state, const Case& c, Output out, Via via) {
  if (via == Via::kEcho) PrepareEcho(c, out);
  ac::Client& client = via == Via::kEcho         ? *G().echo_client
                       : via == Via::kServerUnix ? *G().unix_client
                                                 : *G().server_client;
  const char* who = via == Via::kEcho ? "echo" : "server";
  const ac::ScoreRequest request = RequestFor(c, out);
  size_t bytes = 0;
  int64_t compute_us = 0;
  const UsageMeter meter;
  for (auto _ : state) {
    ac::Tensor logits = Call(client, request, who, &compute_us);
    bytes = logits.size_bytes();
    benchmark::DoNotOptimize(logits.data());
  }
  ReportCalls(state, bytes, compute_us, meter);
}

// "/dev/shm/<key>" of the region, for the abort handler (set once the region
// exists; a fixed buffer: the handler may not allocate), and the server's
// --listen-unix socket (set once the server runs).
char g_shm_path[300] = "";
char g_socket_path[300] = "";

// A run that aborts (every failure here does) would leave the region's object
// in /dev/shm, holding its memory until reboot, and the server (killed with
// this process) its socket file: unlink both (unlink is async-signal-safe; the
// object is /dev/shm/<key> on Linux), then abort.
void UnlinkFilesOnAbort(int signal_number) {
  if (g_shm_path[0] != '\0') unlink(g_shm_path);
  if (g_socket_path[0] != '\0') unlink(g_socket_path);
  std::signal(signal_number, SIG_DFL);
  std::raise(signal_number);
}

// Creates the region for the largest float32 output of the cases and registers
// it with the server as kShmRegionName. Exits when shared memory fails: the
// shm/ cases were asked for.
void SetUpSharedMemory() {
  const size_t bytes = G().region_bytes;
  const std::string key = absl::StrCat(kShmPrefix, getpid());
  absl::StatusOr<ac::SharedMemoryRegion> region =
      ac::SharedMemoryRegion::Create(key, bytes);
  if (!region.ok()) {
    std::fprintf(stderr, "shared memory: %s\n",
                 region.status().ToString().c_str());
    std::exit(1);
  }
  absl::SNPrintF(g_shm_path, sizeof(g_shm_path), "/dev/shm/%s", key);
  std::signal(SIGABRT, UnlinkFilesOnAbort);
  G().region = std::make_unique<ac::SharedMemoryRegion>(*std::move(region));
  const absl::Status registered = G().server_client->RegisterSharedMemory(
      G().region->Registration(kShmRegionName));
  if (!registered.ok()) {
    std::fprintf(stderr, "RegisterSharedMemory: %s\n",
                 registered.ToString().c_str());
    G().region.reset();
    std::exit(1);
  }
}

// Unregisters and removes the region, if there is one.
void TearDownSharedMemory() {
  if (G().region == nullptr) return;
  const absl::Status s =
      G().server_client->UnregisterSharedMemory(kShmRegionName);
  if (!s.ok()) {
    std::fprintf(stderr, "UnregisterSharedMemory: %s\n", s.ToString().c_str());
  }
  G().region.reset();
}

// The request of `c` with its logits placed at the start of the region.
ac::ScoreRequest ShmRequestFor(const Case& c, const Output& out) {
  ac::ScoreRequest request = RequestFor(c, out);
  request.placements = {
      {ac::Output::kLogits,
       {kShmRegionName, 0, static_cast<uint64_t>(G().region->size())}}};
  return request;
}

// One call with placed logits, and the view of their bytes in the region;
// aborts on failure, as Call. Adds the server's compute time to *compute_us.
ac::TensorView CallPlaced(const ac::ScoreRequest& request,
                          int64_t* compute_us = nullptr) {
  absl::StatusOr<ac::ScoreResult> result = G().server_client->Score(request);
  if (!result.ok() || result->logits || result->placed.size() != 1) {
    std::fprintf(stderr,
                 "shm: Score failed or the logits were not placed: %s\n",
                 result.status().ToString().c_str());
    std::abort();
  }
  absl::StatusOr<ac::TensorView> view = G().region->View(result->placed[0]);
  if (!view.ok()) {
    std::fprintf(stderr, "shm: %s\n", view.status().ToString().c_str());
    std::abort();
  }
  if (compute_us != nullptr) *compute_us += result->timing.compute_us;
  return *std::move(view);
}

// Checks that the region receives exactly the bytes the server sends in band.
void CheckPlacedBytes(const Case& c, const Output& out) {
  const ac::Tensor in_band =
      Call(*G().server_client, RequestFor(c, out), "server");
  const ac::TensorView placed = CallPlaced(ShmRequestFor(c, out));
  if (placed.size_bytes != in_band.size_bytes() ||
      placed.shape != in_band.shape() ||
      std::memcmp(placed.data, in_band.data(), placed.size_bytes) != 0) {
    std::fprintf(stderr, "%s/%s: the placed bytes differ from the reply's\n",
                 c.name.c_str(), out.name);
    std::abort();
  }
}

// Reads one 4-byte word (a float32's worth) of every 64-byte cache line of
// `view` and sums them. The in-band cases copy every byte of the reply into
// the client's buffer; placed bytes count as received once the client has
// brought them into its cache, which this does without decoding them (and
// the sum keeps the compiler from dropping the reads).
uint32_t TouchCacheLines(const ac::TensorView& view) {
  constexpr size_t kCacheLine = 64;
  const auto* bytes = static_cast<const unsigned char*>(view.data);
  uint32_t sum = 0;
  for (size_t i = 0; i + sizeof(uint32_t) <= view.size_bytes; i += kCacheLine) {
    uint32_t word;
    std::memcpy(&word, bytes + i, sizeof(word));
    sum += word;
  }
  return sum;
}

// attnscore-server writing the logits into shared memory and the client
// reading them there; the counters are BM_Receive's.
void BM_Shm(benchmark::State& state, const Case& c, Output out) {
  if (G().region == nullptr) SetUpSharedMemory();
  CheckPlacedBytes(c, out);
  const ac::ScoreRequest request = ShmRequestFor(c, out);
  size_t bytes = 0;
  int64_t compute_us = 0;
  const UsageMeter meter;
  for (auto _ : state) {
    const ac::TensorView logits = CallPlaced(request, &compute_us);
    benchmark::DoNotOptimize(TouchCacheLines(logits));
    bytes = logits.size_bytes;
  }
  ReportCalls(state, bytes, compute_us, meter);
}

// ---------------------------------------------------------------------------
// Report.

// Collects the best real time per benchmark (over --benchmark_repetitions) to
// print the ratios at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && !run.error_occurred) {
        // The registered name, without "/repeats:N/real_time".
        const std::string& name = run.run_name.function_name;
        // The best of the repetitions: on a shared machine the others
        // measure the neighbours.
        const double seconds = run.GetAdjustedRealTime() /
                               benchmark::GetTimeUnitMultiplier(run.time_unit);
        auto [it, inserted] = seconds_.emplace(name, seconds);
        if (!inserted) it->second = std::min(it->second, seconds);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }

  // "server/<case>/<dtype>" against "echo/..." (same client) and "naive/..."
  // (the naive pair), and the server's float32 time against this dtype's;
  // then the socket floor, and the naive pair's time over it (the most any
  // server could show against the naive pair on this machine).
  void PrintRatios() const {
    std::printf("\n%-12s %10s %10s %10s %12s %13s %14s %10s %13s\n", "case",
                "server ms", "echo ms", "naive ms", "echo/server",
                "naive/server", "f32 ms / this", "socket ms", "naive/socket");
    for (const auto& [name, seconds] : seconds_) {
      if (name.rfind("server/", 0) != 0) continue;
      const std::string rest = name.substr(7);
      const std::string f32 = rest.substr(0, rest.rfind('/')) + "/f32";
      const double echo = Find("echo/" + rest);
      const double naive = Find("naive/" + rest);
      const double socket = Find("socket/" + rest);
      std::printf("%-12s %10.2f %10s %10s %12s %13s %14s %10s %13s\n",
                  rest.c_str(), seconds * 1e3, Ms(echo).c_str(),
                  Ms(naive).c_str(), Ratio(echo, seconds).c_str(),
                  Ratio(naive, seconds).c_str(),
                  Ratio(Find("server/" + f32), seconds).c_str(),
                  Ms(socket).c_str(), Ratio(naive, socket).c_str());
    }
    PrintUnixSocketRatios();
    PrintSharedMemoryRatios();
  }

 private:
  // "unix/<case>/<dtype>" against the naive pair (over TCP), the same case
  // over TCP, and the Unix pair's floor.
  void PrintUnixSocketRatios() const {
    bool header = false;
    for (const auto& [name, seconds] : seconds_) {
      if (name.rfind("unix/", 0) != 0) continue;
      if (!header) {
        std::printf("\n%-12s %10s %10s %10s %13s %14s %15s\n", "case",
                    "unix ms", "server ms", "naive ms", "naive/unix",
                    "unix floor ms", "naive/floor");
        header = true;
      }
      const std::string rest = name.substr(5);
      const double naive = Find("naive/" + rest);
      const double floor = Find("unixsocket/" + rest);
      std::printf("%-12s %10.2f %10s %10s %13s %14s %15s\n", rest.c_str(),
                  seconds * 1e3, Ms(Find("server/" + rest)).c_str(),
                  Ms(naive).c_str(), Ratio(naive, seconds).c_str(),
                  Ms(floor).c_str(), Ratio(naive, floor).c_str());
    }
  }

  // "shm/<case>/<dtype>" against the naive pair and the same case in band.
  void PrintSharedMemoryRatios() const {
    bool header = false;
    for (const auto& [name, seconds] : seconds_) {
      if (name.rfind("shm/", 0) != 0) continue;
      if (!header) {
        std::printf("\n%-12s %10s %10s %10s %13s %15s\n", "case", "shm ms",
                    "server ms", "naive ms", "naive/shm", "server/shm");
        header = true;
      }
      const std::string rest = name.substr(4);
      const double server = Find("server/" + rest);
      const double naive = Find("naive/" + rest);
      std::printf("%-12s %10.2f %10s %10s %13s %15s\n", rest.c_str(),
                  seconds * 1e3, Ms(server).c_str(), Ms(naive).c_str(),
                  Ratio(naive, seconds).c_str(),
                  Ratio(server, seconds).c_str());
    }
  }

  double Find(const std::string& name) const {
    auto it = seconds_.find(name);
    return it == seconds_.end() ? 0 : it->second;
  }
  static std::string Ms(double seconds) {
    return seconds > 0 ? absl::StrFormat("%.2f", seconds * 1e3) : "-";
  }
  static std::string Ratio(double num, double den) {
    return num > 0 && den > 0 ? absl::StrFormat("%.2fx", num / den) : "-";
  }
  std::map<std::string, double> seconds_;
};

std::string LoadAverage() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) return "unknown";
  return absl::StrFormat("%.2f %.2f %.2f", load[0], load[1], load[2]);
}

// ---------------------------------------------------------------------------
// Set-up.

struct Flags {
  std::vector<int> sizes_mib = {16, 64};
  int server_threads = static_cast<int>(std::thread::hardware_concurrency());
  bool smoke = false;
  std::vector<std::pair<std::string, int>> client_args;  // --client_arg
  std::vector<std::pair<std::string, int>> echo_args;    // --echo_arg
  // --chunked_reply_bytes (ClientOptions::chunked_reply_bytes); -1: the
  // client's default.
  int64_t chunked_reply_bytes = -1;
};

// "NAME=INT" into `args`; exits with a message when malformed.
void AddArg(const char* flag, const char* text,
            std::vector<std::pair<std::string, int>>& args) {
  const std::pair<std::string, std::string> parts =
      absl::StrSplit(text, absl::MaxSplits('=', 1));
  int value = 0;
  if (parts.first.empty() || !absl::SimpleAtoi(parts.second, &value)) {
    std::fprintf(stderr, "%s: expected NAME=INT, got %s\n", flag, text);
    std::exit(2);
  }
  args.emplace_back(parts.first, value);
}

// Takes this benchmark's own flags out of argv (the rest is Google
// Benchmark's). Exits with a message on a malformed value.
Flags ParseFlags(int& argc, char** argv) {
  Flags flags;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* name) -> const char* {
      const std::string prefix = absl::StrCat(name, "=");
      if (arg.rfind(prefix, 0) == 0) return argv[i] + prefix.size();
      if (arg == name && i + 1 < argc) return argv[++i];
      return nullptr;
    };
    if (const char* v = value("--sizes_mib")) {
      flags.sizes_mib.clear();
      for (absl::string_view part : absl::StrSplit(v, ',')) {
        int mib = 0;
        if (!absl::SimpleAtoi(part, &mib) || mib < 4 || mib % 4 != 0) {
          std::fprintf(stderr, "--sizes_mib: expected multiples of 4, got %s\n",
                       v);
          std::exit(2);
        }
        flags.sizes_mib.push_back(mib);
      }
    } else if (const char* v = value("--server_threads")) {
      if (!absl::SimpleAtoi(v, &flags.server_threads) ||
          flags.server_threads < 1) {
        std::fprintf(stderr, "--server_threads: expected >= 1, got %s\n", v);
        std::exit(2);
      }
    } else if (const char* v = value("--client_arg")) {
      AddArg("--client_arg", v, flags.client_args);
    } else if (const char* v = value("--echo_arg")) {
      AddArg("--echo_arg", v, flags.echo_args);
    } else if (const char* v = value("--chunked_reply_bytes")) {
      if (!absl::SimpleAtoi(v, &flags.chunked_reply_bytes) ||
          flags.chunked_reply_bytes < 0) {
        std::fprintf(stderr, "--chunked_reply_bytes: expected >= 0, got %s\n",
                     v);
        std::exit(2);
      }
    } else if (arg == "--smoke") {
      flags.smoke = true;
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  return flags;
}

// float32 output of [1, H, 1024, 1024] is H * 4 MiB; the smoke cases are
// [1, 2, 32, 32] (8 KiB) and [1, 4, 64, 64] (64 KiB).
std::vector<Case> Cases(const Flags& flags) {
  if (flags.smoke) return {{"8KiB", 2, 32}, {"64KiB", 4, 64}};
  std::vector<Case> cases;
  for (int mib : flags.sizes_mib) {
    cases.push_back({absl::StrCat(mib, "MiB"), mib / 4, 1024});
  }
  return cases;
}

// Three repetitions each unless --benchmark_repetitions says otherwise (the
// ratio table takes the best); one for --smoke.
void Register(const std::vector<Case>& cases, int repetitions) {
  auto configure = [repetitions](benchmark::internal::Benchmark* b) {
    b->Unit(benchmark::kMillisecond)->UseRealTime();
    if (repetitions > 0) b->Repetitions(repetitions);
  };
  for (const Case& c : cases) {
    for (const Output& out : kOutputs) {
      for (const auto& [kind, via] : {std::pair{"server/", Via::kServer},
                                      {"echo/", Via::kEcho},
                                      {"unix/", Via::kServerUnix}}) {
        const std::string name = absl::StrCat(kind, c.name, "/", out.name);
        configure(benchmark::RegisterBenchmark(name.c_str(), BM_Receive, c, out,
                                               via));
      }
      configure(benchmark::RegisterBenchmark(
          absl::StrCat("naive/", c.name, "/", out.name).c_str(), BM_NaivePair,
          c, out));
      for (const bool unix_pair : {false, true}) {
        configure(benchmark::RegisterBenchmark(
            absl::StrCat(unix_pair ? "unixsocket/" : "socket/", c.name, "/",
                         out.name)
                .c_str(),
            BM_Socket, c, out, unix_pair));
      }
      configure(benchmark::RegisterBenchmark(
          absl::StrCat("shm/", c.name, "/", out.name).c_str(), BM_Shm, c, out));
    }
  }
}

std::unique_ptr<ac::Client> ConnectClient(
    const std::string& target,
    const std::vector<std::pair<std::string, int>>& args,
    int64_t chunked_reply_bytes) {
  ac::ClientOptions options;
  options.target = target;
  options.channel_args = args;
  if (chunked_reply_bytes >= 0) {
    options.chunked_reply_bytes = chunked_reply_bytes;
  }
  absl::StatusOr<std::unique_ptr<ac::Client>> client =
      ac::Client::Create(options);
  if (!client.ok() || !(*client)->WaitForConnected(absl::Seconds(30)).ok()) {
    std::fprintf(stderr, "cannot connect to %s\n", target.c_str());
    std::abort();
  }
  return *std::move(client);
}
std::string Loopback(int port) { return absl::StrCat("127.0.0.1:", port); }

// Starts both servers and their clients. The real server runs with its
// defaults but for the thread count, a queue delay of 0 (a lone request never
// waits for company), an output limit above the largest case, and
// shared-memory outputs on (which cost nothing until a region is registered).
void StartServers(const Flags& flags) {
  testing::ServerOptions options;
  options.threads = flags.server_threads;
  const int largest =
      flags.sizes_mib.empty()
          ? 4
          : *std::max_element(flags.sizes_mib.begin(), flags.sizes_mib.end());
  options.extra_args = {
      "--max-queue-delay-us", "0", "--max-output-bytes",
      std::to_string((static_cast<int64_t>(largest) + 1) << 20)};
  const std::string unix_socket =
      absl::StrCat("/tmp/attnscore-bench-", getpid(), ".sock");
  options.extra_args.insert(
      options.extra_args.end(),
      {"--shm-prefix", kShmPrefix, "--listen-unix", unix_socket});
  absl::StatusOr<std::unique_ptr<testing::ServerProcess>> server =
      testing::ServerProcess::Start(options, absl::Seconds(120));
  if (!server.ok()) {
    std::fprintf(stderr, "attnscore-server: %s\n",
                 server.status().ToString().c_str());
    std::exit(1);
  }
  G().server = *std::move(server);
  absl::SNPrintF(g_socket_path, sizeof(g_socket_path), "%s", unix_socket);
  std::signal(SIGABRT, UnlinkFilesOnAbort);
  G().echo = StartEchoServer(flags.echo_args);
  G().server_client =
      ConnectClient(Loopback(G().server->port()), flags.client_args,
                    flags.chunked_reply_bytes);
  G().unix_client = ConnectClient(absl::StrCat("unix:", unix_socket),
                                  flags.client_args, flags.chunked_reply_bytes);
  // The echo answers Score only: its client does not try ScoreChunked.
  G().echo_client =
      ConnectClient(Loopback(G().echo->port), flags.client_args, 0);
  grpc::ChannelArguments naive_args;
  naive_args.SetMaxReceiveMessageSize(-1);
  G().naive_stub = v1::AttentionScorer::NewStub(grpc::CreateCustomChannel(
      absl::StrCat("127.0.0.1:", G().echo->port),
      grpc::InsecureChannelCredentials(), naive_args));
}

}  // namespace
}  // namespace attnscore::bench

int main(int argc, char** argv) {
  namespace b = attnscore::bench;
  // As the attnscore CLI does; the server child runs without it
  // (tests/testing/server_process.h), and so does the naive pair, whose
  // channels keep gRPC's default read size limit (4 MiB).
  attnscore::client::PreferBoundedSocketReads();
  const b::Flags flags = b::ParseFlags(argc, argv);
  int repetitions = flags.smoke ? 1 : 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--benchmark_repetitions", 23) == 0) {
      repetitions = 0;  // Google Benchmark's flag applies
    }
  }
  const std::vector<b::Case> cases = b::Cases(flags);
  b::Register(cases, repetitions);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (const b::Case& c : cases) {
    b::G().region_bytes =
        std::max(b::G().region_bytes, static_cast<size_t>(c.h * c.l * c.l) * 4);
  }
  b::StartServers(flags);
  std::printf("server %s, %d intra-op threads; load average %s\n",
              attnscore::testing::ServerBinary().c_str(), flags.server_threads,
              b::LoadAverage().c_str());
  b::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.PrintRatios();
  std::printf("load average at the end: %s\n", b::LoadAverage().c_str());
  benchmark::Shutdown();
  b::TearDownSharedMemory();
  b::G().echo->server->Shutdown();
  // SIGTERM: the server drains and removes its --listen-unix socket file.
  b::G().server.reset();
  return 0;
}
