// inference.GRPCInferenceService, the Open Inference Protocol (KServe v2)
// that Triton's clients and KServe speak, on gRPC's callback API, served on the
// same port as attnscore.v1 (main.cc registers both on one ServerBuilder).
//
// ServerLive, ServerReady, ModelReady, ServerMetadata and ModelMetadata answer
// on the gRPC thread. Every method first asks the scoring service's
// Authenticate() for the caller's identity; its error is the answer. ModelInfer
// is a raw ByteBuffer method that goes through
// AttentionScorerService::ScoreUnary with a KServeInferCodec: the same
// validation, limits, batcher, compute, metrics (method="ModelInfer") and
// single Answer exit as attnscore.v1's Score; replies carry the outputs in
// raw_output_contents as slices over the scorer's output. Models, inputs,
// parameters and outputs: kserve_request.h.
//
// Ready: ServerReady is AttentionScorerService::ready() (after the warm-up,
// until shutdown); ModelReady is that and the model being served (a missing
// model is not ready, not an error). ModelMetadata gives each input and
// output in the default layout BHSD, -1 for a variable dim; NOT_FOUND for an
// unknown model.
//
// Ownership: borrows the scoring service, the model registry and the metrics,
// which must outlive it. Thread safety: gRPC calls the handlers concurrently;
// the class has no mutable state. Errors: absl::Status, converted once by
// ToGrpcStatus().
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/batching/clock.h"
#include "server/service/attention_scorer_service.h"
#include "server/service/model_registry.h"
#include "server/service/service_metrics.h"

namespace attnscore::service {

// ModelInfer exchanges raw ByteBuffers (our serialization); the small methods
// use the generated messages.
using KServeRawService =
    inference::GRPCInferenceService::WithRawCallbackMethod_ModelInfer<
        inference::GRPCInferenceService::WithCallbackMethod_ServerLive<
            inference::GRPCInferenceService::WithCallbackMethod_ServerReady<
                inference::GRPCInferenceService::WithCallbackMethod_ModelReady<
                    inference::GRPCInferenceService::
                        WithCallbackMethod_ServerMetadata<
                            inference::GRPCInferenceService::
                                WithCallbackMethod_ModelMetadata<
                                    inference::GRPCInferenceService::
                                        Service>>>>>>;

class KServeService final : public KServeRawService {
 public:
  // REQUIRES: every pointer non-null and outliving the service.
  KServeService(AttentionScorerService* scoring, ModelRegistry* models,
                ServiceMetrics* metrics,
                batching::Clock* clock = batching::RealClock());

  grpc::ServerUnaryReactor* ServerLive(
      grpc::CallbackServerContext* context,
      const inference::ServerLiveRequest* request,
      inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(
      grpc::CallbackServerContext* context,
      const inference::ServerReadyRequest* request,
      inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(
      grpc::CallbackServerContext* context,
      const inference::ModelReadyRequest* request,
      inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(
      grpc::CallbackServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(
      grpc::CallbackServerContext* context,
      const inference::ModelMetadataRequest* request,
      inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  // Records the method's metrics (for `client`) and finishes the call with
  // `status`.
  grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* context,
                                   Method method, int64_t start_micros,
                                   const absl::Status& status,
                                   const std::string& client);

  AttentionScorerService* const scoring_;
  ModelRegistry* const models_;
  ServiceMetrics* const metrics_;
  batching::Clock* const clock_;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_
