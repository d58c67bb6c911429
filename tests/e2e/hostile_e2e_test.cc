// Hostile input against the real attnscore-server binary (issue 9, requirement
// 4): requests whose outputs would overflow, oversized client strings (and
// logs that carry only a bounded prefix of them), a message over the size
// limit, bytes on the gRPC port that are not gRPC, the huge-B cost-cap case,
// the query of death (answered, the server staying under 1 GiB RSS) and a
// request over --max-request-memory. Every case has its exact gRPC code, and
// after each the server is still healthy: a good request succeeds and
// readiness is SERVING.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/proc_stats.h"
#include "tests/testing/score_requests.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::e2e {
namespace {

using ::attnscore::testing::CheckHealth;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::SmallAlibiRequest;
using ::attnscore::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;
using HealthStatus = grpc::health::v1::HealthCheckResponse;
using C = grpc::StatusCode;

constexpr auto kRpcTimeout = std::chrono::seconds(60);
constexpr const char* kReadiness = v1::AttentionScorer::service_full_name();
constexpr int64_t kGiB = int64_t{1} << 30;

struct Call {
  grpc::Status status;
  v1::ScoreResponse response;
  double seconds = 0;
};

// A client string of `bytes` bytes that occurs nowhere else: a random tag,
// then a counting pattern, so that any 64-byte window of it is unique too.
std::string UniqueMarker(size_t bytes) {
  std::mt19937_64 random(std::random_device{}());
  std::string text = absl::StrCat("MARK", random(), "-");
  for (int i = 0; text.size() < bytes; ++i) absl::StrAppend(&text, i, ".");
  text.resize(bytes);
  return text;
}

class HostileE2eTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> args) {
    testing::ServerOptions options = E2eServerOptions(std::move(args));
    options.wait_ready = true;
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = server_->NewChannel();
    stub_ = v1::AttentionScorer::NewStub(channel_);
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      const std::string log = server_->Log();
      std::cerr << "server log (last 8000 bytes):\n"
                << log.substr(log.size() > 8000 ? log.size() - 8000 : 0);
    }
  }

  Call Score(const v1::ScoreRequest& request) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    Call call;
    const auto start = std::chrono::steady_clock::now();
    call.status = stub_->Score(&context, request, &call.response);
    call.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    return call;
  }

  // The server survived `what`: still running, a good request on a fresh
  // channel succeeds, readiness is SERVING.
  void ExpectHealthy(const std::string& what) {
    ASSERT_TRUE(server_->running()) << "the server died after " << what;
    const std::shared_ptr<grpc::Channel> fresh = server_->NewChannel();
    std::unique_ptr<v1::AttentionScorer::Stub> stub =
        v1::AttentionScorer::NewStub(fresh);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
    v1::ScoreResponse response;
    const grpc::Status status =
        stub->Score(&context, SmallAlibiRequest("after"), &response);
    EXPECT_TRUE(status.ok())
        << "a good request after " << what << ": " << status.error_message();
    absl::StatusOr<HealthStatus::ServingStatus> ready =
        CheckHealth(fresh, kReadiness);
    ASSERT_TRUE(ready.ok()) << what << ": " << ready.status();
    EXPECT_EQ(*ready, HealthStatus::SERVING) << "after " << what;
  }

  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AttentionScorer::Stub> stub_;
};

// One hostile request: how it is made from a small good request, its code
// (OK for the positive controls next to each boundary) and the words its
// message must contain.
struct HostileCase {
  std::string name;
  std::function<void(v1::ScoreRequest&)> mutate;
  C code;
  std::vector<std::string> message_parts;
  // A client string the request carries that neither the server's log nor its
  // reply may contain whole (nor its first 1 KiB).
  std::string secret;
};

std::vector<HostileCase> OverflowCases() {
  auto slopes = [](float m) {
    return [m](v1::ScoreRequest& r) {
      r.mutable_alibi()->add_slopes(m);
      r.mutable_alibi()->add_slopes(m);
    };
  };
  return {
      // q.k is up to ~16 here: 1e38 * 16 is past FLT_MAX (3.4e38).
      {"scale overflows the logits",
       [](v1::ScoreRequest& r) { r.set_scale(1e38f); },
       C::INVALID_ARGUMENT,
       {"scale"},
       ""},
      {"scale overflows in float16 output",
       [](v1::ScoreRequest& r) {
         r.set_scale(1e6f);
         r.set_output_dtype(v1::FLOAT16);
       },
       C::INVALID_ARGUMENT,
       {"scale"},
       ""},
      // The bias reaches -m * 3 (Lk - 1 away): -9e38.
      {"slopes overflow the bias",
       slopes(3e38f),
       C::INVALID_ARGUMENT,
       {"alibi.slopes"},
       ""},
      // Dims whose product overflows int64, with 192 bytes of data.
      {"shape product overflows",
       [](v1::ScoreRequest& r) {
         r.mutable_query()->set_shape(0, int64_t{1} << 40);
         r.mutable_query()->set_shape(1, int64_t{1} << 40);
       },
       C::INVALID_ARGUMENT,
       {"query"},
       ""},
      // 2^62 * 48 and 2^62 * 64 elements wrap to 0 bytes in 64 bits: the
      // empty data must not pass for them.
      {"shape product wraps to zero bytes",
       [](v1::ScoreRequest& r) {
         r.mutable_query()->set_shape(0, int64_t{1} << 62);
         r.mutable_query()->clear_data();
         r.mutable_key()->set_shape(0, int64_t{1} << 62);
         r.mutable_key()->clear_data();
         r.clear_value();
       },
       C::INVALID_ARGUMENT,
       {"query"},
       ""},
      {"negative dim",
       [](v1::ScoreRequest& r) { r.mutable_key()->set_shape(2, -4); },
       C::INVALID_ARGUMENT,
       {"key"},
       ""},
      {"control: large finite scale",
       [](v1::ScoreRequest& r) { r.set_scale(1000.0f); },
       C::OK,
       {},
       ""},
      {"control: large finite slopes", slopes(1000.0f), C::OK, {}, ""},
  };
}

std::vector<HostileCase> ClientStringCases() {
  const std::string id_secret = UniqueMarker(size_t{10} * 1024);
  const std::string model_secret = UniqueMarker(size_t{10} * 1024);
  return {
      {"request_id of 257 bytes",
       [](v1::ScoreRequest& r) { r.set_request_id(std::string(257, 'r')); },
       C::INVALID_ARGUMENT,
       {"request_id", "256"},
       ""},
      {"control: request_id of 256 bytes",
       [](v1::ScoreRequest& r) { r.set_request_id(std::string(256, 'r')); },
       C::OK,
       {},
       ""},
      {"request_id of 10 KiB",
       [=](v1::ScoreRequest& r) { r.set_request_id(id_secret); },
       C::INVALID_ARGUMENT,
       {"request_id", "256"},
       id_secret},
      {"model name of 257 bytes",
       [](v1::ScoreRequest& r) {
         r.mutable_relative()->set_model(std::string(257, 'm'));
       },
       C::INVALID_ARGUMENT,
       {"relative.model", "256"},
       ""},
      // Not loaded, but short enough to be looked up.
      {"control: model name of 256 bytes",
       [](v1::ScoreRequest& r) {
         r.mutable_relative()->set_model(std::string(256, 'm'));
       },
       C::NOT_FOUND,
       {"relative.model"},
       ""},
      {"model name of 10 KiB",
       [=](v1::ScoreRequest& r) {
         r.mutable_relative()->set_model(model_secret);
       },
       C::INVALID_ARGUMENT,
       {"relative.model", "256"},
       model_secret},
  };
}

// The parts of `secret` a bounded log must not carry.
void ExpectNotLeaked(const std::string& where, const std::string& text,
                     const std::string& secret) {
  if (secret.empty()) return;
  EXPECT_THAT(text, Not(HasSubstr(secret))) << where << " carries it whole";
  EXPECT_THAT(text, Not(HasSubstr(secret.substr(0, 1024))))
      << where << " carries more than a 1 KiB prefix";
  EXPECT_THAT(text, Not(HasSubstr(secret.substr(secret.size() - 64))))
      << where << " carries its tail";
}

void RunCases(const std::vector<HostileCase>& cases,
              const std::function<Call(const v1::ScoreRequest&)>& score,
              const std::function<void(const std::string&)>& healthy,
              const std::function<std::string()>& log) {
  for (const HostileCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ScoreRequest request = SmallAlibiRequest(c.name);
    c.mutate(request);
    const Call call = score(request);
    EXPECT_EQ(call.status.error_code(), c.code) << call.status.error_message();
    for (const std::string& part : c.message_parts) {
      EXPECT_THAT(call.status.error_message(), HasSubstr(part));
    }
    ExpectNotLeaked("the error message", call.status.error_message(), c.secret);
    ExpectNotLeaked("the reply's request_id", call.response.request_id(),
                    c.secret);
    std::cout << "  " << c.name << ": "
              << (call.status.ok() ? "OK" : call.status.error_message())
              << "\n";
    healthy(c.name);
    const std::string server_log = log();
    ExpectNotLeaked("the server log", server_log, c.secret);
    if (!c.secret.empty()) {
      std::cout << "    the server log carries its first 24 bytes: "
                << (server_log.find(c.secret.substr(0, 24)) != std::string::npos
                        ? "yes"
                        : "no")
                << "\n";
    }
  }
}

TEST_F(HostileE2eTest, OverflowingParametersAndLongClientStringsOverScore) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  std::vector<HostileCase> cases = OverflowCases();
  for (HostileCase& c : ClientStringCases()) cases.push_back(std::move(c));
  RunCases(
      cases, [this](const v1::ScoreRequest& r) { return Score(r); },
      [this](const std::string& what) { ExpectHealthy(what); },
      [this] { return server_->Log(); });
}

// The same cases over one ScoreStream: each error comes back in its response
// (with a bounded request_id) and the stream goes on.
TEST_F(HostileE2eTest, OverflowingParametersAndLongClientStringsOverStream) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  std::vector<HostileCase> cases = OverflowCases();
  for (HostileCase& c : ClientStringCases()) cases.push_back(std::move(c));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  auto stream = stub_->ScoreStream(&context);
  // One request at a time: the response that comes back is that request's.
  auto score = [&](const v1::ScoreRequest& request) {
    Call call;
    if (!stream->Write(request) || !stream->Read(&call.response)) {
      call.status = grpc::Status(C::ABORTED, "the stream ended");
      return call;
    }
    if (call.response.has_error()) {
      call.status = grpc::Status(static_cast<C>(call.response.error().code()),
                                 call.response.error().message());
    }
    return call;
  };
  RunCases(
      cases, score, [this](const std::string& what) { ExpectHealthy(what); },
      [this] { return server_->Log(); });
  stream->WritesDone();
  v1::ScoreResponse extra;
  EXPECT_FALSE(stream->Read(&extra)) << "an unexpected extra response";
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(HostileE2eTest, MessageOverTheSizeLimitIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-output-bytes=1000000"}));
  grpc::ClientContext info_context;
  info_context.set_deadline(std::chrono::system_clock::now() + kRpcTimeout);
  v1::ServerInfo info;
  ASSERT_TRUE(
      stub_->GetServerInfo(&info_context, v1::GetServerInfoRequest(), &info)
          .ok());
  const int64_t limit = info.limits().max_message_bytes();
  ASSERT_GT(limit, 0);
  ASSERT_LT(limit, int64_t{64} << 20) << "the limit should follow the flag";
  // A query whose bytes alone pass the limit by 64 KiB.
  const int64_t rows = (limit + (int64_t{64} << 10)) / int64_t{32} + 1;
  v1::ScoreRequest request = SmallAlibiRequest("too-big");
  *request.mutable_query() = testing::RampTensor32({1, 1, rows, 8}, 1);
  const Call call = Score(request);
  EXPECT_EQ(call.status.error_code(), C::RESOURCE_EXHAUSTED)
      << call.status.error_message();
  std::cout << "message of " << request.ByteSizeLong() << " bytes, limit "
            << limit << ": " << call.status.error_message() << "\n";
  ExpectHealthy("a message over the size limit");
}

// A TCP connection to the gRPC port that writes `bytes` and reads whatever
// comes back for up to 1 s (without parsing it).
class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const timeval tv = absl::ToTimeval(absl::Seconds(1));
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ =
        connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() {
    if (fd_ >= 0) close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  // What the server answered within a second, and whether it closed.
  std::string ReadSome(bool* closed) {
    std::string out;
    char buf[4096];
    *closed = false;
    for (int i = 0; i < 16; ++i) {
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n == 0) *closed = true;
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::string Printable(const std::string& bytes) {
  std::string out;
  for (char c : bytes.substr(0, 80)) {
    out += (c >= 32 && c < 127) ? c : '.';
  }
  return out;
}

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct RawCase {
  std::string name;
  std::string bytes;
};

std::vector<RawCase> RawCases() {
  std::mt19937 random(7);
  std::string garbage(8192, '\0');
  for (char& c : garbage) c = static_cast<char>(random());
  const std::string preface(kPreface, sizeof(kPreface) - 1);
  // A SETTINGS frame header announcing 16384 bytes of payload, then 6.
  const std::string settings_header("\x00\x40\x00\x04\x00\x00\x00\x00\x00", 9);
  // A HEADERS frame header announcing 16 MiB - 1 (over any max frame size).
  const std::string huge_header("\xff\xff\xff\x01\x04\x00\x00\x00\x01", 9);
  return {
      {"garbage bytes", garbage},
      {"plain HTTP/1.1 request",
       "GET /attnscore.v1.AttentionScorer/Score HTTP/1.1\r\nHost: x\r\n"
       "Content-Length: 5\r\n\r\nhello"},
      {"HTTP/1.1 upgrade to h2c",
       "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"},
      {"truncated HTTP/2 preface", preface.substr(0, 10)},
      {"truncated frame header", preface + std::string("\x00\x00", 2)},
      {"truncated SETTINGS frame",
       preface + settings_header + std::string(6, '\0')},
      {"frame over the max frame size",
       preface + std::string("\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9) +
           huge_header + std::string(100, 'x')},
  };
}

// Each case on a raw socket; with that connection still open (a half-sent
// frame holds the server's reader), a new client is served.
TEST_F(HostileE2eTest, NonGrpcBytesOnTheGrpcPortLeaveTheServerServing) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  for (const RawCase& c : RawCases()) {
    SCOPED_TRACE(c.name);
    RawConnection connection(server_->port());
    ASSERT_TRUE(connection.connected());
    EXPECT_TRUE(connection.Send(c.bytes));
    bool closed = false;
    const std::string reply = connection.ReadSome(&closed);
    std::cout << "  " << c.name << ": " << reply.size() << " bytes back"
              << (closed ? ", closed" : ", left open") << " ["
              << Printable(reply) << "]\n";
    ExpectHealthy(c.name);
  }
  // Many idle connections at once, all still open while a client is served.
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 64; ++i) {
    idle.push_back(std::make_unique<RawConnection>(server_->port()));
    idle.back()->Send(std::string(kPreface, sizeof(kPreface) - 1));
  }
  ExpectHealthy("64 idle connections");
  idle.clear();
  ExpectHealthy("closing them");
}

// B=2,000,000 items of H=Lq=Lk=D=1 (8 MB of float16): each item's fixed cost
// counts, so the default cost cap refuses it with its numbers before any
// compute.
TEST_F(HostileE2eTest, HugeBatchOfTinyItemsIsCapped) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  const Call call = Score(testing::HugeBatchRequest());
  std::cout << "huge B: " << call.status.error_code() << " after "
            << call.seconds << " s: " << call.status.error_message() << "\n";
  EXPECT_EQ(call.status.error_code(), C::RESOURCE_EXHAUSTED)
      << call.status.error_message();
  EXPECT_THAT(call.status.error_message(), HasSubstr("--max-request-work"));
  EXPECT_THAT(call.status.error_message(), HasSubstr("B=2000000"));
  EXPECT_EQ(call.response.timing().compute_us(), 0);
  ExpectHealthy("the huge batch");
}

// The query of death with default flags: answered correctly, and the
// server's peak RSS stays under 1 GiB.
// One intra-op thread here and below: memory is the point, and the tiled path
// with two threads on a loaded two-core runner took 13 s (1.4 s with one).
TEST_F(HostileE2eTest, QueryOfDeathIsAnsweredUnderOneGiB) {
  ASSERT_NO_FATAL_FAILURE(Start({"--threads=1"}));
  const testing::MemoryFigures before = testing::ReadMemory(server_->pid());
  const v1::ScoreRequest request = testing::QueryOfDeathRequest();
  const Call call = Score(request);
  const testing::MemoryFigures after = testing::ReadMemory(server_->pid());
  std::cout << "query of death: " << call.status.error_code() << " in "
            << call.seconds << " s; RSS before "
            << testing::MiB(before.rss_bytes) << ", after "
            << testing::MiB(after.rss_bytes) << ", peak (VmHWM) "
            << testing::MiB(after.hwm_bytes) << "\n";
  ASSERT_TRUE(call.status.ok()) << call.status.error_message();
  EXPECT_GT(after.hwm_bytes, 0);
  EXPECT_LT(after.hwm_bytes, kGiB);
  const v1::Tensor& context = call.response.context();
  ASSERT_THAT(context.shape(), ::testing::ElementsAre(1, 2, 8192, 1));
  EXPECT_FALSE(call.response.has_logits());
  EXPECT_FALSE(call.response.has_probs());
  const std::vector<float> values = ToFloats(context);
  for (int64_t head : {0, 1}) {
    for (int64_t row : {0, 1, 100, 4095, 8191}) {
      const double expected = testing::QueryOfDeathContext(request, head, row);
      EXPECT_NEAR(values[head * 8192 + row], expected,
                  kAtol + kRtol * std::abs(expected))
          << "head " << head << " row " << row;
    }
  }
  ExpectHealthy("the query of death");
}

// --max-request-memory: a request whose logits alone need 128 MiB is refused
// with the numbers; the query of death (context only, computed tile by tile)
// fits in 64 MiB.
TEST_F(HostileE2eTest, RequestOverMaxRequestMemoryIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(
      Start({"--max-request-memory=67108864", "--threads=1"}));
  v1::ScoreRequest big = SmallAlibiRequest("big");
  *big.mutable_query() = testing::RampTensor32({1, 8, 2048, 64}, 1);
  *big.mutable_key() = testing::RampTensor32({1, 8, 2048, 64}, 1);
  big.clear_value();
  const Call refused = Score(big);
  std::cout << "over --max-request-memory: " << refused.status.error_message()
            << "\n";
  EXPECT_EQ(refused.status.error_code(), C::RESOURCE_EXHAUSTED);
  const std::string& message = refused.status.error_message();
  EXPECT_THAT(message, HasSubstr("--max-request-memory"));
  EXPECT_TRUE(message.find("67108864") != std::string::npos ||
              message.find("64.0 MiB") != std::string::npos ||
              message.find("64 MiB") != std::string::npos)
      << "the limit's number: " << message;
  ExpectHealthy("a request over --max-request-memory");
  const Call qod = Score(testing::QueryOfDeathRequest());
  EXPECT_TRUE(qod.status.ok())
      << "context only must not need [Lq, Lk] matrices: "
      << qod.status.error_message();
  ExpectHealthy("the query of death under a 64 MiB limit");
}

}  // namespace
}  // namespace attnscore::e2e
