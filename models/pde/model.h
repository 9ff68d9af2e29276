// The parametric maps m ↦ q(m) of paper §3.1.1 (Poisson) and §3.1.2 (reaction–diffusion),
// their exact Jacobians ∇q(m) ∈ R^{d_Q × d_M} and Jacobian actions, by P1 finite elements.
//
// State equation, on Ω = (0,1)², for the P1 parameter m (nodal values, d_M = (n+1)²):
//     −∇·(e^m ∇u) + c u³ = f   in Ω,
//     u = 1 on the top edge (y = 1),  u = 0 on the bottom edge (y = 0),
//     e^m ∂u/∂n = 0 on the sides (x = 0, x = 1).
// Poisson: c = 0, f = 0. Reaction–diffusion: c = 1 and f = 25 sources (see README.md for the
// settings and where they come from). The state u is P1 on the same mesh and q = B u samples
// it at the observation points by P1 interpolation.
//
// Discretization (all integrals per element T):
//  * Diffusion: e^m is evaluated pointwise at quadrature points of the P1 interpolant m_h,
//    as UFL does for exp(m) with a P1 m in hIPPYlib/FEniCS. Since ∇u_h·∇v_h is constant on
//    T, the element matrix is κ_T S_T with κ_T = |T|⁻¹∫_T e^{m_h} dx (DegreeFourRule) and
//    S_T the unit-coefficient stiffness. ∂κ_T/∂m_a = |T|⁻¹∫_T e^{m_h} φ_a dx, same rule.
//  * Reaction c∫u_h³φ_i and Newton matrix 3c∫u_h²φ_iφ_j: DegreeFourRule, exact (degree 4).
//  * Distributed sources ∫ f φ_i: DegreeFourRule; Dirac sources: s φ_i(x_s).
//  * Dirichlet conditions by elimination: the unknowns are the (n+1)(n−1) nodes with
//    0 < y < 1, so every linear system is symmetric positive definite (e^m > 0, c ≥ 0) and is
//    solved with a sparse Cholesky factorization (Eigen::SimplicialLLT, AMD ordering).
//
// Derivatives. With R(u, m) = 0 the discrete state equation on the free nodes and
// J_u = ∂R/∂u (= K(m) + 3c M(u²), symmetric), the exact derivative of the discrete map is
//     ∇q = −B J_u⁻¹ ∂R/∂m,     ∂R_i/∂m_a = Σ_T ∂κ_T/∂m_a (S_T u_T)_i.
// Jv costs one forward sensitivity solve per column, Jᵀw one adjoint solve per column, the
// full Jacobian d_Q = 50 adjoint solves; all reuse the Cholesky factor of J_u at the solution.
#ifndef DINO_MODELS_PDE_MODEL_H_
#define DINO_MODELS_PDE_MODEL_H_

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/pde/fem.h"
#include "models/pde/mesh.h"
#include "models/pde/randomized_svd.h"

namespace dino::pde {

// How point sources enter the right-hand side.
enum class SourceModel {
  // f(x) = Σ_k s_k a exp(−|x − x_k|²/b²), a = 1/(2πb²), b = mollifier_width: what the
  // authors' code (tomoleary/dino, applications/rdiff) integrates; each source then carries
  // total mass s_k a π b² = s_k / 2 (up to truncation by ∂Ω).
  kGaussianMollifier,
  // f = Σ_k s_k δ_{x_k}: load s_k φ_i(x_k). The discrete state is then only O(h) accurate
  // near each source (u has a logarithmic singularity there).
  kDirac,
};

struct PointSource {
  Eigen::Vector2d location;
  double strength = 0.0;
};

struct Forcing {
  std::vector<PointSource> point_sources;
  SourceModel source_model = SourceModel::kGaussianMollifier;
  double mollifier_width = 0.1;
  // Optional distributed source density added to the point sources (e.g. for manufactured
  // solutions). Empty means none.
  std::function<double(const Eigen::Vector2d&)> density;
};

struct NewtonOptions {
  // Converged when ‖R(u_k)‖₂ ≤ max(absolute_tolerance, relative_tolerance · ‖R(u_0)‖₂),
  // R the residual on the free nodes.
  double relative_tolerance = 1e-10;
  double absolute_tolerance = 1e-12;
  int max_iterations = 50;
  // Backtracking line search on the (convex) energy functional, halving the step.
  int max_backtracks = 30;
  double armijo_c1 = 1e-4;
};

struct ProblemConfig {
  int n = StructuredTriMesh::kDefaultResolution;
  double reaction_coefficient = 0.0;  // c ≥ 0; 0 makes the problem linear.
  Forcing forcing;
  std::vector<Eigen::Vector2d> observation_points;
  double top_value = 1.0;     // u on y = 1.
  double bottom_value = 0.0;  // u on y = 0.
  NewtonOptions newton;
};

// The 50 observation points: 10 × 5 grid x = 0.05, 0.15, …, 0.95, y = 0.05, …, 0.45,
// point index 10·j + i (x fastest).
std::vector<Eigen::Vector2d> PaperObservationPoints();
// The 25 sources of §3.1.2 at the 5 × 5 grid {0.25, 0.375, 0.5, 0.625, 0.75}², index 5·j + i
// (x fastest), strengths −0.25 where i + j is even and +0.25 where it is odd (the authors'
// checkerboard: 13 sinks, 12 sources).
std::vector<PointSource> ReactionDiffusionSources();
// Paper §3.1.1 on an n × n mesh: c = 0, f = 0.
ProblemConfig PoissonProblem(int n = StructuredTriMesh::kDefaultResolution);
// Paper §3.1.2 on an n × n mesh: c = 1, ReactionDiffusionSources() mollified with b = 0.1.
ProblemConfig ReactionDiffusionProblem(int n = StructuredTriMesh::kDefaultResolution);

struct SolveReport {
  int iterations = 0;  // Newton steps taken (1 for the linear problem unless u_0 solves it).
  int backtracks = 0;  // Total step halvings in the line search.
  double initial_residual_norm = 0.0;
  double final_residual_norm = 0.0;
  double tolerance = 0.0;                // The residual norm that counted as converged.
  std::vector<double> residual_history;  // ‖R(u_k)‖₂, k = 0, …, iterations.
};

// The state equation could not be solved: Newton did not converge, the line search found no
// decrease, or a factorization failed. what() says which, with the residual norms; report()
// holds the iteration history up to the failure.
class SolveError : public std::runtime_error {
 public:
  SolveError(const std::string& what, SolveReport report)
      : std::runtime_error(what), report_(std::move(report)) {}
  const SolveReport& report() const { return report_; }

 private:
  SolveReport report_;
};

namespace internal {
struct Discretization;
struct EvaluationState;
struct Factorization;
}  // namespace internal

// The model at one parameter value: state, observables and derivative actions. Cheap to copy
// (shared, immutable state); stays valid after the model that made it is destroyed or
// evaluated again. Const methods are safe to call concurrently.
class Evaluation {
 public:
  const Eigen::VectorXd& parameter() const;    // m [d_M]
  const Eigen::VectorXd& state() const;        // u [d_M] (all nodes, Dirichlet values included)
  const Eigen::VectorXd& observables() const;  // q = B u [d_Q]
  const SolveReport& report() const;
  Eigen::Index parameter_dim() const;
  Eigen::Index observation_dim() const;

  // ∇q(m) [d_Q × d_M] from d_Q adjoint solves.
  Eigen::MatrixXd Jacobian() const;
  // J V for V [d_M × k] → [d_Q × k]: k forward sensitivity solves.
  Eigen::MatrixXd ApplyJacobian(const Eigen::MatrixXd& directions) const;
  // Jᵀ W for W [d_Q × k] → [d_M × k]: k adjoint solves.
  Eigen::MatrixXd ApplyJacobianTranspose(const Eigen::MatrixXd& weights) const;
  // J as a LinearOperator (holds a copy of this Evaluation).
  LinearOperator JacobianOperator() const;
  // Randomized truncated SVD of J from Jacobian actions (see randomized_svd.h).
  TruncatedSvd JacobianSvd(const RandomizedSvdOptions& options, NormalRng& rng) const;

 private:
  friend class LogDiffusionModel;
  explicit Evaluation(std::shared_ptr<const internal::EvaluationState> state);
  std::shared_ptr<const internal::EvaluationState> state_;
};

// Solves the state equation for given parameters. Keeps the Cholesky factorization's symbolic
// analysis (AMD ordering, elimination tree) and reuses it for every solve whose previous
// Evaluation has been released; while an earlier Evaluation is alive its factor is kept
// intact and a new one is analyzed. Not thread-safe: use one model per thread.
class LogDiffusionModel {
 public:
  // Throws std::invalid_argument for an invalid configuration (n < 2, c < 0 or non-finite,
  // observation or source points outside Ω, no observation points, bad Newton options).
  explicit LogDiffusionModel(const ProblemConfig& config);
  ~LogDiffusionModel();
  LogDiffusionModel(LogDiffusionModel&&) noexcept;
  LogDiffusionModel& operator=(LogDiffusionModel&&) noexcept;

  const ProblemConfig& config() const;
  const StructuredTriMesh& mesh() const;
  Eigen::Index parameter_dim() const;                // d_M = (n+1)²
  Eigen::Index observation_dim() const;              // d_Q
  const SparseMatrix& observation_operator() const;  // B [d_Q × d_M]
  const Eigen::VectorXd& load_vector() const;        // ∫ f φ_i (+ Dirac loads), all nodes

  // Solves for u(m). Throws std::invalid_argument if m has the wrong length, is not finite
  // or e^m overflows, and SolveError if the solve fails.
  Evaluation Evaluate(const Eigen::VectorXd& parameter);

 private:
  std::shared_ptr<const internal::Discretization> disc_;
  std::shared_ptr<internal::Factorization> cache_;
};

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_MODEL_H_
