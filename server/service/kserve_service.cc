#include "server/service/kserve_service.h"

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

}  // namespace

KServeService::KServeService(AttentionScorerService* scoring,
                             ModelRegistry* models)
    : scoring_(scoring), models_(models) {}

grpc::ServerUnaryReactor* KServeService::ServerLive(
    grpc::CallbackServerContext* context,
    const inference::ServerLiveRequest* /*request*/,
    inference::ServerLiveResponse* response) {
  return scoring_->AnswerSmall(context, Method::kServerLive,
                               [&](const std::string&) {
                                 response->set_live(true);
                                 return absl::OkStatus();
                               });
}

grpc::ServerUnaryReactor* KServeService::ServerReady(
    grpc::CallbackServerContext* context,
    const inference::ServerReadyRequest* /*request*/,
    inference::ServerReadyResponse* response) {
  return scoring_->AnswerSmall(context, Method::kServerReady,
                               [&](const std::string&) {
                                 response->set_ready(scoring_->ready());
                                 return absl::OkStatus();
                               });
}

grpc::ServerUnaryReactor* KServeService::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  return scoring_->AnswerSmall(
      context, Method::kModelReady, [&](const std::string&) {
        const bool served =
            kserve::FindModel("name", request->name(), request->version(),
                              *models_->Current())
                .ok();
        response->set_ready(served && scoring_->ready());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(
    grpc::CallbackServerContext* context,
    const inference::ServerMetadataRequest* /*request*/,
    inference::ServerMetadataResponse* response) {
  return scoring_->AnswerSmall(
      context, Method::kServerMetadata, [&](const std::string&) {
        response->set_name("attnscore");
        response->set_version(kVersion);
        if (scoring_->shared_memory().enabled()) {
          response->add_extensions("system_shared_memory");
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  return scoring_->AnswerSmall(
      context, Method::kModelMetadata, [&](const std::string&) {
        absl::StatusOr<scoring::Bias> bias = kserve::FindModel(
            "name", request->name(), request->version(), *models_->Current());
        if (!bias.ok()) return bias.status();
        response->set_name(request->name());
        response->add_versions(kserve::kModelVersion.data(),
                               kserve::kModelVersion.size());
        response->set_platform("attnscore");
        DescribeModel(*bias, *response);
        return absl::OkStatus();
      });
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
  return scoring_->AnswerSmall(
      context, Method::kSystemSharedMemoryStatus,
      [&](const std::string& client) {
        const SharedMemoryRegistry& registry = scoring_->shared_memory();
        if (absl::Status s = registry.CheckEnabled(); !s.ok()) return s;
        for (const SharedMemorySpec& spec : registry.List(client)) {
          if (!request->name().empty() && spec.name != request->name()) {
            continue;
          }
          auto& out = (*response->mutable_regions())[spec.name];
          out.set_name(spec.name);
          out.set_key("/" + spec.key);
          out.set_offset(spec.offset);
          out.set_byte_size(spec.byte_size);
        }
        if (!request->name().empty() && response->regions().empty()) {
          return absl::NotFoundError(absl::StrCat(
              "name: no shared-memory region \"",
              ClientStringForLog(request->name()), "\" is registered"));
        }
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryRegister(
    grpc::CallbackServerContext* context,
    const inference::SystemSharedMemoryRegisterRequest* request,
    inference::SystemSharedMemoryRegisterResponse* /*response*/) {
  return scoring_->AnswerSmall(
      context, Method::kSystemSharedMemoryRegister,
      [&](const std::string& client) {
        SharedMemorySpec spec;
        spec.name = request->name();
        // Triton's clients name the object as shm_open does, with a leading
        // '/'.
        spec.key = absl::StartsWith(request->key(), "/")
                       ? request->key().substr(1)
                       : request->key();
        spec.offset = request->offset();
        spec.byte_size = request->byte_size();
        return scoring_->shared_memory().Register(client, std::move(spec));
      });
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryUnregister(
    grpc::CallbackServerContext* context,
    const inference::SystemSharedMemoryUnregisterRequest* request,
    inference::SystemSharedMemoryUnregisterResponse* /*response*/) {
  return scoring_->AnswerSmall(
      context, Method::kSystemSharedMemoryUnregister,
      [&](const std::string& client) {
        SharedMemoryRegistry& registry = scoring_->shared_memory();
        return request->name().empty()
                   ? registry.UnregisterAll(client)
                   : registry.Unregister(client, request->name());
      });
}

}  // namespace attnscore::service
