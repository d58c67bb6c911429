#include "server/security/token_file.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace attnscore::security {
namespace {

bool IsNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-' || c == '@';
}

// Visible ASCII, no whitespace: what an HTTP/2 header value carries verbatim.
bool IsTokenChar(char c) { return c > 0x20 && c < 0x7f; }

absl::Status LineError(size_t line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("line ", line, ": ", what));
}

absl::Status CheckName(size_t line, absl::string_view name) {
  if (name.empty() || name.size() > kMaxTokenNameLength) {
    return LineError(
        line, absl::StrCat("token name must be 1 to ", kMaxTokenNameLength,
                           " characters, has ", name.size()));
  }
  for (char c : name) {
    if (!IsNameChar(c)) {
      return LineError(
          line,
          "token name may hold only letters, digits, '.', '_', '-' and '@'");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckToken(size_t line, absl::string_view token) {
  if (token.size() < kMinTokenLength || token.size() > kMaxTokenLength) {
    return LineError(
        line, absl::StrCat("token must be ", kMinTokenLength, " to ",
                           kMaxTokenLength, " characters, has ", token.size()));
  }
  for (char c : token) {
    if (!IsTokenChar(c)) {
      return LineError(line,
                       "token may hold only visible ASCII characters "
                       "(no spaces or control characters)");
    }
  }
  return absl::OkStatus();
}

}  // namespace

TokenDigest DigestToken(absl::string_view token) {
  TokenDigest digest{};
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(),
         digest.data());
  return digest;
}

bool ConstantTimeEquals(const TokenDigest& a, const TokenDigest& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

absl::StatusOr<std::vector<NamedToken>> ParseTokenFile(absl::string_view text) {
  std::vector<NamedToken> tokens;
  std::set<std::string> names;
  std::set<TokenDigest> digests;
  size_t line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::string name;
    absl::string_view token = line;
    if (const size_t colon = line.find(':'); colon != absl::string_view::npos) {
      const absl::string_view given = line.substr(0, colon);
      if (absl::Status s = CheckName(line_number, given); !s.ok()) return s;
      name = std::string{given};
      token = line.substr(colon + 1);
    } else {
      name = absl::StrCat("token-", tokens.size() + 1);
    }
    if (absl::Status s = CheckToken(line_number, token); !s.ok()) return s;
    if (!names.insert(name).second) {
      return LineError(line_number,
                       absl::StrCat("token name '", name, "' used twice"));
    }
    NamedToken entry{std::move(name), DigestToken(token)};
    if (!digests.insert(entry.digest).second) {
      return LineError(line_number, "the same token appears twice");
    }
    tokens.push_back(std::move(entry));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        "no tokens (every call would be refused)");
  }
  return tokens;
}

absl::StatusOr<std::vector<NamedToken>> ReadTokenFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": read failed"));
  }
  absl::StatusOr<std::vector<NamedToken>> tokens = ParseTokenFile(text.str());
  if (!tokens.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", tokens.status().message()));
  }
  return tokens;
}

const NamedToken* FindToken(const std::vector<NamedToken>& tokens,
                            absl::string_view presented) {
  const TokenDigest digest = DigestToken(presented);
  const NamedToken* found = nullptr;
  for (const NamedToken& token : tokens) {
    // No early exit: every entry costs the same.
    const bool equal = ConstantTimeEquals(token.digest, digest);
    if (equal) found = &token;
  }
  return found;
}

}  // namespace attnscore::security
