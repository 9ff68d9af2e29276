// Randomized truncated SVD of a matrix accessed only through products with blocks of vectors
// (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.1). For the parametric Jacobian
// J ∈ R^{d_Q × d_M} this needs O(r) Jacobian actions per sample (paper §2): with
// ℓ = min(r + oversampling, d_Q, d_M) it costs (1 + power_iterations) blocks of ℓ products
// with J and (1 + power_iterations) blocks of ℓ products with Jᵀ.
#ifndef DINO_MODELS_PDE_RANDOMIZED_SVD_H_
#define DINO_MODELS_PDE_RANDOMIZED_SVD_H_

#include <Eigen/Core>
#include <functional>

#include "models/pde/random.h"

namespace dino::pde {

// A rows × cols matrix given by its actions on blocks of column vectors.
struct LinearOperator {
  Eigen::Index rows = 0;
  Eigen::Index cols = 0;
  std::function<Eigen::MatrixXd(const Eigen::MatrixXd&)> apply;            // [cols×k]→[rows×k]
  std::function<Eigen::MatrixXd(const Eigen::MatrixXd&)> apply_transpose;  // [rows×k]→[cols×k]
};

struct RandomizedSvdOptions {
  int rank = 20;             // r: number of singular triplets returned.
  int oversampling = 10;     // p: extra sketch columns, ℓ = min(r + p, rows, cols).
  int power_iterations = 1;  // q: subspace iterations, sharpen the range when the decay is slow.
};

// A ≈ U diag(σ) Vᵀ with U [rows × r] and V [cols × r] orthonormal, σ non-increasing.
struct TruncatedSvd {
  Eigen::MatrixXd u;
  Eigen::VectorXd singular_values;
  Eigen::MatrixXd v;
};

// The Gaussian test matrix Ω [cols × ℓ] is rng.Matrix(cols, ℓ). When ℓ reaches min(rows, cols)
// the sketch spans the whole range (for a full-rank sketch) and the result is the exact SVD up
// to rounding. Throws std::invalid_argument for a malformed operator or options (rank outside
// [1, min(rows, cols)], negative oversampling or power iterations) or when an action returns a
// block of the wrong shape or with non-finite entries.
TruncatedSvd RandomizedSvd(const LinearOperator& op, const RandomizedSvdOptions& options,
                           NormalRng& rng);

// The exact rank-r truncation of the SVD of an explicit matrix (Householder QR, then Jacobi
// SVD of the triangular factor). When the full
// Jacobian is computed anyway (d_Q = 50 adjoint solves), this is exact and cheaper than a
// randomized SVD of comparable accuracy. Throws std::invalid_argument unless
// 1 ≤ rank ≤ min(rows, cols) and the matrix is finite.
TruncatedSvd ExactTruncatedSvd(const Eigen::MatrixXd& a, int rank);

}  // namespace dino::pde

#endif  // DINO_MODELS_PDE_RANDOMIZED_SVD_H_
