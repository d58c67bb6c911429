#include "server/security/authenticator.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attnscore::security {
namespace {

constexpr absl::string_view kBearer = "bearer ";

// The first value of `property` in the peer's auth context, or "".
std::string AuthProperty(const grpc::AuthContext* auth, const char* property) {
  if (auth == nullptr) return "";
  const std::vector<grpc::string_ref> values =
      auth->FindPropertyValues(property);
  if (values.empty()) return "";
  return std::string(values.front().data(), values.front().size());
}

absl::Status Unauthenticated(absl::string_view what) {
  return absl::UnauthenticatedError(what);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(
    const AuthenticatorOptions& options) {
  std::unique_ptr<Authenticator> authenticator(new Authenticator(options));
  if (!options.token_file.empty()) {
    absl::StatusOr<std::vector<NamedToken>> tokens =
        ReadTokenFile(options.token_file);
    if (!tokens.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("--auth-token-file ", tokens.status().message()));
    }
    authenticator->tokens_ =
        std::make_shared<const std::vector<NamedToken>>(*std::move(tokens));
  }
  return authenticator;
}

std::shared_ptr<const std::vector<NamedToken>> Authenticator::tokens() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return tokens_;
}

size_t Authenticator::token_count() const {
  const std::shared_ptr<const std::vector<NamedToken>> snapshot = tokens();
  return snapshot == nullptr ? 0 : snapshot->size();
}

absl::Status Authenticator::Reload() {
  if (options_.token_file.empty()) return absl::OkStatus();
  absl::StatusOr<std::vector<NamedToken>> tokens =
      ReadTokenFile(options_.token_file);
  if (!tokens.ok()) return tokens.status();
  auto fresh =
      std::make_shared<const std::vector<NamedToken>>(*std::move(tokens));
  std::lock_guard<std::mutex> lock(mutex_);
  tokens_ = std::move(fresh);
  return absl::OkStatus();
}

absl::StatusOr<std::string> Authenticator::AuthenticateValues(
    const std::vector<absl::string_view>& authorization,
    absl::string_view certificate_subject) const {
  if (requires_token()) {
    if (authorization.empty()) {
      return Unauthenticated(
          "missing 'authorization: Bearer <token>' metadata: this server "
          "requires a bearer token");
    }
    if (authorization.size() > 1) {
      return Unauthenticated(absl::StrCat(
          "expected one 'authorization' header, got ", authorization.size()));
    }
    const absl::string_view value = authorization.front();
    if (value.size() < kBearer.size() ||
        !absl::EqualsIgnoreCase(value.substr(0, kBearer.size()), kBearer)) {
      return Unauthenticated(
          "the 'authorization' header is not of the form 'Bearer <token>'");
    }
    const absl::string_view presented =
        absl::StripAsciiWhitespace(value.substr(kBearer.size()));
    const std::shared_ptr<const std::vector<NamedToken>> snapshot = tokens();
    const NamedToken* match =
        snapshot == nullptr ? nullptr : FindToken(*snapshot, presented);
    if (match == nullptr) {
      return Unauthenticated("the bearer token is not accepted");
    }
    return match->name;
  }
  if (options_.client_certificates) {
    if (certificate_subject.empty()) {
      return Unauthenticated("no verified client certificate");
    }
    return std::string{certificate_subject};
  }
  return std::string(kAnonymous);
}

absl::StatusOr<std::string> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  std::vector<absl::string_view> authorization;
  const auto range = context.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  std::string subject;
  if (options_.client_certificates && !requires_token()) {
    const std::shared_ptr<const grpc::AuthContext> auth =
        context.auth_context();
    subject = AuthProperty(auth.get(), GRPC_X509_SUBJECT_PROPERTY_NAME);
    if (subject.empty()) {
      subject = AuthProperty(auth.get(), GRPC_X509_CN_PROPERTY_NAME);
    }
  }
  return AuthenticateValues(authorization, subject);
}

}  // namespace attnscore::security
