#include "server/core/pde_solver_model.h"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dino::serving {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMajorMap = Eigen::Map<const RowMajorMatrix>;
using Layout = PreparedQuery::Layout;

constexpr const char* kKnownKeys[] = {"problem", "mesh_cells", "observation_points", "description"};
// e^m is a positive finite double for |m| below about 709; a little margin.
constexpr double kMaxLogCoefficient = 700.0;

absl::Status ConfigError(const std::string& why) { return absl::InvalidArgumentError(why); }

// ∇q(m) with min(d_Q, d_M) solves: d_Q adjoint solves (rows) or d_M sensitivity solves
// (columns).
Eigen::MatrixXd FullJacobian(const pde::Evaluation& evaluation) {
  const Eigen::Index d_m = evaluation.parameter_dim();
  if (d_m < evaluation.observation_dim()) {
    return evaluation.ApplyJacobian(Eigen::MatrixXd::Identity(d_m, d_m));
  }
  return evaluation.Jacobian();
}

Eigen::Index FullJacobianSolves(const pde::Evaluation& evaluation) {
  return std::min(evaluation.parameter_dim(), evaluation.observation_dim());
}

// One point of one query: where its inputs are and where its results go.
struct PointTask {
  const PreparedQuery* query = nullptr;
  int64_t point = 0;
  torch::Tensor* values = nullptr;  // The query's [P, …] result.
  torch::Tensor* q = nullptr;       // The query's [P, d_Q].
};

// Solves at the task's point and writes q and the method's result.
void ComputePoint(pde::LogDiffusionModel& solver, const PointTask& task) {
  const PreparedQuery& query = *task.query;
  const int64_t d_m = solver.parameter_dim(), d_q = solver.observation_dim();
  const int64_t p = task.point;
  const Eigen::VectorXd m =
      Eigen::Map<const Eigen::VectorXd>(query.points.data_ptr<double>() + p * d_m, d_m);
  const pde::Evaluation evaluation = solver.Evaluate(m);
  Eigen::Map<Eigen::VectorXd>(task.q->data_ptr<double>() + p * d_q, d_q) = evaluation.observables();
  double* out = task.values->data_ptr<double>();
  switch (query.method) {
    case Method::kEvaluate:
      break;  // q is the result.
    case Method::kJvp: {
      // directions[p] [k, d_M] row-major is V [d_M, k] column-major; likewise the result.
      const int64_t k = query.vectors.size(1);
      Eigen::Map<const Eigen::MatrixXd> directions(query.vectors.data_ptr<double>() + p * k * d_m,
                                                   d_m, k);
      Eigen::Map<Eigen::MatrixXd> jvp(out + p * k * d_q, d_q, k);
      if (k > FullJacobianSolves(evaluation)) {
        jvp = FullJacobian(evaluation) * directions;
      } else {
        jvp = evaluation.ApplyJacobian(directions);
      }
      break;
    }
    case Method::kVjp: {
      const int64_t k = query.vectors.size(1);
      Eigen::Map<const Eigen::MatrixXd> cotangents(query.vectors.data_ptr<double>() + p * k * d_q,
                                                   d_q, k);
      Eigen::Map<Eigen::MatrixXd> vjp(out + p * k * d_m, d_m, k);
      if (k > FullJacobianSolves(evaluation)) {
        vjp = FullJacobian(evaluation).transpose() * cotangents;
      } else {
        vjp = evaluation.ApplyJacobianTranspose(cotangents);
      }
      break;
    }
    case Method::kJacobian:
      Eigen::Map<RowMajorMatrix>(out, d_q, d_m) = FullJacobian(evaluation);
      break;
    case Method::kHessianVectorProduct:
      throw std::logic_error("HessianVectorProduct reached a PDE model");  // Prepare refuses it.
    case Method::kReducedJacobian: {
      const int64_t k_q = query.output_basis.size(1), k_m = query.input_basis.size(1);
      ConstRowMajorMap u(query.output_basis.data_ptr<double>(), d_q, k_q);
      ConstRowMajorMap v(query.input_basis.data_ptr<double>(), d_m, k_m);
      Eigen::Map<RowMajorMatrix> reduced(out + p * k_q * k_m, k_q, k_m);
      // The fewer solves: k_Q adjoint or k_M sensitivity ones (never more than the full
      // Jacobian's min(d_Q, d_M), since k_Q ≤ d_Q and k_M ≤ d_M).
      if (k_q <= k_m) {
        const Eigen::MatrixXd u_dense = u;
        reduced = evaluation.ApplyJacobianTranspose(u_dense).transpose() * v;
      } else {
        const Eigen::MatrixXd v_dense = v;
        reduced = u.transpose() * evaluation.ApplyJacobian(v_dense);
      }
      break;
    }
  }
}

}  // namespace

absl::StatusOr<PdeServableConfig> ParsePdeServableConfig(const nlohmann::json& config) {
  if (!config.is_object()) return ConfigError("must hold a JSON object");
  for (const auto& [key, value] : config.items()) {
    if (std::find(std::begin(kKnownKeys), std::end(kKnownKeys), key) == std::end(kKnownKeys)) {
      return ConfigError(
          absl::StrCat("unknown key '", key, "' (known: ", absl::StrJoin(kKnownKeys, ", "), ")"));
    }
  }
  PdeServableConfig parsed;
  if (!config.contains("problem")) {
    return ConfigError("problem is required (\"poisson\" or \"reaction_diffusion\")");
  }
  if (!config["problem"].is_string()) {
    return ConfigError("problem must be a string (\"poisson\" or \"reaction_diffusion\")");
  }
  absl::StatusOr<pipeline::Problem> problem =
      pipeline::ParseProblem(config["problem"].get<std::string>());
  if (!problem.ok()) return ConfigError(absl::StrCat("problem: ", problem.status().message()));
  parsed.problem = *problem;
  if (config.contains("mesh_cells")) {
    const nlohmann::json& mesh = config["mesh_cells"];
    if (!mesh.is_number_integer() || mesh.get<int64_t>() < pipeline::kMinMesh ||
        mesh.get<int64_t>() > pipeline::kMaxMesh) {
      return ConfigError(absl::StrCat("mesh_cells must be an integer in [", pipeline::kMinMesh,
                                      ", ", pipeline::kMaxMesh, "], got ", mesh.dump()));
    }
    parsed.mesh_cells = mesh.get<int>();
  }
  if (config.contains("observation_points")) {
    const nlohmann::json& points = config["observation_points"];
    if (!points.is_array() || points.empty()) {
      return ConfigError("observation_points must be a non-empty array of [x, y] points");
    }
    for (size_t i = 0; i < points.size(); ++i) {
      const nlohmann::json& point = points[i];
      const bool valid = point.is_array() && point.size() == 2 && point[0].is_number() &&
                         point[1].is_number() && point[0].get<double>() >= 0.0 &&
                         point[0].get<double>() <= 1.0 && point[1].get<double>() >= 0.0 &&
                         point[1].get<double>() <= 1.0;
      if (!valid) {
        return ConfigError(absl::StrCat("observation_points[", i,
                                        "] must be [x, y] with 0 ≤ x, y ≤ 1 (the domain is the "
                                        "unit square), got ",
                                        point.dump()));
      }
      parsed.observation_points.push_back({point[0].get<double>(), point[1].get<double>()});
    }
  }
  if (config.contains("description")) {
    if (!config["description"].is_string()) return ConfigError("description must be a string");
    parsed.description = config["description"].get<std::string>();
  }
  return parsed;
}

class PdeSolverModel::PooledSolver {
 public:
  explicit PooledSolver(const PdeSolverModel& model) : model_(model), solver_(model.TakeSolver()) {}
  ~PooledSolver() { model_.ReturnSolver(std::move(solver_)); }
  PooledSolver(const PooledSolver&) = delete;
  PooledSolver& operator=(const PooledSolver&) = delete;
  pde::LogDiffusionModel& operator*() { return *solver_; }

 private:
  const PdeSolverModel& model_;
  std::unique_ptr<pde::LogDiffusionModel> solver_;
};

PdeSolverModel::PdeSolverModel(ModelInfo info, ComputeLimits limits, PriorLookup prior,
                               pde::ProblemConfig problem_config,
                               std::unique_ptr<pde::LogDiffusionModel> first_solver)
    : SurrogateModel(std::move(info), limits, std::move(prior)),
      problem_config_(std::move(problem_config)) {
  idle_solvers_.push_back(std::move(first_solver));
}

std::unique_ptr<pde::LogDiffusionModel> PdeSolverModel::TakeSolver() const {
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!idle_solvers_.empty()) {
      std::unique_ptr<pde::LogDiffusionModel> solver = std::move(idle_solvers_.back());
      idle_solvers_.pop_back();
      return solver;
    }
  }
  // One more thread computes at once than ever before: a new solver (the discretization is
  // assembled again, milliseconds for the paper's mesh) that stays in the pool.
  return std::make_unique<pde::LogDiffusionModel>(problem_config_);
}

void PdeSolverModel::ReturnSolver(std::unique_ptr<pde::LogDiffusionModel> solver) const {
  if (solver == nullptr) return;
  std::lock_guard<std::mutex> lock(pool_mutex_);
  idle_solvers_.push_back(std::move(solver));
}

absl::StatusOr<SurrogateModel::Bases> PdeSolverModel::GetBases() const {
  return absl::FailedPreconditionError(
      "this model is an exact PDE model and has no reduced bases; give ReducedJacobian client "
      "bases (e.g. a surrogate's, from its GetBases)");
}

absl::Status PdeSolverModel::CheckPoints(const torch::Tensor& points) const {
  torch::Tensor magnitude = points.abs();
  if (magnitude.max().item<double>() <= kMaxLogCoefficient) return absl::OkStatus();
  torch::Tensor where = (magnitude > kMaxLogCoefficient).nonzero().select(0, 0);
  const int64_t row = where[0].item<int64_t>(), column = where[1].item<int64_t>();
  return absl::InvalidArgumentError(
      absl::StrCat("m[", row, ", ", column, "] = ", points[row][column].item<double>(),
                   ": the log-coefficient field m must lie in [", -kMaxLogCoefficient, ", ",
                   kMaxLogCoefficient, "] so that e^m is a positive finite double"));
}

std::vector<Answer> PdeSolverModel::ComputeBatch(
    absl::Span<const PreparedQuery* const> batch) const {
  const int64_t d_m = info_.input_dim, d_q = info_.output_dim;
  const auto f64 = torch::dtype(torch::kFloat64);
  // Results as [P, …] per query, filled point by point.
  std::vector<torch::Tensor> values(batch.size()), qs(batch.size());
  std::vector<PointTask> tasks;
  for (size_t i = 0; i < batch.size(); ++i) {
    const PreparedQuery& query = *batch[i];
    const int64_t points = query.points_count();
    qs[i] = torch::empty({points, d_q}, f64);
    switch (query.method) {
      case Method::kEvaluate:
        values[i] = qs[i];
        break;
      case Method::kJvp:
        values[i] = torch::empty({points, query.vectors.size(1), d_q}, f64);
        break;
      case Method::kVjp:
        values[i] = torch::empty({points, query.vectors.size(1), d_m}, f64);
        break;
      case Method::kJacobian:
        values[i] = torch::empty({d_q, d_m}, f64);
        break;
      case Method::kReducedJacobian:
        values[i] =
            torch::empty({points, query.output_basis.size(1), query.input_basis.size(1)}, f64);
        break;
      case Method::kHessianVectorProduct:
        throw std::logic_error("HessianVectorProduct reached a PDE model");  // Prepare refuses it.
    }
    for (int64_t p = 0; p < points; ++p) tasks.push_back({&query, p, &values[i], &qs[i]});
  }
  // Each point is one independent solve (and its derivative solves): in parallel, one pooled
  // solver per chunk of points.
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), /*grain_size=*/1,
                   [&](int64_t begin, int64_t end) {
                     PooledSolver solver(*this);
                     for (int64_t t = begin; t < end; ++t) ComputePoint(*solver, tasks[t]);
                   });
  std::vector<Answer> answers(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    const PreparedQuery& query = *batch[i];
    Answer& answer = answers[i];
    switch (query.method) {
      case Method::kEvaluate:
        answer.values = values[i];
        break;
      case Method::kJvp:
      case Method::kVjp:
        answer.values = InLayout(values[i], query.layout);
        if (query.want_q) answer.q = QInLayout(qs[i], query.layout);
        break;
      case Method::kJacobian:
        answer.values = values[i];
        if (query.want_q) answer.q = qs[i][0];
        break;
      case Method::kReducedJacobian:
        answer.values = values[i];
        answer.q = qs[i];
        break;
      case Method::kHessianVectorProduct:
        break;  // Never prepared (see above).
    }
  }
  return answers;
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> PdeSolverModel::FromConfig(
    const PdeServableConfig& config, const std::string& origin, ComputeLimits limits) {
  auto fail = [&origin](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", why));
  };
  pde::ProblemConfig problem_config = pipeline::ProblemConfigFor(config.problem, config.mesh_cells);
  const bool custom_points = !config.observation_points.empty();
  if (custom_points) {
    problem_config.observation_points.clear();
    for (const auto& [x, y] : config.observation_points) {
      problem_config.observation_points.emplace_back(x, y);
    }
  }
  std::unique_ptr<pde::LogDiffusionModel> solver;
  Eigen::VectorXd probe_q;
  try {
    solver = std::make_unique<pde::LogDiffusionModel>(problem_config);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  auto prior = ModelPrior::ForProblem(config.problem, config.mesh_cells);
  if (!prior.ok()) return fail(std::string(prior.status().message()));
  try {
    // The state equation must solve at the prior mean before the model serves.
    probe_q = solver->Evaluate((*prior)->bilaplacian().MeanVector()).observables();
  } catch (const std::exception& e) {
    return fail(absl::StrCat("the state equation does not solve at the prior mean: ", e.what()));
  }
  if (!probe_q.allFinite()) return fail("q at the prior mean is not finite");

  ModelInfo info;
  info.input_dim = solver->parameter_dim();
  info.output_dim = solver->observation_dim();
  info.architecture = kPdeArchitecture;
  info.dtype = torch::kFloat64;
  info.has_hessian_vector_product = false;
  nlohmann::json points = nlohmann::json::array();
  for (const Eigen::Vector2d& point : problem_config.observation_points) {
    points.push_back({point.x(), point.y()});
  }
  const char* name = pipeline::ProblemName(config.problem);
  info.metadata = {
      {"architecture", kPdeArchitecture},
      {"exact", true},
      {"description", config.description.empty()
                          ? absl::StrCat("the exact parameter-to-observable map of the ", name,
                                         " problem (paper §3.1) on a ", config.mesh_cells, " × ",
                                         config.mesh_cells, " mesh, by P1 finite elements")
                          : config.description},
      {"problem", {{"name", name}, {"mesh_cells", config.mesh_cells}}},
      {"dtype", "fp64"},
      {"input_dim", info.input_dim},
      {"output_dim", info.output_dim},
      {"observation_points", custom_points ? "custom" : "paper"},
      {"observation_coordinates", points},
      {"solver",
       "P1 finite elements on the unit square (n × n squares, 2n² triangles), Newton with "
       "sparse Cholesky (Eigen SimplicialLLT); Jvp by linearized solves, Vjp by adjoint solves, "
       "reusing the state Jacobian's factor"},
      {"prior", (*prior)->description()},
  };
  if (!custom_points) {
    info.metadata["same_map_as"] =
        absl::StrCat("dino-train generate --problem ", name, " --mesh ", config.mesh_cells);
  }
  PriorLookup lookup{*prior, "", kPdeConfigFileName};
  return std::shared_ptr<const SurrogateModel>(new PdeSolverModel(
      std::move(info), limits, std::move(lookup), std::move(problem_config), std::move(solver)));
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> PdeSolverModel::Load(const std::string& path,
                                                                           ComputeLimits limits) {
  std::ifstream file(path);
  if (!file) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read"));
  std::stringstream text;
  text << file.rdbuf();
  nlohmann::json config = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": is not valid JSON"));
  }
  absl::StatusOr<PdeServableConfig> parsed = ParsePdeServableConfig(config);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parsed.status().message()));
  }
  return FromConfig(*parsed, path, limits);
}

}  // namespace dino::serving
