#include "models/bases/eigensolver.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "models/pde/random.h"

namespace dino::bases {
namespace {

std::string Shape(Eigen::Index rows, Eigen::Index cols) {
  return "[" + std::to_string(rows) + " × " + std::to_string(cols) + "]";
}

// Applies `op` and checks what comes back: a wrong shape or a NaN here would otherwise surface
// as a meaningless factorization failure several steps later.
Eigen::MatrixXd Apply(const BlockOperator& op, const Eigen::MatrixXd& x, const std::string& name,
                      const char* what) {
  Eigen::MatrixXd y = op(x);
  if (y.rows() != x.rows() || y.cols() != x.cols()) {
    throw std::invalid_argument(name + ": " + what + " returned a " + Shape(y.rows(), y.cols()) +
                                " block for a " + Shape(x.rows(), x.cols()) + " input");
  }
  if (!y.allFinite()) {
    throw std::invalid_argument(name + ": " + what + " returned non-finite values");
  }
  return y;
}

struct OrthonormalBlock {
  Eigen::MatrixXd q;   // QᵀBQ = I
  Eigen::MatrixXd bq;  // B Q
};

// An orthonormal basis (in the B inner product) of the columns of y. Householder QR first: it
// is unconditionally stable and, where y is rank-deficient (an operator of rank below ℓ maps
// part of the block to zero), completes the basis with orthonormal directions, so the block
// never collapses. Two Cholesky-QR passes then make the well-conditioned Q B-orthonormal; the
// second pass removes the rounding error of the first (CholQR2).
OrthonormalBlock Orthonormalize(const Eigen::MatrixXd& y, const BlockOperator& inner_product,
                                const std::string& name) {
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(y);
  OrthonormalBlock block;
  block.q = qr.householderQ() * Eigen::MatrixXd::Identity(y.rows(), y.cols());
  if (!inner_product) {
    block.bq = block.q;
    return block;
  }
  for (int pass = 0; pass < 2; ++pass) {
    block.bq = Apply(inner_product, block.q, name, "the inner-product operator");
    Eigen::MatrixXd gram = block.q.transpose() * block.bq;
    gram = 0.5 * (gram + gram.transpose()).eval();
    const Eigen::LLT<Eigen::MatrixXd> llt(gram);
    if (llt.info() != Eigen::Success) {
      throw std::invalid_argument(name +
                                  ": the inner-product operator is not positive definite on the "
                                  "current block (Cholesky factorization of QᵀBQ failed)");
    }
    // Q ← Q Lᵀ⁻¹ and BQ ← BQ Lᵀ⁻¹, so that (Q Lᵀ⁻¹)ᵀ B (Q Lᵀ⁻¹) = L⁻¹ (L Lᵀ) Lᵀ⁻¹ = I.
    llt.matrixU().solveInPlace<Eigen::OnTheRight>(block.q);
    llt.matrixU().solveInPlace<Eigen::OnTheRight>(block.bq);
  }
  return block;
}

void CheckOptions(Eigen::Index dim, const EigensolverOptions& options, const std::string& name) {
  if (dim < 1) throw std::invalid_argument(name + ": dimension must be positive");
  if (options.rank < 1 || options.rank > dim) {
    throw std::invalid_argument(name + ": rank " + std::to_string(options.rank) +
                                " is outside [1, " + std::to_string(dim) + "] (the dimension)");
  }
  if (options.max_iterations < 1) {
    throw std::invalid_argument(name + ": max_iterations must be at least 1, not " +
                                std::to_string(options.max_iterations));
  }
  if (!(options.tolerance > 0.0) || !std::isfinite(options.tolerance)) {
    throw std::invalid_argument(name + ": tolerance must be positive and finite");
  }
}

}  // namespace

Eigen::Index BlockSize(Eigen::Index dim, const EigensolverOptions& options) {
  const Eigen::Index extra = options.oversampling >= 0
                                 ? options.oversampling
                                 : std::max<Eigen::Index>(10, options.rank / 2);
  return std::min<Eigen::Index>(dim, options.rank + extra);
}

void NormalizeColumnSigns(Eigen::MatrixXd& vectors) {
  for (Eigen::Index j = 0; j < vectors.cols(); ++j) {
    Eigen::Index largest = 0;
    // maxCoeff returns the first index of the maximum, which settles ties deterministically.
    vectors.col(j).cwiseAbs().maxCoeff(&largest);
    if (vectors(largest, j) < 0.0) vectors.col(j) = -vectors.col(j);
  }
}

EigenDecomposition DominantEigenpairs(Eigen::Index dim, const BlockOperator& op,
                                      const BlockOperator& inner_product,
                                      const EigensolverOptions& options, const std::string& name) {
  CheckOptions(dim, options, name);
  if (!op) throw std::invalid_argument(name + ": no operator given");
  const Eigen::Index ell = BlockSize(dim, options);
  const int rank = options.rank;

  pde::NormalRng rng(options.seed, 0);
  OrthonormalBlock basis = Orthonormalize(rng.Matrix(dim, ell), inner_product, name);

  EigenDecomposition result;
  for (int iteration = 1;; ++iteration) {
    const Eigen::MatrixXd tq = Apply(op, basis.q, name, "the operator");
    result.operator_columns += ell;
    // Rayleigh–Ritz: QᵀB(TQ) is the projection of T onto span(Q) in the B inner product; it
    // is symmetric because T is B-self-adjoint (symmetrized against rounding).
    Eigen::MatrixXd projected = basis.bq.transpose() * tq;
    projected = 0.5 * (projected + projected.transpose()).eval();
    const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> small(projected);
    if (small.info() != Eigen::Success) {
      throw std::invalid_argument(name + ": the Rayleigh–Ritz eigenproblem failed to converge");
    }
    // Eigen sorts ascending; the dominant pairs come first in the result.
    const Eigen::MatrixXd w = small.eigenvectors().rowwise().reverse();
    const Eigen::VectorXd theta = small.eigenvalues().reverse();
    Eigen::MatrixXd x = basis.q * w;
    const Eigen::MatrixXd tx = tq * w;

    const double scale = std::abs(theta(0));
    double worst = 0.0;
    for (int j = 0; j < rank; ++j) {
      const double residual = (tx.col(j) - theta(j) * x.col(j)).norm();
      const double norm = x.col(j).norm();
      // T = 0 gives θ₁ = 0 and zero residuals: converged, not 0/0.
      const double relative = residual == 0.0 ? 0.0 : residual / (scale * norm);
      worst = std::max(worst, std::isfinite(relative) ? relative : HUGE_VAL);
    }
    result.max_relative_residual = worst;
    result.converged = worst <= options.tolerance;
    if (result.converged || iteration >= options.max_iterations) {
      result.iterations = iteration;
      result.vectors = x.leftCols(rank);
      result.values = theta.head(rank);
      break;
    }
    // One step of subspace iteration: span(T X) = span(T Q), in Ritz order.
    basis = Orthonormalize(tx, inner_product, name);
  }
  NormalizeColumnSigns(result.vectors);
  return result;
}

EigenDecomposition DenseSymmetricEigenpairs(const Eigen::MatrixXd& matrix) {
  if (matrix.rows() != matrix.cols() || matrix.rows() == 0) {
    throw std::invalid_argument("DenseSymmetricEigenpairs: need a non-empty square matrix, got " +
                                Shape(matrix.rows(), matrix.cols()));
  }
  if (!matrix.allFinite()) {
    throw std::invalid_argument("DenseSymmetricEigenpairs: the matrix has non-finite entries");
  }
  const Eigen::MatrixXd symmetric = 0.5 * (matrix + matrix.transpose());
  const Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(symmetric);
  if (solver.info() != Eigen::Success) {
    throw std::invalid_argument("DenseSymmetricEigenpairs: the eigensolver did not converge");
  }
  EigenDecomposition result;
  result.vectors = solver.eigenvectors().rowwise().reverse();
  result.values = solver.eigenvalues().reverse();
  NormalizeColumnSigns(result.vectors);
  return result;
}

}  // namespace dino::bases
