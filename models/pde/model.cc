#include "models/pde/model.h"

#include <Eigen/SparseCholesky>
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "models/pde/quadrature.h"

namespace dino::pde {
namespace internal {

// Everything that depends on the configuration only; shared read-only by the model and all
// its evaluations.
struct Discretization {
  ProblemConfig config;
  StructuredTriMesh mesh;
  double area = 0.0;  // |T|, the same for every element.
  int num_free = 0;
  std::vector<int> free_of_node;            // Free-unknown index of a node, −1 if Dirichlet.
  std::vector<std::array<int, 3>> nodes;    // Element → node indices.
  std::vector<std::array<int, 3>> free;     // Element → free-unknown indices (−1: Dirichlet).
  std::vector<Eigen::Matrix3d> stiffness;   // S_T = ∫_T ∇φ_b·∇φ_a (unit coefficient).
  std::vector<std::array<int, 9>> slots;    // Element entry (a,b) → position in the value
                                            // array of `pattern`, −1 if not free × free.
  SparseMatrix pattern;                     // Free × free sparsity of every state matrix.
  Eigen::VectorXd load;                     // ∫ f φ_i (+ Dirac loads), all nodes.
  Eigen::VectorXd initial_state;            // Dirichlet values, linear in y inside.
  SparseMatrix observation;                 // B [d_Q × num_nodes].
  SparseMatrix observation_free_transpose;  // B restricted to free columns, transposed.

  explicit Discretization(const ProblemConfig& c) : config(c), mesh(c.n) {}
};

// A Cholesky factor of the state Jacobian together with the matrix it was computed from.
struct Factorization {
  SparseMatrix matrix;
  Eigen::SimplicialLLT<SparseMatrix, Eigen::Lower> llt;
  bool analyzed = false;
};

struct EvaluationState {
  std::shared_ptr<const Discretization> disc;
  std::shared_ptr<const Factorization> factorization;
  Eigen::VectorXd parameter;
  Eigen::VectorXd state;
  Eigen::VectorXd observables;
  Eigen::Matrix3Xd dkappa;  // Column e: ∂κ_T/∂m_a for the element's three nodes.
  Eigen::Matrix3Xd su;      // Column e: S_T u_T.
  SolveReport report;
};

}  // namespace internal

namespace {

using internal::Discretization;
using internal::EvaluationState;
using internal::Factorization;

std::string Format(double value) {
  std::ostringstream out;
  out.precision(3);
  out << std::scientific << value;
  return out.str();
}

void ValidateConfig(const ProblemConfig& config) {
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("LogDiffusionModel: " + what);
  };
  if (config.n < 2) fail("mesh resolution n = " + std::to_string(config.n) + " must be ≥ 2");
  if (!std::isfinite(config.reaction_coefficient) || config.reaction_coefficient < 0.0) {
    // c < 0 makes the energy non-convex and the Newton matrix possibly indefinite.
    fail("reaction coefficient " + Format(config.reaction_coefficient) + " must be finite and ≥ 0");
  }
  if (config.observation_points.empty()) fail("no observation points");
  if (!std::isfinite(config.top_value) || !std::isfinite(config.bottom_value)) {
    fail("Dirichlet values must be finite");
  }
  const Forcing& forcing = config.forcing;
  for (size_t k = 0; k < forcing.point_sources.size(); ++k) {
    if (!std::isfinite(forcing.point_sources[k].strength)) {
      fail("point source " + std::to_string(k) + " has a non-finite strength");
    }
  }
  if (forcing.source_model == SourceModel::kGaussianMollifier && !forcing.point_sources.empty() &&
      !(std::isfinite(forcing.mollifier_width) && forcing.mollifier_width > 0.0)) {
    fail("mollifier width " + Format(forcing.mollifier_width) + " must be finite and > 0");
  }
  const NewtonOptions& newton = config.newton;
  if (!(newton.relative_tolerance >= 0.0) || !(newton.absolute_tolerance >= 0.0) ||
      !std::isfinite(newton.relative_tolerance) || !std::isfinite(newton.absolute_tolerance) ||
      (newton.relative_tolerance == 0.0 && newton.absolute_tolerance == 0.0)) {
    fail("Newton tolerances must be finite, ≥ 0 and not both 0 (relative " +
         Format(newton.relative_tolerance) + ", absolute " + Format(newton.absolute_tolerance) +
         ")");
  }
  if (newton.max_iterations < 1 || newton.max_backtracks < 0) {
    fail("Newton needs max_iterations ≥ 1 and max_backtracks ≥ 0 (got " +
         std::to_string(newton.max_iterations) + ", " + std::to_string(newton.max_backtracks) +
         ")");
  }
  if (!(newton.armijo_c1 > 0.0 && newton.armijo_c1 < 1.0)) {
    fail("Armijo constant " + Format(newton.armijo_c1) + " must lie in (0, 1)");
  }
}

Eigen::VectorXd AssembleLoad(const StructuredTriMesh& mesh, const Forcing& forcing) {
  Eigen::VectorXd load = Eigen::VectorXd::Zero(mesh.num_nodes());
  const bool mollified =
      forcing.source_model == SourceModel::kGaussianMollifier && !forcing.point_sources.empty();
  if (forcing.density || mollified) {
    const TriangleQuadrature<6>& rule = DegreeFourRule();
    const double b2 = forcing.mollifier_width * forcing.mollifier_width;
    constexpr double kPi = 3.141592653589793238462643383279502884;
    const double amplitude = 1.0 / (2.0 * kPi * b2);
    for (int e = 0; e < mesh.num_elements(); ++e) {
      const std::array<int, 3> nodes = mesh.Element(e);
      const Eigen::Matrix<double, 3, 2> vertices = mesh.ElementVertices(e);
      for (int q = 0; q < rule.kNumPoints; ++q) {
        const Eigen::Vector2d x = (rule.barycentric.row(q) * vertices).transpose();
        double f = forcing.density ? forcing.density(x) : 0.0;
        if (mollified) {
          for (const PointSource& source : forcing.point_sources) {
            f += source.strength * amplitude * std::exp(-(x - source.location).squaredNorm() / b2);
          }
        }
        const double weight = rule.weights[q] * mesh.ElementArea() * f;
        for (int a = 0; a < 3; ++a) load[nodes[a]] += weight * rule.barycentric(q, a);
      }
    }
  }
  for (size_t k = 0; k < forcing.point_sources.size(); ++k) {
    const PointSource& source = forcing.point_sources[k];
    PointLocation location;
    try {
      location = mesh.Locate(source.location);
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument("LogDiffusionModel: point source " + std::to_string(k) + ": " +
                                  error.what());
    }
    if (forcing.source_model == SourceModel::kDirac) {
      const std::array<int, 3> nodes = mesh.Element(location.element);
      for (int a = 0; a < 3; ++a) load[nodes[a]] += source.strength * location.barycentric[a];
    }
  }
  if (!load.allFinite()) {
    throw std::invalid_argument("LogDiffusionModel: the forcing density is not finite");
  }
  return load;
}

std::shared_ptr<const Discretization> Discretize(const ProblemConfig& config) {
  ValidateConfig(config);
  auto d = std::make_shared<Discretization>(config);
  const StructuredTriMesh& mesh = d->mesh;
  const int n = mesh.n();
  d->area = mesh.ElementArea();

  // Unknowns: nodes strictly between the Dirichlet edges y = 0 and y = 1, in node order.
  d->free_of_node.assign(mesh.num_nodes(), -1);
  for (int j = 1; j < n; ++j) {
    for (int i = 0; i <= n; ++i) d->free_of_node[mesh.NodeIndex(i, j)] = d->num_free++;
  }
  d->initial_state.resize(mesh.num_nodes());
  for (int node = 0; node < mesh.num_nodes(); ++node) {
    const double y = mesh.NodeCoordinates(node).y();
    d->initial_state[node] = config.bottom_value + (config.top_value - config.bottom_value) * y;
  }

  const int num_elements = mesh.num_elements();
  d->nodes.resize(num_elements);
  d->free.resize(num_elements);
  d->stiffness.resize(num_elements);
  std::vector<Eigen::Triplet<double>> triplets;
  triplets.reserve(9 * static_cast<size_t>(num_elements));
  for (int e = 0; e < num_elements; ++e) {
    d->nodes[e] = mesh.Element(e);
    for (int a = 0; a < 3; ++a) d->free[e][a] = d->free_of_node[d->nodes[e][a]];
    d->stiffness[e] = ElementStiffness(mesh, e);
    for (int a = 0; a < 3; ++a) {
      for (int b = 0; b < 3; ++b) {
        if (d->free[e][a] >= 0 && d->free[e][b] >= 0) {
          triplets.emplace_back(d->free[e][a], d->free[e][b], 1.0);
        }
      }
    }
  }
  d->pattern.resize(d->num_free, d->num_free);
  d->pattern.setFromTriplets(triplets.begin(), triplets.end());
  d->pattern.makeCompressed();
  d->pattern.coeffs().setZero();

  // Position of every element-matrix entry in the compressed value array, so that assembly
  // is a plain indexed add (no triplet sorting per Newton iteration).
  d->slots.resize(num_elements);
  const int* outer = d->pattern.outerIndexPtr();
  const int* inner = d->pattern.innerIndexPtr();
  for (int e = 0; e < num_elements; ++e) {
    for (int a = 0; a < 3; ++a) {
      for (int b = 0; b < 3; ++b) {
        const int row = d->free[e][a];
        const int col = d->free[e][b];
        int slot = -1;
        if (row >= 0 && col >= 0) {
          const int* found = std::lower_bound(inner + outer[col], inner + outer[col + 1], row);
          slot = static_cast<int>(found - inner);
        }
        d->slots[e][3 * a + b] = slot;
      }
    }
  }

  d->load = AssembleLoad(mesh, config.forcing);
  try {
    d->observation = AssemblePointEvaluation(mesh, config.observation_points);
  } catch (const std::invalid_argument& error) {
    throw std::invalid_argument(std::string("LogDiffusionModel: observation ") + error.what());
  }
  std::vector<Eigen::Triplet<double>> observed;
  for (int k = 0; k < d->observation.outerSize(); ++k) {
    for (SparseMatrix::InnerIterator it(d->observation, k); it; ++it) {
      const int free_index = d->free_of_node[it.col()];
      if (free_index >= 0) observed.emplace_back(free_index, it.row(), it.value());
    }
  }
  d->observation_free_transpose.resize(d->num_free, d->observation.rows());
  d->observation_free_transpose.setFromTriplets(observed.begin(), observed.end());
  return d;
}

struct Coefficients {
  Eigen::VectorXd kappa;    // κ_T = |T|⁻¹ ∫_T e^{m_h}.
  Eigen::Matrix3Xd dkappa;  // ∂κ_T/∂m_a = |T|⁻¹ ∫_T e^{m_h} φ_a.
};

Coefficients ComputeCoefficients(const Discretization& d, const Eigen::VectorXd& m) {
  const TriangleQuadrature<6>& rule = DegreeFourRule();
  const int num_elements = d.mesh.num_elements();
  Coefficients c;
  c.kappa.resize(num_elements);
  c.dkappa.resize(3, num_elements);
  for (int e = 0; e < num_elements; ++e) {
    const std::array<int, 3>& nodes = d.nodes[e];
    const Eigen::Vector3d m_local(m[nodes[0]], m[nodes[1]], m[nodes[2]]);
    const Eigen::Matrix<double, 6, 1> weighted =
        rule.weights.cwiseProduct((rule.barycentric * m_local).array().exp().matrix());
    c.kappa[e] = weighted.sum();
    c.dkappa.col(e) = rule.barycentric.transpose() * weighted;
    if (!std::isfinite(c.kappa[e]) || !(c.kappa[e] > 0.0)) {
      std::ostringstream msg;
      msg << "LogDiffusionModel::Evaluate: e^m " << (c.kappa[e] > 0.0 ? "overflows" : "underflows")
          << " on element " << e << " (nodal m = " << m_local[0] << ", " << m_local[1] << ", "
          << m_local[2] << ")";
      throw std::invalid_argument(msg.str());
    }
  }
  return c;
}

// Residual of the discrete state equation on the free nodes and the energy
//   E(u) = ½ Σ_T κ_T u_Tᵀ S_T u_T + (c/4) ∫ u_h⁴ − Fᵀu,
// whose gradient with respect to the free values is that residual (the quadrature is
// exact for the u_h⁴ and u_h³φ terms, so the two stay consistent). `scale` is the sum of
// the magnitudes of the energy's terms, a bound for the size of its rounding errors.
struct ResidualEnergy {
  Eigen::VectorXd residual;
  double energy = 0.0;
  double scale = 0.0;
};

ResidualEnergy EvaluateResidual(const Discretization& d, const Eigen::VectorXd& kappa,
                                const Eigen::VectorXd& u) {
  const TriangleQuadrature<6>& rule = DegreeFourRule();
  const double c = d.config.reaction_coefficient;
  Eigen::VectorXd full = -d.load;
  double diffusion = 0.0;
  double reaction = 0.0;
  for (int e = 0; e < d.mesh.num_elements(); ++e) {
    const std::array<int, 3>& nodes = d.nodes[e];
    const Eigen::Vector3d u_local(u[nodes[0]], u[nodes[1]], u[nodes[2]]);
    Eigen::Vector3d local = kappa[e] * (d.stiffness[e] * u_local);
    diffusion += 0.5 * u_local.dot(local);
    if (c != 0.0) {
      const Eigen::Array<double, 6, 1> uq = (rule.barycentric * u_local).array();
      const Eigen::Array<double, 6, 1> wu3 = rule.weights.array() * uq * uq * uq;
      local += (c * d.area) * (rule.barycentric.transpose() * wu3.matrix());
      reaction += 0.25 * c * d.area * (wu3 * uq).sum();
    }
    for (int a = 0; a < 3; ++a) full[nodes[a]] += local[a];
  }
  ResidualEnergy result;
  result.residual.resize(d.num_free);
  for (int node = 0; node < d.mesh.num_nodes(); ++node) {
    const int free_index = d.free_of_node[node];
    if (free_index >= 0) result.residual[free_index] = full[node];
  }
  const double work = d.load.dot(u);
  result.energy = diffusion + reaction - work;
  result.scale = std::abs(diffusion) + std::abs(reaction) + d.load.cwiseProduct(u).cwiseAbs().sum();
  return result;
}

// J_u = K(m) + 3c M(u²) on the free nodes, written into f.matrix's values.
void AssembleStateJacobian(const Discretization& d, const Eigen::VectorXd& kappa,
                           const Eigen::VectorXd& u, Factorization& f) {
  const TriangleQuadrature<6>& rule = DegreeFourRule();
  const double c = d.config.reaction_coefficient;
  double* values = f.matrix.valuePtr();
  std::fill(values, values + f.matrix.nonZeros(), 0.0);
  for (int e = 0; e < d.mesh.num_elements(); ++e) {
    Eigen::Matrix3d local = kappa[e] * d.stiffness[e];
    if (c != 0.0) {
      const std::array<int, 3>& nodes = d.nodes[e];
      const Eigen::Vector3d u_local(u[nodes[0]], u[nodes[1]], u[nodes[2]]);
      const Eigen::Array<double, 6, 1> uq = (rule.barycentric * u_local).array();
      const Eigen::Matrix<double, 6, 1> w = (3.0 * c * d.area) * rule.weights.array() * uq * uq;
      local += rule.barycentric.transpose() * w.asDiagonal() * rule.barycentric;
    }
    const std::array<int, 9>& slots = d.slots[e];
    for (int k = 0; k < 9; ++k) {
      if (slots[k] >= 0) values[slots[k]] += local(k / 3, k % 3);
    }
  }
}

void Factorize(Factorization& f, const SolveReport& report) {
  if (!f.analyzed) {
    f.llt.analyzePattern(f.matrix);
    f.analyzed = true;
  }
  f.llt.factorize(f.matrix);
  if (f.llt.info() != Eigen::Success) {
    throw SolveError(
        "LogDiffusionModel: Cholesky factorization of the state Jacobian failed at "
        "Newton iteration " +
            std::to_string(report.iterations) + ": the matrix is not numerically positive definite",
        report);
  }
}

// Newton's method for R(u) = 0 from the Dirichlet lift. The energy E is strictly convex
// (e^m > 0, c ≥ 0), so the Newton step is a descent direction for E and a backtracking
// (Armijo) line search on E makes the iteration globally convergent; near the solution the
// full step is taken and convergence is quadratic. Leaves f factorized at the returned state.
SolveReport SolveState(const Discretization& d, const Eigen::VectorXd& kappa, Factorization& f,
                       Eigen::VectorXd& u) {
  const NewtonOptions& options = d.config.newton;
  const bool linear = d.config.reaction_coefficient == 0.0;
  SolveReport report;
  u = d.initial_state;
  ResidualEnergy current = EvaluateResidual(d, kappa, u);
  double norm = current.residual.norm();
  report.initial_residual_norm = norm;
  report.tolerance = std::max(options.absolute_tolerance, options.relative_tolerance * norm);
  report.residual_history.push_back(norm);
  report.final_residual_norm = norm;
  if (!std::isfinite(norm)) {
    throw SolveError(
        "LogDiffusionModel: the initial residual is not finite (element "
        "coefficients e^m range over [" +
            Format(kappa.minCoeff()) + ", " + Format(kappa.maxCoeff()) + "])",
        report);
  }
  bool factor_is_current = false;
  // Consecutive steps that failed to reduce the residual while already at rounding level.
  int stalled = 0;
  constexpr int kMaxStalled = 3;
  Eigen::VectorXd step = Eigen::VectorXd::Zero(u.size());
  while (norm > report.tolerance) {
    if (report.iterations == options.max_iterations) {
      throw SolveError("LogDiffusionModel: Newton's method did not converge in " +
                           std::to_string(options.max_iterations) + " iterations: residual norm " +
                           Format(norm) + " > tolerance " + Format(report.tolerance) +
                           " (initial " + Format(report.initial_residual_norm) + ")",
                       report);
    }
    if (!(linear && factor_is_current)) {
      AssembleStateJacobian(d, kappa, u, f);
      Factorize(f, report);
    }
    const Eigen::VectorXd free_step = -f.llt.solve(current.residual);
    for (int node = 0; node < d.mesh.num_nodes(); ++node) {
      const int free_index = d.free_of_node[node];
      step[node] = free_index >= 0 ? free_step[free_index] : 0.0;
    }
    // dE/dα at α = 0 along the step: −Rᵀ J_u⁻¹ R < 0.
    const double slope = current.residual.dot(free_step);

    double alpha = 1.0;
    Eigen::VectorXd trial = u + step;
    ResidualEnergy next = EvaluateResidual(d, kappa, trial);
    // When the predicted decrease is below the rounding error of E, the energy test is
    // meaningless; the iterate is then deep in Newton's quadratic region and the full step
    // is taken (the linear problem is solved by its first full step).
    constexpr double kRoundingFactor = 1e3;
    const bool resolvable =
        -slope > kRoundingFactor * std::numeric_limits<double>::epsilon() * current.scale;
    if (!linear && resolvable) {
      if (!(slope < 0.0)) {
        throw SolveError(
            "LogDiffusionModel: the Newton step at iteration " + std::to_string(report.iterations) +
                " is not a descent direction of the energy (slope " + Format(slope) + ")",
            report);
      }
      int backtracks = 0;
      while (!(std::isfinite(next.energy) &&
               next.energy <= current.energy + options.armijo_c1 * alpha * slope)) {
        if (backtracks == options.max_backtracks) {
          report.backtracks += backtracks;
          throw SolveError("LogDiffusionModel: Newton line search failed at iteration " +
                               std::to_string(report.iterations) +
                               ": no sufficient energy decrease after " +
                               std::to_string(backtracks) + " step halvings (step length " +
                               Format(alpha) + ", residual norm " + Format(norm) + ")",
                           report);
        }
        ++backtracks;
        alpha *= 0.5;
        trial = u + alpha * step;
        next = EvaluateResidual(d, kappa, trial);
      }
      report.backtracks += backtracks;
    }
    u = std::move(trial);
    current = std::move(next);
    const double previous_norm = norm;
    norm = current.residual.norm();
    ++report.iterations;
    report.residual_history.push_back(norm);
    report.final_residual_norm = norm;
    if (!std::isfinite(norm)) {
      throw SolveError("LogDiffusionModel: the residual became non-finite at Newton iteration " +
                           std::to_string(report.iterations),
                       report);
    }
    // A tolerance below what double precision resolves for this problem would otherwise
    // spin until max_iterations; say so instead.
    stalled = ((linear || !resolvable) && norm >= previous_norm) ? stalled + 1 : 0;
    if (stalled == kMaxStalled && norm > report.tolerance) {
      throw SolveError("LogDiffusionModel: Newton's method stagnated at residual norm " +
                           Format(norm) + " (rounding level) above the tolerance " +
                           Format(report.tolerance) + " after " +
                           std::to_string(report.iterations) +
                           " iterations; the tolerance is tighter than double precision "
                           "resolves for this problem",
                       report);
    }
    // The linear problem's matrix does not depend on u; the nonlinear one must be
    // refactorized at the final state for the adjoint solves.
    factor_is_current = linear;
  }
  if (!factor_is_current) {
    AssembleStateJacobian(d, kappa, u, f);
    Factorize(f, report);
  }
  return report;
}

void CheckBlock(const Eigen::MatrixXd& block, Eigen::Index rows, const char* method,
                const char* expected) {
  if (block.rows() != rows) {
    std::ostringstream msg;
    msg << "Evaluation::" << method << ": input has " << block.rows() << " rows, expected "
        << expected << " = " << rows;
    throw std::invalid_argument(msg.str());
  }
}

}  // namespace

std::vector<Eigen::Vector2d> PaperObservationPoints() {
  return GridPoints(0.05, 0.1, 10, 0.05, 0.1, 5);
}

std::vector<PointSource> ReactionDiffusionSources() {
  std::vector<PointSource> sources;
  for (int j = 0; j < 5; ++j) {
    for (int i = 0; i < 5; ++i) {
      PointSource source;
      source.location = Eigen::Vector2d(0.25 + 0.125 * i, 0.25 + 0.125 * j);
      source.strength = (i + j) % 2 == 0 ? -0.25 : 0.25;
      sources.push_back(source);
    }
  }
  return sources;
}

ProblemConfig PoissonProblem(int n) {
  ProblemConfig config;
  config.n = n;
  config.reaction_coefficient = 0.0;
  config.observation_points = PaperObservationPoints();
  return config;
}

ProblemConfig ReactionDiffusionProblem(int n) {
  ProblemConfig config;
  config.n = n;
  config.reaction_coefficient = 1.0;
  config.forcing.point_sources = ReactionDiffusionSources();
  config.forcing.source_model = SourceModel::kGaussianMollifier;
  config.forcing.mollifier_width = 0.1;
  config.observation_points = PaperObservationPoints();
  return config;
}

// ---------------------------------------------------------------------------------------------
// Evaluation

Evaluation::Evaluation(std::shared_ptr<const internal::EvaluationState> state)
    : state_(std::move(state)) {}

const Eigen::VectorXd& Evaluation::parameter() const { return state_->parameter; }
const Eigen::VectorXd& Evaluation::state() const { return state_->state; }
const Eigen::VectorXd& Evaluation::observables() const { return state_->observables; }
const SolveReport& Evaluation::report() const { return state_->report; }
Eigen::Index Evaluation::parameter_dim() const { return state_->parameter.size(); }
Eigen::Index Evaluation::observation_dim() const { return state_->observables.size(); }

Eigen::MatrixXd Evaluation::ApplyJacobian(const Eigen::MatrixXd& directions) const {
  CheckBlock(directions, parameter_dim(), "ApplyJacobian", "d_M");
  const Discretization& d = *state_->disc;
  const Eigen::Index k = directions.cols();
  // Right-hand sides ∂R/∂m · v, assembled element by element:
  // (∂R/∂m v)_T = (∂κ_T/∂m · v_T) S_T u_T.
  Eigen::MatrixXd rhs = Eigen::MatrixXd::Zero(d.num_free, k);
  for (Eigen::Index col = 0; col < k; ++col) {
    const double* v = directions.col(col).data();
    double* r = rhs.col(col).data();
    for (int e = 0; e < d.mesh.num_elements(); ++e) {
      const std::array<int, 3>& nodes = d.nodes[e];
      const std::array<int, 3>& free = d.free[e];
      const double dk = state_->dkappa(0, e) * v[nodes[0]] + state_->dkappa(1, e) * v[nodes[1]] +
                        state_->dkappa(2, e) * v[nodes[2]];
      for (int a = 0; a < 3; ++a) {
        if (free[a] >= 0) r[free[a]] += dk * state_->su(a, e);
      }
    }
  }
  // δu = −J_u⁻¹ (∂R/∂m v), J v = B δu.
  const Eigen::MatrixXd du = state_->factorization->llt.solve(rhs);
  return -(d.observation_free_transpose.transpose() * du);
}

Eigen::MatrixXd Evaluation::ApplyJacobianTranspose(const Eigen::MatrixXd& weights) const {
  CheckBlock(weights, observation_dim(), "ApplyJacobianTranspose", "d_Q");
  const Discretization& d = *state_->disc;
  const Eigen::Index k = weights.cols();
  // Adjoints p = J_u⁻ᵀ Bᵀ w (J_u is symmetric), then Jᵀ w = −(∂R/∂m)ᵀ p element by element:
  // (Jᵀw)_a −= ∂κ_T/∂m_a · (p_T · S_T u_T).
  const Eigen::MatrixXd rhs = d.observation_free_transpose * weights;
  const Eigen::MatrixXd adjoints = state_->factorization->llt.solve(rhs);
  Eigen::MatrixXd result = Eigen::MatrixXd::Zero(parameter_dim(), k);
  for (Eigen::Index col = 0; col < k; ++col) {
    const double* p = adjoints.col(col).data();
    double* out = result.col(col).data();
    for (int e = 0; e < d.mesh.num_elements(); ++e) {
      const std::array<int, 3>& free = d.free[e];
      double g = 0.0;
      for (int a = 0; a < 3; ++a) {
        if (free[a] >= 0) g += p[free[a]] * state_->su(a, e);
      }
      const std::array<int, 3>& nodes = d.nodes[e];
      for (int a = 0; a < 3; ++a) out[nodes[a]] -= g * state_->dkappa(a, e);
    }
  }
  return result;
}

Eigen::MatrixXd Evaluation::Jacobian() const {
  return ApplyJacobianTranspose(Eigen::MatrixXd::Identity(observation_dim(), observation_dim()))
      .transpose();
}

LinearOperator Evaluation::JacobianOperator() const {
  LinearOperator op;
  op.rows = observation_dim();
  op.cols = parameter_dim();
  const Evaluation self = *this;
  op.apply = [self](const Eigen::MatrixXd& v) { return self.ApplyJacobian(v); };
  op.apply_transpose = [self](const Eigen::MatrixXd& w) { return self.ApplyJacobianTranspose(w); };
  return op;
}

TruncatedSvd Evaluation::JacobianSvd(const RandomizedSvdOptions& options, NormalRng& rng) const {
  return RandomizedSvd(JacobianOperator(), options, rng);
}

// ---------------------------------------------------------------------------------------------
// LogDiffusionModel

LogDiffusionModel::LogDiffusionModel(const ProblemConfig& config) : disc_(Discretize(config)) {}
LogDiffusionModel::~LogDiffusionModel() = default;
LogDiffusionModel::LogDiffusionModel(LogDiffusionModel&&) noexcept = default;
LogDiffusionModel& LogDiffusionModel::operator=(LogDiffusionModel&&) noexcept = default;

const ProblemConfig& LogDiffusionModel::config() const { return disc_->config; }
const StructuredTriMesh& LogDiffusionModel::mesh() const { return disc_->mesh; }
Eigen::Index LogDiffusionModel::parameter_dim() const { return disc_->mesh.num_nodes(); }
Eigen::Index LogDiffusionModel::observation_dim() const { return disc_->observation.rows(); }
const SparseMatrix& LogDiffusionModel::observation_operator() const { return disc_->observation; }
const Eigen::VectorXd& LogDiffusionModel::load_vector() const { return disc_->load; }

Evaluation LogDiffusionModel::Evaluate(const Eigen::VectorXd& parameter) {
  if (parameter.size() != parameter_dim()) {
    std::ostringstream msg;
    msg << "LogDiffusionModel::Evaluate: parameter has length " << parameter.size()
        << ", expected d_M = " << parameter_dim();
    throw std::invalid_argument(msg.str());
  }
  for (Eigen::Index i = 0; i < parameter.size(); ++i) {
    if (!std::isfinite(parameter[i])) {
      throw std::invalid_argument("LogDiffusionModel::Evaluate: parameter entry " +
                                  std::to_string(i) + " is not finite");
    }
  }
  const Discretization& d = *disc_;
  Coefficients coefficients = ComputeCoefficients(d, parameter);

  // Reuse the cached factorization (and its symbolic analysis) unless an Evaluation still
  // holds it.
  if (!cache_ || cache_.use_count() > 1) {
    cache_ = std::make_shared<Factorization>();
    cache_->matrix = d.pattern;
  }
  auto state = std::make_shared<EvaluationState>();
  state->report = SolveState(d, coefficients.kappa, *cache_, state->state);
  state->disc = disc_;
  state->factorization = cache_;
  state->parameter = parameter;
  state->dkappa = std::move(coefficients.dkappa);
  state->su.resize(3, d.mesh.num_elements());
  for (int e = 0; e < d.mesh.num_elements(); ++e) {
    const std::array<int, 3>& nodes = d.nodes[e];
    const Eigen::Vector3d u_local(state->state[nodes[0]], state->state[nodes[1]],
                                  state->state[nodes[2]]);
    state->su.col(e) = d.stiffness[e] * u_local;
  }
  state->observables = d.observation * state->state;
  return Evaluation(std::move(state));
}

}  // namespace dino::pde
