#include "server/frontend/training_service.h"

#include <chrono>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/frontend/surrogate_service.h"
#include "server/frontend/tensor_codec.h"

namespace dino::frontend {
namespace {

using serving::FineTuneSpec;
using serving::GateMetric;
using serving::JobSnapshot;
using serving::JobState;
using training::JacobianLoss;

absl::StatusOr<JacobianLoss> LossFromWire(dino::v1::Loss loss) {
  switch (loss) {
    case dino::v1::LOSS_UNSPECIFIED:
    case dino::v1::H1:
      return JacobianLoss::kFullH1;
    case dino::v1::L2:
      return JacobianLoss::kNone;
    case dino::v1::REDUCED_H1:
      return JacobianLoss::kReducedH1;
    case dino::v1::REDUCED_H1_MS:
      return JacobianLoss::kReducedH1Subsampled;
    case dino::v1::SKETCHED_H1:
      return JacobianLoss::kSketchedH1;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("config.loss has the unknown value ", static_cast<int>(loss)));
  }
}

absl::StatusOr<GateMetric> GateMetricFromWire(dino::v1::GateMetric metric) {
  switch (metric) {
    case dino::v1::GATE_METRIC_UNSPECIFIED:
      return GateMetric::kAuto;
    case dino::v1::L2_ACCURACY:
      return GateMetric::kL2;
    case dino::v1::H1_ACCURACY:
      return GateMetric::kH1;
    case dino::v1::REDUCED_H1_ACCURACY:
      return GateMetric::kReducedH1;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "config.acceptance.metric has the unknown value ", static_cast<int>(metric)));
  }
}

}  // namespace

absl::StatusOr<FineTuneSpec> SpecFromWire(const dino::v1::FineTuneConfig& config) {
  FineTuneSpec spec;
  if (config.base().name().empty()) {
    return absl::InvalidArgumentError("config.base.name is required");
  }
  if (config.base().version() < 0) {
    return absl::InvalidArgumentError("config.base.version must be >= 0");
  }
  spec.model = config.base().name();
  spec.version = config.base().version();
  auto loss = LossFromWire(config.loss());
  if (!loss.ok()) return loss.status();
  auto metric = GateMetricFromWire(config.acceptance().metric());
  if (!metric.ok()) return metric.status();
  training::TrainerConfig& trainer = spec.trainer;
  trainer.loss.jacobian_loss = *loss;
  if (*loss == JacobianLoss::kNone) trainer.loss.h1_weight = 0.0;
  if (config.l2_weight() != 0.0 || config.h1_weight() != 0.0) {
    trainer.loss.l2_weight = config.l2_weight();
    trainer.loss.h1_weight = *loss == JacobianLoss::kNone ? 0.0 : config.h1_weight();
  }
  if (config.epochs() < 0) return absl::InvalidArgumentError("config.epochs must be >= 0");
  if (config.epochs() > 0) trainer.epochs = config.epochs();
  if (config.learning_rate() < 0.0) {
    return absl::InvalidArgumentError("config.learning_rate must be > 0");
  }
  if (config.learning_rate() > 0.0) trainer.learning_rate = config.learning_rate();
  if (config.batch_size() < 0) return absl::InvalidArgumentError("config.batch_size must be > 0");
  if (config.batch_size() > 0) trainer.batch_size = config.batch_size();
  if (config.svd_rank() < 0) return absl::InvalidArgumentError("config.svd_rank must be >= 0");
  trainer.loss.svd_rank = config.svd_rank();
  if (config.subsample_size() < 0) {
    return absl::InvalidArgumentError("config.subsample_size must be >= 0");
  }
  if (config.subsample_size() > 0) trainer.loss.subsample_size = config.subsample_size();
  if (config.sketch_rank() < 0)
    return absl::InvalidArgumentError("config.sketch_rank must be >= 0");
  if (config.sketch_rank() > 0) trainer.loss.sketch_rank = config.sketch_rank();
  trainer.seed = config.seed();
  spec.validation_fraction = config.validation_fraction();
  spec.gate_metric = *metric;
  spec.max_regression = config.acceptance().max_regression();
  spec.description = config.description();
  return spec;
}

namespace {

// One field of a SampleBatch as a tensor (a view of the message's bytes).
absl::Status Decode(const dino::v1::Tensor& message, bool present, const char* field, bool required,
                    torch::Tensor* out) {
  absl::StatusOr<torch::Tensor> tensor = DecodeTensor(message, present, field, required);
  if (!tensor.ok()) return tensor.status();
  *out = *std::move(tensor);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<serving::SampleBatch> BatchFromWire(const dino::v1::SampleBatch& wire) {
  serving::SampleBatch batch;
  batch.validation = wire.validation();
  training::Dataset& d = batch.data;
  absl::Status s = Decode(wire.m(), wire.has_m(), "samples.m", true, &d.m);
  if (s.ok()) s = Decode(wire.q(), wire.has_q(), "samples.q", true, &d.q);
  if (!s.ok()) return s;
  switch (wire.jacobian_case()) {
    case dino::v1::SampleBatch::kFull:
      s = Decode(wire.full(), true, "samples.full", true, &d.jacobian);
      break;
    case dino::v1::SampleBatch::kSvd:
      s = Decode(wire.svd().u(), wire.svd().has_u(), "samples.svd.u", true, &d.svd_u);
      if (s.ok()) {
        s = Decode(wire.svd().sigma(), wire.svd().has_sigma(), "samples.svd.sigma", true,
                   &d.svd_sigma);
      }
      if (s.ok()) s = Decode(wire.svd().v(), wire.svd().has_v(), "samples.svd.v", true, &d.svd_v);
      break;
    case dino::v1::SampleBatch::kReduced:
      s = Decode(wire.reduced().reduced_jacobian(), wire.reduced().has_reduced_jacobian(),
                 "samples.reduced.reduced_jacobian", true, &d.reduced_jacobian);
      if (s.ok()) {
        s = Decode(wire.reduced().jacobian_norm_sq(), wire.reduced().has_jacobian_norm_sq(),
                   "samples.reduced.jacobian_norm_sq", false, &d.jacobian_norm_sq);
      }
      break;
    case dino::v1::SampleBatch::JACOBIAN_NOT_SET:
      break;
  }
  if (!s.ok()) return s;
  return batch;  // The job converts every field to the model's dtype.
}

namespace {

void AccuraciesToWire(const training::Accuracies& a, dino::v1::Accuracies* out) {
  out->set_samples(a.samples);
  out->set_l2(a.l2);
  if (a.h1) out->set_h1(*a.h1);
  if (a.reduced_h1) out->set_reduced_h1(*a.reduced_h1);
}

dino::v1::JobState StateToWire(JobState state) {
  switch (state) {
    case JobState::kReceiving:
      return dino::v1::RECEIVING;
    case JobState::kQueued:
      return dino::v1::QUEUED;
    case JobState::kTraining:
      return dino::v1::TRAINING;
    case JobState::kValidating:
      return dino::v1::VALIDATING;
    case JobState::kPublishing:
      return dino::v1::PUBLISHING;
    case JobState::kSucceeded:
      return dino::v1::SUCCEEDED;
    case JobState::kRejected:
      return dino::v1::REJECTED;
    case JobState::kFailed:
      return dino::v1::FAILED;
    case JobState::kCancelled:
      return dino::v1::CANCELLED;
  }
  return dino::v1::JOB_STATE_UNSPECIFIED;
}

void StatusToWire(const JobSnapshot& job, dino::v1::JobStatus* out) {
  out->set_job_id(job.id);
  out->mutable_base()->set_name(job.model);
  out->mutable_base()->set_version(job.base_version);
  out->set_state(StateToWire(job.state));
  out->set_message(job.message);
  out->set_train_samples(job.train_samples);
  out->set_validation_samples(job.validation_samples);
  out->set_samples_received(job.samples_received);
  out->set_bytes_received(job.bytes_received);
  out->set_epoch(job.epoch);
  out->set_epochs(job.epochs);
  out->set_train_loss(job.train_loss);
  out->set_validation_loss(job.validation_loss);
  if (job.validation) AccuraciesToWire(*job.validation, out->mutable_validation());
  if (job.base_validation) AccuraciesToWire(*job.base_validation, out->mutable_base_validation());
  out->set_samples_per_second(job.samples_per_second);
  out->set_eta_seconds(job.eta_seconds);
  out->set_new_version(job.new_version);
  out->set_created_unix_seconds(job.created_unix_seconds);
  out->set_updated_unix_seconds(job.updated_unix_seconds);
  out->set_revision(job.revision);
}

}  // namespace

grpc::Status TrainingService::StartFineTune(grpc::ServerContext* context,
                                            grpc::ServerReader<dino::v1::FineTuneUpload>* reader,
                                            dino::v1::StartFineTuneResponse* response) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  dino::v1::FineTuneUpload message;
  if (!reader->Read(&message)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the stream ended before its first message (the config)");
  }
  if (!message.has_config()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the first message of the stream must be the config");
  }
  absl::StatusOr<FineTuneSpec> spec = SpecFromWire(message.config());
  if (!spec.ok()) return ToGrpcStatus(spec.status());
  auto job = jobs_.Create(*std::move(spec));
  if (!job.ok()) return ToGrpcStatus(job.status());

  while (reader->Read(&message)) {
    if (!message.has_samples()) {
      // An empty message is the client's abort (training.proto): unlike a cancellation, it
      // cannot be mistaken for the end of the upload.
      const bool abort = !message.has_config();
      const std::string why = abort ? "the client aborted the upload"
                                    : "only the first message of the stream may be a config";
      (*job)->AbortUpload(why);
      return grpc::Status(abort ? grpc::StatusCode::CANCELLED : grpc::StatusCode::INVALID_ARGUMENT,
                          why);
    }
    absl::Status added = [&]() -> absl::Status {
      auto batch = BatchFromWire(message.samples());
      if (!batch.ok()) return batch.status();
      try {
        return (*job)->AddBatch(*std::move(batch));
      } catch (const std::exception& e) {
        return absl::InternalError(e.what());
      }
    }();
    if (!added.ok()) {
      // A refused batch ends the upload: the client learns which sample and field, and the
      // job (which holds only what was accepted so far) is not trained on partial data.
      (*job)->AbortUpload(std::string(added.message()));
      return ToGrpcStatus(added);
    }
  }
  // Read() is false both when the client closed its side and when the call broke off.
  if (context->IsCancelled()) {
    (*job)->AbortUpload("the client went away before the upload was complete");
    return grpc::Status(grpc::StatusCode::CANCELLED, "the upload was not completed");
  }
  if (absl::Status s = (*job)->FinishUpload(); !s.ok()) return ToGrpcStatus(s);
  response->set_job_id((*job)->id());
  StatusToWire((*job)->Snapshot(), response->mutable_status());
  return grpc::Status::OK;
}

grpc::Status TrainingService::WatchJob(grpc::ServerContext* context,
                                       const dino::v1::WatchJobRequest* request,
                                       grpc::ServerWriter<dino::v1::JobStatus>* writer) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  int64_t seen = 0;
  for (;;) {
    // Short waits, so that a client that went away frees its thread soon.
    auto job = jobs_.WaitForChange(request->job_id(), seen, 0.5);
    if (!job.ok()) return ToGrpcStatus(job.status());
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    if (job->revision > seen) {
      seen = job->revision;
      dino::v1::JobStatus status;
      StatusToWire(*job, &status);
      if (!writer->Write(status)) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    }
    if (serving::IsFinal(job->state)) return grpc::Status::OK;
  }
}

grpc::Status TrainingService::GetJob(grpc::ServerContext* context,
                                     const dino::v1::GetJobRequest* request,
                                     dino::v1::JobStatus* response) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  auto job = jobs_.Get(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  StatusToWire(*job, response);
  return grpc::Status::OK;
}

grpc::Status TrainingService::ListJobs(grpc::ServerContext* context,
                                       const dino::v1::ListJobsRequest*,
                                       dino::v1::ListJobsResponse* response) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  for (const JobSnapshot& job : jobs_.List()) StatusToWire(job, response->add_jobs());
  return grpc::Status::OK;
}

grpc::Status TrainingService::CancelJob(grpc::ServerContext* context,
                                        const dino::v1::CancelJobRequest* request,
                                        dino::v1::JobStatus* response) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  auto job = jobs_.Cancel(request->job_id());
  if (!job.ok()) return ToGrpcStatus(job.status());
  StatusToWire(*job, response);
  return grpc::Status::OK;
}

grpc::Status ModelAdminService::SetDefaultVersion(grpc::ServerContext* context,
                                                  const dino::v1::SetDefaultVersionRequest* request,
                                                  dino::v1::SetDefaultVersionResponse*) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name is required");
  }
  if (request->version() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "version must be >= 0");
  }
  return ToGrpcStatus(models_.SetDefaultVersion(request->name(), request->version()));
}

grpc::Status ModelAdminService::SetVersionLabel(grpc::ServerContext* context,
                                                const dino::v1::SetVersionLabelRequest* request,
                                                dino::v1::SetVersionLabelResponse*) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name is required");
  }
  if (request->label().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "label is required");
  }
  if (request->version() < 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "version must be >= 0 (0 removes the label)");
  }
  return ToGrpcStatus(
      models_.SetVersionLabel(request->name(), request->label(), request->version()));
}

grpc::Status ModelAdminService::UnloadVersion(grpc::ServerContext* context,
                                              const dino::v1::UnloadVersionRequest* request,
                                              dino::v1::UnloadVersionResponse*) {
  if (grpc::Status s = auth_.Check(*context); !s.ok()) return s;
  if (request->name().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "name is required");
  }
  if (request->version() <= 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "version is required (> 0)");
  }
  return ToGrpcStatus(models_.Unload(request->name(), request->version()));
}

}  // namespace dino::frontend
