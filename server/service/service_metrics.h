// The service's Prometheus series, registered once in an
// observability::Registry (over prometheus-cpp) and cached so that the request
// path never takes the registry's locks.
//
// Series (all named attnscore_<name>, in base units):
//   requests_total{method,code,client}
//       requests answered, by gRPC method, status code and caller identity
//       (ScoreStream counts each message); the first kMaxClientLabels
//       identities get their own label value, later ones count as "other".
//   request_duration_seconds{method}
//       arrival to answer
//   queue_duration_seconds
//       accepted to the start of its batch's compute
//   compute_duration_seconds
//       one batch's ScoreBatch call
//   batch_size
//       items (sum of B) per computed batch
//   compute_stopped_total
//       requests whose compute stopped between tiles, its batch's every
//       request cancelled or past its deadline: work not done for nobody
//   in_flight_requests
//       accepted Score/ScoreStream requests not yet answered
//   request_bytes_total{method}
//       request message bytes received
//   response_bytes_total{method}
//       response message bytes sent
// queue_depth, inflight_bytes, models_loaded and build_info are registered by
// their owners (the service, main).
//
// Ownership: the Registry owns the metrics and must outlive this object.
// Thread safety: every method may be called from any thread.
#ifndef ATTNSCORE_SERVER_SERVICE_SERVICE_METRICS_H_
#define ATTNSCORE_SERVER_SERVICE_SERVICE_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/observability/metrics.h"

namespace attnscore::service {

// The RPC methods, for labels. kCount is not a method: it counts them.
enum class Method {
  kScore,
  kScoreStream,
  kScoreChunked,
  kListModels,
  kGetServerInfo,
  kRegisterSharedMemory,
  kUnregisterSharedMemory,
  kSharedMemoryStatus,
  // inference.GRPCInferenceService (the Open Inference Protocol).
  kServerLive,
  kServerReady,
  kModelReady,
  kServerMetadata,
  kModelMetadata,
  kModelInfer,
  kSystemSharedMemoryStatus,
  kSystemSharedMemoryRegister,
  kSystemSharedMemoryUnregister,
  kCount
};
inline constexpr int kNumMethods = static_cast<int>(Method::kCount);
// The method's name in the proto ("Score", ...).
const char* MethodName(Method method);

class ServiceMetrics {
 public:
  explicit ServiceMetrics(observability::Registry& registry);
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // Distinct values of the `client` label before the rest count as "other":
  // the label's cardinality stays bounded whatever identities callers have.
  static constexpr int kMaxClientLabels = 32;

  // The label slot of `client` (call once per call, not per message: it
  // locks). The first kMaxClientLabels distinct identities get their own.
  int ClientSlot(const std::string& client);

  // `client_slot` from ClientSlot(); the short form counts the request for
  // "anonymous".
  void RecordRequest(Method method, const absl::Status& status, double seconds,
                     int client_slot);
  void RecordRequest(Method method, const absl::Status& status,
                     double seconds) {
    RecordRequest(method, status, seconds, ClientSlot("anonymous"));
  }
  void ObserveQueue(double seconds) { queue_duration_.Observe(seconds); }
  void ObserveBatch(size_t items, double compute_seconds) {
    batch_size_.Observe(static_cast<double>(items));
    compute_duration_.Observe(compute_seconds);
  }
  void CountStoppedCompute(size_t requests) {
    compute_stopped_.Increment(static_cast<double>(requests));
  }
  void AddInFlight(int delta) { in_flight_.Increment(delta); }
  void AddRequestBytes(Method method, size_t bytes) {
    request_bytes_[static_cast<int>(method)]->Increment(
        static_cast<double>(bytes));
  }
  void AddResponseBytes(Method method, size_t bytes) {
    response_bytes_[static_cast<int>(method)]->Increment(
        static_cast<double>(bytes));
  }

  observability::Registry& registry() { return registry_; }

 private:
  // absl::StatusCode values 0..16.
  static constexpr int kNumCodes = 17;

  observability::Registry& registry_;
  observability::Family<observability::Counter>& requests_;
  // Series of requests_ looked up on first use: WithLabels locks, a cached
  // pointer does not. Slot kMaxClientLabels is "other".
  static constexpr int kNumClientSlots = kMaxClientLabels + 1;
  std::array<std::array<std::array<std::atomic<observability::Counter*>,
                                   kNumClientSlots>,
                        kNumCodes>,
             kNumMethods>
      requests_by_code_{};
  absl::Mutex clients_mutex_;
  absl::flat_hash_map<std::string, int> client_slots_
      ABSL_GUARDED_BY(clients_mutex_);
  // Label values by slot.
  std::array<std::string, kNumClientSlots> client_names_
      ABSL_GUARDED_BY(clients_mutex_);
  std::array<observability::Histogram*, kNumMethods> request_duration_{};
  std::array<observability::Counter*, kNumMethods> request_bytes_{};
  std::array<observability::Counter*, kNumMethods> response_bytes_{};
  observability::Histogram& queue_duration_;
  observability::Histogram& compute_duration_;
  observability::Histogram& batch_size_;
  observability::Counter& compute_stopped_;
  observability::Gauge& in_flight_;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_SERVICE_METRICS_H_
