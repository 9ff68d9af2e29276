// The Gaussian prior ν = N(m̄, C) of a served model's parameter m, for outer-loop clients
// (pCN and Langevin samplers, MAP solvers) that must draw prior samples and apply C, a square
// root of C and C⁻¹ without re-implementing the BiLaplacian prior (docs/prior.md).
//
// A prior belongs to a named problem of the data pipeline on an n × n mesh
// (models/pipeline/problems.h, the one place that defines a problem): an exact PDE model
// serves its problem's prior, and a DINO serves the prior of the problem it was trained on
// when its metadata names it (PriorFromMetadata). Models of the same problem and mesh share
// one instance.
//
// Operators (C = A⁻¹ M_w A⁻¹, G = A⁻¹ F the square factor of models/pde/prior.h, G Gᵀ = C):
//   covariance C, precision C⁻¹, covariance_sqrt G, covariance_sqrt_transpose Gᵀ,
//   covariance_sqrt_inverse G⁻¹ (whitening). With `with_mean`, the affine maps a sampler
//   needs: covariance_sqrt ξ ↦ m̄ + Gξ (white noise to a prior sample), covariance_sqrt_inverse
//   m ↦ G⁻¹(m − m̄) (back), precision m ↦ C⁻¹(m − m̄) (the gradient of ½‖m − m̄‖²_{C⁻¹}).
//
// Like SurrogateModel, this knows nothing of gRPC; errors name the request field. Everything
// is computed in float64; the columns of a request are computed in parallel (at::parallel_for).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "models/pde/prior.h"
#include "models/pipeline/problems.h"

namespace dino::serving {

enum class PriorOperator {
  kCovariance,               // C
  kPrecision,                // C⁻¹
  kCovarianceSqrt,           // G, G Gᵀ = C
  kCovarianceSqrtTranspose,  // Gᵀ
  kCovarianceSqrtInverse,    // G⁻¹
};
// "covariance", "precision", "covariance_sqrt", "covariance_sqrt_transpose",
// "covariance_sqrt_inverse".
const char* PriorOperatorName(PriorOperator op);

class ModelPrior {
 public:
  // The prior of `problem` on a mesh of mesh_cells × mesh_cells squares; one instance per
  // (problem, mesh) while any holder keeps it. INVALID_ARGUMENT for a mesh outside
  // [pipeline::kMinMesh, pipeline::kMaxMesh].
  static absl::StatusOr<std::shared_ptr<const ModelPrior>> ForProblem(pipeline::Problem problem,
                                                                      int mesh_cells);

  ModelPrior(pipeline::Problem problem, int mesh_cells);  // Use ForProblem.
  // With another prior configuration than the problem's (tests: a non-zero mean).
  ModelPrior(pipeline::Problem problem, int mesh_cells, const pde::PriorConfig& config);

  pipeline::Problem problem() const { return problem_; }
  int mesh_cells() const { return mesh_cells_; }
  int64_t dim() const { return prior_.dim(); }  // d_M = (mesh_cells + 1)²
  // m̄ [d_M], float64.
  const torch::Tensor& mean() const { return mean_; }
  // {"type": "bilaplacian", "problem", "mesh_cells", "d_M", "delta", "gamma", "anisotropy",
  //  "mean", "noise_factor", "noise_dim", "covariance", "covariance_sqrt"}: what a client
  //  needs to know to use the operators (and to cite them).
  const nlohmann::json& description() const { return description_; }
  const pde::BiLaplacianPrior& bilaplacian() const { return prior_; }

  // `count` samples [count, d_M]: sample i is m̄ + A⁻¹ L w with w from
  // pde::NormalRng(seed, 2 · (first_index + i)), exactly the parameter of sample
  // first_index + i of `dino-train generate --seed seed` for this problem and mesh.
  // INVALID_ARGUMENT naming count / first_index, RESOURCE_EXHAUSTED above `max_rows`.
  absl::StatusOr<torch::Tensor> Sample(int64_t count, uint64_t seed, uint64_t first_index,
                                       int64_t max_rows) const;

  // `op` applied to each row of `vectors` ([k, d_M] or [d_M], any float dtype; the result has
  // the same shape, float64). `with_mean` as in the file comment (INVALID_ARGUMENT for the
  // other operators). Errors name the field "vectors" (shape, dtype, NaN/Inf with its index),
  // RESOURCE_EXHAUSTED above `max_rows` vectors.
  absl::StatusOr<torch::Tensor> Apply(PriorOperator op, const torch::Tensor& vectors,
                                      bool with_mean, int64_t max_rows) const;

 private:
  const pipeline::Problem problem_;
  const int mesh_cells_;
  const pde::BiLaplacianPrior prior_;
  const torch::Tensor mean_;
  const nlohmann::json description_;
};

// Whether a model has a prior, and if not, why (what its prior RPCs answer).
struct PriorLookup {
  std::shared_ptr<const ModelPrior> prior;  // Null: none.
  std::string why_none;                     // When null: the reason, for FAILED_PRECONDITION.
  std::string source;  // Where the model names it: "pde.json", "metadata \"problem\"", …
};

// The prior a model file's metadata names, for a model with input dimension `input_dim`:
//  * "problem": {"name": "poisson" | "reaction_diffusion", "mesh_cells": n} (what
//    docs/model-contract.md asks model files to carry), else
//  * the data provenance "data": {"train": {"generated_by": "dino-train generate --problem P
//    … [--mesh n]"}} (what the bundled poisson_dipnet carries; n defaults to dino-train's 64).
// A model whose metadata names no problem, names it malformed, or names one whose d_M differs
// from `input_dim` has no prior; why_none says which (the model itself still serves).
PriorLookup PriorFromMetadata(const nlohmann::json& metadata, int64_t input_dim);

}  // namespace dino::serving
