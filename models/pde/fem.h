// P1 finite-element building blocks on StructuredTriMesh: element matrices, global mass and
// stiffness matrices, point evaluation and the quadrature factor of the mass matrix.
#ifndef DINO_MODELS_PDE_FEM_H_
#define DINO_MODELS_PDE_FEM_H_

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <vector>

#include "models/pde/mesh.h"

namespace dino::pde {

// Column-major, int-indexed: the layout Eigen's sparse Cholesky factorizations take.
using SparseMatrix = Eigen::SparseMatrix<double>;

// Gradients of element e's three P1 basis functions (row a = ∇φ_a); constant on the element.
Eigen::Matrix<double, 3, 2> BasisGradients(const StructuredTriMesh& mesh, int e);

// ∫_T (Θ ∇φ_b) · ∇φ_a dx for a constant symmetric tensor Θ.
Eigen::Matrix3d ElementStiffness(const StructuredTriMesh& mesh, int e,
                                 const Eigen::Matrix2d& tensor = Eigen::Matrix2d::Identity());

// ∫_T φ_a φ_b dx = |T|(1 + δ_ab)/12 (the same for every element of the uniform mesh).
Eigen::Matrix3d ElementMass(const StructuredTriMesh& mesh);

// Consistent mass matrix M_ij = ∫_Ω φ_i φ_j dx, [num_nodes × num_nodes].
SparseMatrix AssembleMass(const StructuredTriMesh& mesh);

// Stiffness matrix K_ij = ∫_Ω (Θ∇φ_j)·∇φ_i dx with natural (homogeneous Neumann) boundary
// conditions. Throws std::invalid_argument unless Θ is symmetric positive definite.
SparseMatrix AssembleStiffness(const StructuredTriMesh& mesh,
                               const Eigen::Matrix2d& tensor = Eigen::Matrix2d::Identity());

// Row sums of the consistent mass matrix (|supp φ_i|/3).
Eigen::VectorXd LumpedMass(const StructuredTriMesh& mesh);

// Point evaluation of P1 functions: row k holds the basis-function values φ_i(x_k), so
// (B u)_k = u_h(x_k). [points.size() × num_nodes], at most 3 nonzeros per row.
SparseMatrix AssemblePointEvaluation(const StructuredTriMesh& mesh,
                                     const std::vector<Eigen::Vector2d>& points);

// The factor L of the mass matrix through DegreeTwoRule() quadrature: column 3e + q is
// √(w_q |T|) (φ_i(x_{e,q}))_i for quadrature point q of element e, so
// L Lᵀ = Σ_{e,q} w_q |T| φ_i(x_q) φ_j(x_q) = M exactly (the rule is exact for degree 2).
// This is hIPPYlib's `sqrtM` (SqrtPrecisionPDE_Prior). [num_nodes × 3·num_elements].
SparseMatrix AssembleQuadratureMassFactor(const StructuredTriMesh& mesh);

// nx·ny points (x0 + i·dx, y0 + j·dy), 0 ≤ i < nx, 0 ≤ j < ny, point index nx·j + i.
std::vector<Eigen::Vector2d> GridPoints(double x0, double dx, int nx, double y0, double dy, int ny);

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_FEM_H_
