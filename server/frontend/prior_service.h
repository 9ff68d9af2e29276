// gRPC frontend of the Prior service (prior.proto): the prior of a served model's parameter.
// It only translates: protos ⇄ RequestScheduler::PriorQuery / PriorAnswer and absl::Status ⇄
// grpc::Status. Model resolution, limits, metrics and the computation belong to the core
// (RequestScheduler::Prior, ModelPrior).
#pragma once

#include <grpcpp/grpcpp.h>

#include "dino/v1/prior.grpc.pb.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"

namespace dino::frontend {

class PriorService final : public dino::v1::Prior::CallbackService {
 public:
  // `auth` (may be null: open) is checked on every call, as for inference
  // (--require_token_for_inference).
  explicit PriorService(serving::RequestScheduler& scheduler,
                        const BearerTokenAuth* auth = nullptr);

  grpc::ServerUnaryReactor* GetPrior(grpc::CallbackServerContext* context,
                                     const dino::v1::GetPriorRequest* request,
                                     dino::v1::GetPriorResponse* response) override;
  grpc::ServerUnaryReactor* SamplePrior(grpc::CallbackServerContext* context,
                                        const dino::v1::SamplePriorRequest* request,
                                        dino::v1::SamplePriorResponse* response) override;
  grpc::ServerUnaryReactor* ApplyPrior(grpc::CallbackServerContext* context,
                                       const dino::v1::ApplyPriorRequest* request,
                                       dino::v1::ApplyPriorResponse* response) override;

 private:
  // Runs the query and, when it succeeds, `encode(answer)`; finishes the call.
  template <typename Encode>
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context,
                                const dino::v1::ModelRef& model,
                                absl::StatusOr<serving::RequestScheduler::PriorQuery> query,
                                Encode encode);

  serving::RequestScheduler& scheduler_;
  const BearerTokenAuth* auth_;
};

}  // namespace dino::frontend
