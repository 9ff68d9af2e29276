#include "models/pipeline/compute_bases.h"

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/bases/bases.h"
#include "models/bases/eigensolver.h"
#include "models/bases/jacobian_samples.h"
#include "models/io/npz.h"
#include "models/pde/mesh.h"
#include "models/pde/prior.h"
#include "models/pipeline/files.h"
#include "models/pipeline/generate.h"

namespace dino::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void Log(const BasesOptions& options, const std::string& message) {
  if (options.log) options.log(message);
}

const double* Data(const NpyArray& array) { return array.View<double>().data(); }

// The Jacobian arrays read from disk, kept alive for the JacobianSamples view. The view points
// into the arrays' byte vectors, which keep their storage when the struct is moved.
struct JacobianData {
  std::string file;  // Path, empty when there is none.
  NpyArray full;
  NpyArray u, sigma, v;
  int64_t rank = 0;
  std::optional<bases::JacobianSamples> samples;
};

absl::StatusOr<JacobianData> ReadJacobians(const BasesOptions& options,
                                           const nlohmann::json* summary, int64_t n, int64_t d_q,
                                           int64_t d_m) {
  JacobianData data;
  if (options.jacobian_source == JacobianFiles::kNone) return data;
  const std::string full_path = JoinPath(options.data_dir, kJacobianFile);
  const std::string svd_path = JoinPath(options.data_dir, kJsvdFile);
  // With a summary, only the files it lists belong to the data set.
  auto listed = [&](const char* file) {
    if (summary == nullptr) return true;
    const nlohmann::json& files = (*summary)["files"];
    return std::find(files.begin(), files.end(), file) != files.end();
  };
  const bool have_full = listed(kJacobianFile) && PathExists(full_path);
  const bool have_svd = listed(kJsvdFile) && PathExists(svd_path);
  bool use_full = false;
  switch (options.jacobian_source) {
    case JacobianFiles::kAuto:
      if (!have_full && !have_svd) return data;
      use_full = have_full;
      break;
    case JacobianFiles::kFull:
      if (!have_full) {
        return absl::NotFoundError(
            absl::StrCat("--jacobian-source full: ", full_path,
                         PathExists(full_path) ? " is not listed in " : " does not exist",
                         PathExists(full_path) ? kGenerateSummaryFile : ""));
      }
      use_full = true;
      break;
    case JacobianFiles::kSvd:
      if (!have_svd) {
        return absl::NotFoundError(
            absl::StrCat("--jacobian-source svd: ", svd_path,
                         PathExists(svd_path) ? " is not listed in " : " does not exist",
                         PathExists(svd_path) ? kGenerateSummaryFile : ""));
      }
      break;
    case JacobianFiles::kNone:
      return data;
  }
  data.file = use_full ? full_path : svd_path;
  absl::StatusOr<NpzReader> reader = NpzReader::Open(data.file);
  if (!reader.ok()) return reader.status();
  if (use_full) {
    absl::StatusOr<NpyArray> j = ReadFloat64Array(*reader, kJData, {n, d_q, d_m});
    if (!j.ok()) return j.status();
    data.full = *std::move(j);
    data.samples = bases::JacobianSamples::Full(Data(data.full), n, d_q, d_m);
    return data;
  }
  absl::StatusOr<NpyArray> sigma = ReadFloat64Array(*reader, kSigmaData, {n, -1});
  if (!sigma.ok()) return sigma.status();
  data.rank = sigma->shape[1];
  if (data.rank < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(data.file, ": array 'sigma_data' has rank 0 (no singular values)"));
  }
  absl::StatusOr<NpyArray> u = ReadFloat64Array(*reader, kUData, {n, d_q, data.rank});
  if (!u.ok()) return u.status();
  absl::StatusOr<NpyArray> v = ReadFloat64Array(*reader, kVData, {n, d_m, data.rank});
  if (!v.ok()) return v.status();
  data.sigma = *std::move(sigma);
  data.u = *std::move(u);
  data.v = *std::move(v);
  data.samples = bases::JacobianSamples::TruncatedSvd(Data(data.u), Data(data.sigma), Data(data.v),
                                                      n, d_q, d_m, data.rank);
  return data;
}

// The prior, from generate.json and/or the options.
absl::StatusOr<std::optional<std::pair<Problem, int>>> ResolvePrior(const BasesOptions& options,
                                                                    const nlohmann::json* summary,
                                                                    const std::string& path) {
  std::optional<Problem> problem = options.problem;
  int mesh = options.mesh;
  if (summary != nullptr) {
    absl::StatusOr<Problem> from_file = ParseProblem((*summary)["problem"].get<std::string>());
    if (!from_file.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", from_file.status().message()));
    }
    const int file_mesh = (*summary)["mesh"].get<int>();
    if (problem.has_value() && *problem != *from_file) {
      return absl::InvalidArgumentError(absl::StrCat("--problem ", ProblemName(*problem),
                                                     " contradicts ", path, " (problem ",
                                                     ProblemName(*from_file), ")"));
    }
    if (mesh != 0 && mesh != file_mesh) {
      return absl::InvalidArgumentError(
          absl::StrCat("--mesh ", mesh, " contradicts ", path, " (mesh ", file_mesh, ")"));
    }
    problem = *from_file;
    mesh = file_mesh;
  }
  if (!problem.has_value() && mesh == 0) return std::optional<std::pair<Problem, int>>();
  if (!problem.has_value() || mesh == 0) {
    return absl::InvalidArgumentError(
        "--problem and --mesh go together (they define the prior for the KLE)");
  }
  if (mesh < kMinMesh || mesh > kMaxMesh) {
    return absl::InvalidArgumentError(
        absl::StrCat("--mesh must be in [", kMinMesh, ", ", kMaxMesh, "], not ", mesh));
  }
  return std::optional<std::pair<Problem, int>>(std::make_pair(*problem, mesh));
}

absl::StatusOr<nlohmann::json> ReadSummary(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  nlohmann::json summary = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (summary.is_discarded() || !summary.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  }
  // Fields read below, with their types.
  const std::pair<const char*, bool (nlohmann::json::*)() const noexcept> fields[] = {
      {"problem", &nlohmann::json::is_string},
      {"mesh", &nlohmann::json::is_number_integer},
      {"samples", &nlohmann::json::is_number_integer},
      {"parameter_dim", &nlohmann::json::is_number_integer},
      {"observation_dim", &nlohmann::json::is_number_integer},
      {"files", &nlohmann::json::is_array},
  };
  for (const auto& [field, check] : fields) {
    if (!summary.contains(field) || !(summary[field].*check)()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": field '", field, "' is missing or has the wrong type"));
    }
  }
  return summary;
}

nlohmann::json SolverJson(const bases::EigenDecomposition& eig, double seconds) {
  return {{"iterations", eig.iterations},
          {"operator_columns", eig.operator_columns},
          {"max_relative_residual", eig.max_relative_residual},
          {"converged", eig.converged},
          {"seconds", seconds}};
}

void WarnIfUnconverged(const BasesOptions& options, const char* what,
                       const bases::EigenDecomposition& eig) {
  if (eig.converged) return;
  Log(options,
      absl::StrFormat("warning: the %s eigensolver stopped after %d iterations with relative "
                      "residual %.3g > --tolerance %.3g; raise --max-iterations or --oversampling",
                      what, eig.iterations, eig.max_relative_residual, options.tolerance));
}

std::string SpectraCsv(const std::vector<std::pair<std::string, Eigen::VectorXd>>& spectra) {
  std::string csv = "index";
  Eigen::Index rows = 0;
  for (const auto& [name, values] : spectra) {
    absl::StrAppend(&csv, ",", name);
    rows = std::max(rows, values.size());
  }
  csv += "\n";
  for (Eigen::Index k = 0; k < rows; ++k) {
    absl::StrAppend(&csv, k + 1);
    for (const auto& [name, values] : spectra) {
      csv += ",";
      if (k < values.size()) csv += absl::StrFormat("%.17g", values(k));
    }
    csv += "\n";
  }
  return csv;
}

double Fraction(double part, double total) { return total > 0.0 ? part / total : 0.0; }

}  // namespace

const char* InputBasisName(InputBasisKind kind) {
  return kind == InputBasisKind::kActiveSubspace ? "active_subspace" : "kle";
}

absl::StatusOr<InputBasisKind> ParseInputBasis(absl::string_view name) {
  if (name == "active_subspace") return InputBasisKind::kActiveSubspace;
  if (name == "kle") return InputBasisKind::kKle;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown input basis '", name, "' (known: active_subspace, kle)"));
}

const char* OutputBasisName(OutputBasisKind kind) {
  return kind == OutputBasisKind::kPod ? "pod" : "output_derivative";
}

absl::StatusOr<OutputBasisKind> ParseOutputBasis(absl::string_view name) {
  if (name == "pod") return OutputBasisKind::kPod;
  if (name == "output_derivative") return OutputBasisKind::kOutputDerivative;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown output basis '", name, "' (known: pod, output_derivative)"));
}

const char* JacobianFilesName(JacobianFiles source) {
  switch (source) {
    case JacobianFiles::kAuto:
      return "auto";
    case JacobianFiles::kFull:
      return "full";
    case JacobianFiles::kSvd:
      return "svd";
    case JacobianFiles::kNone:
      return "none";
  }
  return "unknown";
}

absl::StatusOr<JacobianFiles> ParseJacobianFiles(absl::string_view name) {
  if (name == "auto") return JacobianFiles::kAuto;
  if (name == "full") return JacobianFiles::kFull;
  if (name == "svd") return JacobianFiles::kSvd;
  if (name == "none") return JacobianFiles::kNone;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown Jacobian source '", name, "' (known: auto, full, svd, none)"));
}

absl::StatusOr<BasesReport> ComputeBases(const BasesOptions& options) {
  const auto start = Clock::now();
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data must name a directory");
  if (options.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be 0 (all cores) or positive, not ", options.threads));
  }
  const int threads = options.threads == 0 ? AvailableCores() : options.threads;
  const std::string out_dir = options.out_dir.empty() ? options.data_dir : options.out_dir;

  // generate.json (optional) and the outputs.
  const std::string summary_path = JoinPath(options.data_dir, kGenerateSummaryFile);
  std::optional<nlohmann::json> summary;
  if (PathExists(summary_path)) {
    absl::StatusOr<nlohmann::json> read = ReadSummary(summary_path);
    if (!read.ok()) return read.status();
    summary = *std::move(read);
  }
  const std::string mq_path = JoinPath(options.data_dir, kMqFile);
  absl::StatusOr<NpzReader> mq = NpzReader::Open(mq_path);
  if (!mq.ok()) return mq.status();
  absl::StatusOr<NpyArray> m = ReadFloat64Array(*mq, kMData, {-1, -1});
  if (!m.ok()) return m.status();
  const int64_t n = m->shape[0], d_m = m->shape[1];
  absl::StatusOr<NpyArray> q = ReadFloat64Array(*mq, kQData, {n, -1});
  if (!q.ok()) return q.status();
  const int64_t d_q = q->shape[1];
  if (n < 1 || d_m < 1 || d_q < 1) {
    return absl::InvalidArgumentError(absl::StrCat(mq_path, ": empty data (m_data ",
                                                   ShapeToString(m->shape), ", q_data ",
                                                   ShapeToString(q->shape), ")"));
  }
  if (summary.has_value()) {
    for (const auto& [field, value] :
         {std::make_pair("samples", n), std::make_pair("parameter_dim", d_m),
          std::make_pair("observation_dim", d_q)}) {
      if ((*summary)[field].get<int64_t>() != value) {
        return absl::InvalidArgumentError(
            absl::StrCat(summary_path, " says ", field, " = ", (*summary)[field].get<int64_t>(),
                         " but ", mq_path, " has ", value, " (m_data ", ShapeToString(m->shape),
                         ", q_data ", ShapeToString(q->shape), ")"));
      }
    }
  }

  BasesReport report;
  report.samples = n;
  report.parameter_dim = d_m;
  report.observation_dim = d_q;
  report.input_rank = options.input_rank;
  report.output_rank = options.output_rank == 0 ? static_cast<int>(d_q) : options.output_rank;
  if (options.input_rank < 1 || options.input_rank > d_m) {
    return absl::InvalidArgumentError(
        absl::StrCat("--input-rank must be in [1, ", d_m, "] (d_M), not ", options.input_rank));
  }
  if (report.output_rank < 1 || report.output_rank > d_q) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--output-rank must be in [1, ", d_q, "] (d_Q; 0 means d_Q), not ", options.output_rank));
  }
  const int r_m = report.input_rank, r_q = report.output_rank;

  absl::StatusOr<JacobianData> jacobians =
      ReadJacobians(options, summary ? &*summary : nullptr, n, d_q, d_m);
  if (!jacobians.ok()) return jacobians.status();
  report.jacobian_file = jacobians->file;
  const bool have_jacobians = jacobians->samples.has_value();

  absl::StatusOr<std::optional<std::pair<Problem, int>>> prior_setting =
      ResolvePrior(options, summary ? &*summary : nullptr, summary_path);
  if (!prior_setting.ok()) return prior_setting.status();
  const bool want_kle = options.kle || options.input_basis == InputBasisKind::kKle;

  // What the chosen bases need.
  if (!have_jacobians && (options.input_basis == InputBasisKind::kActiveSubspace ||
                          options.output_basis == OutputBasisKind::kOutputDerivative)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the ",
        options.input_basis == InputBasisKind::kActiveSubspace ? "active subspace (--input-basis)"
                                                               : "output derivative basis",
        " needs Jacobian data, but ",
        options.jacobian_source == JacobianFiles::kNone
            ? "--jacobian-source is none"
            : absl::StrCat(options.data_dir, " has neither ", kJacobianFile, " nor ", kJsvdFile),
        " (generate with --jacobian svd or full, or choose --input-basis kle and "
        "--output-basis pod)"));
  }
  if (options.input_basis == InputBasisKind::kKle && !prior_setting->has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--input-basis kle needs the prior: ", summary_path,
                     " does not exist, so pass --problem and --mesh"));
  }
  if (options.input_basis == InputBasisKind::kKle && prior_setting->has_value() &&
      pde::StructuredTriMesh((*prior_setting)->second).num_nodes() != d_m) {
    return absl::InvalidArgumentError(
        absl::StrCat("the prior's ", (*prior_setting)->second, "² mesh has ",
                     pde::StructuredTriMesh((*prior_setting)->second).num_nodes(), " nodes but ",
                     mq_path, " has d_M = ", d_m));
  }

  bases::EigensolverOptions solver;
  solver.rank = r_m;
  solver.seed = options.seed;
  solver.oversampling = options.oversampling;
  solver.max_iterations = options.max_iterations;
  solver.tolerance = options.tolerance;

  std::vector<std::pair<std::string, NpyArray>> arrays;
  std::vector<std::pair<std::string, Eigen::VectorXd>> spectra;
  nlohmann::json details = nlohmann::json::object();
  Eigen::MatrixXd input_basis, output_basis;
  Eigen::VectorXd output_shift;

  try {
    // Active subspace and output derivative basis.
    if (have_jacobians) {
      const bases::JacobianSamples& samples = *jacobians->samples;
      const double trace = samples.MeanSquaredNorm();
      const int64_t informed = samples.is_full() ? n * std::min(d_q, d_m) : n * jacobians->rank;
      if (informed < r_m) {
        Log(options, absl::StrCat("note: the Jacobian data span at most ", informed,
                                  " input directions (n·", samples.is_full() ? "d_Q" : "r",
                                  "); active-subspace vectors beyond that are arbitrary "
                                  "directions of its null space"));
      }
      auto t0 = Clock::now();
      const bases::EigenDecomposition as = bases::ActiveSubspace(samples, solver, threads);
      const double as_seconds = SecondsSince(t0);
      WarnIfUnconverged(options, "active subspace", as);
      const bool dense_output = d_q <= bases::kDenseOutputLimit;
      bases::EigensolverOptions output_solver = solver;
      output_solver.rank = dense_output ? static_cast<int>(d_q) : r_q;
      t0 = Clock::now();
      const bases::EigenDecomposition od =
          bases::OutputDerivativeBasis(samples, output_solver, threads);
      const double od_seconds = SecondsSince(t0);
      WarnIfUnconverged(options, "output derivative", od);

      arrays.emplace_back("active_subspace_basis", MatrixToArray(as.vectors));
      arrays.emplace_back("active_subspace_eigenvalues", VectorToArray(as.values));
      arrays.emplace_back("output_derivative_basis", MatrixToArray(od.vectors.leftCols(r_q)));
      arrays.emplace_back("output_derivative_eigenvalues", VectorToArray(od.values));
      spectra.emplace_back("active_subspace", as.values);
      spectra.emplace_back("output_derivative", od.values);
      details["active_subspace"] = SolverJson(as, as_seconds);
      details["active_subspace"]["trace"] = trace;
      details["active_subspace"]["captured_fraction"] = Fraction(as.values.sum(), trace);
      details["output_derivative"] = SolverJson(od, od_seconds);
      details["output_derivative"]["trace"] = trace;
      details["output_derivative"]["captured_fraction"] =
          Fraction(od.values.head(r_q).sum(), trace);
      if (options.input_basis == InputBasisKind::kActiveSubspace) input_basis = as.vectors;
      if (options.output_basis == OutputBasisKind::kOutputDerivative) {
        output_basis = od.vectors.leftCols(r_q);
      }
      report.bases.push_back("active_subspace");
      report.bases.push_back("output_derivative");
    }

    // POD of the outputs: the complete spectrum (as many as the dense path allows).
    auto t0 = Clock::now();
    const int pod_rank =
        static_cast<int>(d_q <= bases::kDenseOutputLimit ? d_q : std::min<int64_t>(n, d_q));
    if (pod_rank < r_q) {
      return absl::InvalidArgumentError(absl::StrCat("--output-rank ", r_q, " exceeds the ",
                                                     pod_rank, " POD modes available from n = ", n,
                                                     " samples (d_Q is above the dense limit)"));
    }
    const bases::Pod pod = bases::OutputPod(Data(*q), n, d_q, pod_rank);
    arrays.emplace_back("pod_basis", MatrixToArray(pod.basis.leftCols(r_q)));
    arrays.emplace_back("pod_eigenvalues", VectorToArray(pod.eigenvalues));
    spectra.emplace_back("pod", pod.eigenvalues);
    details["pod"] = {
        {"total_variance", pod.total_variance},
        {"captured_fraction", Fraction(pod.eigenvalues.head(r_q).sum(), pod.total_variance)},
        {"seconds", SecondsSince(t0)}};
    if (options.output_basis == OutputBasisKind::kPod) output_basis = pod.basis.leftCols(r_q);
    // The DIPNet's shift b is the output mean whichever output basis is used: the network then
    // represents fluctuations about it (the part of b outside span(U) is kept exactly).
    output_shift = pod.mean;
    report.bases.push_back("pod");

    // KLE of the prior.
    if (want_kle && prior_setting->has_value()) {
      const auto [problem, mesh] = **prior_setting;
      const pde::StructuredTriMesh prior_mesh(mesh);
      if (prior_mesh.num_nodes() != d_m) {
        Log(options, absl::StrCat("note: skipping the KLE: the prior's ", mesh, "² mesh has ",
                                  prior_mesh.num_nodes(), " nodes but d_M = ", d_m));
      } else {
        t0 = Clock::now();
        const pde::BiLaplacianPrior prior(prior_mesh, PriorConfigFor(problem));
        const bases::KarhunenLoeve kle = bases::PriorKle(prior, solver);
        WarnIfUnconverged(options, "KLE", kle.solver);
        arrays.emplace_back("kle_basis", MatrixToArray(kle.basis));
        arrays.emplace_back("kle_modes", MatrixToArray(kle.modes));
        arrays.emplace_back("kle_eigenvalues", VectorToArray(kle.eigenvalues));
        arrays.emplace_back("kle_coordinate_variances", VectorToArray(kle.coordinate_variances));
        spectra.emplace_back("kle", kle.eigenvalues);
        details["kle"] = SolverJson(kle.solver, SecondsSince(t0));
        details["kle"]["problem"] = ProblemName(problem);
        details["kle"]["mesh"] = mesh;
        details["kle"]["inner_product"] = "L2 (mass matrix)";
        if (options.input_basis == InputBasisKind::kKle) input_basis = kle.basis;
        report.bases.push_back("kle");
      }
    } else if (want_kle) {
      Log(options, absl::StrCat("note: skipping the KLE: ", summary_path,
                                " does not exist and --problem/--mesh were not given"));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("computing the bases of ", options.data_dir, " failed: ", e.what()));
  }

  // bases.npz: the DIPNet's three arrays first, then every basis and spectrum.
  absl::Status status = MakeDirectories(out_dir);
  if (!status.ok()) return status;
  NpzWriteOptions write_options;
  write_options.compress = options.compress;
  const std::string bases_path = JoinPath(out_dir, kBasesFile);
  absl::StatusOr<AtomicNpzWriter> writer = AtomicNpzWriter::Create(bases_path, write_options);
  if (!writer.ok()) return writer.status();
  status = writer->Add("input_basis", MatrixToArray(input_basis));
  if (status.ok()) status = writer->Add("output_basis", MatrixToArray(output_basis));
  if (status.ok()) status = writer->Add("output_shift", VectorToArray(output_shift));
  if (!status.ok()) return status;
  for (const auto& [name, array] : arrays) {
    status = writer->Add(name, array);
    if (!status.ok()) return status;
  }
  status = writer->Commit();
  if (!status.ok()) return status;
  report.files.push_back(bases_path);

  const std::string csv_path = JoinPath(out_dir, kSpectraFile);
  status = WriteFileAtomically(csv_path, SpectraCsv(spectra));
  if (!status.ok()) return status;
  report.files.push_back(csv_path);

  report.seconds = SecondsSince(start);
  nlohmann::json bases_summary = {
      {"data_dir", options.data_dir},
      {"samples", n},
      {"parameter_dim", d_m},
      {"observation_dim", d_q},
      {"jacobian_file", report.jacobian_file.empty() ? nlohmann::json(nullptr)
                                                     : nlohmann::json(report.jacobian_file)},
      {"input_basis", InputBasisName(options.input_basis)},
      {"input_rank", r_m},
      {"output_basis", OutputBasisName(options.output_basis)},
      {"output_rank", r_q},
      {"bases", report.bases},
      {"threads", threads},
      {"eigensolver",
       {{"seed", options.seed},
        {"block_size", bases::BlockSize(d_m, solver)},
        {"max_iterations", options.max_iterations},
        {"tolerance", options.tolerance}}},
      {"details", details},
      {"seconds", report.seconds},
  };
  if (jacobians->rank > 0) bases_summary["svd_rank"] = jacobians->rank;
  const std::string json_path = JoinPath(out_dir, kBasesSummaryFile);
  status = WriteFileAtomically(json_path, bases_summary.dump(2) + "\n");
  if (!status.ok()) return status;
  report.files.push_back(json_path);
  return report;
}

}  // namespace dino::pipeline
