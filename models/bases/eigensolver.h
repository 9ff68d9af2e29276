// Matrix-free dominant eigenpairs of a symmetric positive semidefinite operator, optionally
// self-adjoint in a weighted inner product ⟨x, y⟩_B = xᵀBy (generalized eigenproblem).
//
// The bases of paper §2.3 are dominant eigenvectors of operators that are too large to form:
// E[∇qᵀ∇q] is d_M × d_M (d_M = 4225 at the paper's mesh, and the data cost O(n·d_Q·d_M) per
// product), and the prior covariance C = A⁻¹MA⁻¹ is dense although A and M are sparse. Both
// are available only through products with blocks of vectors, so the solver works with those.
//
// Algorithm: block subspace iteration with Rayleigh–Ritz (Saad, "Numerical Methods for Large
// Eigenvalue Problems", §5.2; Halko–Martinsson–Tropp's randomized range finder is its first
// step). With ℓ = rank + oversampling block columns and eigenvalues λ₁ ≥ λ₂ ≥ … ≥ 0, the error
// in the j-th Ritz pair decays like (λ_{ℓ+1}/λ_j)^k after k iterations, so oversampling buys
// convergence for slowly decaying spectra (the prior's KLE decays only like k⁻²). Each
// iteration costs one product of T with ℓ vectors; orthonormalization in the B inner product
// (Householder QR, then two Cholesky-QR passes, which are stable once the block is
// well-conditioned in the Euclidean sense and B is well-conditioned, as a mass matrix is)
// costs two products of B with ℓ vectors.
//
// Convergence: every wanted Ritz pair (x_j, θ_j) must satisfy
//     ‖T x_j − θ_j x_j‖₂ ≤ tolerance · θ₁ · ‖x_j‖₂,
// a scale-invariant relative residual (the same in either norm when B = I). For a
// self-adjoint T this bounds the eigenvalue error by θ₁·tolerance (and by the square of the
// residual over the spectral gap once the gap is resolved).
#ifndef DINO_MODELS_BASES_EIGENSOLVER_H_
#define DINO_MODELS_BASES_EIGENSOLVER_H_

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <string>

namespace dino::bases {

// A linear map applied to a block of column vectors: [dim × k] → [dim × k].
using BlockOperator = std::function<Eigen::MatrixXd(const Eigen::MatrixXd&)>;

struct EigensolverOptions {
  // Number of eigenpairs wanted, 1 ≤ rank ≤ dim.
  int rank = 20;
  // Extra block columns ℓ − rank (ℓ is capped at dim). Negative: max(10, rank / 2), which keeps
  // the iteration count moderate for spectra decaying like k⁻² (the KLE) and costs at most
  // 1.5× per iteration.
  int oversampling = -1;
  // Subspace iterations (each one product of T with ℓ vectors).
  int max_iterations = 100;
  // Relative residual at which every wanted pair counts as converged (see above).
  double tolerance = 1e-8;
  // Seed of the Gaussian starting block (dino::pde::NormalRng(seed, 0)), so results are
  // reproducible.
  std::uint64_t seed = 0;
};

// Eigenpairs in non-increasing order of the eigenvalue.
struct EigenDecomposition {
  Eigen::MatrixXd vectors;             // [dim × rank], orthonormal in the solver's inner product.
  Eigen::VectorXd values;              // [rank], non-increasing.
  int iterations = 0;                  // Subspace iterations done (0 for dense solvers).
  int64_t operator_columns = 0;        // Total number of vectors T was applied to.
  double max_relative_residual = 0.0;  // Over the returned pairs, at the last iteration.
  bool converged = true;               // max_relative_residual ≤ tolerance.
};

// Dominant eigenpairs of T, which must be self-adjoint and positive semidefinite in the inner
// product of `inner_product` (B: symmetric positive definite; an empty function means B = I).
// The returned vectors X satisfy XᵀBX = I (to rounding) and T X ≈ X diag(values).
//
// Reaching max_iterations without convergence is not an error: the result says so
// (converged = false) and carries the residual, and the caller decides. Throws
// std::invalid_argument for dim < 1, a rank outside [1, dim], a negative iteration count or a
// non-positive tolerance, and when an operator returns a block of the wrong shape or with
// non-finite entries, or B is not positive definite on the block (messages name `name`).
EigenDecomposition DominantEigenpairs(Eigen::Index dim, const BlockOperator& op,
                                      const BlockOperator& inner_product,
                                      const EigensolverOptions& options,
                                      const std::string& name = "operator");

// All eigenpairs of a dense symmetric matrix, in non-increasing order, with the sign convention
// below. For the small d_Q × d_Q operators and for tests.
EigenDecomposition DenseSymmetricEigenpairs(const Eigen::MatrixXd& matrix);

// Makes each column's entry of largest magnitude positive (the first such entry on ties).
// Eigenvectors are defined up to sign; fixing it makes the bases reproducible and comparable
// across runs and thread counts.
void NormalizeColumnSigns(Eigen::MatrixXd& vectors);

// The ℓ used for `options` on a problem of dimension `dim`.
Eigen::Index BlockSize(Eigen::Index dim, const EigensolverOptions& options);

}  // namespace dino::bases

#endif  // DINO_MODELS_BASES_EIGENSOLVER_H_
