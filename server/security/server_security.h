// The server's transport security and caller authentication, from its flags:
// TLS credentials (optionally requiring client certificates) and the
// Authenticator (bearer tokens or the client certificate's subject).
//
// TLS uses gRPC's FileWatcherCertificateProvider: the certificate, key and
// client CA files are re-read every `tls_refresh_seconds`, and a change is
// served to new connections from then on (established connections keep the
// certificate they were made with). gRPC offers no way to push certificates
// into a running server, so SIGHUP (Reload) does not swap them itself: it
// checks the files as they are now (they parse, the key matches, not expired)
// and logs what the watcher will serve within the refresh interval, or the
// error. Replace the files atomically (a rename, or Kubernetes' Secret volume
// symlink swap): the watcher reads whatever is there at its next tick.
//
// Ownership: Create returns the owner of the provider, the credentials and the
// Authenticator; authenticator() lives as long as it.
// Thread safety: after Create, every method may be called from any thread.
// Errors (Create): INVALID_ARGUMENT for a flag combination that cannot work
// (the binary's exit code 2), FAILED_PRECONDITION for a file that is missing
// or unusable (exit code 1); messages name the flag and the file.
#ifndef ATTNSCORE_SERVER_SECURITY_SERVER_SECURITY_H_
#define ATTNSCORE_SERVER_SECURITY_SERVER_SECURITY_H_

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/security/authenticator.h"

namespace attnscore::security {

struct SecurityOptions {
  std::string tls_cert;       // PEM certificate chain; with tls_key: TLS
  std::string tls_key;        // PEM private key
  std::string tls_client_ca;  // PEM roots: require and verify client certs
  int tls_refresh_seconds = 5;
  std::string auth_token_file;  // bearer tokens (token_file.h)
  bool allow_plaintext_tokens = false;
  // --listen-unix: the services are also served on a Unix domain socket, to
  // callers on the same host (gRPC's local credentials: the socket file's
  // permissions decide who may connect; bearer tokens, when required, travel
  // there as on any port).
  bool unix_socket = false;

  bool tls() const { return !tls_cert.empty() || !tls_key.empty(); }
};

// What a certificate file holds, for logs: "subject ..., serial ..., not after
// ...". FAILED_PRECONDITION when the files cannot serve TLS.
absl::StatusOr<std::string> CheckServerCertificate(const std::string& cert,
                                                   const std::string& key);
// The number of CA certificates in a PEM bundle; FAILED_PRECONDITION when none.
absl::StatusOr<int> CheckCaBundle(const std::string& path);

class ServerSecurity {
 public:
  static absl::StatusOr<std::unique_ptr<ServerSecurity>> Create(
      const SecurityOptions& options);

  // For every listening port that serves the services (not --health-listen).
  std::shared_ptr<grpc::ServerCredentials> credentials() const {
    return credentials_;
  }
  // For the Unix domain socket (unix_socket): gRPC's local credentials, which
  // accept only connections over such a socket. Null without unix_socket.
  std::shared_ptr<grpc::ServerCredentials> unix_credentials() const {
    return unix_credentials_;
  }
  const Authenticator& authenticator() const { return *authenticator_; }
  bool tls() const { return options_.tls(); }

  // One line for the start-up log: transport, client certificates, tokens.
  std::string Describe() const;

  // SIGHUP: re-reads the token file (a broken one keeps the previous tokens)
  // and re-checks the TLS files; logs the outcome of each.
  void Reload();

 private:
  explicit ServerSecurity(const SecurityOptions& options) : options_(options) {}
  absl::Status SetUpTls();

  const SecurityOptions options_;
  std::string certificate_summary_;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::shared_ptr<grpc::ServerCredentials> unix_credentials_;
  std::unique_ptr<Authenticator> authenticator_;
};

}  // namespace attnscore::security

#endif  // ATTNSCORE_SERVER_SECURITY_SERVER_SECURITY_H_
