#include "models/pde/fem.h"

#include <Eigen/Eigenvalues>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "models/pde/quadrature.h"

namespace dino::pde {
namespace {

void CheckTensor(const Eigen::Matrix2d& tensor) {
  const bool symmetric = std::abs(tensor(0, 1) - tensor(1, 0)) <=
                         1e-14 * (std::abs(tensor(0, 1)) + std::abs(tensor(1, 0)) + 1e-300);
  if (!tensor.allFinite() || !symmetric) {
    std::ostringstream msg;
    msg << "diffusion tensor must be finite and symmetric, got [[" << tensor(0, 0) << ", "
        << tensor(0, 1) << "], [" << tensor(1, 0) << ", " << tensor(1, 1) << "]]";
    throw std::invalid_argument(msg.str());
  }
  const double smallest = Eigen::SelfAdjointEigenSolver<Eigen::Matrix2d>(tensor).eigenvalues()[0];
  if (!(smallest > 0.0)) {
    std::ostringstream msg;
    msg << "diffusion tensor must be positive definite, smallest eigenvalue is " << smallest;
    throw std::invalid_argument(msg.str());
  }
}

// Scatters 3 × 3 element matrices into a global matrix through triplets (duplicates summed).
SparseMatrix AssembleElementMatrices(const StructuredTriMesh& mesh,
                                     const std::vector<Eigen::Matrix3d>& element_matrices) {
  std::vector<Eigen::Triplet<double>> triplets;
  triplets.reserve(9 * static_cast<size_t>(mesh.num_elements()));
  for (int e = 0; e < mesh.num_elements(); ++e) {
    const std::array<int, 3> nodes = mesh.Element(e);
    const Eigen::Matrix3d& local = element_matrices[e];
    for (int a = 0; a < 3; ++a) {
      for (int b = 0; b < 3; ++b) triplets.emplace_back(nodes[a], nodes[b], local(a, b));
    }
  }
  SparseMatrix global(mesh.num_nodes(), mesh.num_nodes());
  global.setFromTriplets(triplets.begin(), triplets.end());
  return global;
}

}  // namespace

Eigen::Matrix<double, 3, 2> BasisGradients(const StructuredTriMesh& mesh, int e) {
  const Eigen::Matrix<double, 3, 2> v = mesh.ElementVertices(e);
  // Affine map from the reference triangle: x = v0 + F (λ1, λ2)ᵀ, F = [v1 − v0, v2 − v0].
  // ∇λ1, ∇λ2 are the rows of F⁻¹ and ∇λ0 = −∇λ1 − ∇λ2.
  Eigen::Matrix2d f;
  f.col(0) = (v.row(1) - v.row(0)).transpose();
  f.col(1) = (v.row(2) - v.row(0)).transpose();
  const Eigen::Matrix2d f_inv = f.inverse();
  Eigen::Matrix<double, 3, 2> gradients;
  gradients.row(1) = f_inv.row(0);
  gradients.row(2) = f_inv.row(1);
  gradients.row(0) = -gradients.row(1) - gradients.row(2);
  return gradients;
}

Eigen::Matrix3d ElementStiffness(const StructuredTriMesh& mesh, int e,
                                 const Eigen::Matrix2d& tensor) {
  const Eigen::Matrix<double, 3, 2> g = BasisGradients(mesh, e);
  return mesh.ElementArea() * g * tensor * g.transpose();
}

Eigen::Matrix3d ElementMass(const StructuredTriMesh& mesh) {
  Eigen::Matrix3d local = Eigen::Matrix3d::Constant(1.0);
  local.diagonal().setConstant(2.0);
  return (mesh.ElementArea() / 12.0) * local;
}

SparseMatrix AssembleMass(const StructuredTriMesh& mesh) {
  return AssembleElementMatrices(
      mesh, std::vector<Eigen::Matrix3d>(mesh.num_elements(), ElementMass(mesh)));
}

SparseMatrix AssembleStiffness(const StructuredTriMesh& mesh, const Eigen::Matrix2d& tensor) {
  CheckTensor(tensor);
  std::vector<Eigen::Matrix3d> locals(mesh.num_elements());
  for (int e = 0; e < mesh.num_elements(); ++e) locals[e] = ElementStiffness(mesh, e, tensor);
  return AssembleElementMatrices(mesh, locals);
}

Eigen::VectorXd LumpedMass(const StructuredTriMesh& mesh) {
  Eigen::VectorXd lumped = Eigen::VectorXd::Zero(mesh.num_nodes());
  const double share = mesh.ElementArea() / 3.0;
  for (int e = 0; e < mesh.num_elements(); ++e) {
    for (int node : mesh.Element(e)) lumped[node] += share;
  }
  return lumped;
}

SparseMatrix AssemblePointEvaluation(const StructuredTriMesh& mesh,
                                     const std::vector<Eigen::Vector2d>& points) {
  std::vector<Eigen::Triplet<double>> triplets;
  triplets.reserve(3 * points.size());
  for (size_t k = 0; k < points.size(); ++k) {
    PointLocation location;
    try {
      location = mesh.Locate(points[k]);
    } catch (const std::invalid_argument& error) {
      throw std::invalid_argument("AssemblePointEvaluation: point " + std::to_string(k) + ": " +
                                  error.what());
    }
    const std::array<int, 3> nodes = mesh.Element(location.element);
    for (int a = 0; a < 3; ++a) {
      // Exact zeros (points on edges or at vertices) are dropped to keep B minimal.
      if (location.barycentric[a] != 0.0) {
        triplets.emplace_back(static_cast<int>(k), nodes[a], location.barycentric[a]);
      }
    }
  }
  SparseMatrix b(static_cast<int>(points.size()), mesh.num_nodes());
  b.setFromTriplets(triplets.begin(), triplets.end());
  return b;
}

SparseMatrix AssembleQuadratureMassFactor(const StructuredTriMesh& mesh) {
  const TriangleQuadrature<3>& rule = DegreeTwoRule();
  std::vector<Eigen::Triplet<double>> triplets;
  triplets.reserve(9 * static_cast<size_t>(mesh.num_elements()));
  for (int e = 0; e < mesh.num_elements(); ++e) {
    const std::array<int, 3> nodes = mesh.Element(e);
    for (int q = 0; q < 3; ++q) {
      const double scale = std::sqrt(rule.weights[q] * mesh.ElementArea());
      for (int a = 0; a < 3; ++a) {
        triplets.emplace_back(nodes[a], 3 * e + q, scale * rule.barycentric(q, a));
      }
    }
  }
  SparseMatrix factor(mesh.num_nodes(), 3 * mesh.num_elements());
  factor.setFromTriplets(triplets.begin(), triplets.end());
  return factor;
}

std::vector<Eigen::Vector2d> GridPoints(double x0, double dx, int nx, double y0, double dy,
                                        int ny) {
  if (nx < 0 || ny < 0) {
    throw std::invalid_argument("GridPoints: negative point count (nx = " + std::to_string(nx) +
                                ", ny = " + std::to_string(ny) + ")");
  }
  std::vector<Eigen::Vector2d> points;
  points.reserve(static_cast<size_t>(nx) * ny);
  for (int j = 0; j < ny; ++j) {
    for (int i = 0; i < nx; ++i) points.emplace_back(x0 + i * dx, y0 + j * dy);
  }
  return points;
}

}  // namespace dino::pde
