// gRPC frontend of the Surrogate service (callback API). It only translates: protos ⇄
// serving::Query / serving::Answer and absl::Status ⇄ grpc::Status. Queueing, batching,
// deadlines, limits and metrics belong to the core's RequestScheduler, which every frontend
// shares; LibTorch never runs on a gRPC thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>

#include "dino/v1/surrogate.grpc.pb.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/metrics/server_metrics.h"

namespace dino::frontend {

grpc::Status ToGrpcStatus(const absl::Status& status);

// The core query of each Surrogate inference request (its tensors view the request's bytes, so
// the request must outlive it), or INVALID_ARGUMENT naming the request field. The model checks
// the rest (SurrogateModel::Prepare) once the scheduler has picked it.
absl::StatusOr<serving::Query> QueryOf(const dino::v1::EvaluateRequest& request);
absl::StatusOr<serving::Query> QueryOf(const dino::v1::JvpRequest& request);
absl::StatusOr<serving::Query> QueryOf(const dino::v1::VjpRequest& request);
absl::StatusOr<serving::Query> QueryOf(const dino::v1::ReducedJacobianRequest& request);
absl::StatusOr<serving::Query> QueryOf(const dino::v1::JacobianRequest& request);
absl::StatusOr<serving::Query> QueryOf(const dino::v1::HessianVectorProductRequest& request);

// True when `auth` (null: open) refuses the call: then `reactor` is finished with the refusal
// and, when `metrics` is set, the call is counted as `method` with the refusal's code. Every
// gRPC frontend checks its calls through this one function.
bool RefuseUnauthorizedCall(const BearerTokenAuth* auth, metrics::ServerMetrics* metrics,
                            const char* method, grpc::CallbackServerContext* context,
                            grpc::ServerUnaryReactor* reactor);

class SurrogateService final : public dino::v1::Surrogate::CallbackService {
 public:
  // `metrics` (may be null) counts the calls answered here rather than by the scheduler:
  // discovery RPCs and refused authentication. `auth` (may be null: open) is checked on
  // every call (--require_token_for_inference).
  SurrogateService(const serving::ModelManager& models, serving::RequestScheduler& scheduler,
                   metrics::ServerMetrics* metrics, const BearerTokenAuth* auth = nullptr);

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
  grpc::ServerUnaryReactor* HessianVectorProduct(
      grpc::CallbackServerContext* context, const dino::v1::HessianVectorProductRequest* request,
      dino::v1::HessianVectorProductResponse* response) override;

 private:
  // Hands the decoded query to the scheduler; `encode(answer, response)` fills the response
  // when the answer comes back.
  template <typename Response, typename Encode>
  grpc::ServerUnaryReactor* Infer(serving::Method method, grpc::CallbackServerContext* context,
                                  const dino::v1::ModelRef& model,
                                  absl::StatusOr<serving::Query> query, Response* response,
                                  Encode encode);

  const serving::ModelManager& models_;
  serving::RequestScheduler& scheduler_;
  metrics::ServerMetrics* metrics_;
  const BearerTokenAuth* auth_;
};

}  // namespace dino::frontend
