// --health-listen: a second, plaintext gRPC server that serves grpc.health.v1
// and nothing else, for probes that cannot speak TLS (Kubernetes' native gRPC
// probes are plaintext only).
//
// Why a second server rather than a second port on the main one: a port added
// to the main server would serve every service registered there (scoring,
// KServe, reflection), so the scoring API would be reachable in plaintext
// beside the TLS port and only the per-call authentication would stand in the
// way. Here the plaintext port has no scoring service at all, tiny message
// limits, and no tokens or certificates to check. Its health statuses are the
// main server's: HealthFanout forwards every SetServingStatus to both.
//
// Ownership: HealthListener owns its grpc::Server; Shutdown() (or the
// destructor) stops it. HealthFanout borrows both health services: it must not
// outlive either server. Thread safety: SetServingStatus from any thread
// (gRPC's health service is thread-safe); Shutdown once.
// Errors: Start gives FAILED_PRECONDITION when the address cannot be bound.
#ifndef ATTNSCORE_SERVER_SECURITY_HEALTH_LISTENER_H_
#define ATTNSCORE_SERVER_SECURITY_HEALTH_LISTENER_H_

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/server.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace attnscore::security {

class HealthListener {
 public:
  static absl::StatusOr<std::unique_ptr<HealthListener>> Start(
      const std::string& address);
  ~HealthListener();
  HealthListener(const HealthListener&) = delete;
  HealthListener& operator=(const HealthListener&) = delete;

  int port() const { return port_; }
  grpc::HealthCheckServiceInterface* health() const { return health_; }
  void Shutdown();

 private:
  HealthListener() = default;

  // Answers every method but health with UNIMPLEMENTED. gRPC adds its default
  // health service only once the server starts, and refuses to build a server
  // that has no method at all before then.
  grpc::CallbackGenericService unimplemented_;
  std::unique_ptr<grpc::Server> server_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;  // owned by server_
  int port_ = 0;
  bool stopped_ = false;
};

// Drops gRPC's reflection plugin (registered for every server once
// libgrpc++_reflection is loaded) from a builder's plugins.
void RemoveReflectionPlugins(
    std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins);

// Forwards every status change to each of its health services.
class HealthFanout : public grpc::HealthCheckServiceInterface {
 public:
  explicit HealthFanout(std::vector<grpc::HealthCheckServiceInterface*> to)
      : to_(std::move(to)) {}
  void SetServingStatus(const std::string& service_name, bool serving) override;
  void SetServingStatus(bool serving) override;
  void Shutdown() override;

 private:
  const std::vector<grpc::HealthCheckServiceInterface*> to_;
};

}  // namespace attnscore::security

#endif  // ATTNSCORE_SERVER_SECURITY_HEALTH_LISTENER_H_
