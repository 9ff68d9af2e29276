// Fine-tune jobs of the embedded training endpoint (no gRPC here: the frontend translates).
//
// A job takes a served model version as its base, receives derivative data in batches (the
// upload), then trains a copy of the base on its own thread with the trainer and losses of
// models/training, checks the new weights against the base on validation samples (the gate)
// and publishes them as a new version of the model (PublishModelVersion, then the manager
// loads it if the model's version policy keeps it). A publish never changes the default
// version: with no pinned default the new version is the default because it is the highest;
// a pin set by an operator stays. Requests keep running on whatever version they hold;
// nothing is published unless every step succeeded.
//
//   RECEIVING → QUEUED → TRAINING → VALIDATING → PUBLISHING → SUCCEEDED
//        ↘ CANCELLED (cancel, client gone)   ↘ REJECTED (gate)   ↘ FAILED (any error)
#pragma once

#include <torch/script.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/training/dataset.h"
#include "models/training/metrics.h"
#include "models/training/trainer.h"
#include "server/core/model_manager.h"

namespace dino::serving {

enum class JobState {
  kReceiving,
  kQueued,
  kTraining,
  kValidating,
  kPublishing,
  kSucceeded,
  kRejected,
  kFailed,
  kCancelled,
};
inline constexpr int kJobStateCount = 9;
const char* JobStateName(JobState state);  // "receiving", …, "cancelled"
bool IsFinal(JobState state);

// The accuracy the gate compares (paper (3.6a–c)).
enum class GateMetric { kAuto, kL2, kH1, kReducedH1 };
const char* GateMetricName(GateMetric metric);  // "auto", "l2", "h1", "reduced_h1"

struct FineTuneSpec {
  std::string model;
  int64_t version = 0;  // 0: the default version at creation.
  // Loss, epochs, learning rate, batch size, weights and seed. Its validation_size,
  // whitening and evaluation_interval are set by the job.
  training::TrainerConfig trainer;
  // Share of the training samples held out for the gate when no validation samples are
  // uploaded (0: 0.2).
  double validation_fraction = 0.0;
  GateMetric gate_metric = GateMetric::kAuto;
  // Accept when accuracy(new) >= accuracy(base) − max_regression.
  double max_regression = 0.0;
  std::string description;
};

// Samples as they arrive: m, q and at most one Jacobian form (the dataset's fields).
struct SampleBatch {
  training::Dataset data;
  bool validation = false;  // Part of the uploaded validation set.
};

// What a client sees of a job.
struct JobSnapshot {
  std::string id;
  std::string model;
  int64_t base_version = 0;
  JobState state = JobState::kReceiving;
  std::string message;
  int64_t train_samples = 0;
  int64_t validation_samples = 0;
  int64_t samples_received = 0;
  int64_t bytes_received = 0;
  int64_t epoch = 0;
  int64_t epochs = 0;
  double train_loss = 0.0;
  double validation_loss = 0.0;
  std::optional<training::Accuracies> validation;       // New weights, latest.
  std::optional<training::Accuracies> base_validation;  // Base version, same samples.
  double samples_per_second = 0.0;
  double eta_seconds = 0.0;
  int64_t new_version = 0;
  double created_unix_seconds = 0.0;
  double updated_unix_seconds = 0.0;
  int64_t revision = 0;
};

// Hooks for the server's metrics (any may be empty). Called from job and upload threads.
struct JobObserver {
  // A job entered `to`; `from` is empty for a new job.
  std::function<void(std::optional<JobState> from, JobState to)> on_state;
  std::function<void(const std::string& model, int64_t samples, int64_t bytes)> on_samples;
  std::function<void(const std::string& model, double epoch_seconds)> on_epoch;
  // The new weights' validation accuracies at the end of training.
  std::function<void(const std::string& model, const training::Accuracies&)> on_validation;
};

class FineTuneJobManager;

class FineTuneJob : public std::enable_shared_from_this<FineTuneJob> {
 public:
  const std::string& id() const { return id_; }
  JobSnapshot Snapshot() const;

  // Appends samples during the upload. INVALID_ARGUMENT naming the field for dimensions
  // that do not fit the base model, a Jacobian form other than the first batch's, or a
  // NaN/Inf value (with the job-wide index of its sample); RESOURCE_EXHAUSTED past the
  // per-job caps; FAILED_PRECONDITION when the job is no longer receiving (e.g. cancelled).
  // A refused batch leaves the job as it was.
  absl::Status AddBatch(SampleBatch batch);

  // The client closed its side: the upload is complete and the job is queued for training.
  // INVALID_ARGUMENT (and the job FAILED) when the data cannot train or gate this model.
  absl::Status FinishUpload();

  // The client went away before finishing the upload: the job ends CANCELLED.
  void AbortUpload(const std::string& why);

 private:
  friend class FineTuneJobManager;
  struct Upload {
    std::vector<training::Dataset> train, validation;
    int64_t train_samples = 0, validation_samples = 0;
    std::optional<training::JacobianForm> form;
  };

  FineTuneJob(FineTuneJobManager* manager, std::string id, FineTuneSpec spec,
              const ServableHandle& base);
  // Moves to `state` (and bumps the revision) under mutex_, notifying watchers.
  void SetStateLocked(JobState state, const std::string& message);
  void Touch();  // Bumps the revision and wakes watchers (mutex_ held).
  void Run();    // The job thread.
  // Returns false when the job was cancelled meanwhile.
  bool EnterState(JobState state, const std::string& message = "");

  // The base version by name, number and shape. Not its ServableHandle: that would keep the
  // version's model in memory after it is unloaded, for as long as the ended job is listed;
  // nor its metadata (info.metadata is left empty): the job reads the base's metadata from
  // its file, and an ended job's record should stay small (the metadata of a fine-tuned
  // version, with its training report, is thousands of small allocations).
  struct BaseVersion {
    std::string name;
    int64_t version = 0;
    ModelInfo info;
  };

  FineTuneJobManager* const manager_;
  const std::string id_;
  const FineTuneSpec spec_;
  const BaseVersion base_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  JobSnapshot status_;
  Upload upload_;
  bool cancel_requested_ = false;
  std::thread thread_;
};

class FineTuneJobManager {
 public:
  struct Options {
    std::string repository;       // Where new versions are published.
    int max_concurrent_jobs = 1;  // Jobs not yet ended; more get RESOURCE_EXHAUSTED.
    int64_t max_samples_per_job = 100000;
    int64_t max_bytes_per_job = int64_t{8} << 30;
    int training_nice = 19;            // Added to the job threads' nice value (Linux).
    int64_t finished_jobs_kept = 100;  // Ended jobs listed before the oldest are forgotten.
    JobObserver observer;
  };

  FineTuneJobManager(ModelManager& models, Options options);
  ~FineTuneJobManager();  // Cancels every job that has not ended and waits for its thread.
  FineTuneJobManager(const FineTuneJobManager&) = delete;
  FineTuneJobManager& operator=(const FineTuneJobManager&) = delete;

  // A new job in state RECEIVING. NOT_FOUND for an unknown base model/version,
  // FAILED_PRECONDITION when the base has no model file in the repository,
  // INVALID_ARGUMENT for invalid settings, RESOURCE_EXHAUSTED at the concurrent-job limit.
  absl::StatusOr<std::shared_ptr<FineTuneJob>> Create(FineTuneSpec spec);

  // NOT_FOUND for unknown ids.
  absl::StatusOr<JobSnapshot> Get(const std::string& id) const;
  std::vector<JobSnapshot> List() const;  // Oldest first.
  // Stops a job that has not ended (nothing is published); an ended job is returned as is.
  absl::StatusOr<JobSnapshot> Cancel(const std::string& id);
  // The job's status once its revision exceeds `after_revision`, or as it is after
  // `timeout_seconds`. NOT_FOUND for unknown ids.
  absl::StatusOr<JobSnapshot> WaitForChange(const std::string& id, int64_t after_revision,
                                            double timeout_seconds) const;

  // Cancels the jobs that have not ended and joins their threads. Idempotent.
  void Shutdown();

 private:
  friend class FineTuneJob;
  absl::StatusOr<std::shared_ptr<FineTuneJob>> Find(const std::string& id) const;
  void Start(const std::shared_ptr<FineTuneJob>& job);  // After the upload.
  void Forget();  // Drops the oldest ended jobs beyond finished_jobs_kept (mutex_ held).
  void Notify(std::optional<JobState> from, JobState to) const;

  ModelManager& models_;
  const Options options_;
  mutable std::mutex mutex_;
  std::deque<std::shared_ptr<FineTuneJob>> jobs_;  // Creation order.
  int64_t next_id_ = 1;
  bool shut_down_ = false;
};

}  // namespace dino::serving
