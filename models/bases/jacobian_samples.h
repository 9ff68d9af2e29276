// Jacobian samples ∇q(mᵢ), i = 1…n, and the two empirical second-moment operators of paper
// §2.3 built from them, applied matrix-free:
//     H_M = (1/n) Σᵢ Jᵢᵀ Jᵢ  [d_M × d_M]   (active subspace, (2.24)),
//     H_Q = (1/n) Σᵢ Jᵢ Jᵢᵀ  [d_Q × d_Q]   (output derivative basis, (2.25)).
//
// The samples are a non-owning view of the arrays exactly as the data files hold them
// (row-major, C order), so a data set read from disk is used without a copy:
//  * full:          J [n, d_Q, d_M]                       (J_data.npz: J_data),
//  * truncated SVD: U [n, d_Q, r], σ [n, r], V [n, d_M, r] (Jsvd_data.npz: U_data, sigma_data,
//                   V_data), Jᵢ = Uᵢ diag(σᵢ) Vᵢᵀ.
// Products with the SVD form use all three factors (JᵢᵀJᵢ = Vᵢσᵢ(UᵢᵀUᵢ)σᵢVᵢᵀ), so they are
// exact for whatever the files hold, without assuming orthonormal factors.
//
// Cost of one product with k vectors: full form 4·n·d_Q·d_M·k flops; SVD form about
// 4·n·(d_M + d_Q)·r·k. Products split the samples over `threads` threads and add the partial
// sums in thread order, so results are reproducible for a given thread count; different thread
// counts round differently (in the last bits).
#ifndef DINO_MODELS_BASES_JACOBIAN_SAMPLES_H_
#define DINO_MODELS_BASES_JACOBIAN_SAMPLES_H_

#include <Eigen/Core>

namespace dino::bases {

class JacobianSamples {
 public:
  // `jacobians` points to n·d_Q·d_M doubles, which must outlive the view. Throws
  // std::invalid_argument for a null pointer or a non-positive dimension.
  static JacobianSamples Full(const double* jacobians, Eigen::Index n, Eigen::Index d_q,
                              Eigen::Index d_m);
  // u: n·d_Q·r, sigma: n·r, v: n·d_M·r doubles (row-major as above).
  static JacobianSamples TruncatedSvd(const double* u, const double* sigma, const double* v,
                                      Eigen::Index n, Eigen::Index d_q, Eigen::Index d_m,
                                      Eigen::Index rank);

  bool is_full() const { return jacobians_ != nullptr; }
  Eigen::Index size() const { return n_; }
  Eigen::Index output_dim() const { return d_q_; }
  Eigen::Index input_dim() const { return d_m_; }
  Eigen::Index svd_rank() const { return rank_; }  // 0 for the full form.

  // Jᵢ as a dense [d_Q × d_M] matrix (for tests and small problems).
  Eigen::MatrixXd Jacobian(Eigen::Index i) const;

  // H_M X for X [d_M × k].
  Eigen::MatrixXd ApplyInputGram(const Eigen::MatrixXd& x, int threads = 1) const;
  // H_Q Y for Y [d_Q × k].
  Eigen::MatrixXd ApplyOutputGram(const Eigen::MatrixXd& y, int threads = 1) const;
  // H_Q as a dense [d_Q × d_Q] matrix (d_Q is small: 50 observations in the paper).
  Eigen::MatrixXd OutputGram(int threads = 1) const;
  // (1/n) Σᵢ ‖Jᵢ‖²_F = trace(H_M) = trace(H_Q): the total of either spectrum, for the fraction a
  // truncated basis captures.
  double MeanSquaredNorm() const;

 private:
  JacobianSamples() = default;

  const double* jacobians_ = nullptr;
  const double* u_ = nullptr;
  const double* sigma_ = nullptr;
  const double* v_ = nullptr;
  Eigen::Index n_ = 0;
  Eigen::Index d_q_ = 0;
  Eigen::Index d_m_ = 0;
  Eigen::Index rank_ = 0;
};

}  // namespace dino::bases

#endif  // DINO_MODELS_BASES_JACOBIAN_SAMPLES_H_
