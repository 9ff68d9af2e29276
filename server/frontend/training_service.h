// gRPC frontends of the Training and ModelAdmin services. They only translate: protos ⇄
// FineTuneSpec / SampleBatch / JobSnapshot, absl::Status ⇄ grpc::Status, and check the
// bearer token. The jobs themselves are server/training's business.
//
// They use gRPC's synchronous API: an upload is a loop of blocking reads and WatchJob a loop
// of waits, each on its own server thread, which keeps them simple; inference stays on the
// callback API (SurrogateService) and never waits behind them.
#pragma once

#include <grpcpp/grpcpp.h>

#include "dino/v1/training.grpc.pb.h"
#include "server/core/model_manager.h"
#include "server/frontend/auth.h"
#include "server/training/fine_tune_jobs.h"

namespace dino::frontend {

// A StartFineTune stream's first message as a job spec, or INVALID_ARGUMENT naming the
// config field. The job manager checks the rest against the base model (Create).
absl::StatusOr<serving::FineTuneSpec> SpecFromWire(const dino::v1::FineTuneConfig& config);

// One uploaded batch of samples (its tensors view the message's bytes), or INVALID_ARGUMENT
// naming the samples field. The job checks the rest against the base model (AddBatch).
absl::StatusOr<serving::SampleBatch> BatchFromWire(const dino::v1::SampleBatch& wire);

class TrainingService final : public dino::v1::Training::Service {
 public:
  TrainingService(serving::FineTuneJobManager& jobs, const BearerTokenAuth& auth)
      : jobs_(jobs), auth_(auth) {}

  grpc::Status StartFineTune(grpc::ServerContext* context,
                             grpc::ServerReader<dino::v1::FineTuneUpload>* reader,
                             dino::v1::StartFineTuneResponse* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const dino::v1::WatchJobRequest* request,
                        grpc::ServerWriter<dino::v1::JobStatus>* writer) override;
  grpc::Status GetJob(grpc::ServerContext* context, const dino::v1::GetJobRequest* request,
                      dino::v1::JobStatus* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const dino::v1::ListJobsRequest* request,
                        dino::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const dino::v1::CancelJobRequest* request,
                         dino::v1::JobStatus* response) override;

 private:
  serving::FineTuneJobManager& jobs_;
  const BearerTokenAuth& auth_;
};

class ModelAdminService final : public dino::v1::ModelAdmin::Service {
 public:
  ModelAdminService(serving::ModelManager& models, const BearerTokenAuth& auth)
      : models_(models), auth_(auth) {}

  grpc::Status SetDefaultVersion(grpc::ServerContext* context,
                                 const dino::v1::SetDefaultVersionRequest* request,
                                 dino::v1::SetDefaultVersionResponse* response) override;
  grpc::Status SetVersionLabel(grpc::ServerContext* context,
                               const dino::v1::SetVersionLabelRequest* request,
                               dino::v1::SetVersionLabelResponse* response) override;
  grpc::Status UnloadVersion(grpc::ServerContext* context,
                             const dino::v1::UnloadVersionRequest* request,
                             dino::v1::UnloadVersionResponse* response) override;

 private:
  serving::ModelManager& models_;
  const BearerTokenAuth& auth_;
};

}  // namespace dino::frontend
