// Scripted stand-ins for the dino.v1.Training and dino.v1.ModelAdmin services, used to test the
// client library's TrainingClient, the `dino` training commands and the Python client without
// a real server, torch or training.
//
// Uploads are checked as the protocol specifies (config first; m [b, d_M], q [b, d_Q] and the
// Jacobian form against the fake models of fake_surrogate.h, "linear" and "plain"; one
// Jacobian form per job; finite m and q; a Jacobian loss needs Jacobians), then the job's
// whole history is made up at once: QUEUED, TRAINING for each epoch (config.epochs, default
// 3), VALIDATING, PUBLISHING and SUCCEEDED with new_version = the model's highest version + 1.
// The config's description steers the outcome: "reject" ends REJECTED, "fail" ends FAILED,
// "hang" stays TRAINING at epoch 1 until CancelJob. WatchJob replays the history (10 ms apart);
// GetJob and ListJobs return each job's latest status. An upload the client cancels is
// recorded as a CANCELLED job.
//
// With a non-empty admin token every RPC of both services needs the metadata
// "authorization: Bearer <token>" (UNAUTHENTICATED otherwise).
#ifndef DINO_TESTS_CLIENT_FAKE_TRAINING_H_
#define DINO_TESTS_CLIENT_FAKE_TRAINING_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "dino/v1/training.grpc.pb.h"

namespace dino::testing {

// What one StartFineTune call carried.
struct FakeUpload {
  v1::FineTuneConfig config;
  int64_t batches = 0;
  int64_t samples = 0;
  int64_t validation_samples = 0;
  std::string jacobian_form;  // "none", "full", "svd" or "reduced"
  std::vector<double> m;      // Every sample's m, in order, row-major.
  bool complete = false;      // The client closed its side (not cancelled, no error).
};

class FakeTrainingService final : public v1::Training::Service {
 public:
  explicit FakeTrainingService(std::string admin_token = "");

  grpc::Status StartFineTune(grpc::ServerContext* context,
                             grpc::ServerReader<v1::FineTuneUpload>* reader,
                             v1::StartFineTuneResponse* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::JobStatus>* writer) override;
  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::JobStatus* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                        v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::JobStatus* response) override;

  // The most recent upload (complete or not); empty config before the first.
  FakeUpload last_upload() const;

 private:
  struct Job {
    std::vector<v1::JobStatus> history;  // Revisions 1, 2, ...; the last is the current one.
  };

  const std::string admin_token_;
  mutable std::mutex mu_;
  std::vector<Job> jobs_;  // Job i has id "job-<i + 1>".
  FakeUpload last_upload_;
};

class FakeModelAdminService final : public v1::ModelAdmin::Service {
 public:
  explicit FakeModelAdminService(std::string admin_token = "");

  grpc::Status SetDefaultVersion(grpc::ServerContext* context,
                                 const v1::SetDefaultVersionRequest* request,
                                 v1::SetDefaultVersionResponse* response) override;
  grpc::Status UnloadVersion(grpc::ServerContext* context, const v1::UnloadVersionRequest* request,
                             v1::UnloadVersionResponse* response) override;

  // "SetDefaultVersion linear 1", "UnloadVersion linear 2": the successful calls so far.
  std::vector<std::string> calls() const;

 private:
  const std::string admin_token_;
  mutable std::mutex mu_;
  std::vector<std::string> calls_;
};

}  // namespace dino::testing

#endif  // DINO_TESTS_CLIENT_FAKE_TRAINING_H_
