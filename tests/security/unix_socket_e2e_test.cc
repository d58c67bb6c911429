// --listen-unix end to end: real attnscore-server processes serving a Unix
// domain socket beside their TCP port, reached through the client library's
// "unix:" targets: the same bytes as over TCP, the socket's mode, bearer
// tokens without TLS, a stale socket replaced and the file removed on drain,
// and the settings start-up refuses.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/server_process.h"
#include "tests/testing/test_util.h"

namespace attnscore::security {
namespace {

namespace ac = ::attnscore::client;
using ::attnscore::testing::CommandResult;
using ::attnscore::testing::LeaveUnixSocketFile;
using ::attnscore::testing::RunServerUntilExit;
using ::attnscore::testing::ServerOptions;
using ::attnscore::testing::ServerProcess;
using ::attnscore::testing::StartFailure;
using ::attnscore::testing::TempDir;
using ::testing::HasSubstr;

constexpr char kToken[] = "sidecar-0123456789abcdef";

std::unique_ptr<ServerProcess> StartServer(std::vector<std::string> args) {
  ServerOptions options;
  options.extra_args = std::move(args);
  absl::StatusOr<std::unique_ptr<ServerProcess>> server =
      ServerProcess::Start(options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

absl::StatusOr<std::unique_ptr<ac::Client>> Connect(const std::string& target,
                                                    const std::string& token) {
  ac::ClientOptions options;
  options.target = target;
  options.bearer_token = token;
  options.retry.enabled = false;
  return ac::Client::Create(options);
}

// B1 H4 Lq=Lk=16 D8 ALiBi causal logits and probabilities, fixed inputs.
struct Inputs {
  ac::Tensor query, key;
  Inputs() {
    std::vector<float> values(size_t{4} * 16 * 8);
    for (size_t i = 0; i < values.size(); ++i) {
      values[i] = static_cast<float>(i % 13) * 0.25f - 1.5f;
    }
    query = *ac::Tensor::FromFloats(ac::DType::kFloat32, {1, 4, 16, 8}, values);
    key = *ac::Tensor::FromFloats(ac::DType::kFloat32, {1, 4, 16, 8}, values);
  }
  ac::ScoreRequest Request() const {
    ac::ScoreRequest request;
    request.bias = ac::Alibi{};
    request.causal = true;
    request.query = query.view();
    request.key = key.view();
    request.outputs.probs = true;
    return request;
  }
};

std::string Bytes(const ac::Tensor& t) {
  return std::string(static_cast<const char*>(t.data()), t.size_bytes());
}

mode_t ModeOf(const std::string& path) {
  struct stat info {};
  if (lstat(path.c_str(), &info) != 0) return 0;
  return info.st_mode;
}

TEST(UnixSocketE2eTest, ServesTheSameBytesAsTcpWithTheSocketsMode) {
  const TempDir dir("attnscore-unix-");
  const std::string path = dir.File("attnscore.sock");
  const std::unique_ptr<ServerProcess> server =
      StartServer({"--listen-unix", path, "--listen-unix-mode", "640"});
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(S_ISSOCK(ModeOf(path)));
  EXPECT_EQ(ModeOf(path) & 0777, 0640u) << "the socket's permission bits";

  const Inputs inputs;
  absl::StatusOr<std::unique_ptr<ac::Client>> tcp =
      Connect(server->target(), "");
  absl::StatusOr<std::unique_ptr<ac::Client>> unix_socket =
      Connect("unix:" + path, "");
  ASSERT_TRUE(tcp.ok() && unix_socket.ok());
  absl::StatusOr<ac::ScoreResult> over_tcp = (*tcp)->Score(inputs.Request());
  absl::StatusOr<ac::ScoreResult> over_unix =
      (*unix_socket)->Score(inputs.Request());
  ASSERT_TRUE(over_tcp.ok()) << over_tcp.status();
  ASSERT_TRUE(over_unix.ok()) << over_unix.status();
  ASSERT_TRUE(over_unix->logits && over_unix->probs);
  EXPECT_EQ(over_unix->logits->shape(), (std::vector<int64_t>{1, 4, 16, 16}));
  EXPECT_EQ(Bytes(*over_unix->logits), Bytes(*over_tcp->logits));
  EXPECT_EQ(Bytes(*over_unix->probs), Bytes(*over_tcp->probs));
}

TEST(UnixSocketE2eTest, BearerTokensTravelOverTheSocketWithoutTls) {
  const TempDir dir("attnscore-unix-");
  const std::string tokens = dir.File("tokens");
  std::ofstream(tokens) << "sidecar:" << kToken << "\n";
  const std::string path = dir.File("attnscore.sock");
  // --allow-plaintext-tokens is for the TCP port; the socket needs nothing.
  const std::unique_ptr<ServerProcess> server =
      StartServer({"--listen-unix", path, "--auth-token-file", tokens,
                   "--allow-plaintext-tokens"});
  ASSERT_NE(server, nullptr);
  const Inputs inputs;
  // The client sends a token over a "unix:" target without
  // allow_insecure_token: the bytes never leave the host.
  absl::StatusOr<std::unique_ptr<ac::Client>> with_token =
      Connect("unix:" + path, kToken);
  ASSERT_TRUE(with_token.ok()) << with_token.status();
  absl::StatusOr<ac::ScoreResult> ok = (*with_token)->Score(inputs.Request());
  EXPECT_TRUE(ok.ok()) << ok.status();
  for (const char* token : {"", "wrong-token"}) {
    absl::StatusOr<std::unique_ptr<ac::Client>> client =
        Connect("unix:" + path, token);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<ac::ScoreResult> refused =
        (*client)->Score(inputs.Request());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated)
        << "token \"" << token << "\": " << refused.status();
  }
  // Over plaintext TCP the client still refuses to send a token unasked.
  absl::StatusOr<std::unique_ptr<ac::Client>> tcp =
      Connect(server->target(), kToken);
  EXPECT_EQ(tcp.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UnixSocketE2eTest, ReplacesAStaleSocketAndRemovesItsOwnOnDrain) {
  const TempDir dir("attnscore-unix-");
  const std::string path = dir.File("attnscore.sock");
  ASSERT_TRUE(LeaveUnixSocketFile(path)) << std::strerror(errno);
  std::unique_ptr<ServerProcess> server = StartServer({"--listen-unix", path});
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<ac::Client>> client =
      Connect("unix:" + path, "");
  ASSERT_TRUE(client.ok());
  EXPECT_TRUE((*client)->Score(Inputs().Request()).ok());
  server->Signal(SIGTERM);
  absl::StatusOr<int> code = server->Wait(absl::Seconds(30));
  ASSERT_TRUE(code.ok()) << code.status();
  EXPECT_EQ(*code, 0) << server->Log();
  EXPECT_NE(access(path.c_str(), F_OK), 0) << "the socket outlived the server";
}

TEST(UnixSocketE2eTest, StartUpRefusesPathsModesAndSettingsThatCannotWork) {
  const TempDir dir("attnscore-unix-");
  const std::string regular = dir.File("a-file");
  std::ofstream(regular) << "not a socket\n";
  const std::string long_path =
      dir.path() + "/" + std::string(120, 's') + ".sock";
  const std::vector<StartFailure> cases = {
      {{"--listen-unix", dir.File("s.sock"), "--listen-unix-mode", "0o8"},
       2,
       "--listen-unix-mode: expected octal permission bits"},
      {{"--listen-unix", long_path}, 2, "a Unix socket path takes at most 107"},
      // Client certificates alone cannot authenticate a caller on the socket
      // (checked before the certificate files are read).
      {{"--listen-unix", dir.File("s.sock"), "--tls-cert", "c.pem", "--tls-key",
        "c.key", "--tls-client-ca", "ca.pem"},
       2,
       "add --auth-token-file"},
      {{"--listen-unix", dir.File("no-such-dir/s.sock")},
       1,
       "cannot listen there"},
      {{"--listen-unix", regular}, 1, "cannot listen there"},
  };
  for (const StartFailure& c : cases) {
    const CommandResult result = RunServerUntilExit(c.args);
    EXPECT_EQ(result.exit_code, c.exit_code) << c.message << "\n"
                                             << result.output;
    EXPECT_THAT(result.output, HasSubstr(c.message));
  }
  std::ifstream in(regular);
  std::string kept;
  std::getline(in, kept);
  EXPECT_EQ(kept, "not a socket") << "a file in the way was replaced";
}

}  // namespace
}  // namespace attnscore::security
