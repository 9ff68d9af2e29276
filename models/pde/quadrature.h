// Symmetric quadrature rules on triangles, in barycentric coordinates, with weights that sum
// to one (multiply by the element area). All weights are positive, so assembled mass-type
// matrices stay positive definite.
#ifndef DINO_MODELS_PDE_QUADRATURE_H_
#define DINO_MODELS_PDE_QUADRATURE_H_

#include <Eigen/Core>

namespace dino::pde {

template <int N>
struct TriangleQuadrature {
  static constexpr int kNumPoints = N;
  int degree = 0;                           // Integrates polynomials of this total degree exactly.
  Eigen::Matrix<double, N, 3> barycentric;  // Row q: (λ0, λ1, λ2) of point q.
  Eigen::Matrix<double, N, 1> weights;      // Sum to 1.
};

// 3-point rule at barycentric permutations of (2/3, 1/6, 1/6), exact for degree 2. This is
// FFC/FIAT's default degree-2 scheme, i.e. the quadrature space hIPPYlib's BiLaplacian prior
// uses to factor the P1 mass matrix for sampling (see prior.h).
const TriangleQuadrature<3>& DegreeTwoRule();

// 6-point Strang–Fix/Dunavant rule, exact for degree 4. Used for every state-equation
// integral: it integrates the cubic reaction term u_h³ φ_i (degree 4) and its Jacobian
// 3 u_h² φ_i φ_j (degree 4) exactly, and evaluates the non-polynomial e^{m_h} at more points
// than FEniCS's degree estimate for exp(m)·∇u·∇p with P1 fields (degree 3) would.
const TriangleQuadrature<6>& DegreeFourRule();

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_QUADRATURE_H_
