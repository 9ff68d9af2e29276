// The exact parameter-to-observable maps of the project's PDE problems (models/pde: P1 finite
// elements, adjoint derivatives) served as a SurrogateModel, so that a client switches between
// truth and a DINO surrogate by model name, under the same scheduler, limits and metrics.
//
// A PDE model is a version folder with a JSON config instead of model.pt:
//   <repository>/<name>/<version>/pde.json
//   {"problem": "poisson" | "reaction_diffusion",   required
//    "mesh_cells": 64,                               optional, n × n squares, d_M = (n + 1)²
//    "observation_points": [[x, y], …],             optional, default the paper's 50 points
//    "description": "…"}                             optional, shown in the model's metadata
// The problem (state equation, forcing, observation points, prior) is exactly the one
// `dino-train generate --problem P --mesh n` uses (models/pipeline/problems.h), so the served
// map agrees with the generator's data; custom observation_points change only B.
//
// Methods, per point m (one Newton/linear solve, then, with the Cholesky factor of the state
// Jacobian reused):
//   Evaluate                     q = B u(m)
//   Jvp (k directions)           k linearized (sensitivity) solves
//   Vjp (k cotangents)           k adjoint solves
//   Jacobian                     min(d_Q, d_M) solves (adjoint rows or sensitivity columns)
//   ReducedJacobian (client U_c [d_Q, k_Q], V_c [d_M, k_M])
//                                U_cᵀ J V_c from min(k_Q, k_M) adjoint or sensitivity solves
// and wherever k exceeds min(d_Q, d_M), from the full Jacobian instead. The model has no bases
// of its own (GetBases and ReducedJacobian without client bases: FAILED_PRECONDITION). The
// points of a batch are solved in parallel (at::parallel_for over the intra-op threads,
// --torch_threads), each on a solver of a pool (a pde::LogDiffusionModel is not thread-safe;
// each keeps its symbolic factorization between solves). float64 throughout.
#pragma once

#include <array>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/pde/model.h"
#include "models/pipeline/problems.h"
#include "server/core/surrogate_model.h"

namespace dino::serving {

inline constexpr char kPdeConfigFileName[] = "pde.json";
inline constexpr char kPdeArchitecture[] = "pde";

struct PdeServableConfig {
  pipeline::Problem problem = pipeline::Problem::kPoisson;
  int mesh_cells = 64;  // dino-train generate's default --mesh.
  // Empty: the problem's own (the paper's 50 points).
  std::vector<std::array<double, 2>> observation_points;
  std::string description;
};

// Checks a pde.json object: unknown keys, missing "problem", wrong types and out-of-range
// values are INVALID_ARGUMENT naming the key (e.g. "mesh_cells must be an integer in [2,
// 1024], got 1", "observation_points[3] must be [x, y] in the unit square").
absl::StatusOr<PdeServableConfig> ParsePdeServableConfig(const nlohmann::json& config);

class PdeSolverModel final : public SurrogateModel {
 public:
  // Reads and checks `path` (a pde.json), builds the problem and its prior and solves once at
  // the prior mean. Errors name the file and the key.
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> Load(const std::string& path,
                                                                    ComputeLimits limits);
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> FromConfig(
      const PdeServableConfig& config, const std::string& origin, ComputeLimits limits);

  absl::StatusOr<Bases> GetBases() const override;

  // The state equation's configuration, as every solver of this model has it.
  const pde::ProblemConfig& problem_config() const { return problem_config_; }

 protected:
  std::vector<Answer> ComputeBatch(absl::Span<const PreparedQuery* const> batch) const override;
  // e^m must be a positive finite double at every node.
  absl::Status CheckPoints(const torch::Tensor& points) const override;

 private:
  PdeSolverModel(ModelInfo info, ComputeLimits limits, PriorLookup prior,
                 pde::ProblemConfig problem_config,
                 std::unique_ptr<pde::LogDiffusionModel> first_solver);

  // A solver taken from the pool for one point's computation, returned when destroyed.
  class PooledSolver;
  std::unique_ptr<pde::LogDiffusionModel> TakeSolver() const;
  void ReturnSolver(std::unique_ptr<pde::LogDiffusionModel> solver) const;

  const pde::ProblemConfig problem_config_;
  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<pde::LogDiffusionModel>> idle_solvers_;
};

}  // namespace dino::serving
