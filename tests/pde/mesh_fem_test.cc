// Mesh numbering, quadrature exactness and the P1 building blocks.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>

#include "models/pde/fem.h"
#include "models/pde/mesh.h"
#include "models/pde/model.h"
#include "models/pde/quadrature.h"

namespace dino::pde {
namespace {

double Factorial(int k) { return k <= 1 ? 1.0 : k * Factorial(k - 1); }

// ∫ over the reference triangle {x, y ≥ 0, x + y ≤ 1} of x^p y^q = p! q! / (p + q + 2)!.
template <int N>
void ExpectExactUpToDegree(const TriangleQuadrature<N>& rule) {
  EXPECT_NEAR(rule.weights.sum(), 1.0, 1e-15);
  EXPECT_GT(rule.weights.minCoeff(), 0.0);
  for (int q = 0; q < N; ++q) EXPECT_NEAR(rule.barycentric.row(q).sum(), 1.0, 1e-15);
  for (int p = 0; p <= rule.degree; ++p) {
    for (int r = 0; p + r <= rule.degree; ++r) {
      double sum = 0.0;
      for (int q = 0; q < N; ++q) {
        sum += rule.weights[q] * 0.5 * std::pow(rule.barycentric(q, 1), p) *
               std::pow(rule.barycentric(q, 2), r);
      }
      EXPECT_NEAR(sum, Factorial(p) * Factorial(r) / Factorial(p + r + 2), 1e-16)
          << "monomial x^" << p << " y^" << r;
    }
  }
}

TEST(Quadrature, RulesAreExactForTheirDegree) {
  ExpectExactUpToDegree(DegreeTwoRule());
  ExpectExactUpToDegree(DegreeFourRule());
  EXPECT_EQ(DegreeTwoRule().degree, 2);
  EXPECT_EQ(DegreeFourRule().degree, 4);
}

TEST(Mesh, DefaultMeshHasThePaperDimension) {
  const StructuredTriMesh mesh;
  EXPECT_EQ(mesh.n(), 64);
  EXPECT_EQ(mesh.num_nodes(), 4225);
  EXPECT_EQ(mesh.num_elements(), 8192);
}

TEST(Mesh, NodeNumberingIsLexicographicXFastest) {
  const StructuredTriMesh mesh(4);
  for (int j = 0; j <= 4; ++j) {
    for (int i = 0; i <= 4; ++i) {
      const int node = 5 * j + i;
      EXPECT_EQ(mesh.NodeIndex(i, j), node);
      EXPECT_DOUBLE_EQ(mesh.NodeCoordinates(node).x(), i / 4.0);
      EXPECT_DOUBLE_EQ(mesh.NodeCoordinates(node).y(), j / 4.0);
    }
  }
}

TEST(Mesh, ElementsSplitSquaresAlongTheRisingDiagonalCounterClockwise) {
  const StructuredTriMesh mesh(3);
  double total_area = 0.0;
  for (int e = 0; e < mesh.num_elements(); ++e) {
    const Eigen::Matrix<double, 3, 2> v = mesh.ElementVertices(e);
    const Eigen::Vector2d d1 = (v.row(1) - v.row(0)).transpose();
    const Eigen::Vector2d d2 = (v.row(2) - v.row(0)).transpose();
    const double signed_area = 0.5 * (d1.x() * d2.y() - d1.y() * d2.x());
    EXPECT_NEAR(signed_area, mesh.ElementArea(), 1e-15) << "element " << e;
    total_area += signed_area;
  }
  EXPECT_NEAR(total_area, 1.0, 1e-14);
  // Square (1, 2): element 2·(3·2 + 1) = 14 is (BL, BR, TR), 15 is (BL, TR, TL).
  const std::array<int, 3> lower = mesh.Element(14);
  const std::array<int, 3> upper = mesh.Element(15);
  EXPECT_EQ(lower,
            (std::array<int, 3>{mesh.NodeIndex(1, 2), mesh.NodeIndex(2, 2), mesh.NodeIndex(2, 3)}));
  EXPECT_EQ(upper,
            (std::array<int, 3>{mesh.NodeIndex(1, 2), mesh.NodeIndex(2, 3), mesh.NodeIndex(1, 3)}));
}

TEST(Mesh, LocateReturnsConsistentBarycentricCoordinates) {
  const StructuredTriMesh mesh(5);
  const Eigen::Vector2d points[] = {{0.0, 0.0},   {1.0, 1.0}, {1.0, 0.0},     {0.31, 0.77},
                                    {0.77, 0.31}, {0.4, 0.4}, {0.999, 0.0001}};
  for (const Eigen::Vector2d& p : points) {
    const PointLocation loc = mesh.Locate(p);
    ASSERT_GE(loc.element, 0);
    EXPECT_GE(loc.barycentric.minCoeff(), -1e-14);
    EXPECT_NEAR(loc.barycentric.sum(), 1.0, 1e-14);
    const Eigen::Vector2d reconstructed =
        (loc.barycentric.transpose() * mesh.ElementVertices(loc.element)).transpose();
    EXPECT_NEAR((reconstructed - p).norm(), 0.0, 1e-14);
  }
  EXPECT_THROW(mesh.Locate(Eigen::Vector2d(1.1, 0.5)), std::invalid_argument);
  EXPECT_THROW(mesh.Locate(Eigen::Vector2d(0.5, std::nan(""))), std::invalid_argument);
  EXPECT_THROW(StructuredTriMesh(0), std::invalid_argument);
}

TEST(Fem, MassAndStiffnessReproduceExactIntegrals) {
  const StructuredTriMesh mesh(6);
  const SparseMatrix mass = AssembleMass(mesh);
  const SparseMatrix stiffness = AssembleStiffness(mesh);
  const Eigen::VectorXd one = Eigen::VectorXd::Ones(mesh.num_nodes());
  const Eigen::VectorXd x = mesh.Interpolate([](const Eigen::Vector2d& p) { return p.x(); });
  const Eigen::VectorXd y = mesh.Interpolate([](const Eigen::Vector2d& p) { return p.y(); });
  EXPECT_NEAR(one.dot(mass * one), 1.0, 1e-14);       // |Ω|
  EXPECT_NEAR(x.dot(mass * x), 1.0 / 3.0, 1e-14);     // ∫ x²
  EXPECT_NEAR(x.dot(mass * y), 1.0 / 4.0, 1e-14);     // ∫ xy
  EXPECT_NEAR((stiffness * one).norm(), 0.0, 1e-13);  // constants in the kernel
  EXPECT_NEAR(x.dot(stiffness * x), 1.0, 1e-13);      // ∫ |∇x|²
  EXPECT_NEAR(x.dot(stiffness * y), 0.0, 1e-13);      // ∫ ∇x·∇y
  EXPECT_NEAR((LumpedMass(mesh) - mass * one).norm(), 0.0, 1e-15);
  EXPECT_NEAR((Eigen::MatrixXd(stiffness) - Eigen::MatrixXd(stiffness).transpose()).norm(), 0.0,
              1e-14);

  const Eigen::Matrix2d theta = (Eigen::Matrix2d() << 2.0, 0.3, 0.3, 0.5).finished();
  const SparseMatrix anisotropic = AssembleStiffness(mesh, theta);
  EXPECT_NEAR(x.dot(anisotropic * x), theta(0, 0), 1e-13);
  EXPECT_NEAR(x.dot(anisotropic * y), theta(0, 1), 1e-13);
  EXPECT_NEAR(y.dot(anisotropic * y), theta(1, 1), 1e-13);
  EXPECT_THROW(AssembleStiffness(mesh, -theta), std::invalid_argument);
}

TEST(Fem, QuadratureFactorReproducesTheConsistentMassMatrix) {
  const StructuredTriMesh mesh(5);
  const SparseMatrix factor = AssembleQuadratureMassFactor(mesh);
  EXPECT_EQ(factor.cols(), 3 * mesh.num_elements());
  const Eigen::MatrixXd product = Eigen::MatrixXd(factor) * Eigen::MatrixXd(factor).transpose();
  EXPECT_NEAR((product - Eigen::MatrixXd(AssembleMass(mesh))).norm(), 0.0, 1e-15);
}

TEST(Fem, PointEvaluationInterpolatesLinearFunctionsExactly) {
  const StructuredTriMesh mesh(7);
  const std::vector<Eigen::Vector2d> points = PaperObservationPoints();
  ASSERT_EQ(points.size(), 50u);
  // Index 10·j + i ↔ (0.05 + 0.1 i, 0.05 + 0.1 j).
  EXPECT_NEAR(points[0].x(), 0.05, 1e-15);
  EXPECT_NEAR(points[9].x(), 0.95, 1e-15);
  EXPECT_NEAR(points[9].y(), 0.05, 1e-15);
  EXPECT_NEAR(points[10].y(), 0.15, 1e-15);
  EXPECT_NEAR(points[49].x(), 0.95, 1e-15);
  EXPECT_NEAR(points[49].y(), 0.45, 1e-15);
  const SparseMatrix b = AssemblePointEvaluation(mesh, points);
  ASSERT_EQ(b.rows(), 50);
  ASSERT_EQ(b.cols(), mesh.num_nodes());
  const Eigen::VectorXd linear =
      mesh.Interpolate([](const Eigen::Vector2d& p) { return 0.3 + 2.0 * p.x() - 1.5 * p.y(); });
  const Eigen::VectorXd values = b * linear;
  for (int k = 0; k < 50; ++k) {
    EXPECT_NEAR(values[k], 0.3 + 2.0 * points[k].x() - 1.5 * points[k].y(), 1e-14);
  }
  EXPECT_NEAR((b * Eigen::VectorXd::Ones(mesh.num_nodes()) - Eigen::VectorXd::Ones(50)).norm(), 0.0,
              1e-14);
  EXPECT_THROW(AssemblePointEvaluation(mesh, {Eigen::Vector2d(0.5, -0.2)}), std::invalid_argument);
}

}  // namespace
}  // namespace dino::pde
