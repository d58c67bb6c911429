#include "server/service/service_metrics.h"

#include <string>
#include <vector>

namespace attnscore::service {
namespace {

// 100 us .. ~13 s: a decode step to a long batch of long sequences.
std::vector<double> DurationBuckets() {
  return observability::ExponentialBuckets(1e-4, 2, 18);
}

}  // namespace

const char* MethodName(Method method) {
  switch (method) {
    case Method::kScore:
      return "Score";
    case Method::kScoreStream:
      return "ScoreStream";
    case Method::kScoreChunked:
      return "ScoreChunked";
    case Method::kListModels:
      return "ListModels";
    case Method::kGetServerInfo:
      return "GetServerInfo";
    case Method::kRegisterSharedMemory:
      return "RegisterSharedMemory";
    case Method::kUnregisterSharedMemory:
      return "UnregisterSharedMemory";
    case Method::kSharedMemoryStatus:
      return "SharedMemoryStatus";
    case Method::kServerLive:
      return "ServerLive";
    case Method::kServerReady:
      return "ServerReady";
    case Method::kModelReady:
      return "ModelReady";
    case Method::kServerMetadata:
      return "ServerMetadata";
    case Method::kModelMetadata:
      return "ModelMetadata";
    case Method::kModelInfer:
      return "ModelInfer";
    case Method::kSystemSharedMemoryStatus:
      return "SystemSharedMemoryStatus";
    case Method::kSystemSharedMemoryRegister:
      return "SystemSharedMemoryRegister";
    case Method::kSystemSharedMemoryUnregister:
      return "SystemSharedMemoryUnregister";
    case Method::kCount:
      break;
  }
  return "unknown";
}

ServiceMetrics::ServiceMetrics(observability::Registry& registry)
    : registry_(registry),
      requests_(registry.AddCounter(
          "attnscore_requests_total",
          "Requests answered, by gRPC method, status code and caller "
          "identity (ScoreStream counts each message; identities beyond "
          "the first 32 count as \"other\").",
          {"method", "code", "client"})),
      queue_duration_(
          registry
              .AddHistogram(
                  "attnscore_queue_duration_seconds",
                  "Time from acceptance to the start of the request's "
                  "batch compute.",
                  DurationBuckets())
              .WithLabels({})),
      compute_duration_(
          registry
              .AddHistogram("attnscore_compute_duration_seconds",
                            "Duration of one batch's scoring compute.",
                            DurationBuckets())
              .WithLabels({})),
      batch_size_(registry
                      .AddHistogram(
                          "attnscore_batch_size",
                          "Items (sum of the requests' B) per computed batch.",
                          observability::ExponentialBuckets(1, 2, 10))
                      .WithLabels({})),
      compute_stopped_(
          registry
              .AddCounter("attnscore_compute_stopped_total",
                          "Requests whose compute stopped between tiles "
                          "because every request of its batch was cancelled "
                          "or past its deadline.")
              .WithLabels({})),
      in_flight_(registry
                     .AddGauge("attnscore_in_flight_requests",
                               "Accepted scoring requests not yet answered.")
                     .WithLabels({})) {
  auto& durations =
      registry.AddHistogram("attnscore_request_duration_seconds",
                            "Time from a request's arrival to its answer.",
                            DurationBuckets(), {"method"});
  auto& in_bytes =
      registry.AddCounter("attnscore_request_bytes_total",
                          "Request message bytes received.", {"method"});
  auto& out_bytes =
      registry.AddCounter("attnscore_response_bytes_total",
                          "Response message bytes sent.", {"method"});
  for (int m = 0; m < kNumMethods; ++m) {
    const std::string name = MethodName(static_cast<Method>(m));
    request_duration_[m] = &durations.WithLabels({name});
    request_bytes_[m] = &in_bytes.WithLabels({name});
    response_bytes_[m] = &out_bytes.WithLabels({name});
  }
}

int ServiceMetrics::ClientSlot(const std::string& client) {
  absl::MutexLock lock(&clients_mutex_);
  auto it = client_slots_.find(client);
  if (it != client_slots_.end()) return it->second;
  if (client_slots_.size() >= static_cast<size_t>(kMaxClientLabels)) {
    return kMaxClientLabels;
  }
  const int slot = static_cast<int>(client_slots_.size());
  client_names_[slot] = client;
  client_slots_.emplace(client, slot);
  return slot;
}

void ServiceMetrics::RecordRequest(Method method, const absl::Status& status,
                                   double seconds, int client_slot) {
  if (client_slot < 0 || client_slot >= kNumClientSlots) {
    client_slot = kMaxClientLabels;
  }
  const int m = static_cast<int>(method);
  request_duration_[m]->Observe(seconds);
  int code = static_cast<int>(status.code());
  if (code < 0 || code >= kNumCodes) {
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  std::atomic<observability::Counter*>& slot =
      requests_by_code_[m][code][client_slot];
  observability::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    std::string client;
    {
      absl::MutexLock lock(&clients_mutex_);
      client = client_slot == kMaxClientLabels ? "other"
                                               : client_names_[client_slot];
    }
    // Two threads may both look it up; WithLabels returns the same series to
    // both.
    counter = &requests_.WithLabels(
        {MethodName(method),
         absl::StatusCodeToString(static_cast<absl::StatusCode>(code)),
         client});
    slot.store(counter, std::memory_order_release);
  }
  counter->Increment();
}

}  // namespace attnscore::service
