// dino: command-line client for a dino-serve server.
//
// Exit status: 0 on success (for `health`: only when the server reports SERVING; for
// `finetune` and `job --watch`: only when the job SUCCEEDED), 1 when the server call fails, the
// server is not serving or the job did not succeed (REJECTED, FAILED, CANCELLED), 2 for usage
// and input errors (bad flags, unreadable input or token files, malformed JSON or data,
// unwritable --out).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cli/cli_support.h"
#include "client/cli/training_support.h"
#include "client/dino_client.h"
#include "client/training_client.h"
#include "models/io/npy.h"

namespace {

using dino::NpyArray;
using dino::NpyDType;
using dino::cli::ArrayJson;
using dino::cli::JsonString;
using dino::cli::StatusText;
using dino::client::DinoClient;
using dino::client::TrainingClient;
namespace v1 = dino::v1;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct ConnectionFlags {
  std::string server = "localhost:50051";
  double timeout_s = 30;
  int max_message_mb = 1024;
  bool wait = false;
  std::string token_file;
  dino::client::TlsClientFlags tls;
};

struct ModelFlags {
  std::string model;
  int64_t version = 0;
  std::string dtype;  // "", "fp32" or "fp64"
};

struct OutputFlags {
  std::string out;
  int64_t max_print = 1000;
};

// `dino finetune`'s data and FineTuneConfig flags.
struct FineTuneFlags {
  std::string data, validation_data;
  std::string jacobian = "auto";
  std::string loss, gate_metric, description;
  int64_t epochs = 0, batch_size = 0, svd_rank = 0, subsample_size = 0, sketch_rank = 0;
  double learning_rate = 0, l2_weight = 0, h1_weight = 0, validation_fraction = 0;
  double max_regression = 0;
  uint64_t seed = 0;
  int64_t count = -1;
  int64_t chunk = 0;
  bool no_watch = false;
};

// Every flag of every subcommand, filled by CLI11.
struct Flags {
  ConnectionFlags conn;
  ModelFlags model;
  OutputFlags output;
  bool json = false;
  std::string m, directions, cotangents, output_basis, input_basis;
  bool return_q = false;
  std::string service;
  FineTuneFlags finetune;
  std::string job_id;
  bool watch = false;
};

void AddConnectionFlags(CLI::App* cmd, ConnectionFlags* c) {
  cmd->add_option("--server", c->server, "Server address (host:port or any gRPC target)")
      ->capture_default_str();
  cmd->add_option("--timeout", c->timeout_s, "Deadline of the call, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max_message_mb", c->max_message_mb, "Largest message sent or received, in MiB")
      ->check(CLI::Range(1, 2047))
      ->capture_default_str();
  cmd->add_flag("--wait", c->wait,
                "If the server is not reachable yet, keep trying until --timeout instead of "
                "failing at once");
  cmd->add_option("--token_file", c->token_file,
                  "File holding a bearer token, sent as 'authorization: Bearer <token>' on every "
                  "call (surrounding whitespace is ignored). Needed for the training and admin "
                  "commands when the server runs with --admin_token_file");
  cmd->add_flag("--tls", c->tls.tls,
                "Connect with TLS (a server run with --tls_cert), checking its certificate "
                "against --tls_ca or the system's roots; implied by the other --tls_* flags");
  cmd->add_option("--tls_ca", c->tls.files.ca_path,
                  "PEM file of the CA(s) that signed the server's "
                  "certificate (default: the system's roots)");
  cmd->add_option("--tls_cert", c->tls.files.cert_path,
                  "PEM client certificate for mutual TLS (a server run with --tls_client_ca); "
                  "needs --tls_key");
  cmd->add_option("--tls_key", c->tls.files.key_path, "PEM private key of --tls_cert");
  cmd->add_option("--tls_server_name", c->tls.server_name,
                  "Name checked against the server's certificate instead of --server's host");
}

// An integer >= 1 (CLI::PositiveNumber's message prints the range's upper bound in full).
const CLI::Validator kAtLeastOne(
    [](std::string& value) -> std::string {
      int64_t v = 0;
      if (absl::SimpleAtoi(value, &v) && v >= 1) return "";
      return "must be an integer >= 1, got " + value;
    },
    "INT>=1", "AtLeastOne");

void AddModelFlags(CLI::App* cmd, ModelFlags* m, bool with_dtype) {
  cmd->add_option("--model", m->model, "Model name (see `dino models`)")->required();
  cmd->add_option("--version", m->version, "Model version; 0 = the model's default (highest)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  if (with_dtype) {
    cmd->add_option("--dtype", m->dtype, "Dtype of returned arrays; default: the model's own dtype")
        ->check(CLI::IsMember({"fp32", "fp64"}));
  }
}

void AddOutputFlags(CLI::App* cmd, OutputFlags* o, absl::string_view primary) {
  cmd->add_option("--out", o->out,
                  absl::StrCat("Save results: FILE.npy saves ", primary,
                               ", FILE.npz saves every returned array by name. The JSON on "
                               "stdout then shows a summary of saved arrays"));
  cmd->add_option("--max_print", o->max_print,
                  "Print arrays with at most this many elements in full on stdout, larger "
                  "ones as shape + summary statistics")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

void AddArrayOption(CLI::App* cmd, const std::string& names, std::string* value,
                    const std::string& what) {
  cmd->add_option(names, *value,
                  what +
                      ": inline JSON such as '[0.1, 0.2]', or FILE.npy, FILE.npz:NAME, "
                      "FILE.json")
      ->required();
}

// Reports a failure on stderr as "dino <command>: <what>" and returns the exit code.
int Fail(const std::string& command, const std::string& what, int code) {
  std::cerr << "dino " << command << ": " << what << "\n";
  return code;
}

int RpcFailed(const std::string& command, absl::string_view rpc, const absl::Status& status) {
  return Fail(command, absl::StrCat(rpc, " failed: ", StatusText(status)), kExitFailure);
}

absl::StatusOr<DinoClient> MakeClient(const ConnectionFlags& c) {
  dino::client::ClientOptions options;
  if (!c.token_file.empty()) {
    absl::StatusOr<std::string> token = dino::cli::ReadTokenFile(c.token_file);
    if (!token.ok()) return token.status();
    options.bearer_token = *std::move(token);
  }
  if (absl::Status status = dino::client::ApplyTlsFlags(c.tls, &options); !status.ok()) {
    return status;
  }
  options.target = c.server;
  options.timeout = absl::Seconds(c.timeout_s);
  options.max_message_bytes = c.max_message_mb * (1 << 20);
  options.wait_for_ready = c.wait;
  return DinoClient::Connect(options);
}

dino::client::ModelRef Ref(const ModelFlags& m) { return {m.model, m.version}; }

dino::client::CallOptions Call(const ModelFlags& m) {
  dino::client::CallOptions call;
  if (m.dtype == "fp32") call.output_dtype = NpyDType::kFloat32;
  if (m.dtype == "fp64") call.output_dtype = NpyDType::kFloat64;
  return call;
}

// Writes --out (if given) and prints the result object:
//   {"model": .., "version": .., "<name>": <ArrayJson>, ...}
// `arrays` lists the primary result first.
int EmitArrays(const std::string& command, const ModelFlags& model, int64_t version,
               const OutputFlags& output,
               const std::vector<std::pair<std::string, const NpyArray*>>& arrays) {
  std::vector<std::string> files(arrays.size());
  if (!output.out.empty()) {
    if (absl::Status s = dino::cli::SaveArrays(output.out, arrays); !s.ok()) {
      return Fail(command, StatusText(s), kExitUsage);
    }
    const bool all = dino::cli::EndsWith(output.out, ".npz");
    for (size_t i = 0; i < arrays.size(); ++i) {
      if (all || i == 0) files[i] = output.out;
    }
  }
  std::string text =
      absl::StrCat("{\n  \"model\": ", JsonString(model.model), ",\n  \"version\": ", version);
  for (size_t i = 0; i < arrays.size(); ++i) {
    absl::StrAppend(&text, ",\n  ", JsonString(arrays[i].first), ": ",
                    ArrayJson(*arrays[i].second, output.max_print, files[i]));
  }
  text += "\n}\n";
  std::fwrite(text.data(), 1, text.size(), stdout);
  return kExitOk;
}

// Loads one array flag, or reports the problem (exit code 2).
bool LoadArray(const std::string& command, const std::string& value, const std::string& flag,
               NpyArray* out, int* exit_code) {
  absl::StatusOr<NpyArray> array = dino::cli::LoadArrayArgument(value, flag);
  if (!array.ok()) {
    *exit_code = Fail(command, std::string(array.status().message()), kExitUsage);
    return false;
  }
  *out = *std::move(array);
  return true;
}

// ---------------------------------------------------------------------------------------
// Subcommands

int RunModels(const Flags& f, const DinoClient& client) {
  absl::StatusOr<std::vector<dino::client::ModelSummary>> models = client.ListModels();
  if (!models.ok()) return RpcFailed("models", "ListModels", models.status());
  if (f.json) {
    nlohmann::json out = {{"models", nlohmann::json::array()}};
    for (const auto& m : *models) {
      out["models"].push_back(
          {{"name", m.name}, {"versions", m.versions}, {"default_version", m.default_version}});
    }
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  if (models->empty()) {
    std::cout << "(no models loaded)\n";
    return kExitOk;
  }
  size_t width = 4;
  for (const auto& m : *models) width = std::max(width, m.name.size());
  std::printf("%-*s  %-7s  %s\n", static_cast<int>(width), "NAME", "DEFAULT", "VERSIONS");
  for (const auto& m : *models) {
    std::printf("%-*s  %-7lld  %s\n", static_cast<int>(width), m.name.c_str(),
                static_cast<long long>(m.default_version), absl::StrJoin(m.versions, ", ").c_str());
  }
  return kExitOk;
}

int RunInfo(const Flags& f, const DinoClient& client) {
  absl::StatusOr<dino::client::ModelInfo> info = client.GetModelInfo(Ref(f.model));
  if (!info.ok()) return RpcFailed("info", "GetModelInfo", info.status());
  const char* dtype = info->dtype == NpyDType::kFloat32 ? "fp32" : "fp64";
  nlohmann::json metadata = nlohmann::json::parse(info->metadata_json, nullptr, false);
  // Shown verbatim (as a string) when the server's metadata is not valid JSON.
  if (metadata.is_discarded()) metadata = info->metadata_json;
  if (f.json) {
    nlohmann::json out = {{"name", info->name},
                          {"version", info->version},
                          {"versions", info->versions},
                          {"input_dim", info->input_dim},
                          {"output_dim", info->output_dim},
                          {"has_reduced_bases", info->has_reduced_bases},
                          {"input_rank", info->input_rank},
                          {"output_rank", info->output_rank},
                          {"architecture", info->architecture},
                          {"dtype", dtype},
                          {"metadata", metadata}};
    std::cout << out.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "name:          " << info->name << "\n"
            << "version:       " << info->version
            << " (loaded: " << absl::StrJoin(info->versions, ", ") << ")\n"
            << "architecture:  " << info->architecture << "\n"
            << "dtype:         " << dtype << "\n"
            << "input_dim:     " << info->input_dim << " (d_M)\n"
            << "output_dim:    " << info->output_dim << " (d_Q)\n";
  if (info->has_reduced_bases) {
    std::cout << "reduced bases: r_M = " << info->input_rank << ", r_Q = " << info->output_rank
              << "\n";
  } else {
    std::cout << "reduced bases: none\n";
  }
  std::cout << "metadata:      " << metadata.dump(2) << "\n";
  return kExitOk;
}

int RunBases(const Flags& f, const DinoClient& client) {
  if (!f.output.out.empty() && !dino::cli::EndsWith(f.output.out, ".npz")) {
    return Fail("bases", "--out must be a .npz file (bases returns three arrays)", kExitUsage);
  }
  absl::StatusOr<dino::client::Bases> bases = client.GetBases(Ref(f.model), Call(f.model));
  if (!bases.ok()) return RpcFailed("bases", "GetBases", bases.status());
  return EmitArrays("bases", f.model, bases->version, f.output,
                    {{"input_basis", &bases->input_basis},
                     {"output_basis", &bases->output_basis},
                     {"output_shift", &bases->output_shift}});
}

int RunEval(const Flags& f, const DinoClient& client) {
  NpyArray m;
  int code;
  if (!LoadArray("eval", f.m, "--m", &m, &code)) return code;
  absl::StatusOr<dino::client::EvaluateResult> r = client.Evaluate(Ref(f.model), m, Call(f.model));
  if (!r.ok()) return RpcFailed("eval", "Evaluate", r.status());
  return EmitArrays("eval", f.model, r->version, f.output, {{"q", &r->q}});
}

int RunJvp(const Flags& f, const DinoClient& client) {
  NpyArray m, v;
  int code;
  if (!LoadArray("jvp", f.m, "--m", &m, &code)) return code;
  if (!LoadArray("jvp", f.directions, "--v", &v, &code)) return code;
  absl::StatusOr<dino::client::JvpResult> r =
      client.Jvp(Ref(f.model), m, v, f.return_q, Call(f.model));
  if (!r.ok()) return RpcFailed("jvp", "Jvp", r.status());
  std::vector<std::pair<std::string, const NpyArray*>> arrays = {{"jvp", &r->jvp}};
  if (r->q.has_value()) arrays.emplace_back("q", &*r->q);
  return EmitArrays("jvp", f.model, r->version, f.output, arrays);
}

int RunVjp(const Flags& f, const DinoClient& client) {
  NpyArray m, w;
  int code;
  if (!LoadArray("vjp", f.m, "--m", &m, &code)) return code;
  if (!LoadArray("vjp", f.cotangents, "--w", &w, &code)) return code;
  absl::StatusOr<dino::client::VjpResult> r =
      client.Vjp(Ref(f.model), m, w, f.return_q, Call(f.model));
  if (!r.ok()) return RpcFailed("vjp", "Vjp", r.status());
  std::vector<std::pair<std::string, const NpyArray*>> arrays = {{"vjp", &r->vjp}};
  if (r->q.has_value()) arrays.emplace_back("q", &*r->q);
  return EmitArrays("vjp", f.model, r->version, f.output, arrays);
}

int RunJac(const Flags& f, const DinoClient& client) {
  NpyArray m;
  int code;
  if (!LoadArray("jac", f.m, "--m", &m, &code)) return code;
  absl::StatusOr<dino::client::ReducedJacobianResult> r;
  if (!f.output_basis.empty()) {
    NpyArray u, v;
    if (!LoadArray("jac", f.output_basis, "--output_basis", &u, &code)) return code;
    if (!LoadArray("jac", f.input_basis, "--input_basis", &v, &code)) return code;
    r = client.ReducedJacobian(Ref(f.model), m, u, v, Call(f.model));
  } else {
    r = client.ReducedJacobian(Ref(f.model), m, Call(f.model));
  }
  if (!r.ok()) return RpcFailed("jac", "ReducedJacobian", r.status());
  return EmitArrays("jac", f.model, r->version, f.output,
                    {{"reduced_jacobian", &r->reduced_jacobian}, {"q", &r->q}});
}

int RunJacobian(const Flags& f, const DinoClient& client) {
  NpyArray m;
  int code;
  if (!LoadArray("jacobian", f.m, "--m", &m, &code)) return code;
  absl::StatusOr<dino::client::JacobianResult> r =
      client.Jacobian(Ref(f.model), m, f.return_q, Call(f.model));
  if (!r.ok()) return RpcFailed("jacobian", "Jacobian", r.status());
  std::vector<std::pair<std::string, const NpyArray*>> arrays = {{"jacobian", &r->jacobian}};
  if (r->q.has_value()) arrays.emplace_back("q", &*r->q);
  return EmitArrays("jacobian", f.model, r->version, f.output, arrays);
}

int RunHealth(const Flags& f, const DinoClient& client) {
  absl::StatusOr<dino::client::HealthStatus> status = client.CheckHealth(f.service);
  if (!status.ok()) return RpcFailed("health", "Health/Check", status.status());
  const absl::string_view name = dino::client::HealthStatusName(*status);
  if (f.json) {
    std::cout << "{\"status\": " << JsonString(name) << "}\n";
  } else {
    std::cout << name << "\n";
  }
  return *status == dino::client::HealthStatus::kServing ? kExitOk : kExitFailure;
}

// ---------------------------------------------------------------------------------------
// Training and admin subcommands

// Set by SIGINT while `finetune` uploads; the upload then stops at the next batch and the
// call is cancelled, so the server aborts the job. The handler is one-shot (SA_RESETHAND): a
// second Ctrl-C ends the process at once (which also aborts the job).
volatile std::sig_atomic_t g_interrupted = 0;

void OnInterrupt(int /*signal*/) {
  g_interrupted = 1;
  static const char kMessage[] =
      "\ndino finetune: interrupted; cancelling the upload (Ctrl-C again to quit at once)\n";
  // write(2) is async-signal-safe; its result does not matter here.
  [[maybe_unused]] const ssize_t unused = write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
}

class ScopedInterruptHandler {
 public:
  ScopedInterruptHandler() {
    struct sigaction action = {};
    action.sa_handler = OnInterrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND;
    installed_ = sigaction(SIGINT, &action, &previous_) == 0;
  }
  ~ScopedInterruptHandler() {
    if (installed_) sigaction(SIGINT, &previous_, nullptr);
  }
  ScopedInterruptHandler(const ScopedInterruptHandler&) = delete;
  ScopedInterruptHandler& operator=(const ScopedInterruptHandler&) = delete;

 private:
  struct sigaction previous_ = {};
  bool installed_ = false;
};

bool StderrIsTerminal() { return isatty(STDERR_FILENO) == 1; }

// Prints the job's progress on stderr while WatchJob runs: one line per state (on a terminal
// the line of the current state is updated in place), and returns the last status.
absl::StatusOr<v1::JobStatus> WatchWithProgress(const TrainingClient& training,
                                                const std::string& job_id) {
  dino::cli::ProgressPrinter printer(stderr, StderrIsTerminal());
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  absl::StatusOr<v1::JobStatus> last = training.WatchJob(job_id, [&](const v1::JobStatus& status) {
    const bool changed = status.state() != state;
    if (changed) printer.Finish();  // Keep the previous state's last line.
    state = status.state();
    printer.Update(dino::cli::FormatJobProgress(status),
                   changed || dino::client::IsTerminal(status.state()));
    return true;
  });
  printer.Finish();
  return last;
}

// Prints a job's status on stdout: JSON with --json, else the summary.
void PrintJob(const v1::JobStatus& status, bool json) {
  if (json) {
    std::cout << dino::cli::JobStatusJson(status) << "\n";
  } else {
    std::cout << dino::cli::FormatJobSummary(status);
  }
}

// 0 when the job SUCCEEDED; 1 (with the server's message on stderr) otherwise.
int JobOutcome(const std::string& command, const v1::JobStatus& status) {
  if (status.state() == v1::SUCCEEDED) return kExitOk;
  std::string what =
      absl::StrCat("job ", status.job_id(), " ended ", dino::client::JobStateName(status.state()));
  if (!status.message().empty()) absl::StrAppend(&what, ": ", status.message());
  return Fail(command, what, kExitFailure);
}

// Builds the FineTuneConfig from the flags; usage errors are reported through `error`.
bool MakeFineTuneConfig(const Flags& f, v1::FineTuneConfig* config, std::string* error) {
  const FineTuneFlags& t = f.finetune;
  config->mutable_base()->set_name(f.model.model);
  config->mutable_base()->set_version(f.model.version);
  if (!t.loss.empty()) {
    absl::StatusOr<v1::Loss> loss = dino::client::ParseLoss(t.loss);
    if (!loss.ok()) {
      *error = std::string(loss.status().message());
      return false;
    }
    config->set_loss(*loss);
  }
  config->set_epochs(t.epochs);
  config->set_learning_rate(t.learning_rate);
  config->set_batch_size(t.batch_size);
  config->set_l2_weight(t.l2_weight);
  config->set_h1_weight(t.h1_weight);
  config->set_seed(t.seed);
  config->set_validation_fraction(t.validation_fraction);
  if (!t.gate_metric.empty()) {
    absl::StatusOr<v1::GateMetric> metric = dino::client::ParseGateMetric(t.gate_metric);
    if (!metric.ok()) {
      *error = std::string(metric.status().message());
      return false;
    }
    config->mutable_acceptance()->set_metric(*metric);
  }
  if (t.max_regression != 0) config->mutable_acceptance()->set_max_regression(t.max_regression);
  config->set_svd_rank(t.svd_rank);
  config->set_subsample_size(t.subsample_size);
  config->set_sketch_rank(t.sketch_rank);
  config->set_description(t.description);
  return true;
}

int RunFineTune(const Flags& f, const DinoClient& client) {
  const std::string command = "finetune";
  const FineTuneFlags& t = f.finetune;
  v1::FineTuneConfig config;
  std::string error;
  if (!MakeFineTuneConfig(f, &config, &error)) return Fail(command, error, kExitUsage);
  absl::StatusOr<dino::cli::JacobianMode> mode = dino::cli::ParseJacobianMode(t.jacobian);
  if (!mode.ok()) return Fail(command, std::string(mode.status().message()), kExitUsage);

  // Every batch of a job carries the same Jacobian form, so the validation data is read in
  // the form the training data resolved to.
  absl::StatusOr<dino::cli::FineTuneData> train =
      dino::cli::LoadFineTuneData(t.data, *mode, t.count);
  if (!train.ok()) return Fail(command, StatusText(train.status()), kExitUsage);
  using Form = dino::client::SampleArrays::JacobianForm;
  std::vector<std::pair<const dino::cli::FineTuneData*, bool>> sets = {{&*train, false}};
  std::optional<dino::cli::FineTuneData> validation;
  if (!t.validation_data.empty()) {
    const dino::cli::JacobianMode same = train->form == Form::kFull ? dino::cli::JacobianMode::kFull
                                         : train->form == Form::kSvd
                                             ? dino::cli::JacobianMode::kSvd
                                             : dino::cli::JacobianMode::kNone;
    absl::StatusOr<dino::cli::FineTuneData> v =
        dino::cli::LoadFineTuneData(t.validation_data, same);
    if (!v.ok()) return Fail(command, StatusText(v.status()), kExitUsage);
    if (v->m.shape[1] != train->m.shape[1] || v->q.shape[1] != train->q.shape[1]) {
      return Fail(
          command,
          absl::StrCat("--validation_data has d_M = ", v->m.shape[1], ", d_Q = ", v->q.shape[1],
                       " but --data has d_M = ", train->m.shape[1], ", d_Q = ", train->q.shape[1]),
          kExitUsage);
    }
    validation = *std::move(v);
    sets.emplace_back(&*validation, true);
  }
  if (train->form == Form::kNone && config.loss() != v1::L2) {
    const std::string why = t.jacobian == "none"
                                ? "--jacobian none"
                                : t.data + " has neither J_data.npz nor Jsvd_data.npz";
    return Fail(
        command,
        absl::StrCat("the ", t.loss.empty() ? "default (h1)" : t.loss,
                     " loss needs Jacobian data, but none is sent (", why, "); use --loss l2"),
        kExitUsage);
  }
  int64_t total = 0, bytes_per_sample = 0;
  for (const auto& [data, is_validation] : sets) {
    total += data->samples();
    bytes_per_sample = std::max(bytes_per_sample, data->BytesPerSample());
  }
  if (train->samples() == 0) return Fail(command, t.data + " holds no samples", kExitUsage);
  const int64_t chunk = t.chunk > 0 ? t.chunk : dino::cli::ChunkSamples(bytes_per_sample);

  TrainingClient training(client);
  if (f.conn.wait) {
    if (absl::Status s = client.WaitForReady(absl::Seconds(f.conn.timeout_s)); !s.ok()) {
      return Fail(command, StatusText(s), kExitFailure);
    }
  }
  std::cerr << "uploading " << train->samples() << " training"
            << (validation ? absl::StrCat(" + ", validation->samples(), " validation") : "")
            << " samples from " << t.data << (validation ? " and " + t.validation_data : "") << " ("
            << dino::cli::FormatBytes(bytes_per_sample * total) << ", " << chunk
            << " samples per message, Jacobians: "
            << (train->form == Form::kFull  ? "full"
                : train->form == Form::kSvd ? "svd"
                                            : "none")
            << ")\n";

  size_t set = 0;
  int64_t next = 0;
  absl::StatusOr<v1::StartFineTuneResponse> started;
  {
    ScopedInterruptHandler interrupt;
    dino::cli::ProgressPrinter printer(stderr, StderrIsTerminal());
    started = training.StartFineTune(
        config,
        [&](v1::SampleBatch* batch) -> absl::StatusOr<bool> {
          if (g_interrupted) return absl::CancelledError("interrupted; upload cancelled");
          while (set < sets.size() && next >= sets[set].first->samples()) {
            ++set;
            next = 0;
          }
          if (set == sets.size()) return false;
          const auto& [data, is_validation] = sets[set];
          const int64_t end = std::min(next + chunk, data->samples());
          absl::StatusOr<dino::client::SampleArrays> arrays =
              dino::cli::SliceSamples(*data, next, end, is_validation);
          if (!arrays.ok()) return arrays.status();
          if (absl::Status s = dino::client::EncodeSampleBatch(*arrays, batch); !s.ok()) return s;
          next = end;
          return true;
        },
        [&](const dino::client::UploadProgress& p) {
          printer.Update(dino::cli::FormatUploadProgress(p, total), p.samples == total);
        });
  }
  if (!started.ok()) {
    if (g_interrupted) {
      return Fail(command, "interrupted: the upload was cancelled, so the server aborts the job",
                  kExitFailure);
    }
    return RpcFailed(command, "StartFineTune", started.status());
  }
  const std::string& job_id = started->job_id();
  std::cerr << "job " << job_id << " started ("
            << dino::client::JobStateName(started->status().state()) << ")\n";
  if (t.no_watch) {
    PrintJob(started->status(), f.json);
    return kExitOk;
  }
  std::cerr << "watching job " << job_id << "; Ctrl-C stops watching, not the job (`dino cancel "
            << "--id " << job_id << "` cancels it)\n";
  absl::StatusOr<v1::JobStatus> last = WatchWithProgress(training, job_id);
  if (!last.ok()) {
    return Fail(command,
                absl::StrCat("WatchJob failed: ", StatusText(last.status()), " (the job goes on; ",
                             "see `dino job --id ", job_id, "`)"),
                kExitFailure);
  }
  PrintJob(*last, f.json);
  return JobOutcome(command, *last);
}

int RunJobs(const Flags& f, const DinoClient& client) {
  absl::StatusOr<std::vector<v1::JobStatus>> jobs = TrainingClient(client).ListJobs();
  if (!jobs.ok()) return RpcFailed("jobs", "ListJobs", jobs.status());
  if (f.json) {
    std::cout << dino::cli::JobListJson(*jobs) << "\n";
  } else {
    std::cout << dino::cli::FormatJobTable(*jobs);
  }
  return kExitOk;
}

int RunJob(const Flags& f, const DinoClient& client) {
  TrainingClient training(client);
  if (!f.watch) {
    absl::StatusOr<v1::JobStatus> status = training.GetJob(f.job_id);
    if (!status.ok()) return RpcFailed("job", "GetJob", status.status());
    PrintJob(*status, f.json);
    return kExitOk;
  }
  absl::StatusOr<v1::JobStatus> last = WatchWithProgress(training, f.job_id);
  if (!last.ok()) return RpcFailed("job", "WatchJob", last.status());
  PrintJob(*last, f.json);
  return JobOutcome("job", *last);
}

int RunCancel(const Flags& f, const DinoClient& client) {
  absl::StatusOr<v1::JobStatus> status = TrainingClient(client).CancelJob(f.job_id);
  if (!status.ok()) return RpcFailed("cancel", "CancelJob", status.status());
  PrintJob(*status, f.json);
  return kExitOk;
}

int RunSetDefault(const Flags& f, const DinoClient& client) {
  if (absl::Status s = TrainingClient(client).SetDefaultVersion(f.model.model, f.model.version);
      !s.ok()) {
    return RpcFailed("set-default", "SetDefaultVersion", s);
  }
  if (f.model.version == 0) {
    std::cout << f.model.model << ": default version policy restored (the highest loaded)\n";
  } else {
    std::cout << f.model.model << ": default version is now " << f.model.version << "\n";
  }
  return kExitOk;
}

int RunUnload(const Flags& f, const DinoClient& client) {
  if (absl::Status s = TrainingClient(client).UnloadVersion(f.model.model, f.model.version);
      !s.ok()) {
    return RpcFailed("unload", "UnloadVersion", s);
  }
  std::cout << f.model.model << ": version " << f.model.version << " unloaded\n";
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "dino: command-line client for dino-serve, a gRPC server of derivative-informed neural "
      "operator surrogates f: R^d_M -> R^d_Q.\n\n"
      "Array inputs (--m, --v, --w, --output_basis, --input_basis) are inline JSON such as "
      "'[0.1, 0.2]' or '[[...], [...]]', or FILE.npy, FILE.npz:NAME, FILE.json. Array results "
      "are printed on stdout as one JSON object {\"model\", \"version\", <result>: {\"shape\", "
      "\"dtype\", \"data\" | \"summary\"}}; use --out to save them as .npy/.npz.\n\n"
      "Exit status: 0 success; 1 the server call failed (the gRPC code and message are "
      "printed on stderr), for `health` the server is not SERVING, for `finetune` and `job "
      "--watch` the job did not succeed; 2 usage or input error.",
      "dino");
  app.require_subcommand(1);
  // A repeated flag takes its last value, so scripts can append overrides to a base command.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  Flags f;
  CLI::App* models = app.add_subcommand("models", "List the served models and their versions");
  AddConnectionFlags(models, &f.conn);
  models->add_flag("--json", f.json, "Print JSON instead of a table");
  models->footer("Example: dino models --server localhost:50051 --json");

  CLI::App* info = app.add_subcommand(
      "info", "Describe a model: dimensions, ranks, dtype, architecture and metadata");
  AddConnectionFlags(info, &f.conn);
  AddModelFlags(info, &f.model, /*with_dtype=*/false);
  info->add_flag("--json", f.json, "Print JSON instead of text");
  info->footer("Example: dino info --model poisson --version 2");

  CLI::App* bases = app.add_subcommand(
      "bases", "Fetch a reduced-basis model's bases V [d_M, r_M], U [d_Q, r_Q] and shift b [d_Q]");
  AddConnectionFlags(bases, &f.conn);
  AddModelFlags(bases, &f.model, /*with_dtype=*/true);
  AddOutputFlags(bases, &f.output, "(.npz only)");
  bases->footer("Example: dino bases --model poisson --out bases.npz");

  CLI::App* eval = app.add_subcommand("eval", "Evaluate q = f(m) for one point or a batch");
  AddConnectionFlags(eval, &f.conn);
  AddModelFlags(eval, &f.model, /*with_dtype=*/true);
  AddArrayOption(eval, "--m", &f.m, "Input m, [d_M] or [B, d_M]");
  AddOutputFlags(eval, &f.output, "q [B, d_Q]");
  eval->footer(
      "Examples:\n  dino eval --model poisson --m '[0.1, 0.2, 0.3]'\n"
      "  dino eval --model poisson --m data/mq_data.npz:m_data --dtype fp64 --out q.npy");

  CLI::App* jvp = app.add_subcommand(
      "jvp",
      "Jacobian-vector products J(m) v: at one point for k directions, or per point for a "
      "batch of points");
  AddConnectionFlags(jvp, &f.conn);
  AddModelFlags(jvp, &f.model, /*with_dtype=*/true);
  AddArrayOption(jvp, "--m", &f.m, "Point(s) m, [d_M] or [B, d_M]");
  AddArrayOption(jvp, "--v,--directions", &f.directions,
                 "Directions: [k, d_M] or [d_M] at one point; [B, d_M] (one per point) or "
                 "[B, k, d_M] for B points");
  jvp->add_flag("--return_q", f.return_q, "Also return q = f(m)");
  AddOutputFlags(jvp, &f.output, "jvp [k, d_Q], [B, d_Q] or [B, k, d_Q]");
  jvp->footer(
      "Example: dino jvp --model poisson --m m.npy --v '[[1, 0, 0], [0, 1, 0]]' --return_q");

  CLI::App* vjp = app.add_subcommand(
      "vjp",
      "Vector-Jacobian products J(m)^T w: at one point for k cotangents, or per point for a "
      "batch of points");
  AddConnectionFlags(vjp, &f.conn);
  AddModelFlags(vjp, &f.model, /*with_dtype=*/true);
  AddArrayOption(vjp, "--m", &f.m, "Point(s) m, [d_M] or [B, d_M]");
  AddArrayOption(vjp, "--w,--cotangents", &f.cotangents,
                 "Cotangents: [k, d_Q] or [d_Q] at one point; [B, d_Q] (one per point) or "
                 "[B, k, d_Q] for B points");
  vjp->add_flag("--return_q", f.return_q, "Also return q = f(m)");
  AddOutputFlags(vjp, &f.output, "vjp [k, d_M], [B, d_M] or [B, k, d_M]");
  vjp->footer("Example: dino vjp --model poisson --m m.npy --w w.npy --out vjp.npy");

  CLI::App* jac = app.add_subcommand(
      "jac", "Reduced Jacobians U^T J(m) V for a batch (model bases, or client bases)");
  AddConnectionFlags(jac, &f.conn);
  AddModelFlags(jac, &f.model, /*with_dtype=*/true);
  AddArrayOption(jac, "--m", &f.m, "Points m, [B, d_M] or [d_M]");
  CLI::Option* ub = jac->add_option(
      "--output_basis", f.output_basis,
      "Client output basis U_c [d_Q, k_Q] with orthonormal columns (.npy, .npz:NAME, JSON)");
  CLI::Option* vb = jac->add_option(
      "--input_basis", f.input_basis,
      "Client input basis V_c [d_M, k_M] with orthonormal columns (.npy, .npz:NAME, JSON)");
  ub->needs(vb);
  vb->needs(ub);
  AddOutputFlags(jac, &f.output, "reduced_jacobian [B, r_Q, r_M]");
  jac->footer(
      "Examples:\n  dino jac --model poisson --m m.npy\n"
      "  dino jac --model poisson --m m.npy --output_basis U.npy --input_basis V.npy --out jr.npz");

  CLI::App* jacobian =
      app.add_subcommand("jacobian", "The full Jacobian J(m) [d_Q, d_M] at one point");
  AddConnectionFlags(jacobian, &f.conn);
  AddModelFlags(jacobian, &f.model, /*with_dtype=*/true);
  AddArrayOption(jacobian, "--m", &f.m, "Point m, [d_M]");
  jacobian->add_flag("--return_q", f.return_q, "Also return q = f(m)");
  AddOutputFlags(jacobian, &f.output, "jacobian [d_Q, d_M]");
  jacobian->footer("Example: dino jacobian --model poisson --m m.npy --out J.npy");

  CLI::App* health = app.add_subcommand(
      "health", "Print the server's health status; exits 0 only when it is SERVING");
  AddConnectionFlags(health, &f.conn);
  health->add_option("--service", f.service,
                     "Service to ask about; empty (the default) means the whole server");
  health->add_flag("--json", f.json, "Print {\"status\": ...} instead of the bare status");
  health->footer("Example (Docker HEALTHCHECK): dino health --server localhost:50051 --timeout 2");

  CLI::App* finetune = app.add_subcommand(
      "finetune",
      "Fine-tune a served model on derivative data (dino / hIPPYflow layout) streamed to the "
      "server; the job then trains, is validated and, if the gate accepts it, published as a "
      "new version");
  AddConnectionFlags(finetune, &f.conn);
  AddModelFlags(finetune, &f.model, /*with_dtype=*/false);
  FineTuneFlags& ft = f.finetune;
  finetune
      ->add_option("--data", ft.data,
                   "Data directory: mq_data.npz (m_data [n, d_M], q_data [n, d_Q]) and J_data.npz "
                   "(J_data [n, d_Q, d_M]) or Jsvd_data.npz (U_data [n, d_Q, r], sigma_data "
                   "[n, r], V_data [n, d_M, r])")
      ->required();
  finetune->add_option("--validation_data", ft.validation_data,
                       "Directory of validation samples in the same layout (sent with "
                       "validation=true; by default the server holds out --validation_fraction)");
  finetune
      ->add_option("--jacobian", ft.jacobian,
                   "Jacobian data to send: auto (J_data.npz, else Jsvd_data.npz, else none), "
                   "full, svd or none")
      ->check(CLI::IsMember({"auto", "full", "svd", "none"}))
      ->capture_default_str();
  finetune
      ->add_option("--loss", ft.loss,
                   "Training loss: l2, h1, reduced_h1, reduced_h1_ms or sketched_h1; default: "
                   "the server's (h1)")
      ->check(CLI::IsMember({"l2", "h1", "reduced_h1", "reduced_h1_ms", "sketched_h1"}));
  finetune->add_option("--epochs", ft.epochs, "Epochs; 0 = the server's default (100)")
      ->check(CLI::NonNegativeNumber);
  finetune
      ->add_option("--learning_rate", ft.learning_rate,
                   "Learning rate; 0 = the server's default (1e-3)")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--batch_size", ft.batch_size, "Training batch size; 0 = default (32)")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--l2_weight", ft.l2_weight, "Weight of the ||q - f||^2 term")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--h1_weight", ft.h1_weight, "Weight of the Jacobian term")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--seed", ft.seed, "Seed of the split, the shuffling and the losses");
  finetune
      ->add_option("--validation_fraction", ft.validation_fraction,
                   "Fraction of the samples held out for the gate; 0 = 0.2 unless "
                   "--validation_data is given")
      ->check(CLI::Range(0.0, 1.0));
  finetune
      ->add_option("--gate_metric", ft.gate_metric,
                   "Accuracy the validation gate compares: l2, h1 or reduced_h1; default: h1 "
                   "with Jacobians, else l2")
      ->check(CLI::IsMember({"l2", "h1", "reduced_h1"}));
  finetune
      ->add_option("--max_regression", ft.max_regression,
                   "Publish only if accuracy(new) >= accuracy(base) - this (absolute; 0.01 = one "
                   "percentage point)")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--svd_rank", ft.svd_rank, "r of the reduced losses; 0 = all the data has")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--subsample_size", ft.subsample_size, "k of reduced_h1_ms; 0 = 10")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--sketch_rank", ft.sketch_rank, "Sketch size of sketched_h1; 0 = 50")
      ->check(CLI::NonNegativeNumber);
  finetune->add_option("--count", ft.count, "Send only the first N samples of --data")
      ->check(CLI::NonNegativeNumber);
  finetune
      ->add_option("--chunk", ft.chunk,
                   "Samples per upload message; default: as many as fit in about 4 MiB")
      ->check(kAtLeastOne);
  finetune->add_option("--description", ft.description, "Recorded in the new version's metadata");
  finetune->add_flag("--no_watch", ft.no_watch,
                     "Return once the upload is complete (print the job id) instead of following "
                     "the job to its end");
  finetune->add_flag("--json", f.json, "Print the final job status as JSON");
  finetune->footer(
      "Progress goes to stderr, the final status to stdout. Exit status 0 only when the job "
      "SUCCEEDED (or, with --no_watch, was started). --timeout does not limit the upload or the "
      "watch. Ctrl-C during the upload cancels it (the server aborts the job); during the watch "
      "it only stops watching.\n\n"
      "Example: dino finetune --model poisson --data data/train --loss h1 --epochs 20 "
      "--token_file admin.token");

  CLI::App* jobs = app.add_subcommand("jobs", "List the fine-tuning jobs, oldest first");
  AddConnectionFlags(jobs, &f.conn);
  jobs->add_flag("--json", f.json, "Print JSON instead of a table");

  CLI::App* job = app.add_subcommand("job", "Show one fine-tuning job, or follow it (--watch)");
  AddConnectionFlags(job, &f.conn);
  job->add_option("--id", f.job_id, "Job id (see `dino jobs`)")->required();
  job->add_flag("--watch", f.watch,
                "Follow the job until it ends, progress on stderr; exit 0 only if it SUCCEEDED");
  job->add_flag("--json", f.json, "Print the status as JSON");

  CLI::App* cancel = app.add_subcommand(
      "cancel", "Cancel a fine-tuning job that has not ended; prints its status");
  AddConnectionFlags(cancel, &f.conn);
  cancel->add_option("--id", f.job_id, "Job id")->required();
  cancel->add_flag("--json", f.json, "Print the status as JSON");

  CLI::App* set_default =
      app.add_subcommand("set-default", "Choose the version that requests without a version get");
  AddConnectionFlags(set_default, &f.conn);
  set_default->add_option("--model", f.model.model, "Model name")->required();
  set_default
      ->add_option("--version", f.model.version,
                   "Version (must be loaded); 0 restores the default policy (highest loaded)")
      ->check(CLI::NonNegativeNumber)
      ->required();

  CLI::App* unload = app.add_subcommand(
      "unload", "Stop serving a version (its file stays; it is loaded again when it changes)");
  AddConnectionFlags(unload, &f.conn);
  unload->add_option("--model", f.model.model, "Model name")->required();
  unload->add_option("--version", f.model.version, "Version to unload")
      ->check(kAtLeastOne)
      ->required();

  // Set after the subcommands exist, which would otherwise inherit it.
  app.footer(
      "Examples:\n"
      "  dino models --server localhost:50051\n"
      "  dino info --model poisson\n"
      "  dino eval --model poisson --m '[0.1, 0.2, 0.3]'\n"
      "  dino jvp --model poisson --m m.npy --v dirs.npy --out jvp.npy\n"
      "  dino jac --model poisson --m data/mq_data.npz:m_data --out jr.npz\n"
      "  dino health --timeout 2\n"
      "  dino finetune --model poisson --data data/train --loss h1 --token_file admin.token\n"
      "  dino jobs\n\n"
      "Run `dino <command> --help` for a command's flags.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help (and the like) print help and succeed; everything else is a usage error.
    if (e.get_exit_code() == 0) return app.exit(e);
    const std::vector<CLI::App*> parsed = app.get_subcommands();
    const std::string command = parsed.empty() ? "" : " " + parsed.front()->get_name();
    std::cerr << "dino" << command << ": " << e.what() << "\nRun `dino" << command
              << " --help` for usage.\n";
    return kExitUsage;
  }

  absl::StatusOr<DinoClient> client = MakeClient(f.conn);
  CLI::App* command = app.get_subcommands().front();
  if (!client.ok()) return Fail(command->get_name(), StatusText(client.status()), kExitUsage);
  if (command == models) return RunModels(f, *client);
  if (command == info) return RunInfo(f, *client);
  if (command == bases) return RunBases(f, *client);
  if (command == eval) return RunEval(f, *client);
  if (command == jvp) return RunJvp(f, *client);
  if (command == vjp) return RunVjp(f, *client);
  if (command == jac) return RunJac(f, *client);
  if (command == jacobian) return RunJacobian(f, *client);
  if (command == finetune) return RunFineTune(f, *client);
  if (command == jobs) return RunJobs(f, *client);
  if (command == job) return RunJob(f, *client);
  if (command == cancel) return RunCancel(f, *client);
  if (command == set_default) return RunSetDefault(f, *client);
  if (command == unload) return RunUnload(f, *client);
  return RunHealth(f, *client);
}
