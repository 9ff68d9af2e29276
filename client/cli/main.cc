// dino: command-line client for a dino-serve server.
//
// Exit status: 0 on success (for `health`: only when the server reports SERVING), 1 when the
// server call fails or the server is not serving, 2 for usage and input errors (bad flags,
// unreadable input files, malformed JSON, unwritable --out).
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/cli/cli_support.h"
#include "client/dino_client.h"
#include "models/io/npy.h"

namespace {

using dino::NpyArray;
using dino::NpyDType;
using dino::cli::ArrayJson;
using dino::cli::JsonString;
using dino::cli::StatusText;
using dino::client::DinoClient;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct ConnectionFlags {
  std::string server = "localhost:50051";
  double timeout_s = 30;
  int max_message_mb = 1024;
  bool wait = false;
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

// Every flag of every subcommand, filled by CLI11.
struct Flags {
  ConnectionFlags conn;
  ModelFlags model;
  OutputFlags output;
  bool json = false;
  std::string m, directions, cotangents, output_basis, input_basis;
  bool return_q = false;
  std::string service;
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
}

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
      "printed on stderr) or, for `health`, the server is not SERVING; 2 usage or input error.",
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
      "jvp", "Jacobian-vector products J(m) v_i at one point m for k directions");
  AddConnectionFlags(jvp, &f.conn);
  AddModelFlags(jvp, &f.model, /*with_dtype=*/true);
  AddArrayOption(jvp, "--m", &f.m, "Point m, [d_M]");
  AddArrayOption(jvp, "--v,--directions", &f.directions, "Directions, [k, d_M] or [d_M]");
  jvp->add_flag("--return_q", f.return_q, "Also return q = f(m)");
  AddOutputFlags(jvp, &f.output, "jvp [k, d_Q]");
  jvp->footer(
      "Example: dino jvp --model poisson --m m.npy --v '[[1, 0, 0], [0, 1, 0]]' --return_q");

  CLI::App* vjp = app.add_subcommand(
      "vjp", "Vector-Jacobian products J(m)^T w_i at one point m for k cotangents");
  AddConnectionFlags(vjp, &f.conn);
  AddModelFlags(vjp, &f.model, /*with_dtype=*/true);
  AddArrayOption(vjp, "--m", &f.m, "Point m, [d_M]");
  AddArrayOption(vjp, "--w,--cotangents", &f.cotangents, "Cotangents, [k, d_Q] or [d_Q]");
  vjp->add_flag("--return_q", f.return_q, "Also return q = f(m)");
  AddOutputFlags(vjp, &f.output, "vjp [k, d_M]");
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

  // Set after the subcommands exist, which would otherwise inherit it.
  app.footer(
      "Examples:\n"
      "  dino models --server localhost:50051\n"
      "  dino info --model poisson\n"
      "  dino eval --model poisson --m '[0.1, 0.2, 0.3]'\n"
      "  dino jvp --model poisson --m m.npy --v dirs.npy --out jvp.npy\n"
      "  dino jac --model poisson --m data/mq_data.npz:m_data --out jr.npz\n"
      "  dino health --timeout 2\n\n"
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
  return RunHealth(f, *client);
}
