// gRPC frontend of the Surrogate service (callback API). It only translates: protos ⇄
// tensors, absl::Status ⇄ grpc::Status, and hands the model work to the model's executor so
// that LibTorch never runs on a gRPC thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "dino/v1/surrogate.grpc.pb.h"
#include "server/core/model_manager.h"
#include "server/frontend/auth.h"
#include "server/metrics/server_metrics.h"

namespace dino::frontend {

grpc::Status ToGrpcStatus(const absl::Status& status);

class SurrogateService final : public dino::v1::Surrogate::CallbackService {
 public:
  // `metrics` may be null. Responses larger than `max_response_bytes` are refused with
  // RESOURCE_EXHAUSTED (gRPC would fail them anyway, without saying which field).
  // `auth` (may be null: open) is checked on every call (--require_token_for_inference).
  SurrogateService(serving::ModelManager& manager, metrics::ServerMetrics* metrics,
                   int64_t max_response_bytes, const BearerTokenAuth* auth = nullptr);

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const dino::v1::ListModelsRequest* request,
                                       dino::v1::ListModelsResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const dino::v1::GetModelInfoRequest* request,
                                         dino::v1::GetModelInfoResponse* response) override;
  grpc::ServerUnaryReactor* GetBases(grpc::CallbackServerContext* context,
                                     const dino::v1::GetBasesRequest* request,
                                     dino::v1::GetBasesResponse* response) override;
  grpc::ServerUnaryReactor* Evaluate(grpc::CallbackServerContext* context,
                                     const dino::v1::EvaluateRequest* request,
                                     dino::v1::EvaluateResponse* response) override;
  grpc::ServerUnaryReactor* Jvp(grpc::CallbackServerContext* context,
                                const dino::v1::JvpRequest* request,
                                dino::v1::JvpResponse* response) override;
  grpc::ServerUnaryReactor* Vjp(grpc::CallbackServerContext* context,
                                const dino::v1::VjpRequest* request,
                                dino::v1::VjpResponse* response) override;
  grpc::ServerUnaryReactor* ReducedJacobian(grpc::CallbackServerContext* context,
                                            const dino::v1::ReducedJacobianRequest* request,
                                            dino::v1::ReducedJacobianResponse* response) override;
  grpc::ServerUnaryReactor* Jacobian(grpc::CallbackServerContext* context,
                                     const dino::v1::JacobianRequest* request,
                                     dino::v1::JacobianResponse* response) override;

 private:
  // Resolves the model, then runs `work(model, response)` on the model's executor unless
  // the call was cancelled or its deadline passed meanwhile, and finishes the call.
  template <typename Request, typename Response, typename Work>
  grpc::ServerUnaryReactor* Dispatch(const char* method, grpc::CallbackServerContext* context,
                                     const Request* request, Response* response, Work work);

  // True (and the call finished UNAUTHENTICATED) when the inference token is required and
  // missing or wrong.
  bool Refused(const char* method, grpc::CallbackServerContext* context,
               grpc::ServerUnaryReactor* reactor);

  serving::ModelManager& manager_;
  metrics::ServerMetrics* metrics_;
  const int64_t max_response_bytes_;
  const BearerTokenAuth* auth_;
};

}  // namespace dino::frontend
