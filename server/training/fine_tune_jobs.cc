#include "server/training/fine_tune_jobs.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/architectures/model_file.h"
#include "models/pipeline/training_data.h"
#include "server/core/log.h"
#include "server/core/model_repository.h"

namespace dino::serving {
namespace {

using training::Accuracies;
using training::Dataset;
using training::JacobianForm;
using training::JacobianLoss;

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Thrown from the trainer's batch callback to stop a cancelled job at once.
struct JobCancelled {};

// The wire names of the dataset fields, for errors the client can act on.
const char* WireField(const char* field) {
  const std::pair<const char*, const char*> names[] = {
      {"m", "samples.m"},
      {"q", "samples.q"},
      {"jacobian", "samples.full"},
      {"svd_u", "samples.svd.u"},
      {"svd_sigma", "samples.svd.sigma"},
      {"svd_v", "samples.svd.v"},
      {"reduced_jacobian", "samples.reduced.reduced_jacobian"},
      {"jacobian_norm_sq", "samples.reduced.jacobian_norm_sq"}};
  for (const auto& [name, wire] : names) {
    if (std::string(name) == field) return wire;
  }
  return field;
}

std::string Shape(const torch::Tensor& t) {
  std::string text = "[";
  for (int64_t i = 0; i < t.dim(); ++i) absl::StrAppend(&text, i ? ", " : "", t.size(i));
  return text + "]";
}

// Checks that `t` has `expected` shape (-1: any extent), naming the wire field.
absl::Status CheckShape(const torch::Tensor& t, const char* field,
                        std::initializer_list<int64_t> expected, const char* meaning) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  int64_t axis = 0;
  for (int64_t extent : expected) {
    if (!ok) break;
    ok = extent < 0 || t.size(axis) == extent;
    ++axis;
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(WireField(field), " must have shape ", meaning,
                                                 " for this model, got ", Shape(t)));
}

// The first sample (batch-relative) with a NaN or Inf in `t`, or -1.
int64_t FirstNonFinite(const torch::Tensor& t) {
  const torch::Tensor bad = torch::logical_not(torch::isfinite(t)).reshape({t.size(0), -1}).any(1);
  const torch::Tensor where = torch::nonzero(bad);
  return where.size(0) > 0 ? where[0][0].item<int64_t>() : -1;
}

int64_t TensorBytes(const Dataset& data) {
  int64_t bytes = 0;
  for (const auto& [t, name] : data.Fields()) {
    bytes += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return bytes;
}

// Which of the paper's accuracies the data determine (metrics.h).
bool HasMetric(GateMetric metric, JacobianForm form, bool norms) {
  switch (metric) {
    case GateMetric::kL2:
      return true;
    case GateMetric::kH1:
      return form == JacobianForm::kFull || form == JacobianForm::kTruncatedSvd ||
             (form == JacobianForm::kReduced && norms);
    case GateMetric::kReducedH1:
      return form == JacobianForm::kFull || form == JacobianForm::kTruncatedSvd;
    case GateMetric::kAuto:
      return true;
  }
  return false;
}

std::optional<double> MetricValue(const Accuracies& a, GateMetric metric) {
  switch (metric) {
    case GateMetric::kL2:
      return a.l2;
    case GateMetric::kH1:
      return a.h1;
    case GateMetric::kReducedH1:
      return a.reduced_h1;
    case GateMetric::kAuto:
      break;
  }
  return std::nullopt;
}

void LowerThreadPriority(int increment) {
  if (increment <= 0) return;
  // On Linux nice values are per thread: this one yields the CPU to inference.
  const auto tid = static_cast<id_t>(::syscall(SYS_gettid));
  errno = 0;
  const int current = ::getpriority(PRIO_PROCESS, tid);
  if (errno == 0) ::setpriority(PRIO_PROCESS, tid, std::min(19, current + increment));
}

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kReceiving:
      return "receiving";
    case JobState::kQueued:
      return "queued";
    case JobState::kTraining:
      return "training";
    case JobState::kValidating:
      return "validating";
    case JobState::kPublishing:
      return "publishing";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kRejected:
      return "rejected";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

bool IsFinal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kRejected ||
         state == JobState::kFailed || state == JobState::kCancelled;
}

const char* GateMetricName(GateMetric metric) {
  switch (metric) {
    case GateMetric::kAuto:
      return "auto";
    case GateMetric::kL2:
      return "l2";
    case GateMetric::kH1:
      return "h1";
    case GateMetric::kReducedH1:
      return "reduced_h1";
  }
  return "unknown";
}

// ---- FineTuneJob ---------------------------------------------------------------------------

namespace {
ModelInfo InfoWithoutMetadata(ModelInfo info) {
  info.metadata = nlohmann::json::object();
  return info;
}
}  // namespace

FineTuneJob::FineTuneJob(FineTuneJobManager* manager, std::string id, FineTuneSpec spec,
                         const ServableHandle& base)
    : manager_(manager),
      id_(std::move(id)),
      spec_(std::move(spec)),
      base_{base.name, base.version, InfoWithoutMetadata(base.model->info())} {
  status_.id = id_;
  status_.model = base_.name;
  status_.base_version = base_.version;
  status_.state = JobState::kReceiving;
  status_.epochs = spec_.trainer.epochs;
  status_.created_unix_seconds = status_.updated_unix_seconds = UnixSeconds();
  status_.revision = 1;
}

JobSnapshot FineTuneJob::Snapshot() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

void FineTuneJob::Touch() {
  status_.updated_unix_seconds = UnixSeconds();
  ++status_.revision;
  changed_.notify_all();
}

void FineTuneJob::SetStateLocked(JobState state, const std::string& message) {
  const JobState from = status_.state;
  if (IsFinal(from)) return;  // An ended job stays as it ended.
  status_.state = state;
  if (!message.empty()) status_.message = message;
  Touch();
  manager_->Notify(from, state);
  if (IsFinal(state)) {
    upload_ = Upload();  // The data are not needed any more.
    LogInfo("fine-tune job ", id_, " (", base_.name, "/", base_.version, "): ", JobStateName(state),
            status_.message.empty() ? "" : ": ", status_.message);
  }
}

bool FineTuneJob::EnterState(JobState state, const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (cancel_requested_) return false;
  SetStateLocked(state, message);
  return true;
}

absl::Status FineTuneJob::AddBatch(SampleBatch batch) {
  const ModelInfo& info = base_.info;
  Dataset& data = batch.data;
  if (!data.m.defined()) return absl::InvalidArgumentError("samples.m is required");
  if (!data.q.defined()) return absl::InvalidArgumentError("samples.q is required");
  const int64_t b = data.m.dim() >= 1 ? data.m.size(0) : 0;
  if (absl::Status s = CheckShape(data.m, "m", {-1, info.input_dim}, "[b, d_M]"); !s.ok()) {
    return s;
  }
  if (b == 0) return absl::InvalidArgumentError("samples.m holds no samples");
  if (absl::Status s = CheckShape(data.q, "q", {b, info.output_dim}, "[b, d_Q]"); !s.ok()) {
    return s;
  }
  JacobianForm form;
  try {
    form = data.jacobian_form();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  switch (form) {
    case JacobianForm::kNone:
      break;
    case JacobianForm::kFull:
      if (absl::Status s = CheckShape(data.jacobian, "jacobian",
                                      {b, info.output_dim, info.input_dim}, "[b, d_Q, d_M]");
          !s.ok()) {
        return s;
      }
      break;
    case JacobianForm::kTruncatedSvd: {
      const int64_t r = data.svd_sigma.dim() == 2 ? data.svd_sigma.size(1) : -1;
      if (absl::Status s = CheckShape(data.svd_sigma, "svd_sigma", {b, -1}, "[b, r]"); !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckShape(data.svd_u, "svd_u", {b, info.output_dim, r}, "[b, d_Q, r]");
          !s.ok()) {
        return s;
      }
      if (absl::Status s = CheckShape(data.svd_v, "svd_v", {b, info.input_dim, r}, "[b, d_M, r]");
          !s.ok()) {
        return s;
      }
      break;
    }
    case JacobianForm::kReduced:
      if (!info.has_reduced_bases) {
        return absl::InvalidArgumentError(
            "samples.reduced needs a reduced-basis (DIPNet) model; send samples.full or "
            "samples.svd for this one");
      }
      if (absl::Status s = CheckShape(data.reduced_jacobian, "reduced_jacobian",
                                      {b, info.output_rank, info.input_rank}, "[b, r_Q, r_M]");
          !s.ok()) {
        return s;
      }
      if (data.jacobian_norm_sq.defined()) {
        if (absl::Status s = CheckShape(data.jacobian_norm_sq, "jacobian_norm_sq", {b}, "[b]");
            !s.ok()) {
          return s;
        }
      }
      break;
  }

  std::lock_guard<std::mutex> lock(mutex_);
  if (status_.state != JobState::kReceiving) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id_, " is ", JobStateName(status_.state), ", not receiving samples"));
  }
  const int64_t first = status_.samples_received;
  if (upload_.form.has_value() && *upload_.form != form) {
    return absl::InvalidArgumentError(absl::StrCat(
        "samples ", first, "..", first + b - 1, " carry Jacobian form ",
        training::JacobianFormName(form), " but the job's earlier samples carry ",
        training::JacobianFormName(*upload_.form), "; every batch must use the same form"));
  }
  if (first + b > manager_->options_.max_samples_per_job) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the job would hold ", first + b, " samples; this server accepts at most ",
                     manager_->options_.max_samples_per_job, " per job"));
  }
  const int64_t bytes = TensorBytes(data);
  if (status_.bytes_received + bytes > manager_->options_.max_bytes_per_job) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the job would hold ", status_.bytes_received + bytes,
                     " bytes of samples; this server accepts at most ",
                     manager_->options_.max_bytes_per_job, " per job"));
  }
  // Finite values, naming the job-wide index of the first bad sample of each field.
  std::optional<std::pair<int64_t, std::string>> bad;
  for (const auto& [tensor, field] : data.Fields()) {
    const int64_t i = FirstNonFinite(*tensor);
    if (i >= 0 && (!bad || i < bad->first)) bad = {i, WireField(field)};
  }
  if (bad) {
    return absl::InvalidArgumentError(absl::StrCat("sample ", first + bad->first,
                                                   " has a NaN or Inf in ", bad->second,
                                                   "; the batch was refused"));
  }
  // A copy in the model's dtype: the batch may view the caller's (e.g. a request's) buffers.
  Dataset converted = data.Select(torch::arange(b)).To(torch::kCPU, info.dtype);
  try {
    converted.Validate();  // E.g. orthonormal SVD factors.
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("samples ", first, "..", first + b - 1, ": ", e.what()));
  }
  upload_.form = form;
  if (batch.validation) {
    upload_.validation.push_back(std::move(converted));
    upload_.validation_samples += b;
  } else {
    upload_.train.push_back(std::move(converted));
    upload_.train_samples += b;
  }
  status_.samples_received += b;
  status_.bytes_received += bytes;
  status_.train_samples = upload_.train_samples;
  status_.validation_samples = upload_.validation_samples;
  Touch();
  if (manager_->options_.observer.on_samples) {
    manager_->options_.observer.on_samples(base_.name, b, bytes);
  }
  return absl::OkStatus();
}

absl::Status FineTuneJob::FinishUpload() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (status_.state != JobState::kReceiving) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id_, " is ", JobStateName(status_.state), ": ", status_.message));
  }
  auto fail = [&](const std::string& why) {
    SetStateLocked(JobState::kFailed, why);
    return absl::InvalidArgumentError(why);
  };
  const JacobianForm form = upload_.form.value_or(JacobianForm::kNone);
  const bool norms = !upload_.train.empty() && upload_.train.front().jacobian_norm_sq.defined();
  const JacobianLoss loss = spec_.trainer.loss.jacobian_loss;
  const bool l2_only = spec_.trainer.loss.h1_weight == 0.0 || loss == JacobianLoss::kNone;
  if (!l2_only && form == JacobianForm::kNone) {
    return fail(absl::StrCat("config.loss ", training::JacobianLossName(loss),
                             " needs Jacobian data, but the samples carry none"));
  }
  if (!l2_only && form == JacobianForm::kReduced && loss != JacobianLoss::kFullH1) {
    return fail(absl::StrCat("config.loss ", training::JacobianLossName(loss),
                             " needs each sample's SVD (samples.full or samples.svd); the "
                             "reduced form determines only the full H1 loss"));
  }
  GateMetric metric = spec_.gate_metric;
  if (metric == GateMetric::kAuto) {
    metric = HasMetric(GateMetric::kH1, form, norms) ? GateMetric::kH1 : GateMetric::kL2;
  }
  if (!HasMetric(metric, form, norms)) {
    return fail(absl::StrCat("config.acceptance.metric ", GateMetricName(metric),
                             " cannot be computed from samples of Jacobian form ",
                             training::JacobianFormName(form)));
  }
  int64_t validation = upload_.validation_samples;
  if (validation == 0) {
    const double fraction = spec_.validation_fraction > 0.0 ? spec_.validation_fraction : 0.2;
    validation =
        std::max<int64_t>(1, std::llround(fraction * static_cast<double>(upload_.train_samples)));
  }
  const int64_t train = upload_.train_samples - (upload_.validation_samples == 0 ? validation : 0);
  if (train < 1) {
    return fail(absl::StrCat("the upload holds ", upload_.train_samples,
                             " training sample(s): too few to hold out ", validation,
                             " for validation and train on the rest"));
  }
  status_.train_samples = train;
  status_.validation_samples = validation;
  SetStateLocked(JobState::kQueued, "");
  lock.unlock();
  manager_->Start(shared_from_this());
  return absl::OkStatus();
}

void FineTuneJob::AbortUpload(const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (status_.state == JobState::kReceiving) SetStateLocked(JobState::kCancelled, why);
}

void FineTuneJob::Run() {
  LowerThreadPriority(manager_->options_.training_nice);
  const FineTuneJobManager::Options& options = manager_->options_;
  Upload upload;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    upload = std::move(upload_);
    upload_ = Upload();
  }
  try {
    if (!EnterState(JobState::kTraining, "preparing the data")) throw JobCancelled();
    training::DatasetSplit split;
    Dataset all = training::ConcatDatasets(upload.train);
    upload.train.clear();
    if (!upload.validation.empty()) {
      split.train = std::move(all);
      split.validation = training::ConcatDatasets(upload.validation);
      upload.validation.clear();
    } else {
      split = training::SplitDataset(all, Snapshot().validation_samples, spec_.trainer.seed);
      all = Dataset();
    }

    namespace fs = std::filesystem;
    const std::string base_file =
        (fs::path(options.repository) / base_.name / std::to_string(base_.version) / kModelFileName)
            .string();
    // Two loads rather than clone(): the copy trained must own leaf parameters.
    models::LoadedModelFile base = models::LoadModelFile(base_file);
    torch::jit::Module module = models::LoadModelFile(base_file).module;

    training::TrainerConfig config = spec_.trainer;
    config.validation_size = 0;
    // Fine-tuning continues the base's function: its whitening stays as it is.
    config.whitening = training::Whitening::kNever;
    config.evaluation_interval = 1;
    const Accuracies base_accuracy =
        training::EvaluateAccuracies(base.module, split.validation, config.metrics);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      status_.base_validation = base_accuracy;
      status_.message = "training";
      Touch();
    }

    auto last_progress = std::chrono::steady_clock::now();
    training::TrainerCallbacks callbacks;
    callbacks.on_batch = [&](const training::BatchProgress& p) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancel_requested_) throw JobCancelled();
      const auto now = std::chrono::steady_clock::now();
      if (now - last_progress < std::chrono::milliseconds(500)) return;
      last_progress = now;
      status_.samples_per_second = p.samples_per_second;
      status_.eta_seconds = p.eta_seconds;
      status_.train_loss = p.loss;
      Touch();
    };
    callbacks.on_epoch = [&](const training::EpochReport& r) {
      if (options.observer.on_epoch) options.observer.on_epoch(base_.name, r.epoch_seconds);
      std::lock_guard<std::mutex> lock(mutex_);
      status_.epoch = r.epoch;
      status_.epochs = r.epochs;
      status_.train_loss = r.train.total;
      if (r.validation) status_.validation_loss = r.validation->total;
      if (r.validation_accuracy) status_.validation = r.validation_accuracy;
      status_.samples_per_second = r.samples_per_second;
      status_.eta_seconds = r.eta_seconds;
      Touch();
      return !cancel_requested_;
    };
    const training::TrainingResult result = training::Train(module, split, config, callbacks);
    if (!result.validation_accuracy) throw std::runtime_error("no validation accuracy");
    const Accuracies& tuned = *result.validation_accuracy;
    if (options.observer.on_validation) options.observer.on_validation(base_.name, tuned);

    if (!EnterState(JobState::kValidating, "")) throw JobCancelled();
    GateMetric metric = spec_.gate_metric;
    if (metric == GateMetric::kAuto) metric = tuned.h1 ? GateMetric::kH1 : GateMetric::kL2;
    const std::optional<double> before = MetricValue(base_accuracy, metric);
    const std::optional<double> after = MetricValue(tuned, metric);
    if (!before || !after) {
      throw std::runtime_error(absl::StrCat("the validation data do not determine the ",
                                            GateMetricName(metric), " accuracy"));
    }
    const std::string comparison = absl::StrFormat(
        "validation %s accuracy %.4f (base version %d: %.4f, tolerance %.4f)",
        GateMetricName(metric), *after, base_.version, *before, spec_.max_regression);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      status_.validation = tuned;
      if (*after < *before - spec_.max_regression) {
        SetStateLocked(JobState::kRejected, "rejected by the validation gate: " + comparison);
        return;
      }
    }
    // A client chooses its training and its validation samples, so the gate above cannot stop
    // one that poisons both. The model's trusted validation set (written by operators with
    // `dino-train trusted-set`, never through an RPC) can: the new weights must not be worse
    // on it either.
    nlohmann::json trusted_gate = nullptr;
    std::string trusted_comparison;
    if (const fs::path trusted_dir =
            fs::path(options.repository) / base_.name / models::kTrustedValidationDir;
        fs::exists(trusted_dir)) {
      pipeline::DataSelection selection;
      selection.dir = trusted_dir.string();
      selection.dtype = split.validation.m.scalar_type();
      absl::StatusOr<Dataset> trusted = pipeline::LoadDataset(selection);
      if (!trusted.ok()) {
        throw std::runtime_error(absl::StrCat("the model's trusted validation set is unusable: ",
                                              trusted.status().message()));
      }
      const Accuracies trusted_base =
          training::EvaluateAccuracies(base.module, *trusted, config.metrics);
      const Accuracies trusted_new = training::EvaluateAccuracies(module, *trusted, config.metrics);
      GateMetric trusted_metric = metric;
      if (!MetricValue(trusted_base, trusted_metric) || !MetricValue(trusted_new, trusted_metric)) {
        trusted_metric = GateMetric::kL2;
      }
      const double trusted_before = *MetricValue(trusted_base, trusted_metric);
      const double trusted_after = *MetricValue(trusted_new, trusted_metric);
      trusted_comparison = absl::StrFormat(
          "trusted validation set (%d samples) %s accuracy %.4f (base version %d: %.4f)",
          trusted->size(), GateMetricName(trusted_metric), trusted_after, base_.version,
          trusted_before);
      trusted_gate = {{"metric", GateMetricName(trusted_metric)},
                      {"samples", trusted->size()},
                      {"base", trusted_before},
                      {"new", trusted_after}};
      if (trusted_after < trusted_before - spec_.max_regression) {
        std::lock_guard<std::mutex> lock(mutex_);
        SetStateLocked(JobState::kRejected,
                       absl::StrCat("rejected by the trusted validation set: ", trusted_comparison,
                                    " (client validation: ", comparison, ")"));
        return;
      }
    }
    const std::string gate_summary = trusted_comparison.empty()
                                         ? comparison
                                         : absl::StrCat(comparison, "; ", trusted_comparison);

    if (!EnterState(JobState::kPublishing, gate_summary)) throw JobCancelled();
    nlohmann::json metadata = base.metadata.is_object() ? base.metadata : nlohmann::json::object();
    const double finished = UnixSeconds();
    metadata["trained"] = true;
    metadata["parent"] = {{"model", base_.name}, {"version", base_.version}};
    for (const char* key : {"training", "data", "metrics"}) {
      if (result.metadata.contains(key)) metadata[key] = result.metadata[key];
    }
    metadata["metrics"]["validation_base"] = base_accuracy.ToJson();
    metadata["fine_tune"] = {
        {"job_id", id_},
        {"description", spec_.description},
        {"loss", training::JacobianLossName(spec_.trainer.loss.jacobian_loss)},
        {"gate",
         {{"metric", GateMetricName(metric)},
          {"max_regression", spec_.max_regression},
          {"base", *before},
          {"new", *after},
          {"trusted", trusted_gate}}},
        {"created_unix_seconds", Snapshot().created_unix_seconds},
        {"finished_unix_seconds", finished},
        {"samples", {{"train", split.train.size()}, {"validation", split.validation.size()}}}};
    absl::StatusOr<int64_t> version =
        PublishModelVersion(options.repository, base_.name, module, metadata);
    if (!version.ok()) throw std::runtime_error(std::string(version.status().message()));
    // Load it now rather than at the next poll. The publish never touches the default: with
    // no pin the new version is the default because it is the highest; an operator's pin
    // (config.json default_version) stays, and the new version serves by its number.
    manager_->models_.SyncRepository().IgnoreError();
    const VersionStatus served = manager_->models_.GetVersionStatus(base_.name, *version);
    if (served.state == VersionStatus::State::kLoadFailed ||
        served.state == VersionStatus::State::kNotInRepository) {
      std::error_code ignored;
      fs::remove_all(fs::path(options.repository) / base_.name / std::to_string(*version), ignored);
      manager_->models_.SyncRepository().IgnoreError();
      throw std::runtime_error(absl::StrCat("the published version ", *version, " did not load (",
                                            served.message, "); it was removed again"));
    }
    std::string serving_note;
    if (served.state != VersionStatus::State::kAvailable) {
      // The model's version policy (e.g. "specific") does not keep it: published, not served.
      serving_note = absl::StrCat(" (", served.message, ")");
    } else if (auto current = manager_->models_.Get(base_.name, 0);
               current.ok() && current->version != *version) {
      serving_note = absl::StrCat(" (the default stays the pinned version ", current->version, ")");
    }
    std::lock_guard<std::mutex> lock(mutex_);
    status_.new_version = *version;
    SetStateLocked(JobState::kSucceeded, absl::StrCat("published ", base_.name, "/", *version,
                                                      serving_note, ": ", gate_summary));
  } catch (const JobCancelled&) {
    std::lock_guard<std::mutex> lock(mutex_);
    SetStateLocked(JobState::kCancelled, "cancelled; nothing was published");
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    std::lock_guard<std::mutex> lock(mutex_);
    SetStateLocked(JobState::kFailed, what + "; nothing was published");
  }
}

// ---- FineTuneJobManager --------------------------------------------------------------------

FineTuneJobManager::FineTuneJobManager(ModelManager& models, Options options)
    : models_(models), options_(std::move(options)) {}

FineTuneJobManager::~FineTuneJobManager() { Shutdown(); }

void FineTuneJobManager::Notify(std::optional<JobState> from, JobState to) const {
  if (options_.observer.on_state) options_.observer.on_state(from, to);
}

absl::StatusOr<std::shared_ptr<FineTuneJob>> FineTuneJobManager::Create(FineTuneSpec spec) {
  try {
    spec.trainer.Validate();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config: ", e.what()));
  }
  if (!(spec.validation_fraction >= 0.0 && spec.validation_fraction < 1.0)) {
    return absl::InvalidArgumentError("config.validation_fraction must be in [0, 1)");
  }
  if (!(spec.max_regression >= 0.0) || !std::isfinite(spec.max_regression)) {
    return absl::InvalidArgumentError("config.acceptance.max_regression must be >= 0");
  }
  absl::StatusOr<ServableHandle> base = models_.Get(spec.model, spec.version);
  if (!base.ok()) return base.status();
  namespace fs = std::filesystem;
  const fs::path file =
      fs::path(options_.repository) / base->name / std::to_string(base->version) / kModelFileName;
  std::error_code error;
  if (!fs::is_regular_file(file, error)) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", base->name, " version ", base->version,
                     " has no file in the repository to fine-tune from (", file.string(), ")"));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (shut_down_) return absl::UnavailableError("the server is shutting down");
  const auto active = std::count_if(
      jobs_.begin(), jobs_.end(), [](const auto& job) { return !IsFinal(job->Snapshot().state); });
  if (active >= options_.max_concurrent_jobs) {
    return absl::ResourceExhaustedError(
        absl::StrCat(active, " fine-tune job(s) are already running; this server runs at most ",
                     options_.max_concurrent_jobs, " at once"));
  }
  const std::string id =
      absl::StrFormat("ft-%d-%d", static_cast<int64_t>(UnixSeconds()), next_id_++);
  std::shared_ptr<FineTuneJob> job(new FineTuneJob(this, id, std::move(spec), *base));
  jobs_.push_back(job);
  Forget();
  Notify(std::nullopt, JobState::kReceiving);
  return job;
}

void FineTuneJobManager::Start(const std::shared_ptr<FineTuneJob>& job) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (shut_down_) {
    std::lock_guard<std::mutex> job_lock(job->mutex_);
    job->SetStateLocked(JobState::kCancelled, "the server is shutting down");
    return;
  }
  job->thread_ = std::thread([job] { job->Run(); });
}

void FineTuneJobManager::Forget() {
  // An ended job's thread is joined now, not when its record is forgotten: until joined, an
  // exited thread keeps its stack's resident pages (its static TLS, ~130 KB with LibTorch), so
  // 100 listed jobs held 13 MB. A final state is set by the job thread as its last act (or
  // before it ever trained, when cancelled while receiving), so the join waits for no work.
  int64_t ended = 0;
  for (const auto& job : jobs_) {
    if (!IsFinal(job->Snapshot().state)) continue;
    ++ended;
    if (job->thread_.joinable()) job->thread_.join();
  }
  for (auto it = jobs_.begin(); it != jobs_.end() && ended > options_.finished_jobs_kept;) {
    if (IsFinal((*it)->Snapshot().state)) {
      it = jobs_.erase(it);
      --ended;
    } else {
      ++it;
    }
  }
}

absl::StatusOr<std::shared_ptr<FineTuneJob>> FineTuneJobManager::Find(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& job : jobs_) {
    if (job->id() == id) return job;
  }
  return absl::NotFoundError(absl::StrCat("no fine-tune job '", id, "'"));
}

absl::StatusOr<JobSnapshot> FineTuneJobManager::Get(const std::string& id) const {
  auto job = Find(id);
  if (!job.ok()) return job.status();
  return (*job)->Snapshot();
}

std::vector<JobSnapshot> FineTuneJobManager::List() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<JobSnapshot> list;
  for (const auto& job : jobs_) list.push_back(job->Snapshot());
  return list;
}

absl::StatusOr<JobSnapshot> FineTuneJobManager::Cancel(const std::string& id) {
  auto job = Find(id);
  if (!job.ok()) return job.status();
  std::lock_guard<std::mutex> lock((*job)->mutex_);
  JobSnapshot& status = (*job)->status_;
  if (!IsFinal(status.state)) {
    (*job)->cancel_requested_ = true;
    // A job still receiving or queued has no thread working on it yet: it ends now. Past
    // that the job thread ends it at its next batch (publishing, once begun, completes).
    if (status.state == JobState::kReceiving || status.state == JobState::kQueued) {
      (*job)->SetStateLocked(JobState::kCancelled, "cancelled; nothing was published");
    } else {
      (*job)->status_.message = "cancelling";
      (*job)->Touch();
    }
  }
  return status;
}

absl::StatusOr<JobSnapshot> FineTuneJobManager::WaitForChange(const std::string& id,
                                                              int64_t after_revision,
                                                              double timeout_seconds) const {
  auto job = Find(id);
  if (!job.ok()) return job.status();
  std::unique_lock<std::mutex> lock((*job)->mutex_);
  (*job)->changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                            [&] { return (*job)->status_.revision > after_revision; });
  return (*job)->status_;
}

void FineTuneJobManager::Shutdown() {
  std::deque<std::shared_ptr<FineTuneJob>> jobs;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shut_down_ = true;
    jobs = jobs_;
  }
  for (const auto& job : jobs) {
    Cancel(job->id()).IgnoreError();
  }
  for (const auto& job : jobs) {
    if (job->thread_.joinable()) job->thread_.join();
  }
}

}  // namespace dino::serving
