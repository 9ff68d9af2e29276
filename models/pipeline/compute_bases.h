// `dino-train bases`: the reduced bases of a data directory (models/bases) written as
// bases.npz, with every spectrum, a spectra CSV for plotting (scripts/plot_spectra.py) and a
// JSON summary.
//
// bases.npz (float64, C order; r_M = input rank, r_Q = output rank):
//   input_basis [d_M, r_M], output_basis [d_Q, r_Q], output_shift [d_Q]   the DIPNet's bases
//       (the model contract's names; input/output_basis are copies of the chosen bases below,
//       output_shift is the output mean b)
//   active_subspace_basis [d_M, r_M], active_subspace_eigenvalues [r_M]       needs Jacobians
//   output_derivative_basis [d_Q, r_Q], output_derivative_eigenvalues [d_Q]   needs Jacobians
//   pod_basis [d_Q, r_Q], pod_eigenvalues [d_Q]
//   kle_basis [d_M, r_M] (Euclidean-orthonormal), kle_modes [d_M, r_M] (M-orthonormal),
//   kle_eigenvalues [r_M], kle_coordinate_variances [r_M]                     needs the prior
// The output spectra are complete (all d_Q eigenvalues), the input spectra have r_M values.
// With d_Q above bases::kDenseOutputLimit the output spectra have r_Q values.
//
// spectra.csv: a header "index,active_subspace,output_derivative,pod,kle" (only the spectra
// that were computed), then one row per index k = 1, 2, … with the k-th eigenvalue of each
// spectrum (empty where a spectrum is shorter).
//
// The prior (for the KLE) is that of the problem and mesh in generate.json, or of --problem and
// --mesh for data from elsewhere; without either, the KLE is skipped.
#ifndef DINO_MODELS_PIPELINE_COMPUTE_BASES_H_
#define DINO_MODELS_PIPELINE_COMPUTE_BASES_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/pipeline/problems.h"

namespace dino::pipeline {

enum class InputBasisKind { kActiveSubspace, kKle };
enum class OutputBasisKind { kPod, kOutputDerivative };
// Which Jacobian file of a data directory to read (bases, fit and evaluate share it).
enum class JacobianFiles {
  kAuto,  // J_data.npz if present (exact H_M), else Jsvd_data.npz, else none.
  kFull,  // J_data.npz, required.
  kSvd,   // Jsvd_data.npz, required.
  kNone,  // Ignore Jacobian data (only POD and the KLE).
};

// "active_subspace" / "kle", "pod" / "output_derivative", "auto" / "full" / "svd" / "none".
const char* InputBasisName(InputBasisKind kind);
absl::StatusOr<InputBasisKind> ParseInputBasis(absl::string_view name);
const char* OutputBasisName(OutputBasisKind kind);
absl::StatusOr<OutputBasisKind> ParseOutputBasis(absl::string_view name);
const char* JacobianFilesName(JacobianFiles source);
absl::StatusOr<JacobianFiles> ParseJacobianFiles(absl::string_view name);

struct BasesOptions {
  std::string data_dir;
  std::string out_dir;  // Empty: data_dir.
  InputBasisKind input_basis = InputBasisKind::kActiveSubspace;
  OutputBasisKind output_basis = OutputBasisKind::kPod;
  int input_rank = 100;  // r_M ≤ d_M
  int output_rank = 0;   // r_Q ≤ d_Q; 0: d_Q
  JacobianFiles jacobian_source = JacobianFiles::kAuto;
  bool kle = true;  // Compute the KLE when the prior is known.
  // The prior for data without generate.json (or a check against it when both are given).
  std::optional<Problem> problem;
  int mesh = 0;
  int threads = 0;  // 0: all available cores.
  // Matrix-free eigensolver (active subspace, KLE): see models/bases/eigensolver.h.
  uint64_t seed = 0;
  int oversampling = -1;
  int max_iterations = 100;
  double tolerance = 1e-8;
  bool compress = false;
  // Notes for the user (skipped bases, unconverged solves); ignored when empty.
  std::function<void(const std::string&)> log;
};

struct BasesReport {
  int64_t samples = 0;
  int64_t parameter_dim = 0;
  int64_t observation_dim = 0;
  int input_rank = 0;
  int output_rank = 0;
  std::string jacobian_file;       // The Jacobian data used, empty if none.
  std::vector<std::string> bases;  // Names of the bases computed, e.g. "active_subspace".
  std::vector<std::string> files;  // bases.npz, spectra.csv, bases.json.
  double seconds = 0.0;
};

// Errors name the file and array (missing or malformed data), the option (ranks, bases that
// need absent data) or the failing computation.
absl::StatusOr<BasesReport> ComputeBases(const BasesOptions& options);

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_COMPUTE_BASES_H_
