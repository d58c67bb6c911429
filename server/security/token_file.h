// Bearer tokens: the --auth-token-file format and a constant-time comparison.
//
// File format: one token per line, optionally `name:token`. Blank lines and
// lines starting with `#` are ignored; surrounding whitespace is stripped. The
// name (letters, digits, `.`, `_`, `-`, `@`; at most 64 bytes) is the identity
// a call authenticated with the token gets: it appears in logs and as a metric
// label, so it must not be secret; without one the name is `token-<n>`, n the
// token's 1-based position in the file. A token is at least 16 and at most 4096
// visible ASCII characters (what an HTTP/2 header value may carry) without
// whitespace. Names and tokens are unique. A file without tokens is an error
// (every call would be refused).
//
// Only SHA-256 digests of the tokens are kept: a comparison takes the same time
// whatever the presented token's length and content (CRYPTO_memcmp over
// equal-length digests).
//
// Thread safety: plain values and pure functions. Errors: InvalidArgument
// naming the line number and what is wrong with it; the token itself never
// appears in a message.
#ifndef ATTNSCORE_SERVER_SECURITY_TOKEN_FILE_H_
#define ATTNSCORE_SERVER_SECURITY_TOKEN_FILE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace attnscore::security {

inline constexpr size_t kMinTokenLength = 16;
inline constexpr size_t kMaxTokenLength = 4096;
inline constexpr size_t kMaxTokenNameLength = 64;

using TokenDigest = std::array<uint8_t, 32>;  // SHA-256

TokenDigest DigestToken(absl::string_view token);

// Equal-length digests compared without data-dependent branches.
bool ConstantTimeEquals(const TokenDigest& a, const TokenDigest& b);

struct NamedToken {
  std::string name;
  TokenDigest digest;
};

// Parses the contents of a token file (format above).
absl::StatusOr<std::vector<NamedToken>> ParseTokenFile(absl::string_view text);

// Reads and parses `path`; errors name the path.
absl::StatusOr<std::vector<NamedToken>> ReadTokenFile(const std::string& path);

// The name of the token equal to `presented`, or nullptr. Every entry is
// compared (no early exit), so the time does not say which one matched.
const NamedToken* FindToken(const std::vector<NamedToken>& tokens,
                            absl::string_view presented);

}  // namespace attnscore::security

#endif  // ATTNSCORE_SERVER_SECURITY_TOKEN_FILE_H_
