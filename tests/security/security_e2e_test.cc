// TLS, mutual TLS, bearer tokens, the plaintext health listener and reflection
// against real attnscore-server processes, through raw gRPC channels, the C++
// client library and the `attnscore` CLI. Certificates and keys are made with
// the `openssl` command at test time (a CA, a second CA nobody trusts, two
// server certificates sharing one key, a client certificate from each CA);
// nothing secret is committed.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "attnscore/v1/attnscore.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "inference/grpc_predict_v2.grpc.pb.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::security {
namespace {

using ::attnscore::testing::CheckHealth;
using ::attnscore::testing::CliBinary;
using ::attnscore::testing::CommandResult;
using ::attnscore::testing::ReadFileOrEmpty;
using ::attnscore::testing::RunCommand;
using ::attnscore::testing::RunServerUntilExit;
using ::attnscore::testing::ServerBinary;
using ::attnscore::testing::ServerOptions;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::StartFailure;
using ::attnscore::testing::TempDir;
using ::attnscore::testing::WaitFor;
using ::testing::HasSubstr;
using ::testing::Not;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

constexpr const char* kReadiness = v1::AttentionScorer::service_full_name();
constexpr absl::Duration kWait = absl::Seconds(30);
constexpr absl::Duration kPoll = absl::Milliseconds(50);
constexpr char kAliceToken[] = "alice-0123456789abcdef";
constexpr char kBobToken[] = "bob-fedcba9876543210xx";

// The PKI, made once for the whole suite.
const char kPkiScript[] = R"sh(
set -eu
cd "$1"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "$2"
}
# sign NAME KEY SUBJECT CA EXT
sign() {
  openssl req -new -key "$2" -out "$1.csr" -subj "$3"
  printf '%s\n' "$5" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -CAcreateserial \
    -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
}
ca ca "/CN=attnscore test CA"
ca other-ca "/CN=a CA nobody trusts"
san="subjectAltName=DNS:localhost,IP:127.0.0.1"
key server.key
sign server server.key "/CN=attnscore-server-1" ca "$san"
sign server2 server.key "/CN=attnscore-server-2" ca "$san"
key client.key
sign client client.key "/O=attnscore tests/CN=client-a" ca "extendedKeyUsage=clientAuth"
key stranger.key
sign stranger stranger.key "/CN=stranger" other-ca "extendedKeyUsage=clientAuth"
)sh";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

// Replaces `path` in one step (what a Secret volume update or `mv` does).
void ReplaceFile(const std::string& path, const std::string& text) {
  WriteFile(path + ".new", text);
  ASSERT_EQ(std::rename((path + ".new").c_str(), path.c_str()), 0);
}

struct Pki {
  TempDir dir{"attnscore-pki-"};
  std::string File(const std::string& name) const { return dir.File(name); }
};

struct Credentials {
  std::string ca;    // roots to verify the server with; "" for plaintext
  std::string cert;  // client certificate and key (mTLS)
  std::string key;
};

// A channel on its own connection: no subchannel sharing with other channels,
// so every channel makes a new TLS handshake.
std::shared_ptr<grpc::Channel> Channel(const std::string& target,
                                       const Credentials& creds) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (creds.ca.empty()) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                     args);
  }
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFileOrEmpty(creds.ca);
  if (!creds.cert.empty()) {
    ssl.pem_cert_chain = ReadFileOrEmpty(creds.cert);
    ssl.pem_private_key = ReadFileOrEmpty(creds.key);
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

struct InfoCall {
  grpc::Status status;
  std::string server_common_name;  // from the TLS handshake
};

// GetServerInfo with an optional bearer token.
InfoCall GetInfo(const std::shared_ptr<grpc::Channel>& channel,
                 const std::string& token = "") {
  auto stub = v1::AttentionScorer::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(20));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  v1::GetServerInfoRequest request;
  v1::ServerInfo response;
  InfoCall call;
  call.status = stub->GetServerInfo(&context, request, &response);
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr) {
    for (const grpc::string_ref& cn :
         auth->FindPropertyValues("x509_common_name")) {
      call.server_common_name.assign(cn.data(), cn.size());
    }
  }
  return call;
}

class SecurityE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new Pki();
    const CommandResult made =
        RunCommand({"/bin/sh", "-c", kPkiScript, "pki", pki_->dir.path()},
                   absl::Seconds(60));
    ASSERT_EQ(made.exit_code, 0) << "openssl failed: " << made.output;
  }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::cerr << "server log:\n" << server_->Log();
    }
  }

  static std::string Pem(const std::string& name) { return pki_->File(name); }
  static Credentials ServerCa() { return {Pem("ca.pem"), "", ""}; }
  static Credentials ClientA() {
    return {Pem("ca.pem"), Pem("client.pem"), Pem("client.key")};
  }

  // Starts a server with `args`; `probe` is how readiness is reached (TLS
  // servers need TLS, and a client certificate under mTLS).
  void Start(std::vector<std::string> args, const Credentials& probe = {},
             bool metrics = false) {
    ServerOptions options;
    options.wait_ready = false;
    options.metrics = metrics;
    options.log_level = "info";
    options.extra_args = std::move(args);
    absl::StatusOr<std::unique_ptr<ServerProcess>> server =
        ServerProcess::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    const std::shared_ptr<grpc::Channel> channel =
        Channel(server_->target(), probe);
    ASSERT_TRUE(WaitFor(
        [&] {
          absl::StatusOr<HealthStatus::ServingStatus> s =
              CheckHealth(channel, kReadiness, absl::Seconds(2));
          return s.ok() && *s == HealthStatus::SERVING;
        },
        kWait, kPoll))
        << "not ready: " << server_->Log();
  }
  std::vector<std::string> TlsArgs() const {
    return {"--tls-cert", Pem("server.pem"), "--tls-key", Pem("server.key")};
  }
  std::vector<std::string> Cli(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {CliBinary(), "--target", server_->target(),
                                     "--timeout", "20s"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  static Pki* pki_;
  std::unique_ptr<ServerProcess> server_;
};

Pki* SecurityE2eTest::pki_ = nullptr;

TEST_F(SecurityE2eTest, TlsServesTheCliAndTheClientLibrary) {
  ASSERT_NO_FATAL_FAILURE(Start(TlsArgs(), ServerCa()));
  EXPECT_TRUE(
      server_->WaitForLog("TLS (CN=attnscore-server-1", absl::Seconds(5)));
  InfoCall tls = GetInfo(Channel(server_->target(), ServerCa()));
  EXPECT_TRUE(tls.status.ok()) << tls.status.error_message();
  EXPECT_EQ(tls.server_common_name, "attnscore-server-1");

  // A plaintext client gets no HTTP/2 out of a TLS port.
  InfoCall plain = GetInfo(Channel(server_->target(), {}));
  EXPECT_EQ(plain.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  // Nor does a client that does not trust the server's CA.
  InfoCall untrusted =
      GetInfo(Channel(server_->target(), {Pem("other-ca.pem"), "", ""}));
  EXPECT_EQ(untrusted.status.error_code(), grpc::StatusCode::UNAVAILABLE);

  // The client library's TlsOptions.
  client::ClientOptions options;
  options.target = server_->target();
  options.tls.enabled = true;
  options.tls.ca_file = Pem("ca.pem");
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      client::Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  absl::StatusOr<client::ServerInfo> info = (*client)->GetServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device, "cpu");
  absl::StatusOr<client::ServingStatus> ready = (*client)->Health();
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(*ready, client::ServingStatus::kServing);

  // The CLI's --tls-ca; without TLS flags it fails.
  const CommandResult cli =
      RunCommand(Cli({"--tls-ca", Pem("ca.pem"), "info"}));
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  EXPECT_THAT(cli.output, HasSubstr("cpu"));
  const CommandResult cli_plain = RunCommand(Cli({"info"}));
  EXPECT_NE(cli_plain.exit_code, 0) << cli_plain.output;
  EXPECT_THAT(cli_plain.output, HasSubstr("UNAVAILABLE"));
}

TEST_F(SecurityE2eTest, MutualTlsAdmitsOnlyCertificatesFromTheClientCa) {
  std::vector<std::string> args = TlsArgs();
  args.insert(args.end(), {"--tls-client-ca", Pem("ca.pem")});
  ASSERT_NO_FATAL_FAILURE(Start(args, ClientA(), /*metrics=*/true));

  EXPECT_EQ(GetInfo(Channel(server_->target(), ServerCa())).status.error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "no client certificate";
  const Credentials stranger{Pem("ca.pem"), Pem("stranger.pem"),
                             Pem("stranger.key")};
  EXPECT_EQ(GetInfo(Channel(server_->target(), stranger)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "a certificate from a CA the server does not trust";
  InfoCall ok = GetInfo(Channel(server_->target(), ClientA()));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();

  // The identity is the certificate's subject: the request counter's label.
  absl::StatusOr<std::string> metrics = server_->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("CN=client-a"));
  EXPECT_THAT(*metrics, HasSubstr("O=attnscore tests"));

  // The CLI's client certificate flags.
  const CommandResult cli = RunCommand(
      Cli({"--tls-ca", Pem("ca.pem"), "--tls-cert", Pem("client.pem"),
           "--tls-key", Pem("client.key"), "info"}));
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  const CommandResult no_cert =
      RunCommand(Cli({"--tls-ca", Pem("ca.pem"), "info"}));
  EXPECT_NE(no_cert.exit_code, 0) << no_cert.output;
}

TEST_F(SecurityE2eTest, BearerTokensGuardEveryServiceButHealth) {
  const std::string tokens = pki_->File("tokens-guard");
  WriteFile(tokens, "# test tokens\nalice:" + std::string(kAliceToken) + "\n");
  std::vector<std::string> args = TlsArgs();
  args.insert(args.end(), {"--auth-token-file", tokens});
  ASSERT_NO_FATAL_FAILURE(Start(args, ServerCa(), /*metrics=*/true));
  const std::shared_ptr<grpc::Channel> channel =
      Channel(server_->target(), ServerCa());

  InfoCall missing = GetInfo(channel);
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(missing.status.error_message(), HasSubstr("Bearer <token>"));
  InfoCall wrong = GetInfo(channel, "not-a-valid-token-at-all");
  EXPECT_EQ(wrong.status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(wrong.status.error_message(), Not(HasSubstr("not-a-valid")));
  EXPECT_TRUE(GetInfo(channel, kAliceToken).status.ok());

  // Health needs no token (probes, load balancers).
  absl::StatusOr<HealthStatus::ServingStatus> health =
      CheckHealth(channel, kReadiness);
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, HealthStatus::SERVING);

  // The KServe service is guarded too.
  auto kserve = inference::GRPCInferenceService::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(20));
  inference::ServerMetadataResponse metadata;
  EXPECT_EQ(kserve
                ->ServerMetadata(&context, inference::ServerMetadataRequest(),
                                 &metadata)
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // The client library's bearer token, and the CLI's --token.
  client::ClientOptions options;
  options.target = server_->target();
  options.tls.enabled = true;
  options.tls.ca_file = Pem("ca.pem");
  options.bearer_token = kAliceToken;
  absl::StatusOr<std::unique_ptr<client::Client>> client =
      client::Client::Create(options);
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->GetServerInfo().ok());
  const CommandResult cli = RunCommand(
      Cli({"--tls-ca", Pem("ca.pem"), "--token", kAliceToken, "info"}));
  EXPECT_EQ(cli.exit_code, 0) << cli.output;
  const CommandResult no_token =
      RunCommand(Cli({"--tls-ca", Pem("ca.pem"), "info"}));
  EXPECT_NE(no_token.exit_code, 0);
  EXPECT_THAT(no_token.output, HasSubstr("UNAUTHENTICATED"));

  absl::StatusOr<std::string> metrics = server_->ScrapeMetrics();
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr("client=\"alice\""));
  EXPECT_THAT(server_->Log(), Not(HasSubstr(kAliceToken)));
}

TEST_F(SecurityE2eTest, SighupRereadsTheTokenFile) {
  const std::string tokens = pki_->File("tokens-reload");
  WriteFile(tokens, "alice:" + std::string(kAliceToken) + "\n");
  ASSERT_NO_FATAL_FAILURE(
      Start({"--auth-token-file", tokens, "--allow-plaintext-tokens"}));
  const std::shared_ptr<grpc::Channel> channel = Channel(server_->target(), {});
  EXPECT_TRUE(GetInfo(channel, kAliceToken).status.ok());
  EXPECT_FALSE(GetInfo(channel, kBobToken).status.ok());

  ReplaceFile(tokens, "bob:" + std::string(kBobToken) + "\n");
  server_->Signal(SIGHUP);
  ASSERT_TRUE(server_->WaitForLog("SIGHUP: --auth-token-file: 1 tokens",
                                  absl::Seconds(10)));
  EXPECT_TRUE(GetInfo(channel, kBobToken).status.ok()) << "new token";
  EXPECT_EQ(GetInfo(channel, kAliceToken).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED)
      << "removed token";

  // A broken file keeps the tokens that work.
  ReplaceFile(tokens, "bob:short\n");
  server_->Signal(SIGHUP);
  ASSERT_TRUE(
      server_->WaitForLog("keeping the previous 1 tokens", absl::Seconds(10)));
  EXPECT_TRUE(GetInfo(channel, kBobToken).status.ok());
}

TEST_F(SecurityE2eTest, ChangedCertificatesReachNewConnections) {
  // Copies the server may watch, replaced below.
  TempDir live("attnscore-live-tls-");
  WriteFile(live.File("server.pem"), ReadFileOrEmpty(Pem("server.pem")));
  WriteFile(live.File("server.key"), ReadFileOrEmpty(Pem("server.key")));
  ASSERT_NO_FATAL_FAILURE(
      Start({"--tls-cert", live.File("server.pem"), "--tls-key",
             live.File("server.key"), "--tls-refresh-seconds", "1"},
            ServerCa()));
  const std::shared_ptr<grpc::Channel> old_connection =
      Channel(server_->target(), ServerCa());
  EXPECT_EQ(GetInfo(old_connection).server_common_name, "attnscore-server-1");

  // Renewal: a new certificate for the same key, then SIGHUP.
  ASSERT_NO_FATAL_FAILURE(ReplaceFile(live.File("server.pem"),
                                      ReadFileOrEmpty(Pem("server2.pem"))));
  server_->Signal(SIGHUP);
  EXPECT_TRUE(server_->WaitForLog("SIGHUP: --tls-cert CN=attnscore-server-2",
                                  absl::Seconds(10)));
  std::string seen;
  EXPECT_TRUE(WaitFor(
      [&] {
        seen =
            GetInfo(Channel(server_->target(), ServerCa())).server_common_name;
        return seen == "attnscore-server-2";
      },
      absl::Seconds(20), absl::Milliseconds(200)))
      << "new connections still get " << seen;
  // The established connection keeps working.
  EXPECT_TRUE(GetInfo(old_connection).status.ok());

  // A key that does not match is reported on SIGHUP.
  ASSERT_NO_FATAL_FAILURE(
      ReplaceFile(live.File("server.key"), ReadFileOrEmpty(Pem("client.key"))));
  server_->Signal(SIGHUP);
  EXPECT_TRUE(
      server_->WaitForLog("private key does not match", absl::Seconds(10)));
}

TEST_F(SecurityE2eTest, HealthListenServesOnlyHealthInPlaintext) {
  TempDir dir;
  std::vector<std::string> args = TlsArgs();
  args.insert(args.end(),
              {"--health-listen", "127.0.0.1:0", "--health-port-file",
               dir.File("health_port"), "--reflection"});
  ASSERT_NO_FATAL_FAILURE(Start(args, ServerCa()));
  const std::string port = ReadFileOrEmpty(dir.File("health_port"));
  ASSERT_FALSE(port.empty());
  const std::shared_ptr<grpc::Channel> health =
      Channel(absl::StrCat("127.0.0.1:", std::stoi(port)), {});
  absl::StatusOr<HealthStatus::ServingStatus> ready =
      CheckHealth(health, kReadiness);
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(*ready, HealthStatus::SERVING);
  absl::StatusOr<HealthStatus::ServingStatus> live = CheckHealth(health, "");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, HealthStatus::SERVING);
  // Nothing else there: not the scoring service, not reflection.
  EXPECT_EQ(GetInfo(health).status.error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_FALSE(e2e::ListServicesByReflection(health).ok());
  // While the main port stays TLS only (with reflection there).
  EXPECT_EQ(GetInfo(Channel(server_->target(), {})).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(
      e2e::ListServicesByReflection(Channel(server_->target(), ServerCa()))
          .ok());

  // A second server cannot take the same health port (no SO_REUSEPORT).
  const CommandResult clash = RunCommand(
      {ServerBinary(), "--listen", "127.0.0.1:0", "--metrics-listen", "off",
       "--health-listen", absl::StrCat("127.0.0.1:", std::stoi(port))},
      absl::Seconds(60));
  EXPECT_EQ(clash.exit_code, 1) << clash.output;
  EXPECT_THAT(clash.output, HasSubstr("--health-listen"));

  // The CLI probes it as Kubernetes would, in plaintext.
  const CommandResult probe = RunCommand(
      {CliBinary(), "--target", absl::StrCat("127.0.0.1:", std::stoi(port)),
       "--timeout", "10s", "health", "--service", kReadiness});
  EXPECT_EQ(probe.exit_code, 0) << probe.output;
}

TEST_F(SecurityE2eTest, HealthListenMirrorsReadiness) {
  TempDir dir;
  ServerOptions options;
  options.wait_ready = false;
  options.log_level = "info";
  options.extra_args = TlsArgs();
  options.extra_args.insert(
      options.extra_args.end(),
      {"--health-listen", "127.0.0.1:0", "--health-port-file",
       dir.File("health_port"), "--warmup-delay-ms", "3000"});
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = *std::move(server);
  const std::string port = ReadFileOrEmpty(dir.File("health_port"));
  ASSERT_FALSE(port.empty()) << "written before the main port file";
  const std::shared_ptr<grpc::Channel> health =
      Channel(absl::StrCat("127.0.0.1:", std::stoi(port)), {});
  // Live at once, ready only after the warm-up: the main server's statuses.
  absl::StatusOr<HealthStatus::ServingStatus> live = CheckHealth(health, "");
  ASSERT_TRUE(live.ok()) << live.status();
  EXPECT_EQ(*live, HealthStatus::SERVING);
  absl::StatusOr<HealthStatus::ServingStatus> ready =
      CheckHealth(health, kReadiness);
  ASSERT_TRUE(ready.ok()) << ready.status();
  EXPECT_EQ(*ready, HealthStatus::NOT_SERVING);
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<HealthStatus::ServingStatus> s =
            CheckHealth(health, kReadiness, absl::Seconds(2));
        return s.ok() && *s == HealthStatus::SERVING;
      },
      kWait, kPoll));
  absl::StatusOr<HealthStatus::ServingStatus> main_ready =
      CheckHealth(Channel(server_->target(), ServerCa()), kReadiness);
  ASSERT_TRUE(main_ready.ok()) << main_ready.status();
  EXPECT_EQ(*main_ready, HealthStatus::SERVING);
}

TEST_F(SecurityE2eTest, ReflectionIsOffByDefaultAndOnWithTheFlag) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  absl::StatusOr<std::vector<std::string>> off =
      e2e::ListServicesByReflection(Channel(server_->target(), {}));
  EXPECT_FALSE(off.ok()) << "reflection served without --reflection";
  EXPECT_TRUE(server_->WaitForLog("reflection off", absl::Seconds(5)));

  ASSERT_NO_FATAL_FAILURE(Start({"--reflection"}));
  absl::StatusOr<std::vector<std::string>> on =
      e2e::ListServicesByReflection(Channel(server_->target(), {}));
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_THAT(*on, ::testing::Contains(std::string(kReadiness)));
}

TEST_F(SecurityE2eTest, StartUpRefusesUnsafeOrBrokenSettings) {
  const std::string tokens = pki_->File("tokens-start");
  WriteFile(tokens, std::string(kAliceToken) + "\n");
  const std::string garbage = pki_->File("garbage.pem");
  WriteFile(garbage, "not a certificate\n");
  const std::vector<StartFailure> cases = {
      {{"--auth-token-file", tokens}, 2, "--allow-plaintext-tokens"},
      {{"--tls-cert", Pem("server.pem")}, 2, "--tls-cert and --tls-key go"},
      {{"--tls-client-ca", Pem("ca.pem")}, 2, "--tls-client-ca needs"},
      {{"--tls-cert", pki_->File("missing.pem"), "--tls-key",
        Pem("server.key")},
       1,
       "missing.pem: cannot open"},
      {{"--tls-cert", garbage, "--tls-key", Pem("server.key")},
       1,
       "no PEM certificate"},
      {{"--tls-cert", Pem("server.pem"), "--tls-key", Pem("client.key")},
       1,
       "private key does not match"},
      {{"--tls-cert", Pem("server.pem"), "--tls-key", Pem("server.key"),
        "--tls-client-ca", garbage},
       1,
       "--tls-client-ca"},
      {{"--tls-cert", Pem("server.pem"), "--tls-key", Pem("server.key"),
        "--auth-token-file", pki_->File("no-tokens-here")},
       1,
       "--auth-token-file"},
  };
  for (const StartFailure& c : cases) {
    const CommandResult result = RunServerUntilExit(c.args);
    EXPECT_EQ(result.exit_code, c.exit_code) << c.message << "\n"
                                             << result.output;
    EXPECT_THAT(result.output, HasSubstr(c.message));
  }
  // With the override it starts (and serves health without a token).
  ASSERT_NO_FATAL_FAILURE(
      Start({"--auth-token-file", tokens, "--allow-plaintext-tokens"}));
  EXPECT_EQ(GetInfo(Channel(server_->target(), {})).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

}  // namespace
}  // namespace attnscore::security
