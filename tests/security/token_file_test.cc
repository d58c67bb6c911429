// The --auth-token-file parser, the constant-time comparison and the
// Authenticator's decisions (tokens, client certificate subject, anonymous,
// reload keeping the previous tokens on a broken file). No server.
#include "server/security/token_file.h"

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/security/authenticator.h"
#include "tests/testing/test_util.h"

namespace attnscore::security {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kAlice[] = "alice-token-0123456789";
constexpr char kBob[] = "bob-token-abcdefghijkl";

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

TEST(TokenFileTest, ParsesNamesDefaultsCommentsAndBlankLines) {
  absl::StatusOr<std::vector<NamedToken>> tokens = ParseTokenFile(
      "# the batch jobs\n\n  alice:" + std::string(kAlice) + "  \n" +
      std::string(kBob) + "\r\n   # indented comment\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2u);
  EXPECT_EQ((*tokens)[0].name, "alice");
  EXPECT_EQ((*tokens)[1].name, "token-2");
  EXPECT_TRUE(ConstantTimeEquals((*tokens)[0].digest, DigestToken(kAlice)));
  EXPECT_TRUE(ConstantTimeEquals((*tokens)[1].digest, DigestToken(kBob)));
}

TEST(TokenFileTest, TokenMayContainColonsAfterTheName) {
  absl::StatusOr<std::vector<NamedToken>> tokens =
      ParseTokenFile("svc:abc:def:ghi:jkl:mnop\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ((*tokens)[0].name, "svc");
  EXPECT_NE(FindToken(*tokens, "abc:def:ghi:jkl:mnop"), nullptr);
}

struct BadCase {
  std::string text;
  std::string message;
};

TEST(TokenFileTest, RejectsBadLinesNamingTheLineNeverTheToken) {
  const std::string secret = "s3cret-but-short";  // 16 characters: valid
  const std::vector<BadCase> cases = {
      {"", "no tokens"},
      {"# only a comment\n\n", "no tokens"},
      {"short\n", "line 1: token must be 16 to 4096 characters, has 5"},
      {"\n\nname:" + secret.substr(0, 10) + "\n", "line 3: token must be"},
      {"bad name:" + secret + "\n", "line 1: token name may hold only"},
      {":" + secret + "\n", "line 1: token name must be 1 to 64"},
      {std::string(65, 'n') + ":" + secret + "\n",
       "token name must be 1 to 64 characters, has 65"},
      {"a:" + secret + " tail\n", "only visible ASCII"},
      {"a:" + secret + "\na:" + secret + "x\n",
       "line 2: token name 'a' used twice"},
      {"a:" + secret + "\nb:" + secret + "\n",
       "line 2: the same token appears twice"},
      {"a:" + std::string(4097, 'x') + "\n", "has 4097"},
  };
  for (const BadCase& c : cases) {
    absl::StatusOr<std::vector<NamedToken>> tokens = ParseTokenFile(c.text);
    ASSERT_FALSE(tokens.ok()) << c.text;
    EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(tokens.status().message()), HasSubstr(c.message))
        << c.text;
    EXPECT_THAT(std::string(tokens.status().message()),
                Not(HasSubstr(secret.substr(0, 10))));
  }
}

TEST(TokenFileTest, ConstantTimeEqualsComparesWholeDigests) {
  const TokenDigest a = DigestToken("aaaaaaaaaaaaaaaaaaaa");
  TokenDigest b = a;
  EXPECT_TRUE(ConstantTimeEquals(a, b));
  b.back() ^= 1;  // differs in the last byte only
  EXPECT_FALSE(ConstantTimeEquals(a, b));
  b = a;
  b.front() ^= 0x80;  // and in the first
  EXPECT_FALSE(ConstantTimeEquals(a, b));
  // Digests: a prefix or an extension of a token is a different token.
  EXPECT_FALSE(ConstantTimeEquals(DigestToken("aaaaaaaaaaaaaaaaaaa"), a));
  EXPECT_FALSE(ConstantTimeEquals(DigestToken("aaaaaaaaaaaaaaaaaaaaa"), a));
  EXPECT_FALSE(ConstantTimeEquals(DigestToken(""), a));
}

TEST(TokenFileTest, FindTokenMatchesExactlyOne) {
  absl::StatusOr<std::vector<NamedToken>> tokens = ParseTokenFile(
      "alice:" + std::string(kAlice) + "\nbob:" + std::string(kBob) + "\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  const NamedToken* bob = FindToken(*tokens, kBob);
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(bob->name, "bob");
  EXPECT_EQ(FindToken(*tokens, std::string(kBob) + "x"), nullptr);
  EXPECT_EQ(FindToken(*tokens, ""), nullptr);
}

TEST(TokenFileTest, ReadTokenFileNamesAMissingFile) {
  absl::StatusOr<std::vector<NamedToken>> tokens =
      ReadTokenFile("/nonexistent/tokens");
  ASSERT_FALSE(tokens.ok());
  EXPECT_THAT(std::string(tokens.status().message()),
              HasSubstr("/nonexistent/tokens: cannot open"));
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  std::unique_ptr<Authenticator> Make(const std::string& tokens,
                                      bool client_certificates = false) {
    std::string path;
    if (!tokens.empty()) {
      path = dir_.File("tokens");
      WriteFile(path, tokens);
    }
    absl::StatusOr<std::unique_ptr<Authenticator>> made =
        Authenticator::Create({path, client_certificates});
    EXPECT_TRUE(made.ok()) << made.status();
    return made.ok() ? *std::move(made) : nullptr;
  }
  testing::TempDir dir_;
};

TEST_F(AuthenticatorTest, TokensDecideTheIdentity) {
  std::unique_ptr<Authenticator> auth =
      Make("alice:" + std::string(kAlice) + "\n" + kBob + "\n");
  ASSERT_NE(auth, nullptr);
  EXPECT_TRUE(auth->requires_token());
  EXPECT_EQ(auth->token_count(), 2u);
  const std::string bearer_alice = std::string("Bearer ") + kAlice;
  EXPECT_EQ(*auth->AuthenticateValues({bearer_alice}, ""), "alice");
  const std::string lower_bob = std::string("bearer ") + kBob;
  EXPECT_EQ(*auth->AuthenticateValues({lower_bob}, ""), "token-2");
  // A certificate subject does not replace the token.
  EXPECT_EQ(auth->AuthenticateValues({}, "CN=someone").status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthenticatorTest, RefusalsSayWhatIsWrongAndNeverEchoTheToken) {
  std::unique_ptr<Authenticator> auth = Make(std::string(kAlice) + "\n");
  ASSERT_NE(auth, nullptr);
  const std::string wrong = "Bearer wrong-token-value-123";
  const std::string basic = std::string("Basic ") + kAlice;
  const std::string bearer = std::string("Bearer ") + kAlice;
  const std::vector<std::pair<std::vector<absl::string_view>, std::string>>
      cases = {
          {{}, "missing 'authorization: Bearer <token>'"},
          {{wrong}, "the bearer token is not accepted"},
          {{basic}, "not of the form 'Bearer <token>'"},
          {{"Bearer"}, "not of the form 'Bearer <token>'"},
          {{bearer, bearer}, "expected one 'authorization' header, got 2"},
      };
  for (const auto& [values, message] : cases) {
    absl::StatusOr<std::string> identity = auth->AuthenticateValues(values, "");
    ASSERT_FALSE(identity.ok()) << message;
    EXPECT_EQ(identity.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(std::string(identity.status().message()), HasSubstr(message));
    EXPECT_THAT(std::string(identity.status().message()),
                Not(HasSubstr("wrong-token")));
    EXPECT_THAT(std::string(identity.status().message()),
                Not(HasSubstr(kAlice)));
  }
}

TEST_F(AuthenticatorTest, ClientCertificateSubjectWithoutTokens) {
  std::unique_ptr<Authenticator> auth = Make("", /*client_certificates=*/true);
  ASSERT_NE(auth, nullptr);
  EXPECT_EQ(*auth->AuthenticateValues({}, "CN=client-a,O=tests"),
            "CN=client-a,O=tests");
  EXPECT_EQ(auth->AuthenticateValues({}, "").status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AuthenticatorTest, AnonymousWhenNothingIsConfigured) {
  std::unique_ptr<Authenticator> auth = Make("");
  ASSERT_NE(auth, nullptr);
  EXPECT_FALSE(auth->requires_token());
  EXPECT_EQ(*auth->AuthenticateValues({}, ""), kAnonymous);
  EXPECT_EQ(*auth->AuthenticateValues({"Bearer anything-at-all-123"}, ""),
            kAnonymous);
}

TEST_F(AuthenticatorTest, ReloadSwapsTokensAndKeepsThemOnABrokenFile) {
  std::unique_ptr<Authenticator> auth =
      Make("alice:" + std::string(kAlice) + "\n");
  ASSERT_NE(auth, nullptr);
  const std::string alice = std::string("Bearer ") + kAlice;
  const std::string bob = std::string("Bearer ") + kBob;
  WriteFile(dir_.File("tokens"), "bob:" + std::string(kBob) + "\n");
  ASSERT_TRUE(auth->Reload().ok());
  EXPECT_EQ(*auth->AuthenticateValues({bob}, ""), "bob");
  EXPECT_FALSE(auth->AuthenticateValues({alice}, "").ok());

  WriteFile(dir_.File("tokens"), "bob:short\n");
  const absl::Status broken = auth->Reload();
  EXPECT_THAT(std::string(broken.message()), HasSubstr("line 1"));
  EXPECT_EQ(*auth->AuthenticateValues({bob}, ""), "bob") << "kept";
  EXPECT_EQ(auth->token_count(), 1u);
}

TEST(AuthenticatorCreateTest, BrokenTokenFileIsAFailedPrecondition) {
  testing::TempDir dir;
  WriteFile(dir.File("tokens"), "\n# nothing\n");
  absl::StatusOr<std::unique_ptr<Authenticator>> auth =
      Authenticator::Create({dir.File("tokens"), false});
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(auth.status().message()),
              HasSubstr("--auth-token-file"));
}

}  // namespace
}  // namespace attnscore::security
