// inference.GRPCInferenceService, the Open Inference Protocol (KServe v2)
// that Triton's clients and KServe speak, on gRPC's callback API, served on the
// same port as attnscore.v1 (main.cc registers both on one ServerBuilder).
//
// ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and the
// shared-memory methods answer on the gRPC thread through the scoring
// service's AnswerSmall (its authentication, metrics and finish). ModelInfer
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
// Shared memory: Triton's system shared-memory extension over the scoring
// service's registry (shared_memory.h: --shm-prefix, regions per identity);
// a key may carry the leading '/' that Triton's clients give it. An empty
// name means every region of the caller (Status, Unregister); a name the
// caller has not registered is NOT_FOUND. ServerMetadata lists the
// extension "system_shared_memory" when --shm-prefix is set.
//
// Ownership: borrows the scoring service and the model registry, which must
// outlive it. Thread safety: gRPC calls the handlers concurrently; the class
// has no mutable state. Errors: absl::Status, converted to grpc::Status by
// the scoring service's single exits.
#ifndef ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_
#define ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <string>

#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/service/attention_scorer_service.h"
#include "server/service/model_registry.h"

namespace attnscore::service {

// ModelInfer exchanges raw ByteBuffers (our serialization); the small methods
// use the generated messages.
using Grpc = inference::GRPCInferenceService;
using KServeRawService = Grpc::WithRawCallbackMethod_ModelInfer<
    Grpc::WithCallbackMethod_ServerLive<Grpc::WithCallbackMethod_ServerReady<
        Grpc::WithCallbackMethod_ModelReady<
            Grpc::WithCallbackMethod_ServerMetadata<
                Grpc::WithCallbackMethod_ModelMetadata<
                    Grpc::WithCallbackMethod_SystemSharedMemoryStatus<
                        Grpc::WithCallbackMethod_SystemSharedMemoryRegister<
                            Grpc::
                                WithCallbackMethod_SystemSharedMemoryUnregister<
                                    Grpc::Service>>>>>>>>>;

class KServeService final : public KServeRawService {
 public:
  // REQUIRES: both pointers non-null and outliving the service.
  KServeService(AttentionScorerService* scoring, ModelRegistry* models);

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
  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(
      grpc::CallbackServerContext* context,
      const inference::SystemSharedMemoryStatusRequest* request,
      inference::SystemSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(
      grpc::CallbackServerContext* context,
      const inference::SystemSharedMemoryRegisterRequest* request,
      inference::SystemSharedMemoryRegisterResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(
      grpc::CallbackServerContext* context,
      const inference::SystemSharedMemoryUnregisterRequest* request,
      inference::SystemSharedMemoryUnregisterResponse* response) override;

 private:
  AttentionScorerService* const scoring_;
  ModelRegistry* const models_;
};

}  // namespace attnscore::service

#endif  // ATTNSCORE_SERVER_SERVICE_KSERVE_SERVICE_H_
