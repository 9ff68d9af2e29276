#include "tests/client/fake_training.h"

#include <chrono>
#include <cmath>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/tensor_codec.h"
#include "client/training_client.h"

namespace dino::testing {
namespace {

// The fake models that can be fine-tuned (as in fake_surrogate.cc).
struct TrainableModel {
  const char* name;
  std::vector<int64_t> versions;
  int64_t d_m, d_q;
};

const TrainableModel* FindModel(const std::string& name) {
  static const std::vector<TrainableModel>* models =
      new std::vector<TrainableModel>{{"linear", {1, 2}, 3, 2}, {"plain", {1}, 4, 3}};
  for (const TrainableModel& m : *models) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

bool HasVersion(const TrainableModel& model, int64_t version) {
  for (int64_t v : model.versions) {
    if (v == version) return true;
  }
  return false;
}

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

grpc::Status CheckToken(const std::string& token, grpc::ServerContext* context) {
  if (token.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end() ||
      std::string(it->second.data(), it->second.size()) != "Bearer " + token) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, it == metadata.end()
                                                               ? "missing authorization metadata"
                                                               : "invalid bearer token");
  }
  return grpc::Status::OK;
}

// Decodes `tensor` and checks its shape: `dims` with -1 for "any" (the same b for all).
grpc::Status CheckTensor(const v1::Tensor& tensor, const std::string& field,
                         const std::vector<int64_t>& dims, NpyArray* out) {
  absl::StatusOr<NpyArray> array = client::DecodeTensor(tensor, field);
  if (!array.ok()) return Invalid(std::string(array.status().message()));
  bool ok = array->rank() == static_cast<int>(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] < 0 || array->shape[i] == dims[i];
  if (!ok) {
    return Invalid(absl::StrCat(field, ": expected shape ", ShapeToString(dims), " (-1: any), got ",
                                ShapeToString(array->shape)));
  }
  *out = *std::move(array);
  return grpc::Status::OK;
}

std::string FormOf(const v1::SampleBatch& batch) {
  switch (batch.jacobian_case()) {
    case v1::SampleBatch::kFull:
      return "full";
    case v1::SampleBatch::kSvd:
      return "svd";
    case v1::SampleBatch::kReduced:
      return "reduced";
    default:
      return "none";
  }
}

v1::Accuracies MakeAccuracies(int64_t samples, double l2, double h1, bool has_jacobians) {
  v1::Accuracies a;
  a.set_samples(samples);
  a.set_l2(l2);
  if (has_jacobians) a.set_h1(h1);
  return a;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

FakeTrainingService::FakeTrainingService(std::string admin_token)
    : admin_token_(std::move(admin_token)) {}

grpc::Status FakeTrainingService::StartFineTune(grpc::ServerContext* context,
                                                grpc::ServerReader<v1::FineTuneUpload>* reader,
                                                v1::StartFineTuneResponse* response) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  FakeUpload upload;
  v1::FineTuneUpload message;
  // Records what arrived so far (tests look at partial uploads too).
  auto record = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    last_upload_ = upload;
  };
  if (!reader->Read(&message)) {
    return context->IsCancelled() ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")
                                  : Invalid("empty upload: the first message must be the config");
  }
  if (!message.has_config()) return Invalid("the first message must be the config");
  upload.config = message.config();
  const v1::ModelRef& base = upload.config.base();
  if (base.name().empty()) return Invalid("config.base.name is required");
  const TrainableModel* model = FindModel(base.name());
  if (model == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("unknown model '", base.name(), "'"));
  }
  const int64_t version = base.version() == 0 ? model->versions.back() : base.version();
  if (!HasVersion(*model, version)) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("model '", model->name, "' has no version ", version));
  }
  record();

  int64_t bytes = 0;
  while (reader->Read(&message)) {
    if (!message.has_samples()) return Invalid("only the first message may be a config");
    const v1::SampleBatch& batch = message.samples();
    NpyArray m, q, unused;
    if (grpc::Status s = CheckTensor(batch.m(), "m", {-1, model->d_m}, &m); !s.ok()) return s;
    const int64_t b = m.shape[0];
    if (grpc::Status s = CheckTensor(batch.q(), "q", {b, model->d_q}, &q); !s.ok()) return s;
    const std::string form = FormOf(batch);
    if (upload.batches > 0 && form != upload.jacobian_form) {
      return Invalid(absl::StrCat("every batch must carry the same Jacobian form: batch ",
                                  upload.batches, " has ", form, ", the first had ",
                                  upload.jacobian_form));
    }
    if (form == "full") {
      if (grpc::Status s = CheckTensor(batch.full(), "full", {b, model->d_q, model->d_m}, &unused);
          !s.ok()) {
        return s;
      }
    } else if (form == "svd") {
      NpyArray sigma;
      if (grpc::Status s = CheckTensor(batch.svd().sigma(), "svd.sigma", {b, -1}, &sigma);
          !s.ok()) {
        return s;
      }
      const int64_t r = sigma.shape[1];
      if (grpc::Status s = CheckTensor(batch.svd().u(), "svd.u", {b, model->d_q, r}, &unused);
          !s.ok()) {
        return s;
      }
      if (grpc::Status s = CheckTensor(batch.svd().v(), "svd.v", {b, model->d_m, r}, &unused);
          !s.ok()) {
        return s;
      }
    }
    const std::vector<double> m_values = m.ToDoubles();
    const std::vector<double> q_values = q.ToDoubles();
    for (int64_t i = 0; i < b; ++i) {
      bool finite = true;
      for (int64_t k = 0; k < model->d_m; ++k)
        finite = finite && std::isfinite(m_values[i * model->d_m + k]);
      for (int64_t k = 0; k < model->d_q; ++k)
        finite = finite && std::isfinite(q_values[i * model->d_q + k]);
      if (!finite) {
        return Invalid(absl::StrCat("sample ", upload.samples + i, " is not finite"));
      }
    }
    upload.jacobian_form = form;
    upload.m.insert(upload.m.end(), m_values.begin(), m_values.end());
    ++upload.batches;
    upload.samples += b;
    if (batch.validation()) upload.validation_samples += b;
    bytes += static_cast<int64_t>(batch.ByteSizeLong());
    record();
  }

  std::lock_guard<std::mutex> lock(mu_);
  const std::string job_id = absl::StrCat("job-", jobs_.size() + 1);
  v1::JobStatus status;
  status.set_job_id(job_id);
  status.mutable_base()->set_name(model->name);
  status.mutable_base()->set_version(version);
  status.set_samples_received(upload.samples);
  status.set_bytes_received(bytes);
  status.set_created_unix_seconds(Now());
  Job job;
  auto push = [&job, &status](v1::JobState state) {
    status.set_state(state);
    status.set_revision(static_cast<int64_t>(job.history.size()) + 1);
    status.set_updated_unix_seconds(Now());
    job.history.push_back(status);
  };
  if (context->IsCancelled()) {
    // The client went away before closing its side: the job is aborted.
    status.set_message("the upload was cancelled by the client");
    push(v1::CANCELLED);
    jobs_.push_back(std::move(job));
    last_upload_ = upload;
    return grpc::Status(grpc::StatusCode::CANCELLED, "upload cancelled");
  }
  const v1::FineTuneConfig& config = upload.config;
  const bool has_jacobians = upload.jacobian_form != "none";
  if (upload.samples == 0) return Invalid("no samples were uploaded");
  if (!has_jacobians && config.loss() != v1::L2) {
    return Invalid(absl::StrCat("loss ", v1::Loss_Name(config.loss()),
                                " needs Jacobian data; the samples carry none"));
  }
  upload.complete = true;
  last_upload_ = upload;

  const int64_t validation =
      upload.validation_samples > 0 ? upload.validation_samples : upload.samples / 5;
  status.set_train_samples(upload.samples - validation);
  status.set_validation_samples(validation);
  const int64_t epochs = config.epochs() > 0 ? config.epochs() : 3;
  status.set_epochs(epochs);
  push(v1::QUEUED);
  *response->mutable_status() = status;
  response->set_job_id(job_id);

  const std::string& description = config.description();
  const bool hang = description == "hang";
  for (int64_t e = 1; e <= (hang ? 1 : epochs); ++e) {
    status.set_epoch(e);
    status.set_train_loss(1.0 / static_cast<double>(e));
    status.set_validation_loss(1.5 / static_cast<double>(e));
    *status.mutable_validation() =
        MakeAccuracies(validation, 0.5 + 0.4 * e / epochs, 0.2 + 0.2 * e / epochs, has_jacobians);
    status.set_samples_per_second(1000);
    status.set_eta_seconds(static_cast<double>(epochs - e));
    push(v1::TRAINING);
  }
  if (!hang) {
    status.set_eta_seconds(0);
    *status.mutable_base_validation() = MakeAccuracies(validation, 0.8, 0.3, has_jacobians);
    push(v1::VALIDATING);
    if (description == "reject") {
      status.set_message("validation gate: accuracy fell below the base's");
      push(v1::REJECTED);
    } else if (description == "fail") {
      status.set_message("training diverged (fake)");
      push(v1::FAILED);
    } else {
      push(v1::PUBLISHING);
      status.set_new_version(model->versions.back() + 1);
      status.set_message(absl::StrCat("published version ", status.new_version()));
      push(v1::SUCCEEDED);
    }
  }
  jobs_.push_back(std::move(job));
  return grpc::Status::OK;
}

grpc::Status FakeTrainingService::WatchJob(grpc::ServerContext* context,
                                           const v1::WatchJobRequest* request,
                                           grpc::ServerWriter<v1::JobStatus>* writer) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  size_t sent = 0;
  while (!context->IsCancelled()) {
    v1::JobStatus next;
    bool have = false, ended = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      int64_t index = 0;
      if (!absl::StartsWith(request->job_id(), "job-") ||
          !absl::SimpleAtoi(request->job_id().substr(4), &index) || index == 0 ||
          index > static_cast<int64_t>(jobs_.size())) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            absl::StrCat("unknown job '", request->job_id(), "'"));
      }
      const Job& job = jobs_[index - 1];
      if (sent < job.history.size()) {
        next = job.history[sent];
        have = true;
        ended = sent + 1 == job.history.size() && client::IsTerminal(next.state());
      }
    }
    if (have) {
      if (!writer->Write(next)) return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
      ++sent;
      if (ended) return grpc::Status::OK;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
}

grpc::Status FakeTrainingService::GetJob(grpc::ServerContext* context,
                                         const v1::GetJobRequest* request,
                                         v1::JobStatus* response) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  for (const Job& job : jobs_) {
    if (job.history.back().job_id() == request->job_id()) {
      *response = job.history.back();
      return grpc::Status::OK;
    }
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("unknown job '", request->job_id(), "'"));
}

grpc::Status FakeTrainingService::ListJobs(grpc::ServerContext* context,
                                           const v1::ListJobsRequest* /*request*/,
                                           v1::ListJobsResponse* response) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  for (const Job& job : jobs_) *response->add_jobs() = job.history.back();
  return grpc::Status::OK;
}

grpc::Status FakeTrainingService::CancelJob(grpc::ServerContext* context,
                                            const v1::CancelJobRequest* request,
                                            v1::JobStatus* response) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  for (Job& job : jobs_) {
    v1::JobStatus status = job.history.back();
    if (status.job_id() != request->job_id()) continue;
    if (!client::IsTerminal(status.state())) {
      status.set_state(v1::CANCELLED);
      status.set_message("cancelled by CancelJob");
      status.set_revision(status.revision() + 1);
      status.set_updated_unix_seconds(Now());
      job.history.push_back(status);
    }
    *response = job.history.back();
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("unknown job '", request->job_id(), "'"));
}

FakeUpload FakeTrainingService::last_upload() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_upload_;
}

FakeModelAdminService::FakeModelAdminService(std::string admin_token)
    : admin_token_(std::move(admin_token)) {}

grpc::Status FakeModelAdminService::SetDefaultVersion(grpc::ServerContext* context,
                                                      const v1::SetDefaultVersionRequest* request,
                                                      v1::SetDefaultVersionResponse* /*response*/) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  const TrainableModel* model = FindModel(request->name());
  if (model == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("unknown model '", request->name(), "'"));
  }
  if (request->version() != 0 && !HasVersion(*model, request->version())) {
    return grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("model '", model->name, "' has no loaded version ", request->version()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  calls_.push_back(absl::StrCat("SetDefaultVersion ", request->name(), " ", request->version()));
  return grpc::Status::OK;
}

grpc::Status FakeModelAdminService::UnloadVersion(grpc::ServerContext* context,
                                                  const v1::UnloadVersionRequest* request,
                                                  v1::UnloadVersionResponse* /*response*/) {
  if (grpc::Status s = CheckToken(admin_token_, context); !s.ok()) return s;
  if (request->version() <= 0) return Invalid("version is required");
  const TrainableModel* model = FindModel(request->name());
  if (model == nullptr || !HasVersion(*model, request->version())) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no loaded version ", request->version(), " of model '",
                                     request->name(), "'"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  calls_.push_back(absl::StrCat("UnloadVersion ", request->name(), " ", request->version()));
  return grpc::Status::OK;
}

std::vector<std::string> FakeModelAdminService::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}

}  // namespace dino::testing
