#include "server/security/health_listener.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attnscore::security {
namespace {

// A health check request is a service name: a few hundred bytes at most.
constexpr int kMaxMessageBytes = 4096;
constexpr int kMaxConcurrentStreams = 16;
// ProtoServerReflectionPlugin::name().
constexpr char kReflectionPluginName[] = "proto_server_reflection";

// No reflection on the health-only port.
class NoReflection : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    RemoveReflectionPlugins(plugins);
  }
};

}  // namespace

void RemoveReflectionPlugins(
    std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) {
  plugins->erase(
      std::remove_if(plugins->begin(), plugins->end(),
                     [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                       return p->name() == kReflectionPluginName;
                     }),
      plugins->end());
}

absl::StatusOr<std::unique_ptr<HealthListener>> HealthListener::Start(
    const std::string& address) {
  // Global and idempotent: every server built from now on gets gRPC's default
  // health service (the main server enables it too).
  grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<HealthListener> listener(new HealthListener());
  grpc::ServerBuilder builder;
  builder.SetOption(std::make_unique<NoReflection>());
  builder.RegisterCallbackGenericService(&listener->unimplemented_);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(),
                           &listener->port_);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             kMaxConcurrentStreams);
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would
  // bind too and share the probes with this one. Fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  listener->server_ = builder.BuildAndStart();
  if (listener->server_ == nullptr || listener->port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--health-listen ", address,
                     ": cannot listen there (address in use or not local?)"));
  }
  listener->health_ = listener->server_->GetHealthCheckService();
  return listener;
}

HealthListener::~HealthListener() { Shutdown(); }

void HealthListener::Shutdown() {
  if (stopped_ || server_ == nullptr) return;
  stopped_ = true;
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
}

void HealthFanout::SetServingStatus(const std::string& service_name,
                                    bool serving) {
  for (grpc::HealthCheckServiceInterface* health : to_) {
    health->SetServingStatus(service_name, serving);
  }
}

void HealthFanout::SetServingStatus(bool serving) {
  for (grpc::HealthCheckServiceInterface* health : to_) {
    health->SetServingStatus(serving);
  }
}

void HealthFanout::Shutdown() {
  for (grpc::HealthCheckServiceInterface* health : to_) health->Shutdown();
}

}  // namespace attnscore::security
