// gRPC frontend of KServe's Open Inference Protocol v2 (inference.GRPCInferenceService), on
// the same port, scheduler, limits, metrics and token as dino.v1.Surrogate. It only
// transports: the mapping between OIP messages and the core is oip_mapping.h, which the REST
// functions (oip_rest.h) share.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>

#include "inference/grpc_predict_v2.grpc.pb.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/metrics/server_metrics.h"

namespace dino::frontend {

class OipService final : public inference::GRPCInferenceService::CallbackService {
 public:
  // `metrics` (may be null) counts the calls answered here rather than by the scheduler
  // (health, metadata, refused authentication). `auth` (may be null: open) is checked on
  // every call but ServerLive and ServerReady, which probes make without a token.
  OipService(const serving::ModelManager& models, serving::RequestScheduler& scheduler,
             metrics::ServerMetrics* metrics, const BearerTokenAuth* auth = nullptr);

  // ServerReady answers false once the server stops accepting requests (draining).
  void SetAccepting(bool accepting) { accepting_.store(accepting); }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context,
                                       const inference::ServerLiveRequest* request,
                                       inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context,
                                        const inference::ServerReadyRequest* request,
                                        inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context,
                                       const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context,
                                           const inference::ServerMetadataRequest* request,
                                           inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context,
                                       const inference::ModelInferRequest* request,
                                       inference::ModelInferResponse* response) override;

 private:
  // Counts a call answered here and finishes it.
  void Answer(const char* method, const std::string& model, const absl::Status& status,
              double seconds, grpc::ServerUnaryReactor* reactor);

  const serving::ModelManager& models_;
  serving::RequestScheduler& scheduler_;
  metrics::ServerMetrics* metrics_;
  const BearerTokenAuth* auth_;
  std::atomic<bool> accepting_{true};
};

}  // namespace dino::frontend
