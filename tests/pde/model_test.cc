// The Poisson and reaction–diffusion maps: FEM convergence, Newton, adjoint Jacobians.
#include "models/pde/model.h"

#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "models/pde/prior.h"
#include "models/pde/quadrature.h"
#include "models/pde/random.h"

namespace dino::pde {
namespace {

constexpr double kPi = 3.141592653589793238462643383279502884;

// Manufactured solution satisfying the problem's boundary conditions: u = 0 on y = 0, u = 1
// on y = 1, ∂u/∂x = 0 on x = 0, 1 (so e^m ∂u/∂n = 0 there for any m):
//   u(x, y) = y + 0.3 cos(πx) sin(πy),   m(x, y) = 0.5 sin(2πx) y + 0.2 cos(πy),
//   f = −∇·(e^m ∇u) + c u³ = −e^m (Δu + ∇m·∇u) + c u³.
double ExactU(const Eigen::Vector2d& p) {
  return p.y() + 0.3 * std::cos(kPi * p.x()) * std::sin(kPi * p.y());
}
double ExactM(const Eigen::Vector2d& p) {
  return 0.5 * std::sin(2 * kPi * p.x()) * p.y() + 0.2 * std::cos(kPi * p.y());
}
double ManufacturedSource(const Eigen::Vector2d& p, double c) {
  const double x = p.x(), y = p.y();
  const double ux = -0.3 * kPi * std::sin(kPi * x) * std::sin(kPi * y);
  const double uy = 1.0 + 0.3 * kPi * std::cos(kPi * x) * std::cos(kPi * y);
  const double lap_u = -0.6 * kPi * kPi * std::cos(kPi * x) * std::sin(kPi * y);
  const double mx = kPi * std::cos(2 * kPi * x) * y;
  const double my = 0.5 * std::sin(2 * kPi * x) - 0.2 * kPi * std::sin(kPi * y);
  const double u = ExactU(p);
  return -std::exp(ExactM(p)) * (lap_u + mx * ux + my * uy) + c * u * u * u;
}

double L2Error(const StructuredTriMesh& mesh, const Eigen::VectorXd& uh) {
  const TriangleQuadrature<6>& rule = DegreeFourRule();
  double sum = 0.0;
  for (int e = 0; e < mesh.num_elements(); ++e) {
    const std::array<int, 3> nodes = mesh.Element(e);
    const Eigen::Matrix<double, 3, 2> v = mesh.ElementVertices(e);
    const Eigen::Vector3d local(uh[nodes[0]], uh[nodes[1]], uh[nodes[2]]);
    for (int q = 0; q < 6; ++q) {
      const Eigen::Vector2d x = (rule.barycentric.row(q) * v).transpose();
      const double diff = rule.barycentric.row(q).dot(local) - ExactU(x);
      sum += rule.weights[q] * mesh.ElementArea() * diff * diff;
    }
  }
  return std::sqrt(sum);
}

ProblemConfig ManufacturedProblem(int n, double c) {
  ProblemConfig config = PoissonProblem(n);
  config.reaction_coefficient = c;
  config.forcing.density = [c](const Eigen::Vector2d& p) { return ManufacturedSource(p, c); };
  config.newton.relative_tolerance = 1e-12;
  return config;
}

class ConvergenceTest : public ::testing::TestWithParam<double> {};

TEST_P(ConvergenceTest, ManufacturedSolutionConvergesAtSecondOrderInL2) {
  const double c = GetParam();
  const int resolutions[] = {8, 16, 32, 64};
  double previous = 0.0;
  for (int n : resolutions) {
    LogDiffusionModel model(ManufacturedProblem(n, c));
    const Eigen::VectorXd m = model.mesh().Interpolate(ExactM);
    const Evaluation evaluation = model.Evaluate(m);
    const double error = L2Error(model.mesh(), evaluation.state());
    if (previous > 0.0) {
      const double rate = std::log2(previous / error);
      std::printf("c = %g  n = %3d  L2 error %.3e  observed order %.3f\n", c, n, error, rate);
      EXPECT_GE(rate, 1.8) << "n = " << n;
    } else {
      std::printf("c = %g  n = %3d  L2 error %.3e\n", c, n, error);
    }
    previous = error;
  }
}

INSTANTIATE_TEST_SUITE_P(PoissonAndReaction, ConvergenceTest, ::testing::Values(0.0, 1.0),
                         [](const ::testing::TestParamInfo<double>& info) {
                           return info.param == 0.0 ? std::string("Poisson")
                                                    : std::string("CubicReaction");
                         });

TEST(LogDiffusionModel, ConstantCoefficientPoissonSolutionIsLinear) {
  LogDiffusionModel model(PoissonProblem(8));
  const Evaluation evaluation = model.Evaluate(Eigen::VectorXd::Constant(81, 0.7));
  const Eigen::VectorXd y =
      model.mesh().Interpolate([](const Eigen::Vector2d& p) { return p.y(); });
  EXPECT_NEAR((evaluation.state() - y).norm(), 0.0, 1e-13);
  for (int k = 0; k < 50; ++k) {
    EXPECT_NEAR(evaluation.observables()[k], model.config().observation_points[k].y(), 1e-13);
  }
}

TEST(LogDiffusionModel, LinearProblemTakesOneNewtonStep) {
  LogDiffusionModel model(PoissonProblem(16));
  const BiLaplacianPrior prior(model.mesh(), PoissonPrior());
  NormalRng rng(1);
  const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
  EXPECT_EQ(evaluation.report().iterations, 1);
  EXPECT_LE(evaluation.report().final_residual_norm, evaluation.report().tolerance);
  // Maximum principle: 0 ≤ u ≤ 1 for the Poisson problem (it holds discretely here: the
  // mesh's P1 stiffness matrix is an M-matrix for any positive elementwise coefficient).
  EXPECT_GE(evaluation.state().minCoeff(), -1e-12);
  EXPECT_LE(evaluation.state().maxCoeff(), 1.0 + 1e-12);
}

// Central differences of the solver in direction v against the adjoint Jacobian: the
// truncation error is O(ε²) and the solves are converged far below the differencing error.
double FiniteDifferenceRelativeError(LogDiffusionModel& model, const Evaluation& evaluation,
                                     const Eigen::MatrixXd& directions, double epsilon) {
  const Eigen::MatrixXd jv = evaluation.ApplyJacobian(directions);
  Eigen::MatrixXd fd(jv.rows(), jv.cols());
  for (Eigen::Index k = 0; k < directions.cols(); ++k) {
    const Eigen::VectorXd plus =
        model.Evaluate(evaluation.parameter() + epsilon * directions.col(k)).observables();
    const Eigen::VectorXd minus =
        model.Evaluate(evaluation.parameter() - epsilon * directions.col(k)).observables();
    fd.col(k) = (plus - minus) / (2 * epsilon);
  }
  return (fd - jv).norm() / jv.norm();
}

class JacobianTest : public ::testing::TestWithParam<bool> {
 protected:
  static ProblemConfig Problem(bool reaction, int n) {
    ProblemConfig config = reaction ? ReactionDiffusionProblem(n) : PoissonProblem(n);
    // Far below the default so that solver error is negligible against the differencing
    // error, yet above the rounding floor (≈ 3e-14 relative here).
    config.newton.relative_tolerance = 1e-12;
    config.newton.absolute_tolerance = 1e-16;
    return config;
  }
  static PriorConfig Prior(bool reaction) {
    return reaction ? ReactionDiffusionPrior() : PoissonPrior();
  }
};

TEST_P(JacobianTest, AdjointJacobianMatchesCentralFiniteDifferences) {
  const bool reaction = GetParam();
  LogDiffusionModel model(Problem(reaction, 8));
  const BiLaplacianPrior prior(model.mesh(), Prior(reaction));
  NormalRng rng(11);
  const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
  const Eigen::MatrixXd jacobian = evaluation.Jacobian();
  ASSERT_EQ(jacobian.rows(), 50);
  ASSERT_EQ(jacobian.cols(), 81);
  // Every column: finite differences along each nodal parameter.
  const double epsilon = 1e-5;
  Eigen::MatrixXd fd(50, 81);
  for (int a = 0; a < 81; ++a) {
    Eigen::VectorXd m = evaluation.parameter();
    m[a] += epsilon;
    const Eigen::VectorXd plus = model.Evaluate(m).observables();
    m[a] -= 2 * epsilon;
    const Eigen::VectorXd minus = model.Evaluate(m).observables();
    fd.col(a) = (plus - minus) / (2 * epsilon);
  }
  const double error = (fd - jacobian).norm() / jacobian.norm();
  std::printf("%s: ‖J_fd − J‖_F / ‖J‖_F = %.2e\n", reaction ? "reaction-diffusion" : "Poisson",
              error);
  EXPECT_LT(error, 1e-8);
}

TEST_P(JacobianTest, RandomDirectionsOnAFinerMesh) {
  const bool reaction = GetParam();
  LogDiffusionModel model(Problem(reaction, 24));
  const BiLaplacianPrior prior(model.mesh(), Prior(reaction));
  NormalRng rng(12);
  const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
  // Smooth directions (prior samples) and rough ones (white noise).
  Eigen::MatrixXd directions(model.parameter_dim(), 4);
  directions.col(0) = prior.Sample(rng);
  directions.col(1) = prior.Sample(rng);
  directions.col(2) = rng.Vector(model.parameter_dim());
  directions.col(3) = rng.Vector(model.parameter_dim());
  const double error = FiniteDifferenceRelativeError(model, evaluation, directions, 1e-5);
  std::printf("%s n = 24: directional FD relative error %.2e\n",
              reaction ? "reaction-diffusion" : "Poisson", error);
  EXPECT_LT(error, 1e-8);
}

TEST_P(JacobianTest, ActionsAreConsistentWithTheFullJacobian) {
  const bool reaction = GetParam();
  LogDiffusionModel model(Problem(reaction, 16));
  const BiLaplacianPrior prior(model.mesh(), Prior(reaction));
  NormalRng rng(13);
  const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
  const Eigen::MatrixXd jacobian = evaluation.Jacobian();
  const Eigen::MatrixXd v = rng.Matrix(model.parameter_dim(), 3);
  const Eigen::MatrixXd w = rng.Matrix(50, 4);
  const Eigen::MatrixXd jv = evaluation.ApplyJacobian(v);
  const Eigen::MatrixXd jtw = evaluation.ApplyJacobianTranspose(w);
  EXPECT_NEAR((jv - jacobian * v).norm() / jv.norm(), 0.0, 1e-12);
  EXPECT_NEAR((jtw - jacobian.transpose() * w).norm() / jtw.norm(), 0.0, 1e-12);
  // ⟨w, J v⟩ = ⟨Jᵀ w, v⟩ between the forward-sensitivity and adjoint paths.
  EXPECT_NEAR((w.transpose() * jv - jtw.transpose() * v).norm() / (w.transpose() * jv).norm(), 0.0,
              1e-12);
  EXPECT_EQ(evaluation.ApplyJacobian(Eigen::MatrixXd(model.parameter_dim(), 0)).cols(), 0);
  EXPECT_THROW(evaluation.ApplyJacobian(Eigen::MatrixXd::Zero(5, 1)), std::invalid_argument);
  EXPECT_THROW(evaluation.ApplyJacobianTranspose(Eigen::MatrixXd::Zero(49, 1)),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Problems, JacobianTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("ReactionDiffusion")
                                             : std::string("Poisson");
                         });

TEST(LogDiffusionModel, EvaluationsStayValidAcrossLaterSolves) {
  const ProblemConfig config = ReactionDiffusionProblem(12);
  LogDiffusionModel model(config);
  const BiLaplacianPrior prior(model.mesh(), ReactionDiffusionPrior());
  NormalRng rng(14);
  const Eigen::VectorXd m1 = prior.Sample(rng);
  const Eigen::VectorXd m2 = prior.Sample(rng);
  const Evaluation first = model.Evaluate(m1);
  const Evaluation second = model.Evaluate(m2);  // Must not overwrite first's factorization.
  LogDiffusionModel fresh(config);
  const Eigen::MatrixXd reference = fresh.Evaluate(m1).Jacobian();
  EXPECT_NEAR((first.Jacobian() - reference).norm() / reference.norm(), 0.0, 1e-13);
  EXPECT_GT((second.Jacobian() - reference).norm() / reference.norm(), 1e-3);
  // Sequential use (the data-generator loop) reuses the cached factorization and stays exact.
  for (int i = 0; i < 3; ++i) {
    const Evaluation again = model.Evaluate(m1);
    EXPECT_NEAR((again.Jacobian() - reference).norm() / reference.norm(), 0.0, 1e-13);
  }
}

TEST(ReactionDiffusion, NewtonConvergesQuadratically) {
  LogDiffusionModel model(ReactionDiffusionProblem(32));
  const BiLaplacianPrior prior(model.mesh(), ReactionDiffusionPrior());
  NormalRng rng(15);
  for (int s = 0; s < 3; ++s) {
    const Evaluation evaluation = model.Evaluate(prior.Sample(rng));
    const SolveReport& report = evaluation.report();
    std::printf("sample %d: %d Newton iterations, %d backtracks, residuals:", s, report.iterations,
                report.backtracks);
    for (double r : report.residual_history) std::printf(" %.2e", r);
    std::printf("\n");
    EXPECT_LE(report.final_residual_norm, report.tolerance);
    EXPECT_LE(report.iterations, 8);
    EXPECT_EQ(report.residual_history.size(), static_cast<size_t>(report.iterations + 1));
    // Quadratic convergence: once the relative residual e_k = ‖R_k‖/‖R_0‖ is small, the next
    // one is bounded by a modest multiple of e_k².
    const std::vector<double>& h = report.residual_history;
    for (size_t k = 0; k + 1 < h.size(); ++k) {
      const double ek = h[k] / h[0];
      const double next = h[k + 1] / h[0];
      if (ek < 1e-2 && next > 1e-14) {
        EXPECT_LE(next, 100.0 * ek * ek) << "step " << k;
      }
    }
  }
}

TEST(ReactionDiffusion, LineSearchGlobalizesStronglyNonlinearProblems) {
  // Sources 4·10⁴ times stronger drive u far from the initial guess (|u| ≈ 50): the first
  // Newton step, linearized where u³ is negligible, overshoots by orders of magnitude and
  // must be cut back by the line search.
  ProblemConfig config = ReactionDiffusionProblem(16);
  for (PointSource& source : config.forcing.point_sources) source.strength *= 4e4;
  LogDiffusionModel model(config);
  const Evaluation evaluation = model.Evaluate(Eigen::VectorXd::Zero(model.parameter_dim()));
  const SolveReport& report = evaluation.report();
  std::printf("strong sources: %d iterations, %d backtracks, final residual %.2e\n",
              report.iterations, report.backtracks, report.final_residual_norm);
  EXPECT_LE(report.final_residual_norm, report.tolerance);
  EXPECT_GT(report.backtracks, 0);
}

TEST(ReactionDiffusion, NonConvergenceIsReportedWithTheHistory) {
  ProblemConfig config = ReactionDiffusionProblem(8);
  config.newton.max_iterations = 1;
  LogDiffusionModel model(config);
  try {
    model.Evaluate(Eigen::VectorXd::Zero(81));
    FAIL() << "expected SolveError";
  } catch (const SolveError& error) {
    EXPECT_NE(std::string(error.what()).find("did not converge in 1 iterations"), std::string::npos)
        << error.what();
    EXPECT_EQ(error.report().iterations, 1);
    EXPECT_EQ(error.report().residual_history.size(), 2u);
  }
  // A line search allowed no step halvings fails on the strongly nonlinear problem.
  ProblemConfig strong = ReactionDiffusionProblem(16);
  for (PointSource& source : strong.forcing.point_sources) source.strength *= 4e4;
  strong.newton.max_backtracks = 0;
  LogDiffusionModel strong_model(strong);
  try {
    strong_model.Evaluate(Eigen::VectorXd::Zero(289));
    FAIL() << "expected SolveError";
  } catch (const SolveError& error) {
    EXPECT_NE(std::string(error.what()).find("line search failed"), std::string::npos)
        << error.what();
  }
  // A tolerance below the rounding floor is reported as stagnation, not 50 wasted iterations.
  ProblemConfig tight = ReactionDiffusionProblem(24);
  tight.newton.relative_tolerance = 1e-18;
  tight.newton.absolute_tolerance = 1e-30;
  LogDiffusionModel tight_model(tight);
  try {
    tight_model.Evaluate(Eigen::VectorXd::Zero(625));
    FAIL() << "expected SolveError";
  } catch (const SolveError& error) {
    EXPECT_NE(std::string(error.what()).find("stagnated"), std::string::npos) << error.what();
    EXPECT_LT(error.report().iterations, 15);
  }
}

TEST(ReactionDiffusion, SourcesFollowTheReferenceSettings) {
  const std::vector<PointSource> sources = ReactionDiffusionSources();
  ASSERT_EQ(sources.size(), 25u);
  double net = 0.0;
  for (const PointSource& s : sources) net += s.strength;
  EXPECT_DOUBLE_EQ(net, -0.25);  // 13 sinks of −0.25, 12 sources of +0.25.
  EXPECT_DOUBLE_EQ(sources[0].location.x(), 0.25);
  EXPECT_DOUBLE_EQ(sources[24].location.y(), 0.75);
  EXPECT_DOUBLE_EQ(sources[0].strength, -0.25);
  EXPECT_DOUBLE_EQ(sources[1].strength, 0.25);

  // Dirac loads sum to Σ s_k exactly (partition of unity); a mollified source carries
  // s_k a π b² = s_k / 2, less the Gaussian tails outside Ω (< 1e-3 here).
  ProblemConfig dirac = ReactionDiffusionProblem(64);
  dirac.forcing.source_model = SourceModel::kDirac;
  EXPECT_NEAR(LogDiffusionModel(dirac).load_vector().sum(), -0.25, 1e-14);
  const double mollified = LogDiffusionModel(ReactionDiffusionProblem(64)).load_vector().sum();
  EXPECT_NEAR(mollified, -0.125, 1e-3);

  LogDiffusionModel model(dirac);
  const Evaluation evaluation = model.Evaluate(Eigen::VectorXd::Zero(model.parameter_dim()));
  EXPECT_LE(evaluation.report().final_residual_norm, evaluation.report().tolerance);
}

TEST(LogDiffusionModel, RejectsInvalidInput) {
  LogDiffusionModel model(PoissonProblem(4));
  EXPECT_THROW(model.Evaluate(Eigen::VectorXd::Zero(24)), std::invalid_argument);
  Eigen::VectorXd m = Eigen::VectorXd::Zero(25);
  m[3] = std::nan("");
  EXPECT_THROW(model.Evaluate(m), std::invalid_argument);
  m[3] = 1000.0;  // e^1000 overflows.
  EXPECT_THROW(model.Evaluate(m), std::invalid_argument);

  ProblemConfig config = PoissonProblem(1);
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
  config = PoissonProblem(4);
  config.reaction_coefficient = -1.0;
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
  config = PoissonProblem(4);
  config.observation_points.push_back(Eigen::Vector2d(0.5, 1.5));
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
  config = PoissonProblem(4);
  config.observation_points.clear();
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
  config = ReactionDiffusionProblem(4);
  config.forcing.mollifier_width = 0.0;
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
  config = PoissonProblem(4);
  config.newton.relative_tolerance = 0.0;
  config.newton.absolute_tolerance = 0.0;
  EXPECT_THROW(LogDiffusionModel{config}, std::invalid_argument);
}

}  // namespace
}  // namespace dino::pde
