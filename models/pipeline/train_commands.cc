#include "models/pipeline/train_commands.h"

#include <fcntl.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "models/architectures/architectures.h"
#include "models/architectures/compute_threads.h"
#include "models/architectures/model_file.h"
#include "models/architectures/training_inputs.h"
#include "models/pipeline/commands.h"
#include "models/pipeline/files.h"
#include "models/pipeline/progress.h"
#include "models/pipeline/training_data.h"
#include "models/pipeline/training_state_file.h"
#include "models/training/metrics.h"
#include "models/training/trainer.h"

namespace dino::pipeline {
namespace {

namespace dm = dino::models;
namespace dt = dino::training;

struct CommonFlags {
  int threads = 1;
  std::string dtype = "fp64";
};

torch::Dtype ParseDtype(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp64") return torch::kFloat64;
  throw std::invalid_argument("--dtype must be fp32 or fp64, got '" + name + "'");
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) throw std::runtime_error(std::string(value.status().message()));
  return *std::move(value);
}

void PrintAccuracies(const char* label, const dt::Accuracies& a) {
  std::fprintf(stderr, "%s: L2 accuracy %.4f", label, a.l2);
  if (a.h1) std::fprintf(stderr, ", H1 semi-norm accuracy %.4f", *a.h1);
  if (a.reduced_h1)
    std::fprintf(stderr, ", reduced H1 accuracy %.4f (r = %lld)", *a.reduced_h1,
                 static_cast<long long>(a.reduced_rank));
  if (a.basis_h1) std::fprintf(stderr, "; basis ceiling: H1 %.4f", *a.basis_h1);
  std::fprintf(stderr, " (%lld samples)\n", static_cast<long long>(a.samples));
}

// Runs a subcommand body, turning exceptions into a message and exit code 1.
template <typename Fn>
void Guarded(const char* command, int* exit_code, Fn&& body) {
  try {
    body();
    *exit_code = kExitSuccess;
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::fprintf(stderr, "dino-train %s: error: %s\n", command,
                 what.substr(0, what.find("\nException raised from")).c_str());
    *exit_code = kExitFailure;
  }
}

struct FitFlags {
  CommonFlags common;
  DataSelection data;
  std::string jacobian = "auto";
  std::string architecture = "dipnet";
  std::string bases;
  int64_t input_rank = 0, output_rank = 0;
  std::string hidden = "50,50,50,50,50,50";
  uint64_t init_seed = 0;
  std::string init_model;
  dt::TrainerConfig trainer;
  std::string loss = "h1";
  std::string schedule = "constant";
  std::string out;
  std::string repository, name;
  int64_t version = 0;
  std::string checkpoint;
  bool resume = false;
  std::string metrics_json;
  std::string description;
  std::string progress = "auto";
  std::string test_data;
  std::vector<std::string> command_line;  // argv, for the metadata's "command"
};

// DIR/generate.json of a data directory (what `dino-train generate` made it from), or an empty
// object for data without one.
nlohmann::json ReadGenerateSummary(const std::string& dir) {
  std::ifstream file(std::filesystem::path(dir) / kGenerateSummaryFile);
  if (!file) return nlohmann::json::object();
  nlohmann::json summary = nlohmann::json::parse(file, nullptr, false);
  return summary.is_object() ? summary : nlohmann::json::object();
}

// The training_inputs.json of a reduced-basis model trained on the inputs m of `selection`,
// with their provenance; null (with a note on stderr) for a generic model, which has no
// reduced coordinates, and for too few samples to estimate their covariance.
nlohmann::json SummarizeTrainingInputs(const torch::jit::Module& module, const torch::Tensor& m,
                                       const DataSelection& selection) {
  if (!module.hasattr(dm::kInputBasis)) return nullptr;
  const torch::Tensor basis = module.attr(dm::kInputBasis).toTensor();
  if (m.size(0) <= basis.size(1) + 2) {
    std::fprintf(stderr,
                 "note: no training-input summary (the trust score needs more than r_M + 2 = "
                 "%lld samples, got %lld)\n",
                 static_cast<long long>(basis.size(1) + 2), static_cast<long long>(m.size(0)));
    return nullptr;
  }
  nlohmann::json summary = dm::TrainingInputSummary::Fit(basis, m).ToJson();
  summary["data"] = {{"dir", selection.dir}, {"first", selection.first}, {"count", m.size(0)}};
  const nlohmann::json generated = ReadGenerateSummary(selection.dir);
  for (const char* key : {"problem", "mesh", "seed", "prior"}) {
    if (generated.contains(key)) summary["data"][key] = generated[key];
  }
  return summary;
}

// How the model was made, exactly: the arguments as given and the folder they are relative to.
nlohmann::json CommandRecord(const std::vector<std::string>& command_line) {
  std::error_code error;
  const std::filesystem::path cwd = std::filesystem::current_path(error);
  return {{"argv", command_line}, {"cwd", error ? "" : cwd.string()}};
}

// The model a fresh run starts from and its metadata: --init-model's, or a new network of
// --architecture on the data (and --bases).
struct StartingModel {
  torch::jit::Module module;
  nlohmann::json metadata;
};

StartingModel BuildStartingModel(const FitFlags& f, const dt::Dataset& data, torch::Dtype dtype) {
  StartingModel start;
  torch::jit::Module& module = start.module;
  nlohmann::json& metadata = start.metadata;
  if (!f.init_model.empty()) {
    // Training continues from a model file: its architecture, bases and weights (and, for a
    // DIPNet, its whitening) stay; its training record goes under "initial_model", which
    // keeps that model's own "initial_model": a model trained in stages records every stage.
    dm::LoadedModelFile file = dm::LoadModelFile(f.init_model);
    for (const auto& parameter : file.module.parameters()) {
      if (parameter.scalar_type() != dtype) {
        throw std::invalid_argument("--dtype " + f.common.dtype +
                                    " does not match the weights of "
                                    "--init-model " +
                                    f.init_model);
      }
    }
    module = file.module;
    metadata = file.metadata;
    nlohmann::json initial = {{"file", f.init_model}};
    for (const char* key :
         {"training", "metrics", "data", "description", "command", "initial_model"}) {
      if (metadata.contains(key)) {
        initial[key] = metadata[key];
        metadata.erase(key);
      }
    }
    if (initial.contains("training")) initial["training"].erase("history");
    metadata["initial_model"] = std::move(initial);
  } else {
    metadata = {{"architecture", f.architecture},
                {"dtype", f.common.dtype},
                {"input_dim", data.input_dim()},
                {"output_dim", data.output_dim()},
                {"hidden_widths", dm::ParseHiddenWidths(f.hidden)},
                {"seed", f.init_seed}};
  }
  if (!f.init_model.empty()) {
    // Built already.
  } else if (f.architecture == dm::kDipnetArchitecture) {
    const std::string bases_path =
        f.bases.empty() ? (std::filesystem::path(f.data.dir) / "bases.npz").string() : f.bases;
    BasesFile bases = ValueOrThrow(LoadBases(bases_path, f.input_rank, f.output_rank));
    dm::DipnetSpec spec;
    spec.input_basis = bases.input_basis;
    spec.output_basis = bases.output_basis;
    spec.output_shift = bases.output_shift;
    spec.hidden_widths = dm::ParseHiddenWidths(f.hidden);
    spec.dtype = dtype;
    spec.seed = f.init_seed;
    module = dm::BuildDipnet(spec);
    metadata["input_rank"] = bases.input_basis.size(1);
    metadata["output_rank"] = bases.output_basis.size(1);
    metadata["bases_file"] = bases_path;
  } else if (f.architecture == dm::kGenericArchitecture) {
    dm::GenericDenseSpec spec;
    spec.input_dim = data.input_dim();
    spec.output_dim = data.output_dim();
    spec.hidden_widths = dm::ParseHiddenWidths(f.hidden);
    spec.dtype = dtype;
    spec.seed = f.init_seed;
    module = dm::BuildGenericDense(spec);
  } else {
    throw std::invalid_argument("--architecture must be dipnet or generic");
  }
  metadata["parameters"] = dm::CountParameters(module);
  if (!f.description.empty()) metadata["description"] = f.description;
  // The problem the data come from, so that the server serves its prior for the model
  // (docs/model-contract.md, "problem"); data without generate.json name none.
  if (const nlohmann::json summary = ReadGenerateSummary(f.data.dir);
      summary.contains("problem") && summary["problem"].is_string() && summary.contains("mesh") &&
      summary["mesh"].is_number_integer()) {
    metadata["problem"] = {{"name", summary["problem"]}, {"mesh_cells", summary["mesh"]}};
  }
  return start;
}

void RunFit(const FitFlags& f) {
  dm::ConfigureComputeThreads(f.common.threads, 1);
  torch::manual_seed(f.trainer.seed);
  const torch::Dtype dtype = ParseDtype(f.common.dtype);
  DataSelection selection = f.data;
  selection.jacobian = ValueOrThrow(ParseJacobianFiles(f.jacobian));
  selection.dtype = dtype;
  dt::Dataset data = ValueOrThrow(LoadDataset(selection));

  dt::TrainerConfig config = f.trainer;
  config.loss.jacobian_loss = dt::ParseJacobianLoss(f.loss);
  if (f.schedule == "constant") {
    config.schedule = dt::LearningRateSchedule::kConstant;
  } else if (f.schedule == "exponential") {
    config.schedule = dt::LearningRateSchedule::kExponential;
  } else if (f.schedule == "cosine") {
    config.schedule = dt::LearningRateSchedule::kCosine;
  } else {
    throw std::invalid_argument("--schedule must be constant, exponential or cosine");
  }
  config.Validate();

  // What a resumed run must match: the settings and the training data.
  const nlohmann::json run = {{"trainer", config.ToJson()},
                              {"data", f.data.dir},
                              {"first", f.data.first},
                              {"train_samples", data.size()},
                              {"dtype", f.common.dtype}};
  std::optional<TrainingStateFile> resume;
  torch::jit::Module module;
  nlohmann::json metadata;
  if (f.resume) {
    // The model comes from the checkpoint, its metadata from the run's state: nothing is
    // built or loaded for a fresh start.
    if (f.checkpoint.empty()) {
      throw std::invalid_argument(
          "--resume needs --checkpoint: the model file of the run to continue");
    }
    const std::string state_path = TrainingStatePath(f.checkpoint);
    resume = ValueOrThrow(LoadTrainingStateFile(state_path));
    if (resume->run != run) {
      throw std::invalid_argument(state_path + " is of a run with other settings or data; " +
                                  "what differs (JSON patch from it to this run): " +
                                  nlohmann::json::diff(resume->run, run).dump());
    }
    dm::LoadedModelFile checkpoint = dm::LoadModelFile(f.checkpoint);
    const nlohmann::json epoch = checkpoint.metadata.value("checkpoint_epoch", nlohmann::json());
    if (epoch != resume->state.epochs_done) {
      throw std::invalid_argument(
          "--checkpoint " + f.checkpoint + " is of epoch " + epoch.dump() + ", its state " +
          state_path + " of epoch " + std::to_string(resume->state.epochs_done) +
          " (the run ended between the two writes, or in its L-BFGS finish): they do not resume");
    }
    module = checkpoint.module;
    metadata = resume->model_metadata;  // with the interrupted run's "command"
    metadata["resume_command"] = CommandRecord(f.command_line);
    std::fprintf(stderr, "resuming after epoch %lld of %lld from %s\n",
                 static_cast<long long>(resume->state.epochs_done),
                 static_cast<long long>(config.epochs), f.checkpoint.c_str());
  } else {
    StartingModel start = BuildStartingModel(f, data, dtype);
    module = std::move(start.module);
    metadata = std::move(start.metadata);
    metadata["command"] = CommandRecord(f.command_line);
  }

  std::string out = f.out;
  if (!f.repository.empty()) {
    if (f.name.empty()) throw std::invalid_argument("--repository needs --name");
    if (f.version > 0) {
      out = (std::filesystem::path(f.repository) / f.name / std::to_string(f.version) /
             dm::kRepositoryModelFile)
                .string();
    }
  } else if (out.empty()) {
    throw std::invalid_argument("give --out or --repository and --name");
  }

  const ProgressStyle style = f.progress == "none"    ? ProgressStyle::kNone
                              : f.progress == "lines" ? ProgressStyle::kLines
                              : f.progress == "bar"   ? ProgressStyle::kBar
                                                      : ProgressStyle::kAuto;
  std::unique_ptr<ProgressReporter> progress;
  int64_t total_batches = 0;
  dt::TrainerCallbacks callbacks;
  callbacks.on_batch = [&](const dt::BatchProgress& p) {
    if (!progress) {
      total_batches = p.epochs * p.batches;
      progress = std::make_unique<ProgressReporter>("fit", "batches", total_batches, 0, style);
    }
    progress->Update((p.epoch - 1) * p.batches + p.batch);
  };
  callbacks.on_epoch = [&](const dt::EpochReport& r) {
    // A SIGINT/SIGTERM ends training after this epoch (or L-BFGS round); the model is written
    // as it is, with stopped_early in its metadata.
    const bool go_on = !ScopedStopRequest::requested();
    if (style == ProgressStyle::kNone) return go_on;
    std::string line =
        r.optimizer == "lbfgs"
            ? absl::StrCat("L-BFGS ", r.lbfgs_iterations, " iterations (", r.function_evaluations,
                           " evaluations) loss ", r.train.total)
            : absl::StrCat("epoch ", r.epoch, "/", r.epochs, " loss ", r.train.total);
    absl::StrAppend(&line, " (L2 ", r.train.l2, ", H1 ", r.train.jacobian, ")");
    if (r.validation_accuracy) {
      absl::StrAppend(&line, " | validation L2 acc ", r.validation_accuracy->l2);
      if (r.validation_accuracy->h1)
        absl::StrAppend(&line, ", H1 acc ", *r.validation_accuracy->h1);
    }
    absl::StrAppend(&line, " | ", static_cast<int64_t>(r.samples_per_second), " samples/s, ETA ",
                    FormatDuration(r.eta_seconds));
    if (progress && progress->style() == ProgressStyle::kBar) std::fputc('\n', stderr);
    std::fprintf(stderr, "%s\n", line.c_str());
    if (!go_on) std::fprintf(stderr, "stopping on request: writing the model as it is\n");
    return go_on;
  };
  if (!f.checkpoint.empty()) {
    callbacks.on_checkpoint = [&](const torch::jit::Module& m, const dt::EpochReport& r,
                                  const nlohmann::json& training) {
      nlohmann::json checkpoint = metadata;
      checkpoint.update(training);
      checkpoint["checkpoint_epoch"] = r.epoch;
      dm::SaveModelFile(m, checkpoint, f.checkpoint);
    };
    // Written before the model file of the same epoch; --resume checks that the two match.
    callbacks.on_training_state = [&](const dt::TrainingState& state) {
      const absl::Status written = SaveTrainingStateFile(TrainingStateFile{state, run, metadata},
                                                         TrainingStatePath(f.checkpoint));
      if (!written.ok()) throw std::runtime_error(std::string(written.message()));
    };
  }

  dt::TrainingResult result;
  {
    ScopedStopRequest stop;
    result = dt::Train(module, data, config, callbacks, resume ? &resume->state : nullptr);
  }
  if (progress) progress->Finish(total_batches);
  metadata.update(result.metadata);
  metadata["trained"] = true;
  std::optional<dt::Accuracies> test_accuracy;
  if (!f.test_data.empty()) {
    // An independent test set (e.g. another generate seed): its accuracies travel in the
    // model's metadata with the data's provenance, next to the training metrics.
    DataSelection test_selection;
    test_selection.dir = f.test_data;
    test_selection.jacobian = selection.jacobian;
    test_selection.dtype = dtype;
    const dt::Dataset test = ValueOrThrow(LoadDataset(test_selection));
    test_accuracy = dt::EvaluateAccuracies(module, test, config.metrics);
    nlohmann::json test_metrics = test_accuracy->ToJson();
    test_metrics["data"] = {{"dir", f.test_data}};
    const nlohmann::json generated = ReadGenerateSummary(f.test_data);
    for (const char* key : {"problem", "mesh", "seed", "samples", "jacobian", "rank"}) {
      if (generated.contains(key)) test_metrics["data"][key] = generated[key];
    }
    metadata["metrics"]["test"] = std::move(test_metrics);
  }
  const nlohmann::json training_inputs = SummarizeTrainingInputs(module, data.m, f.data);
  if (out.empty()) {  // --repository without --version: the next free version.
    const int64_t version =
        dm::PublishModelVersion(f.repository, f.name, module, metadata, {}, training_inputs);
    out = (std::filesystem::path(f.repository) / f.name / std::to_string(version) /
           dm::kRepositoryModelFile)
              .string();
  } else {
    dm::SaveModelFile(module, metadata, out, {}, training_inputs);
  }
  PrintAccuracies("train", result.train_accuracy);
  if (result.validation_accuracy) PrintAccuracies("validation", *result.validation_accuracy);
  if (test_accuracy) PrintAccuracies("test", *test_accuracy);
  std::fprintf(stderr, "wrote %s (%.1f s)\n", out.c_str(), result.seconds);
  if (!f.metrics_json.empty()) {
    nlohmann::json report = metadata;
    report["model_file"] = out;
    report["history"] = nlohmann::json::array();
    for (const auto& epoch : result.history) report["history"].push_back(epoch.ToJson());
    const absl::Status written = WriteFileAtomically(f.metrics_json, report.dump(2));
    if (!written.ok()) throw std::runtime_error(std::string(written.message()));
  }
}

struct EvaluateFlags {
  CommonFlags common;
  DataSelection data;
  std::string jacobian = "auto";
  std::string model;
  int64_t reduced_rank = 0;
  std::string json;
};

void RunEvaluate(const EvaluateFlags& f) {
  dm::ConfigureComputeThreads(f.common.threads, 1);
  dm::LoadedModelFile file = dm::LoadModelFile(f.model);
  DataSelection selection = f.data;
  selection.jacobian = ValueOrThrow(ParseJacobianFiles(f.jacobian));
  selection.dtype = torch::kFloat64;
  dt::Dataset data = ValueOrThrow(LoadDataset(selection));
  dt::MetricsOptions options;
  options.reduced_rank = f.reduced_rank;
  const dt::Accuracies accuracies = dt::EvaluateAccuracies(file.module, data, options);
  PrintAccuracies(f.model.c_str(), accuracies);
  nlohmann::json report = accuracies.ToJson();
  report["model_file"] = f.model;
  report["data"] = {{"dir", f.data.dir}, {"first", f.data.first}, {"count", data.size()}};
  std::cout << report.dump(2) << "\n";
  if (!f.json.empty()) {
    const absl::Status written = WriteFileAtomically(f.json, report.dump(2));
    if (!written.ok()) throw std::runtime_error(std::string(written.message()));
  }
}

struct TrustedSetFlags {
  DataSelection data;
  CommonFlags common;
  std::string jacobian = "auto";
  std::string repository;
  std::string name;
};

// Puts `staging` in the place of `target` so that a reader sees the old directory or the new
// one, never neither: an atomic exchange when `target` exists (renameat2 RENAME_EXCHANGE),
// then the old one (now at `staging`) is removed.
void ReplaceDirectory(const std::filesystem::path& staging, const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  if (!fs::exists(target)) {
    fs::rename(staging, target);
    return;
  }
  if (renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
    throw std::runtime_error("cannot exchange " + staging.string() + " with " + target.string() +
                             ": " + std::strerror(errno));
  }
  fs::remove_all(staging);
}

void RunTrustedSet(const TrustedSetFlags& f) {
  namespace fs = std::filesystem;
  const fs::path model_dir = fs::path(f.repository) / f.name;
  if (f.name.empty() || !fs::is_directory(model_dir)) {
    throw std::runtime_error("--name: no model folder " + model_dir.string());
  }
  DataSelection selection = f.data;
  selection.jacobian = ValueOrThrow(ParseJacobianFiles(f.jacobian));
  selection.dtype = torch::kFloat64;
  const dt::Dataset data = ValueOrThrow(LoadDataset(selection));
  const fs::path target = model_dir / dm::kTrustedValidationDir;
  const fs::path staging = model_dir / (std::string(".") + dm::kTrustedValidationDir + ".new");
  fs::remove_all(staging);
  const absl::Status saved = SaveDataset(data, staging.string());
  if (!saved.ok()) throw std::runtime_error(std::string(saved.message()));
  ReplaceDirectory(staging, target);
  const char* form = data.jacobian.defined() ? "full Jacobians"
                     : data.svd_u.defined()  ? "Jacobian SVDs"
                                             : "no Jacobians";
  std::cout << "wrote " << target.string() << ": " << data.size() << " samples (samples "
            << f.data.first << "..." << f.data.first + data.size() - 1 << " of " << f.data.dir
            << "), " << form << "\n";
}

struct TrainingInputsFlags {
  DataSelection data;
  CommonFlags common;
  std::string model;
};

// Adds the training-input summary to an existing model file: the module is saved back as it
// was loaded (same weights and buffers), with the same metadata.
void RunTrainingInputs(const TrainingInputsFlags& f) {
  dm::ConfigureComputeThreads(f.common.threads, 1);
  dm::LoadedModelFile file = dm::LoadModelFile(f.model);
  if (!file.module.hasattr(dm::kInputBasis)) {
    throw std::invalid_argument("--model: " + f.model +
                                " has no input_basis; the trust score needs a reduced-basis model");
  }
  DataSelection selection = f.data;
  selection.jacobian = JacobianFiles::kNone;
  selection.dtype = torch::kFloat64;
  const dt::Dataset data = ValueOrThrow(LoadDataset(selection));
  const int64_t input_dim = file.module.attr(dm::kInputBasis).toTensor().size(0);
  if (data.input_dim() != input_dim) {
    throw std::invalid_argument("--data: samples have d_M = " + std::to_string(data.input_dim()) +
                                ", the model's input basis " + std::to_string(input_dim));
  }
  const nlohmann::json summary = SummarizeTrainingInputs(file.module, data.m, f.data);
  if (summary.is_null()) throw std::invalid_argument("--count: too few samples");
  dm::SaveModelFile(file.module, file.metadata, f.model, {}, summary);
  std::cout << "wrote " << f.model << ": training inputs of " << data.size() << " samples, "
            << "threshold " << summary["threshold"] << ", distance scale "
            << summary["distance_scale"] << ", residual ratio mean " << summary["residual_mean"]
            << "\n";
}

// `jacobian` null: the command reads no Jacobians and has no --jacobian.
void AddDataOptions(CLI::App* cmd, DataSelection* data, std::string* jacobian,
                    CommonFlags* common) {
  cmd->add_option("--data", data->dir, "Data directory (mq_data.npz, Jsvd_data.npz, …)")
      ->required();
  cmd->add_option("--first", data->first, "First sample used")->check(CLI::NonNegativeNumber);
  cmd->add_option("--count", data->count, "Samples used from --first; -1: all the rest");
  if (jacobian != nullptr) {
    cmd->add_option("--jacobian", *jacobian,
                    "Jacobian data: auto (J_data.npz, else Jsvd_data.npz), none, svd or full");
  }
  cmd->add_option("--threads", common->threads,
                  "LibTorch threads (OpenBLAS gets 1: the two pools multiply)")
      ->check(CLI::PositiveNumber);
}

}  // namespace

CLI::App* AddFitCommand(CLI::App& app, int* exit_code, std::vector<std::string> command_line) {
  auto flags = std::make_shared<FitFlags>();
  FitFlags& f = *flags;
  f.command_line = std::move(command_line);
  CLI::App* cmd = app.add_subcommand(
      "fit", "Train a DINO (DIPNet or generic network) on a data directory (paper §3.2)");
  AddDataOptions(cmd, &f.data, &f.jacobian, &f.common);
  cmd->add_option("--architecture", f.architecture, "dipnet or generic");
  cmd->add_option("--bases", f.bases, "bases.npz of a DIPNet (default: <data>/bases.npz)");
  cmd->add_option("--input-rank", f.input_rank, "r_M: leading input-basis columns (0: all)");
  cmd->add_option("--output-rank", f.output_rank, "r_Q: leading output-basis columns (0: all)");
  cmd->add_option("--hidden", f.hidden, "Hidden layer widths");
  cmd->add_option("--dtype", f.common.dtype, "fp32 or fp64");
  cmd->add_option("--init-seed", f.init_seed, "Seed of the weight initialisation");
  cmd->add_option("--init-model", f.init_model,
                  "Start from this model file's architecture, bases and weights instead of a new "
                  "network (--architecture, --bases, --hidden, ranks and --init-seed are then "
                  "ignored)");
  cmd->add_option("--loss", f.loss, "l2, h1, reduced_h1, reduced_h1_ms or sketched_h1");
  cmd->add_option("--l2-weight", f.trainer.loss.l2_weight, "Weight of the L2 term");
  cmd->add_option("--h1-weight", f.trainer.loss.h1_weight, "Weight of the Jacobian term");
  cmd->add_option("--svd-rank", f.trainer.loss.svd_rank, "r of the reduced losses (0: all)");
  cmd->add_option("--subsample", f.trainer.loss.subsample_size, "k of reduced_h1_ms");
  cmd->add_option("--sketch-rank", f.trainer.loss.sketch_rank, "s of sketched_h1");
  cmd->add_option("--epochs", f.trainer.epochs, "Epochs");
  cmd->add_option("--batch-size", f.trainer.batch_size, "Mini-batch size");
  cmd->add_option("--learning-rate", f.trainer.learning_rate, "Adam learning rate");
  cmd->add_option("--schedule", f.schedule, "constant, exponential or cosine");
  cmd->add_option("--decay-rate", f.trainer.decay_rate, "Per-epoch factor (exponential)");
  cmd->add_option("--final-learning-rate", f.trainer.final_learning_rate, "End of cosine");
  cmd->add_option("--lbfgs-iterations", f.trainer.lbfgs_iterations,
                  "After the Adam epochs: full-batch L-BFGS iterations on the training loss "
                  "(0: none; --epochs 0 then runs L-BFGS alone)");
  cmd->add_option("--lbfgs-history", f.trainer.lbfgs_history, "L-BFGS history size");
  cmd->add_option("--lbfgs-report-interval", f.trainer.lbfgs_report_interval,
                  "L-BFGS iterations per reported round (validation, checkpoint)");
  cmd->add_option("--validation", f.trainer.validation_size, "Samples held out for validation");
  cmd->add_option("--evaluation-interval", f.trainer.evaluation_interval,
                  "Validation accuracies every this many epochs (0: at the end)");
  cmd->add_option("--seed", f.trainer.seed, "Seed of the split, shuffling and random losses");
  cmd->add_option("--out", f.out, "Model file to write");
  cmd->add_option("--repository", f.repository, "Or: a model repository to publish into");
  cmd->add_option("--name", f.name, "Model name in --repository");
  cmd->add_option("--version", f.version, "Version in --repository (0: the next free one)");
  cmd->add_option("--checkpoint", f.checkpoint,
                  "Model file rewritten after every epoch, with CHECKPOINT.state (Adam's moments, "
                  "the random streams, the epoch) beside it for --resume");
  cmd->add_flag("--resume", f.resume,
                "Continue the run that wrote --checkpoint: the same command (settings, data) "
                "plus --resume goes on after the checkpoint's epoch and ends with the weights "
                "the uninterrupted run would have; the model comes from the checkpoint");
  cmd->add_option("--metrics-json", f.metrics_json, "Training report (JSON)");
  cmd->add_option("--description", f.description, "Free text stored in the metadata");
  cmd->add_option("--progress", f.progress, "auto, bar, lines or none");
  cmd->add_option("--test-data", f.test_data,
                  "Independent test data directory: its accuracies go into the model's "
                  "metadata (metrics.test, with the data's provenance)");
  cmd->callback([flags, exit_code] { Guarded("fit", exit_code, [&] { RunFit(*flags); }); });
  return cmd;
}

CLI::App* AddEvaluateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<EvaluateFlags>();
  EvaluateFlags& f = *flags;
  CLI::App* cmd = app.add_subcommand(
      "evaluate", "L2, H1 semi-norm and reduced H1 accuracy (paper 3.6a-c) of a model file");
  AddDataOptions(cmd, &f.data, &f.jacobian, &f.common);
  cmd->add_option("--model", f.model, "Model file (model.pt)")->required();
  cmd->add_option("--reduced-rank", f.reduced_rank, "r of the reduced H1 accuracy (0: all)");
  cmd->add_option("--json", f.json, "Also write the accuracies to this JSON file");
  cmd->callback(
      [flags, exit_code] { Guarded("evaluate", exit_code, [&] { RunEvaluate(*flags); }); });
  return cmd;
}

CLI::App* AddTrainingInputsCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<TrainingInputsFlags>();
  TrainingInputsFlags& f = *flags;
  CLI::App* cmd = app.add_subcommand(
      "training-inputs",
      "Add the summary of a reduced-basis model's training inputs (what the server's per-request "
      "trust score compares inputs with) to an existing model file, from the samples it was "
      "trained on (--data, --first, --count); weights and metadata stay as they are. fit "
      "writes it itself");
  AddDataOptions(cmd, &f.data, /*jacobian=*/nullptr, &f.common);
  cmd->add_option("--model", f.model, "Model file (model.pt), rewritten atomically")->required();
  cmd->callback([flags, exit_code] {
    Guarded("training-inputs", exit_code, [&] { RunTrainingInputs(*flags); });
  });
  return cmd;
}

CLI::App* AddTrustedSetCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<TrustedSetFlags>();
  TrustedSetFlags& f = *flags;
  CLI::App* cmd = app.add_subcommand(
      "trusted-set",
      "Write a model's trusted validation set into a model repository "
      "(<repository>/<name>/trusted_validation/): every fine-tune gate of the server also "
      "judges new weights on it, so clients cannot publish a model that is worse on it");
  AddDataOptions(cmd, &f.data, &f.jacobian, &f.common);
  cmd->add_option("--repository", f.repository, "Model repository")->required();
  cmd->add_option("--name", f.name, "Model name (its folder in --repository)")->required();
  cmd->callback(
      [flags, exit_code] { Guarded("trusted-set", exit_code, [&] { RunTrustedSet(*flags); }); });
  return cmd;
}

}  // namespace dino::pipeline
