// Who is calling: the identity of one gRPC call, from its bearer token or its
// client certificate.
//
//   - With a token file: the call must carry exactly one
//     `authorization: Bearer <token>` header whose token is in the file; the
//     identity is the token's name (token_file.h). Otherwise UNAUTHENTICATED,
//     saying what is missing or wrong and never echoing the token.
//   - Without a token file but with client certificates (mTLS): TLS has already
//     verified the certificate against --tls-client-ca; the identity is its
//     subject (x509_subject, else the common name).
//   - Neither: every call is "anonymous".
//
// Reload() re-reads the token file (SIGHUP); a file that fails to parse keeps
// the previous tokens and returns the error.
//
// Thread safety: Authenticate and Reload may run concurrently from any threads
// (the token set is an immutable snapshot swapped under a mutex).
#ifndef ATTNSCORE_SERVER_SECURITY_AUTHENTICATOR_H_
#define ATTNSCORE_SERVER_SECURITY_AUTHENTICATOR_H_

#include <grpcpp/server_context.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/security/token_file.h"

namespace attnscore::security {

inline constexpr const char* kAnonymous = "anonymous";

struct AuthenticatorOptions {
  std::string token_file;            // empty: no tokens required
  bool client_certificates = false;  // mTLS: the identity is the subject
};

class Authenticator {
 public:
  // Reads the token file when there is one: FAILED_PRECONDITION naming the
  // file and line when it cannot be used.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(
      const AuthenticatorOptions& options);

  // The identity of the call, or UNAUTHENTICATED.
  absl::StatusOr<std::string> Authenticate(
      const grpc::ServerContextBase& context) const;

  // The same decision from the call's `authorization` header values and the
  // client certificate's subject ("" when none): what Authenticate extracts
  // from the context.
  absl::StatusOr<std::string> AuthenticateValues(
      const std::vector<absl::string_view>& authorization,
      absl::string_view certificate_subject) const;

  // Re-reads the token file; on error keeps the previous tokens. OK and a
  // no-op without a token file.
  absl::Status Reload();

  bool requires_token() const { return !options_.token_file.empty(); }
  // Tokens or client certificates tell callers apart; without either, every
  // call is kAnonymous.
  bool identifies_callers() const {
    return requires_token() || options_.client_certificates;
  }
  size_t token_count() const;

 private:
  explicit Authenticator(AuthenticatorOptions options)
      : options_(std::move(options)) {}
  std::shared_ptr<const std::vector<NamedToken>> tokens() const;

  const AuthenticatorOptions options_;
  mutable std::mutex mutex_;
  std::shared_ptr<const std::vector<NamedToken>> tokens_;  // guarded by mutex_
};

}  // namespace attnscore::security

#endif  // ATTNSCORE_SERVER_SECURITY_AUTHENTICATOR_H_
