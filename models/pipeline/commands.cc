#include "models/pipeline/commands.h"

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "models/pipeline/compute_bases.h"
#include "models/pipeline/generate.h"
#include "models/pipeline/problems.h"
#include "models/pipeline/progress.h"

namespace dino::pipeline {
namespace {

volatile std::sig_atomic_t g_stop_requested = 0;

// First SIGINT/SIGTERM: ask the run to save what it has and stop. The handler then restores
// the default action, so a second Ctrl-C ends the process at once (signal() is
// async-signal-safe).
extern "C" void RequestStop(int signal_number) {
  g_stop_requested = 1;
  std::signal(signal_number, SIG_DFL);
}

std::function<void(const std::string&)> StderrLog(const char* command) {
  return [command](const std::string& message) {
    std::fprintf(stderr, "dino-train %s: %s\n", command, message.c_str());
  };
}

int ReportError(const char* command, const absl::Status& status) {
  std::fprintf(stderr, "dino-train %s: error: %s\n", command,
               std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kCancelled ? kExitInterrupted : kExitFailure;
}

template <typename T>
T ValueOrDie(absl::StatusOr<T> value) {
  // Only called on strings that CLI::IsMember has already accepted.
  return *std::move(value);
}

ProgressStyle ParseProgress(const std::string& name) {
  if (name == "bar") return ProgressStyle::kBar;
  if (name == "lines") return ProgressStyle::kLines;
  if (name == "none") return ProgressStyle::kNone;
  return ProgressStyle::kAuto;
}

struct GenerateFlags {
  GenerateOptions options;
  std::string problem;
  std::string jacobian = "svd";
  std::string svd = "exact";
  std::string progress = "auto";
};

struct BasesFlags {
  BasesOptions options;
  std::string input_basis = "active_subspace";
  std::string output_basis = "pod";
  std::string jacobian_source = "auto";
  std::string problem;
  bool no_kle = false;
};

}  // namespace

ScopedStopRequest::ScopedStopRequest() {
  g_stop_requested = 0;
  std::signal(SIGINT, RequestStop);
  std::signal(SIGTERM, RequestStop);
}

ScopedStopRequest::~ScopedStopRequest() {
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

bool ScopedStopRequest::requested() { return g_stop_requested != 0; }

CLI::App* AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<GenerateFlags>();
  GenerateOptions& o = flags->options;
  CLI::App* sub = app.add_subcommand(
      "generate",
      "Sample m from the prior and write m, q(m) and Jacobian data (full and/or truncated SVD) "
      "to DIR/mq_data.npz, DIR/Jsvd_data.npz and DIR/J_data.npz (hIPPYflow layout). Resumable: "
      "finished chunks stay in DIR/partial and a rerun continues from them.");
  sub->option_defaults()->always_capture_default();
  sub->add_option("--problem", flags->problem, "Parametric map (paper §3.1)")
      ->required()
      ->check(CLI::IsMember({"poisson", "reaction_diffusion"}));
  sub->add_option("--samples", o.samples, "Number of samples n")
      ->required()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  sub->add_option("--out", o.out_dir, "Output directory (created if missing)")->required();
  sub->add_option("--seed", o.seed, "Seed; sample i depends only on (seed, i)");
  sub->add_option("--jacobian", flags->jacobian,
                  "Jacobian data: full (J_data.npz and Jsvd_data.npz), svd (Jsvd_data.npz), none")
      ->check(CLI::IsMember({"full", "svd", "none"}));
  sub->add_option("--rank", o.rank, "Rank r of the truncated Jacobian SVD");
  sub->add_option("--svd", flags->svd,
                  "How --jacobian svd computes it: exact (from the full Jacobian: d_Q adjoint "
                  "solves) or randomized (O(r) Jacobian actions, for large d_Q)")
      ->check(CLI::IsMember({"exact", "randomized"}));
  sub->add_option("--oversampling", o.oversampling, "Randomized SVD oversampling p");
  sub->add_option("--power-iterations", o.power_iterations, "Randomized SVD power iterations q");
  sub->add_option("--threads", o.threads, "Worker threads (0: all available cores)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--mesh", o.mesh, "Mesh resolution: n × n squares, d_M = (n + 1)²")
      ->check(CLI::Range(kMinMesh, kMaxMesh));
  sub->add_option("--chunk-size", o.chunk_size, "Samples per saved chunk in DIR/partial")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--compress", o.compress, "Deflate the .npz files (numpy.savez_compressed)");
  sub->add_flag("--restart", o.restart, "Discard DIR/partial instead of resuming from it");
  sub->add_flag("--keep-partial", o.keep_partial,
                "Keep DIR/partial after a complete run (a later run with more --samples then "
                "only generates the new ones)");
  sub->add_option("--progress", flags->progress,
                  "Progress on stderr: bar (a terminal), lines (periodic lines), auto, none")
      ->check(CLI::IsMember({"auto", "bar", "lines", "none"}));

  sub->callback([flags, exit_code]() {
    GenerateOptions options = flags->options;
    options.problem = ValueOrDie(ParseProblem(flags->problem));
    options.jacobian = ValueOrDie(ParseJacobianOutput(flags->jacobian));
    options.svd_method = ValueOrDie(ParseSvdMethod(flags->svd));
    options.progress = ParseProgress(flags->progress);
    options.log = StderrLog("generate");
    options.stop_requested = [] { return ScopedStopRequest::requested(); };
    absl::StatusOr<GenerateReport> report;
    {
      ScopedStopRequest stop;
      report = Generate(options);
    }
    if (!report.ok()) {
      *exit_code = ReportError("generate", report.status());
      return;
    }
    std::printf("generated %lld samples (%lld reused), d_M = %lld, d_Q = %lld, in %.3f s",
                static_cast<long long>(report->samples), static_cast<long long>(report->reused),
                static_cast<long long>(report->parameter_dim),
                static_cast<long long>(report->observation_dim), report->wall_seconds);
    if (report->generated > 0) {
      std::printf("; %.4g s per sample per thread, %d threads", report->seconds_per_sample,
                  report->threads);
    }
    std::printf("\n");
    for (const std::string& file : report->files) std::printf("  %s\n", file.c_str());
    *exit_code = kExitSuccess;
  });
  return sub;
}

CLI::App* AddBasesCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<BasesFlags>();
  BasesOptions& o = flags->options;
  CLI::App* sub = app.add_subcommand(
      "bases",
      "Compute the reduced bases of a data directory (active subspace, output derivative "
      "basis, output POD, prior KLE) with their spectra: DIR/bases.npz, DIR/spectra.csv, "
      "DIR/bases.json. Plot with scripts/plot_spectra.py.");
  sub->option_defaults()->always_capture_default();
  sub->add_option("--data", o.data_dir, "Data directory written by `dino-train generate`")
      ->required();
  sub->add_option("--out", o.out_dir, "Output directory (default: --data)");
  sub->add_option("--input-basis", flags->input_basis,
                  "The DIPNet input basis V written as input_basis")
      ->check(CLI::IsMember({"active_subspace", "kle"}));
  sub->add_option("--output-basis", flags->output_basis,
                  "The DIPNet output basis U written as output_basis")
      ->check(CLI::IsMember({"pod", "output_derivative"}));
  sub->add_option("--input-rank", o.input_rank, "r_M: columns of the input bases")
      ->check(CLI::PositiveNumber);
  sub->add_option("--output-rank", o.output_rank, "r_Q: columns of the output bases (0: d_Q)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--jacobian-source", flags->jacobian_source,
                  "Jacobian data for the derivative bases: auto (J_data.npz if present, else "
                  "Jsvd_data.npz), full, svd, none")
      ->check(CLI::IsMember({"auto", "full", "svd", "none"}));
  sub->add_flag("--no-kle", flags->no_kle, "Skip the prior KLE (unless --input-basis kle)");
  sub->add_option("--problem", flags->problem,
                  "Problem whose prior defines the KLE, for data without generate.json")
      ->check(CLI::IsMember({"poisson", "reaction_diffusion"}));
  sub->add_option("--mesh", o.mesh, "Mesh of that prior, for data without generate.json");
  sub->add_option("--threads", o.threads, "Threads for the Jacobian products (0: all cores)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--seed", o.seed, "Seed of the eigensolver's random start");
  sub->add_option("--oversampling", o.oversampling,
                  "Eigensolver block columns beyond the rank (negative: max(10, rank/2))");
  sub->add_option("--max-iterations", o.max_iterations, "Eigensolver subspace iterations")
      ->check(CLI::PositiveNumber);
  sub->add_option("--tolerance", o.tolerance, "Eigensolver relative residual tolerance")
      ->check(CLI::PositiveNumber);
  sub->add_flag("--compress", o.compress, "Deflate bases.npz");

  sub->callback([flags, exit_code]() {
    BasesOptions options = flags->options;
    options.input_basis = ValueOrDie(ParseInputBasis(flags->input_basis));
    options.output_basis = ValueOrDie(ParseOutputBasis(flags->output_basis));
    options.jacobian_source = ValueOrDie(ParseJacobianFiles(flags->jacobian_source));
    if (!flags->problem.empty()) options.problem = ValueOrDie(ParseProblem(flags->problem));
    options.kle = !flags->no_kle;
    options.log = StderrLog("bases");
    const absl::StatusOr<BasesReport> report = ComputeBases(options);
    if (!report.ok()) {
      *exit_code = ReportError("bases", report.status());
      return;
    }
    std::string computed;
    for (const std::string& name : report->bases) computed += (computed.empty() ? "" : ", ") + name;
    std::printf("bases of %lld samples (d_M = %lld, d_Q = %lld, r_M = %d, r_Q = %d): %s; %.3f s\n",
                static_cast<long long>(report->samples),
                static_cast<long long>(report->parameter_dim),
                static_cast<long long>(report->observation_dim), report->input_rank,
                report->output_rank, computed.c_str(), report->seconds);
    for (const std::string& file : report->files) std::printf("  %s\n", file.c_str());
    *exit_code = kExitSuccess;
  });
  return sub;
}

}  // namespace dino::pipeline
