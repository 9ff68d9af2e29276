#include "models/bases/bases.h"

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <algorithm>
#include <stdexcept>
#include <string>

namespace dino::bases {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Eigen::MatrixXd ThinQ(const Eigen::MatrixXd& a) {
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(a);
  return qr.householderQ() * Eigen::MatrixXd::Identity(a.rows(), a.cols());
}

double SpectralNorm(const Eigen::MatrixXd& a) {
  if (a.size() == 0) return 0.0;
  return Eigen::JacobiSVD<Eigen::MatrixXd>(a).singularValues()(0);
}

}  // namespace

EigenDecomposition ActiveSubspace(const JacobianSamples& samples, const EigensolverOptions& options,
                                  int threads) {
  const BlockOperator gram = [&samples, threads](const Eigen::MatrixXd& x) {
    return samples.ApplyInputGram(x, threads);
  };
  return DominantEigenpairs(samples.input_dim(), gram, BlockOperator(), options,
                            "active subspace (E[∇qᵀ∇q])");
}

EigenDecomposition OutputDerivativeBasis(const JacobianSamples& samples,
                                         const EigensolverOptions& options, int threads) {
  const Eigen::Index d_q = samples.output_dim();
  if (d_q > kDenseOutputLimit) {
    const BlockOperator gram = [&samples, threads](const Eigen::MatrixXd& y) {
      return samples.ApplyOutputGram(y, threads);
    };
    return DominantEigenpairs(d_q, gram, BlockOperator(), options,
                              "output derivative basis (E[∇q∇qᵀ])");
  }
  if (options.rank < 1 || options.rank > d_q) {
    throw std::invalid_argument("output derivative basis (E[∇q∇qᵀ]): rank " +
                                std::to_string(options.rank) + " is outside [1, " +
                                std::to_string(d_q) + "] (d_Q)");
  }
  EigenDecomposition all = DenseSymmetricEigenpairs(samples.OutputGram(threads));
  all.vectors.conservativeResize(Eigen::NoChange, options.rank);
  all.values.conservativeResize(options.rank);
  return all;
}

Pod OutputPod(const double* q, Eigen::Index n, Eigen::Index d_q, int rank) {
  if (q == nullptr || n < 1 || d_q < 1) {
    throw std::invalid_argument("POD: need at least one output sample of positive dimension (n = " +
                                std::to_string(n) + ", d_Q = " + std::to_string(d_q) + ")");
  }
  const bool complete = d_q <= kDenseOutputLimit;
  const Eigen::Index available = complete ? d_q : std::min(n, d_q);
  if (rank < 1 || rank > available) {
    throw std::invalid_argument(
        "POD: rank " + std::to_string(rank) + " is outside [1, " + std::to_string(available) + "]" +
        (complete ? " (d_Q)" : " (min(n, d_Q), as d_Q exceeds the dense limit)"));
  }
  const Eigen::Map<const RowMajorMatrix> data(q, n, d_q);
  if (!data.allFinite()) throw std::invalid_argument("POD: the outputs have non-finite values");

  Pod pod;
  pod.mean = data.colwise().mean().transpose();
  const Eigen::MatrixXd centred = data.rowwise() - pod.mean.transpose();
  pod.total_variance = centred.squaredNorm() / static_cast<double>(n);

  // The right singular vectors of the centred data are the POD modes. Full V (when d_Q is
  // small) also provides an orthonormal completion when there are fewer samples than outputs.
  const Eigen::BDCSVD<Eigen::MatrixXd> svd(centred,
                                           complete ? Eigen::ComputeFullV : Eigen::ComputeThinV);
  const Eigen::VectorXd& sigma = svd.singularValues();
  pod.basis = svd.matrixV().leftCols(rank);
  pod.eigenvalues = Eigen::VectorXd::Zero(rank);
  const Eigen::Index nonzero = std::min<Eigen::Index>(rank, sigma.size());
  pod.eigenvalues.head(nonzero) = sigma.head(nonzero).array().square() / static_cast<double>(n);
  NormalizeColumnSigns(pod.basis);
  return pod;
}

KarhunenLoeve PriorKle(const pde::BiLaplacianPrior& prior, const EigensolverOptions& options) {
  const BlockOperator mass = [&prior](const Eigen::MatrixXd& x) { return prior.ApplyMass(x); };
  // T = C M is self-adjoint in ⟨·,·⟩_M: ⟨T x, y⟩_M = xᵀ M C M y.
  const BlockOperator covariance_operator = [&prior](const Eigen::MatrixXd& x) {
    return prior.ApplyCovariance(prior.ApplyMass(x));
  };
  KarhunenLoeve kle;
  kle.solver = DominantEigenpairs(prior.dim(), covariance_operator, mass, options,
                                  "prior KLE (C M in the mass inner product)");
  kle.modes = kle.solver.vectors;
  kle.eigenvalues = kle.solver.values;

  // Euclidean basis of the dual span MΨ, rotated to principal axes of the prior within it.
  const Eigen::MatrixXd orthonormal = ThinQ(prior.ApplyMass(kle.modes));
  Eigen::MatrixXd projected_covariance =
      orthonormal.transpose() * prior.ApplyCovariance(orthonormal);
  const EigenDecomposition principal = DenseSymmetricEigenpairs(projected_covariance);
  kle.basis = orthonormal * principal.vectors;
  kle.coordinate_variances = principal.values;
  NormalizeColumnSigns(kle.basis);
  return kle;
}

double OrthonormalityDefect(const Eigen::MatrixXd& basis) {
  if (basis.cols() == 0) return 0.0;
  const Eigen::MatrixXd gram = basis.transpose() * basis;
  return (gram - Eigen::MatrixXd::Identity(basis.cols(), basis.cols())).cwiseAbs().maxCoeff();
}

double SubspaceDistance(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  if (a.rows() != b.rows()) {
    throw std::invalid_argument("SubspaceDistance: the bases have " + std::to_string(a.rows()) +
                                " and " + std::to_string(b.rows()) + " rows");
  }
  const Eigen::MatrixXd qa = ThinQ(a);
  const Eigen::MatrixXd qb = ThinQ(b);
  // The gap ‖P_a − P_b‖₂ = max(‖(I − P_a)Q_b‖₂, ‖(I − P_b)Q_a‖₂): the sine of the largest
  // principal angle for subspaces of equal dimension, 1 when the dimensions differ.
  const double ab = SpectralNorm(qb - qa * (qa.transpose() * qb));
  const double ba = SpectralNorm(qa - qb * (qb.transpose() * qa));
  return std::min(1.0, std::max(ab, ba));
}

}  // namespace dino::bases
