// Reduced bases for DIPNets (paper §2.3, (2.19)): f(m) = U φ(Vᵀm) + b with V [d_M × r_M] and
// U [d_Q × r_Q] orthonormal. Each basis comes with its spectrum, the eigenvalues that say how
// much of the relevant quantity a truncation keeps:
//
//  * ActiveSubspace — input side, derivative-informed: dominant eigenvectors of
//    H_M = E[∇qᵀ∇q] (2.24), matrix-free (H_M is never formed; see jacobian_samples.h).
//  * OutputDerivativeBasis — output side, derivative-informed: dominant eigenvectors of
//    H_Q = E[∇q∇qᵀ] (2.25), the "derivative outer product" basis.
//  * OutputPod — output side, data-driven: POD / PCA of the outputs, with the mean as the
//    shift b.
//  * PriorKle — input side, prior-driven: the Karhunen–Loève expansion of ν = N(m̄, C).
//
// Inner products. The output space R^{d_Q} holds point observations, so its Euclidean inner
// product is the natural one, and the active subspace is defined in the Euclidean inner
// product of R^{d_M} as in (2.24) (its eigenvectors span the rows of the Jacobians, which are
// dual vectors: ∂q/∂m_a carries the mass of node a). The KLE is different: m is the nodal
// vector of a function, the KLE is defined in L²(Ω), and the L² inner product of P1 functions
// is ⟨f, g⟩ = fᵀMg (M the mass matrix). In coefficient space the covariance operator is C M
// (⟨𝒞f, g⟩ = E[⟨m − m̄, f⟩⟨m − m̄, g⟩] = fᵀMCMg), self-adjoint in the M inner product, so the
// KLE modes solve the generalized eigenproblem
//     M C M ψ = λ M ψ,   ΨᵀMΨ = I,
// whose eigenvalues approximate those of 𝒞 independently of the mesh. (Euclidean eigenvectors
// of C alone would weight each node by its share of the mesh, e.g. half for edge nodes, and
// their eigenvalues scale with h².)
//
// Euclidean form of the KLE for DIPNets. The model contract takes z = Vᵀm with orthonormal V.
// The KLE coordinates of m are its L² projections cₖ = ⟨ψₖ, m⟩ = (MΨ)ᵀm, so the ridge
// directions are the columns of MΨ, not of Ψ. PriorKle therefore returns V = orth(MΨ) (QR),
// rotated so the coordinates are uncorrelated under the prior: VᵀCV = diag(variances). Then
// z = Vᵀm is an invertible linear function of the leading KLE coefficients (MΨ = V R, so
// c = Rᵀz, up to the rotation), which a DIPNet's first layer absorbs; by Proposition 2.4 the
// network's Jacobian lives in span(V) = span(MΨ) exactly as with hIPPYflow's KLE projector MΨ.
// Using orth(Ψ) instead would mix the discarded modes into z, because the modes are
// M-orthogonal, not Euclidean-orthogonal.
//
// All bases use NormalizeColumnSigns (largest entry of each column positive).
#ifndef DINO_MODELS_BASES_BASES_H_
#define DINO_MODELS_BASES_BASES_H_

#include <Eigen/Core>

#include "models/bases/eigensolver.h"
#include "models/bases/jacobian_samples.h"
#include "models/pde/prior.h"

namespace dino::bases {

// Output dimensions up to this are handled by dense eigensolvers and SVDs (a d_Q × d_Q matrix,
// 128 MiB at the limit); above it OutputDerivativeBasis is matrix-free.
inline constexpr Eigen::Index kDenseOutputLimit = 4096;

// Active subspace: the `options.rank` dominant eigenpairs of H_M = (1/n) Σᵢ JᵢᵀJᵢ, computed
// matrix-free with DominantEigenpairs (Euclidean inner product), each product with H_M split
// over `threads` threads. Eigenvalues beyond the rank of the data (at most n·min(d_Q, r)) are
// zero and their eigenvectors are arbitrary orthonormal directions of the null space.
EigenDecomposition ActiveSubspace(const JacobianSamples& samples, const EigensolverOptions& options,
                                  int threads = 1);

// Output derivative basis: the `options.rank` dominant eigenpairs of H_Q = (1/n) Σᵢ JᵢJᵢᵀ.
// Dense (exact, the solver options other than rank unused) when d_Q ≤ kDenseOutputLimit,
// matrix-free otherwise.
EigenDecomposition OutputDerivativeBasis(const JacobianSamples& samples,
                                         const EigensolverOptions& options, int threads = 1);

struct Pod {
  Eigen::VectorXd mean;         // b = (1/n) Σᵢ qᵢ [d_Q]: the DIPNet output shift.
  Eigen::MatrixXd basis;        // [d_Q × rank], orthonormal.
  Eigen::VectorXd eigenvalues;  // [rank]: (1/n) Σᵢ (uₖᵀ(qᵢ − b))², non-increasing.
  double total_variance = 0.0;  // (1/n) Σᵢ ‖qᵢ − b‖²: the sum of all d_Q eigenvalues.
};

// POD of the outputs `q` (row-major [n × d_Q], the layout of q_data), from the SVD of the
// centred data (more accurate than an eigendecomposition of the covariance, whose small
// eigenvalues would lose half their digits). The second moment is normalized by n, the same
// empirical measure as the derivative bases, so the spectra are comparable; multiply by
// n/(n − 1) for the unbiased covariance. Beyond min(n, d_Q) the eigenvalues are zero and the
// basis is completed orthonormally (d_Q ≤ kDenseOutputLimit), so any rank ≤ d_Q works; above
// the limit the rank must not exceed min(n, d_Q). Throws std::invalid_argument otherwise and
// for n < 1 or non-finite data.
Pod OutputPod(const double* q, Eigen::Index n, Eigen::Index d_q, int rank);

struct KarhunenLoeve {
  // ψₖ: nodal values of L²-orthonormal eigenfunctions of 𝒞 (ΨᵀMΨ = I) [d_M × rank].
  Eigen::MatrixXd modes;
  // λₖ: eigenvalues of the covariance operator 𝒞 on L²(Ω), non-increasing [rank].
  Eigen::VectorXd eigenvalues;
  // V: Euclidean-orthonormal basis of span(MΨ) with VᵀCV diagonal [d_M × rank] (see above).
  Eigen::MatrixXd basis;
  // Var(vₖᵀm) under the prior, the diagonal of VᵀCV, non-increasing [rank].
  Eigen::VectorXd coordinate_variances;
  // The generalized eigensolver's report (modes and eigenvalues).
  EigenDecomposition solver;
};

// The `options.rank` dominant KLE modes of `prior` from DominantEigenpairs on T = C M in the
// M inner product, using the prior's sparse factorizations (ApplyCovariance, ApplyMass), so
// nothing dense of size d_M × d_M is formed. Works for either noise factor (C = A⁻¹M_wA⁻¹).
KarhunenLoeve PriorKle(const pde::BiLaplacianPrior& prior, const EigensolverOptions& options);

// max |BᵀB − I|: how far `basis` is from having orthonormal columns (the check the model
// contract applies with a 1e-6 threshold).
double OrthonormalityDefect(const Eigen::MatrixXd& basis);

// The sine of the largest principal angle between span(a) and span(b) (columns need not be
// orthonormal; both are orthonormalized first): 0 for equal subspaces, 1 when some direction
// of one is orthogonal to the other. Throws std::invalid_argument for different row counts.
double SubspaceDistance(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b);

}  // namespace dino::bases

#endif  // DINO_MODELS_BASES_BASES_H_
