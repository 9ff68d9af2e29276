#include "models/pde/randomized_svd.h"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dino::pde {
namespace {

// Orthonormal basis of the columns of y (thin Householder Q). Householder QR yields
// orthonormal columns even for a rank-deficient y, so the sketch never breaks down.
Eigen::MatrixXd Orthonormalize(const Eigen::MatrixXd& y) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(y);
  return qr.householderQ() * Eigen::MatrixXd::Identity(y.rows(), y.cols());
}

Eigen::MatrixXd Checked(const Eigen::MatrixXd& block, Eigen::Index rows, Eigen::Index cols,
                        const char* what) {
  if (block.rows() != rows || block.cols() != cols) {
    std::ostringstream msg;
    msg << "RandomizedSvd: " << what << " returned a " << block.rows() << " × " << block.cols()
        << " block, expected " << rows << " × " << cols;
    throw std::invalid_argument(msg.str());
  }
  if (!block.allFinite()) {
    throw std::invalid_argument(std::string("RandomizedSvd: ") + what +
                                " returned non-finite entries");
  }
  return block;
}

// Rank-`rank` truncation of the thin SVD of a. For a tall matrix a = Q R (Householder,
// O(rows·cols²)) and the small square R is decomposed by one-sided Jacobi, which is accurate
// to rounding relative to ‖a‖; a wide matrix is handled through its transpose. This is
// several times faster than Eigen::JacobiSVD's column-pivoting preconditioner on the
// 4225 × 30 and 50 × 4225 shapes met here.
TruncatedSvd ThinSvd(const Eigen::MatrixXd& a, Eigen::Index rank) {
  if (a.rows() < a.cols()) {
    TruncatedSvd transposed = ThinSvd(a.transpose(), rank);
    std::swap(transposed.u, transposed.v);
    return transposed;
  }
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  const Eigen::MatrixXd r = qr.matrixQR().topRows(a.cols()).triangularView<Eigen::Upper>();
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(r, Eigen::ComputeFullU | Eigen::ComputeFullV);
  TruncatedSvd result;
  result.singular_values = svd.singularValues().head(rank);
  result.u = qr.householderQ() *
             (Eigen::MatrixXd::Identity(a.rows(), a.cols()) * svd.matrixU().leftCols(rank));
  result.v = svd.matrixV().leftCols(rank);
  return result;
}

}  // namespace

TruncatedSvd RandomizedSvd(const LinearOperator& op, const RandomizedSvdOptions& options,
                           NormalRng& rng) {
  if (op.rows < 1 || op.cols < 1 || !op.apply || !op.apply_transpose) {
    throw std::invalid_argument(
        "RandomizedSvd: the operator needs positive dimensions and both actions");
  }
  const Eigen::Index min_dim = std::min(op.rows, op.cols);
  if (options.rank < 1 || options.rank > min_dim || options.oversampling < 0 ||
      options.power_iterations < 0) {
    std::ostringstream msg;
    msg << "RandomizedSvd: invalid options rank = " << options.rank << " (must be in [1, "
        << min_dim << "]), oversampling = " << options.oversampling
        << ", power_iterations = " << options.power_iterations << " (must be ≥ 0)";
    throw std::invalid_argument(msg.str());
  }
  const Eigen::Index sketch = std::min<Eigen::Index>(
      static_cast<Eigen::Index>(options.rank) + options.oversampling, min_dim);

  // Range finder: Q ≈ orthonormal basis of range(A), refined by subspace iteration
  // Q ← orth(A orth(Aᵀ Q)); re-orthonormalizing after every product keeps the small singular
  // directions from being lost to rounding (HMT Algorithm 4.4).
  const Eigen::MatrixXd omega = rng.Matrix(op.cols, sketch);
  Eigen::MatrixXd q = Orthonormalize(Checked(op.apply(omega), op.rows, sketch, "apply"));
  for (int i = 0; i < options.power_iterations; ++i) {
    const Eigen::MatrixXd z =
        Orthonormalize(Checked(op.apply_transpose(q), op.cols, sketch, "apply_transpose"));
    q = Orthonormalize(Checked(op.apply(z), op.rows, sketch, "apply"));
  }

  // A ≈ Q Qᵀ A = Q Bᵀᵀ with Bᵀ = Aᵀ Q [cols × ℓ]. The SVD Bᵀ = W Σ Zᵀ gives
  // A ≈ (Q Z) Σ Wᵀ (HMT Algorithm 5.1).
  const Eigen::MatrixXd bt = Checked(op.apply_transpose(q), op.cols, sketch, "apply_transpose");
  TruncatedSvd svd = ThinSvd(bt, options.rank);

  TruncatedSvd result;
  result.singular_values = std::move(svd.singular_values);
  result.u = q * svd.v;
  result.v = std::move(svd.u);
  return result;
}

TruncatedSvd ExactTruncatedSvd(const Eigen::MatrixXd& a, int rank) {
  const Eigen::Index min_dim = std::min(a.rows(), a.cols());
  if (rank < 1 || rank > min_dim) {
    std::ostringstream msg;
    msg << "ExactTruncatedSvd: rank " << rank << " is outside [1, " << min_dim << "]";
    throw std::invalid_argument(msg.str());
  }
  if (!a.allFinite()) throw std::invalid_argument("ExactTruncatedSvd: non-finite matrix entries");
  return ThinSvd(a, rank);
}

}  // namespace dino::pde
