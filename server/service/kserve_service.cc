#include "server/service/kserve_service.h"

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attnscore/version.h"
#include "server/service/kserve_codec.h"
#include "server/service/kserve_request.h"
#include "server/service/request_validation.h"
#include "server/service/shared_memory.h"
#include "server/service/status_conversion.h"

namespace attnscore::service {
namespace {

using inference::ModelMetadataResponse;
using TensorMetadata = ModelMetadataResponse::TensorMetadata;

void AddTensor(google::protobuf::RepeatedPtrField<TensorMetadata>* list,
               const char* name, const char* datatype,
               std::initializer_list<int64_t> shape) {
  TensorMetadata* tensor = list->Add();
  tensor->set_name(name);
  tensor->set_datatype(datatype);
  tensor->mutable_shape()->Add(shape.begin(), shape.end());
}

// Inputs and outputs in layout BHSD: H and D are the model's (-1 for ALiBi,
// which takes any).
void DescribeModel(const scoring::Bias& bias, ModelMetadataResponse& out) {
  int64_t heads = -1;
  int64_t dim = -1;
  if (const auto* relative = std::get_if<scoring::RelativeBias>(&bias)) {
    heads = relative->model->info().heads;
    dim = relative->model->info().head_dim;
  }
  auto* inputs = out.mutable_inputs();
  AddTensor(inputs, "query", "FP32", {-1, heads, -1, dim});
  AddTensor(inputs, "key", "FP32", {-1, heads, -1, dim});
  AddTensor(inputs, "value", "FP32", {-1, heads, -1, -1});
  AddTensor(inputs, "key_lengths", "INT32", {-1});
  if (std::holds_alternative<scoring::AlibiBias>(bias)) {
    AddTensor(inputs, "slopes", "FP32", {-1});
  }
  auto* outputs = out.mutable_outputs();
  AddTensor(outputs, "logits", "FP32", {-1, heads, -1, -1});
  AddTensor(outputs, "probs", "FP32", {-1, heads, -1, -1});
  AddTensor(outputs, "context", "FP32", {-1, heads, -1, -1});
}

double Seconds(int64_t micros) { return static_cast<double>(micros) * 1e-6; }

}  // namespace

KServeService::KServeService(AttentionScorerService* scoring,
                             ModelRegistry* models, ServiceMetrics* metrics,
                             batching::Clock* clock)
    : scoring_(scoring), models_(models), metrics_(metrics), clock_(clock) {}

grpc::ServerUnaryReactor* KServeService::Finish(
    grpc::CallbackServerContext* context, Method method, int64_t start_micros,
    const absl::Status& status, const std::string& client) {
  metrics_->RecordRequest(method, status,
                          Seconds(clock_->NowMicros() - start_micros),
                          metrics_->ClientSlot(client));
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* KServeService::ServerLive(
    grpc::CallbackServerContext* context,
    const inference::ServerLiveRequest* /*request*/,
    inference::ServerLiveResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kServerLive, start, client.status(), "-");
  }
  response->set_live(true);
  return Finish(context, Method::kServerLive, start, absl::OkStatus(), *client);
}

grpc::ServerUnaryReactor* KServeService::ServerReady(
    grpc::CallbackServerContext* context,
    const inference::ServerReadyRequest* /*request*/,
    inference::ServerReadyResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kServerReady, start, client.status(), "-");
  }
  response->set_ready(scoring_->ready());
  return Finish(context, Method::kServerReady, start, absl::OkStatus(),
                *client);
}

grpc::ServerUnaryReactor* KServeService::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kModelReady, start, client.status(), "-");
  }
  const bool served = kserve::FindModel("name", request->name(),
                                        request->version(), *models_->Current())
                          .ok();
  response->set_ready(served && scoring_->ready());
  return Finish(context, Method::kModelReady, start, absl::OkStatus(), *client);
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* context,
    const inference::ServerMetadataRequest* /*request*/,
    inference::ServerMetadataResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kServerMetadata, start, client.status(),
                  "-");
  }
  response->set_name("attnscore");
  response->set_version(kVersion);
  if (scoring_->shared_memory().enabled()) {
    response->add_extensions("system_shared_memory");
  }
  return Finish(context, Method::kServerMetadata, start, absl::OkStatus(),
                *client);
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kModelMetadata, start, client.status(), "-");
  }
  absl::StatusOr<scoring::Bias> bias = kserve::FindModel(
      "name", request->name(), request->version(), *models_->Current());
  if (bias.ok()) {
    response->set_name(request->name());
    response->add_versions(kserve::kModelVersion.data(),
                           kserve::kModelVersion.size());
    response->set_platform("attnscore");
    DescribeModel(*bias, *response);
  }
  return Finish(context, Method::kModelMetadata, start, bias.status(), *client);
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  return scoring_->ScoreUnary(
      Method::kModelInfer,
      [this](const std::string& client) -> std::unique_ptr<ScoreCodec> {
        return std::make_unique<kserve::KServeInferCodec>(
            &scoring_->shared_memory(), client);
      },
      context, request, response);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryStatus(
    grpc::CallbackServerContext* context,
    const inference::SystemSharedMemoryStatusRequest* request,
    inference::SystemSharedMemoryStatusResponse* response) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kSystemSharedMemoryStatus, start,
                  client.status(), "-");
  }
  const SharedMemoryRegistry& registry = scoring_->shared_memory();
  absl::Status status = registry.CheckEnabled();
  if (status.ok()) {
    for (const SharedMemorySpec& spec : registry.List(*client)) {
      if (!request->name().empty() && spec.name != request->name()) continue;
      auto& out = (*response->mutable_regions())[spec.name];
      out.set_name(spec.name);
      out.set_key("/" + spec.key);
      out.set_offset(spec.offset);
      out.set_byte_size(spec.byte_size);
    }
    if (!request->name().empty() && response->regions().empty()) {
      status = absl::NotFoundError(absl::StrCat(
          "name: no shared-memory region \"",
          ClientStringForLog(request->name()), "\" is registered"));
    }
  }
  return Finish(context, Method::kSystemSharedMemoryStatus, start, status,
                *client);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryRegister(
    grpc::CallbackServerContext* context,
    const inference::SystemSharedMemoryRegisterRequest* request,
    inference::SystemSharedMemoryRegisterResponse* /*response*/) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kSystemSharedMemoryRegister, start,
                  client.status(), "-");
  }
  SharedMemorySpec spec;
  spec.name = request->name();
  // Triton's clients name the object as shm_open does, with a leading '/'.
  spec.key = absl::StartsWith(request->key(), "/") ? request->key().substr(1)
                                                   : request->key();
  spec.offset = request->offset();
  spec.byte_size = request->byte_size();
  const absl::Status status =
      scoring_->shared_memory().Register(*client, std::move(spec));
  if (status.ok()) {
    spdlog::info("shared memory: {} registered region {} ({}, {} bytes)",
                 ClientStringForLog(*client),
                 ClientStringForLog(request->name()),
                 ClientStringForLog(request->key()), request->byte_size());
  }
  return Finish(context, Method::kSystemSharedMemoryRegister, start, status,
                *client);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryUnregister(
    grpc::CallbackServerContext* context,
    const inference::SystemSharedMemoryUnregisterRequest* request,
    inference::SystemSharedMemoryUnregisterResponse* /*response*/) {
  const int64_t start = clock_->NowMicros();
  absl::StatusOr<std::string> client = scoring_->Authenticate(*context);
  if (!client.ok()) {
    return Finish(context, Method::kSystemSharedMemoryUnregister, start,
                  client.status(), "-");
  }
  SharedMemoryRegistry& registry = scoring_->shared_memory();
  absl::Status status = registry.CheckEnabled();
  if (status.ok() && request->name().empty()) {
    for (const SharedMemorySpec& spec : registry.List(*client)) {
      // Another call may have unregistered it meanwhile: nothing to do.
      registry.Unregister(*client, spec.name).IgnoreError();
    }
  } else if (status.ok()) {
    status = registry.Unregister(*client, request->name());
  }
  return Finish(context, Method::kSystemSharedMemoryUnregister, start, status,
                *client);
}

}  // namespace attnscore::service
