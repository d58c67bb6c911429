#include "server/security/server_security.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace attnscore::security {
namespace {

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyFree>;

absl::Status Unusable(const std::string& path, absl::string_view what) {
  ERR_clear_error();
  return absl::FailedPreconditionError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<BioPtr> OpenFile(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (bio == nullptr) return Unusable(path, "cannot open");
  return bio;
}

// Every certificate in a PEM file, in order.
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const std::string& path) {
  absl::StatusOr<BioPtr> bio = OpenFile(path);
  if (!bio.ok()) return bio.status();
  std::vector<X509Ptr> certs;
  while (X509* cert =
             PEM_read_bio_X509(bio->get(), nullptr, nullptr, nullptr)) {
    certs.emplace_back(cert);
  }
  ERR_clear_error();  // the end of the file reads as an error
  if (certs.empty()) return Unusable(path, "no PEM certificate in it");
  return certs;
}

std::string DescribeCertificate(X509* cert) {
  BioPtr out(BIO_new(BIO_s_mem()));
  X509_NAME_print_ex(out.get(), X509_get_subject_name(cert), 0,
                     XN_FLAG_RFC2253);
  BIO_puts(out.get(), ", not after ");
  ASN1_TIME_print(out.get(), X509_get0_notAfter(cert));
  char* data = nullptr;
  const int64_t size = BIO_get_mem_data(out.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

}  // namespace

absl::StatusOr<std::string> CheckServerCertificate(const std::string& cert,
                                                   const std::string& key) {
  absl::StatusOr<std::vector<X509Ptr>> chain = ReadCertificates(cert);
  if (!chain.ok()) return chain.status();
  X509* leaf = chain->front().get();
  if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
    return Unusable(
        cert, absl::StrCat("certificate expired: ", DescribeCertificate(leaf)));
  }
  absl::StatusOr<BioPtr> bio = OpenFile(key);
  if (!bio.ok()) return bio.status();
  KeyPtr private_key(
      PEM_read_bio_PrivateKey(bio->get(), nullptr, nullptr, nullptr));
  if (private_key == nullptr) {
    return Unusable(key, "no PEM private key in it (or it is encrypted)");
  }
  if (X509_check_private_key(leaf, private_key.get()) != 1) {
    return Unusable(key, absl::StrCat("private key does not match the "
                                      "certificate in ",
                                      cert));
  }
  return DescribeCertificate(leaf);
}

absl::StatusOr<int> CheckCaBundle(const std::string& path) {
  absl::StatusOr<std::vector<X509Ptr>> certs = ReadCertificates(path);
  if (!certs.ok()) return certs.status();
  return static_cast<int>(certs->size());
}

absl::StatusOr<std::unique_ptr<ServerSecurity>> ServerSecurity::Create(
    const SecurityOptions& options) {
  if (options.tls() && (options.tls_cert.empty() || options.tls_key.empty())) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key go together: give both or neither");
  }
  if (!options.tls_client_ca.empty() && !options.tls()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca needs --tls-cert and --tls-key (client certificates "
        "are only checked over TLS)");
  }
  if (!options.auth_token_file.empty() && !options.tls() &&
      !options.allow_plaintext_tokens) {
    return absl::InvalidArgumentError(
        "--auth-token-file without TLS would send the tokens in cleartext: "
        "add --tls-cert and --tls-key, or --allow-plaintext-tokens (behind a "
        "TLS-terminating proxy, or for tests)");
  }
  if (options.unix_socket && !options.tls_client_ca.empty() &&
      options.auth_token_file.empty()) {
    return absl::InvalidArgumentError(
        "--listen-unix with client certificates as the only authentication: "
        "callers on the Unix socket present no certificate, so every call "
        "there would be refused; add --auth-token-file (bearer tokens "
        "authenticate callers on both listeners)");
  }
  if (options.tls_refresh_seconds < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-refresh-seconds must be at least 1, is ",
                     options.tls_refresh_seconds));
  }
  std::unique_ptr<ServerSecurity> security(new ServerSecurity(options));
  if (options.tls()) {
    if (absl::Status s = security->SetUpTls(); !s.ok()) return s;
  } else {
    security->credentials_ = grpc::InsecureServerCredentials();
  }
  if (options.unix_socket) {
    security->unix_credentials_ = grpc::experimental::LocalServerCredentials(
        grpc_local_connect_type::UDS);
  }
  absl::StatusOr<std::unique_ptr<Authenticator>> authenticator =
      Authenticator::Create(
          {options.auth_token_file, !options.tls_client_ca.empty()});
  if (!authenticator.ok()) return authenticator.status();
  security->authenticator_ = *std::move(authenticator);
  return security;
}

absl::Status ServerSecurity::SetUpTls() {
  absl::StatusOr<std::string> summary =
      CheckServerCertificate(options_.tls_cert, options_.tls_key);
  if (!summary.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--tls-cert/--tls-key: ", summary.status().message()));
  }
  certificate_summary_ = *summary;
  if (!options_.tls_client_ca.empty()) {
    absl::StatusOr<int> roots = CheckCaBundle(options_.tls_client_ca);
    if (!roots.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--tls-client-ca: ", roots.status().message()));
    }
  }
  const auto refresh = static_cast<unsigned int>(options_.tls_refresh_seconds);
  provider_ =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          options_.tls_key, options_.tls_cert, options_.tls_client_ca, refresh);
  grpc::experimental::TlsServerCredentialsOptions tls(provider_);
  tls.watch_identity_key_cert_pairs();
  if (options_.tls_client_ca.empty()) {
    tls.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    tls.watch_root_certs();
    tls.set_cert_request_type(
        GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  credentials_ = grpc::experimental::TlsServerCredentials(tls);
  if (credentials_ == nullptr) {
    return absl::FailedPreconditionError(
        "gRPC refused the TLS credentials options");
  }
  return absl::OkStatus();
}

std::string ServerSecurity::Describe() const {
  std::string text = tls() ? absl::StrCat("TLS (", certificate_summary_,
                                          "; files re-read "
                                          "every ",
                                          options_.tls_refresh_seconds, " s)")
                           : std::string("plaintext (no TLS)");
  absl::StrAppend(&text, !options_.tls_client_ca.empty()
                             ? ", client certificates required"
                             : ", no client certificates");
  if (authenticator_->requires_token()) {
    absl::StrAppend(&text, ", ", authenticator_->token_count(),
                    " bearer tokens from ", options_.auth_token_file);
  } else {
    absl::StrAppend(&text, ", no bearer tokens");
  }
  if (options_.unix_socket) {
    absl::StrAppend(&text, "; the Unix socket: local connections only");
  }
  return text;
}

void ServerSecurity::Reload() {
  if (authenticator_->requires_token()) {
    if (absl::Status s = authenticator_->Reload(); s.ok()) {
      spdlog::info("SIGHUP: --auth-token-file: {} tokens",
                   authenticator_->token_count());
    } else {
      spdlog::error(
          "SIGHUP: --auth-token-file: {}; keeping the previous {} "
          "tokens",
          std::string{s.message()}, authenticator_->token_count());
    }
  }
  if (!tls()) return;
  absl::StatusOr<std::string> summary =
      CheckServerCertificate(options_.tls_cert, options_.tls_key);
  if (summary.ok()) {
    spdlog::info("SIGHUP: --tls-cert {}: new connections get it within {} s",
                 *summary, options_.tls_refresh_seconds);
  } else {
    spdlog::error(
        "SIGHUP: --tls-cert/--tls-key: {}; new TLS handshakes may fail until "
        "the files are fixed",
        std::string{summary.status().message()});
  }
  if (!options_.tls_client_ca.empty()) {
    if (absl::StatusOr<int> roots = CheckCaBundle(options_.tls_client_ca);
        !roots.ok()) {
      spdlog::error("SIGHUP: --tls-client-ca: {}",
                    std::string{roots.status().message()});
    }
  }
}

}  // namespace attnscore::security
