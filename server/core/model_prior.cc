#include "server/core/model_prior.h"

#include <ATen/Parallel.h>

#include <Eigen/Core>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "models/pde/mesh.h"
#include "models/pde/random.h"

namespace dino::serving {
namespace {

using RowMajorMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

nlohmann::json Describe(pipeline::Problem problem, int mesh_cells,
                        const pde::BiLaplacianPrior& prior) {
  const pde::PriorConfig& config = prior.config();
  const Eigen::Matrix2d& theta = config.anisotropy;
  return {
      {"type", "bilaplacian"},
      {"problem", pipeline::ProblemName(problem)},
      {"mesh_cells", mesh_cells},
      {"d_M", prior.dim()},
      {"delta", config.delta},
      {"gamma", config.gamma},
      {"anisotropy", {{theta(0, 0), theta(0, 1)}, {theta(1, 0), theta(1, 1)}}},
      {"mean", config.mean},
      {"noise_factor",
       config.noise_factor == pde::NoiseFactor::kQuadrature ? "quadrature" : "lumped"},
      {"noise_dim", prior.noise_dim()},
      {"covariance", "C = A⁻¹ M A⁻¹, A = δM + γK (P1 FEM, Neumann), hIPPYlib's BiLaplacianPrior"},
      {"covariance_sqrt",
       "G = A⁻¹ F with F Fᵀ = M the sparse Cholesky factor of the mass matrix: G Gᵀ = C, G is "
       "not symmetric"},
  };
}

torch::Tensor MeanTensor(const pde::BiLaplacianPrior& prior) {
  return torch::full({prior.dim()}, prior.config().mean, torch::kFloat64);
}

// Runs `apply` on column blocks of the [d, k] matrix whose columns are the rows of the
// row-major [k, d] tensors `in` and `out` (so a row-major [k, d] tensor is a column-major
// [d, k] matrix, no transpose needed), in parallel.
template <typename Apply>
void ApplyByColumns(const torch::Tensor& in, torch::Tensor& out, int64_t d, Apply apply) {
  const int64_t k = in.size(0);
  const double* in_data = in.data_ptr<double>();
  double* out_data = out.data_ptr<double>();
  at::parallel_for(0, k, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    Eigen::Map<const Eigen::MatrixXd> block(in_data + begin * d, d, end - begin);
    Eigen::Map<Eigen::MatrixXd>(out_data + begin * d, d, end - begin) = apply(block);
  });
}

// A lookup that found no prior, and why.
PriorLookup NoPrior(std::string why) { return PriorLookup{nullptr, std::move(why), ""}; }

}  // namespace

const char* PriorOperatorName(PriorOperator op) {
  switch (op) {
    case PriorOperator::kCovariance:
      return "covariance";
    case PriorOperator::kPrecision:
      return "precision";
    case PriorOperator::kCovarianceSqrt:
      return "covariance_sqrt";
    case PriorOperator::kCovarianceSqrtTranspose:
      return "covariance_sqrt_transpose";
    case PriorOperator::kCovarianceSqrtInverse:
      return "covariance_sqrt_inverse";
  }
  return "?";
}

ModelPrior::ModelPrior(pipeline::Problem problem, int mesh_cells)
    : ModelPrior(problem, mesh_cells, pipeline::PriorConfigFor(problem)) {}

ModelPrior::ModelPrior(pipeline::Problem problem, int mesh_cells, const pde::PriorConfig& config)
    : problem_(problem),
      mesh_cells_(mesh_cells),
      prior_(pde::StructuredTriMesh(mesh_cells), config),
      mean_(MeanTensor(prior_)),
      description_(Describe(problem, mesh_cells, prior_)) {}

absl::StatusOr<std::shared_ptr<const ModelPrior>> ModelPrior::ForProblem(pipeline::Problem problem,
                                                                         int mesh_cells) {
  if (mesh_cells < pipeline::kMinMesh || mesh_cells > pipeline::kMaxMesh) {
    return absl::InvalidArgumentError(absl::StrCat("mesh_cells must be in [", pipeline::kMinMesh,
                                                   ", ", pipeline::kMaxMesh, "], got ",
                                                   mesh_cells));
  }
  // Shared while held: a PDE model and the DINOs trained on its problem use one prior.
  static std::mutex mutex;
  static std::map<std::pair<pipeline::Problem, int>, std::weak_ptr<const ModelPrior>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  std::weak_ptr<const ModelPrior>& entry = cache[{problem, mesh_cells}];
  if (auto shared = entry.lock()) return shared;
  try {
    auto prior = std::make_shared<const ModelPrior>(problem, mesh_cells);
    entry = prior;
    return prior;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("cannot build the prior of ",
                                            pipeline::ProblemName(problem), " on a ", mesh_cells,
                                            "² mesh: ", e.what()));
  }
}

absl::StatusOr<torch::Tensor> ModelPrior::Sample(int64_t count, uint64_t seed, uint64_t first_index,
                                                 int64_t max_rows) const {
  if (count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("count must be at least 1, got ", count));
  }
  if (count > max_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "count is ", count, " samples, above the server's limit of ", max_rows, " rows"));
  }
  // Stream 2·index must not wrap around (it would repeat other samples' noise).
  if (first_index > (UINT64_MAX / 2) - static_cast<uint64_t>(count)) {
    return absl::InvalidArgumentError(
        absl::StrCat("first_index must be below 2⁶³ − count, got ", first_index));
  }
  const int64_t d = dim();
  torch::Tensor samples = torch::empty({count, d}, torch::kFloat64);
  double* data = samples.data_ptr<double>();
  at::parallel_for(0, count, /*grain_size=*/1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      // As pde::GenerateSample draws the prior noise of sample `index`.
      pde::NormalRng rng(seed, 2 * (first_index + static_cast<uint64_t>(i)));
      Eigen::Map<Eigen::VectorXd>(data + i * d, d) = prior_.Sample(rng);
    }
  });
  return samples;
}

absl::StatusOr<torch::Tensor> ModelPrior::Apply(PriorOperator op, const torch::Tensor& vectors,
                                                bool with_mean, int64_t max_rows) const {
  const int64_t d = dim();
  if (!vectors.defined()) return absl::InvalidArgumentError("vectors is required");
  if (!torch::isFloatingType(vectors.scalar_type())) {
    return absl::InvalidArgumentError("vectors must be float32 or float64");
  }
  if (!(vectors.dim() == 1 || vectors.dim() == 2) || vectors.size(-1) != d ||
      (vectors.dim() == 2 && vectors.size(0) < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("vectors must have shape [k, ", d, "] or [", d,
                                                   "] with k ≥ 1 (d_M = ", d, "), got [",
                                                   absl::StrJoin(vectors.sizes(), ", "), "]"));
  }
  torch::Tensor in = vectors.reshape({-1, d}).to(torch::kFloat64).contiguous();
  if (in.size(0) > max_rows) {
    return absl::ResourceExhaustedError(
        absl::StrCat("vectors has ", in.size(0), " rows, above the server's limit of ", max_rows));
  }
  if (!torch::isfinite(in).all().item<bool>()) {
    torch::Tensor where = torch::logical_not(torch::isfinite(in)).nonzero().select(0, 0);
    const int64_t row = where[0].item<int64_t>(), column = where[1].item<int64_t>();
    return absl::InvalidArgumentError(absl::StrCat(
        "vectors contains a non-finite value (NaN or Inf) at index [",
        vectors.dim() == 1 ? absl::StrCat(column) : absl::StrCat(row, ", ", column), "]"));
  }
  const bool affine = op == PriorOperator::kCovarianceSqrt ||
                      op == PriorOperator::kCovarianceSqrtInverse ||
                      op == PriorOperator::kPrecision;
  if (with_mean && !affine) {
    return absl::InvalidArgumentError(absl::StrCat(
        "with_mean applies to covariance_sqrt (m̄ + Gξ), covariance_sqrt_inverse (G⁻¹(m − m̄)) "
        "and precision (C⁻¹(m − m̄)), not to ",
        PriorOperatorName(op)));
  }
  // The inverse maps act on m − m̄.
  if (with_mean && op != PriorOperator::kCovarianceSqrt) in = in - mean_;
  torch::Tensor out = torch::empty_like(in);
  ApplyByColumns(in, out, d, [&](const Eigen::Map<const Eigen::MatrixXd>& x) -> Eigen::MatrixXd {
    const Eigen::MatrixXd block = x;
    switch (op) {
      case PriorOperator::kCovariance:
        return prior_.ApplyCovariance(block);
      case PriorOperator::kPrecision:
        return prior_.ApplyPrecision(block);
      case PriorOperator::kCovarianceSqrt:
        return prior_.ApplyCovarianceFactor(block);
      case PriorOperator::kCovarianceSqrtTranspose:
        return prior_.ApplyCovarianceFactorTranspose(block);
      case PriorOperator::kCovarianceSqrtInverse:
        return prior_.SolveCovarianceFactor(block);
    }
    return block;
  });
  if (with_mean && op == PriorOperator::kCovarianceSqrt) out += mean_;
  return vectors.dim() == 1 ? out.view({d}) : out;
}

PriorLookup PriorFromMetadata(const nlohmann::json& metadata, int64_t input_dim) {
  std::string problem_name, source;
  int64_t mesh_cells = 64;  // dino-train generate's default --mesh.
  if (metadata.contains("problem")) {
    source = "metadata \"problem\"";
    const nlohmann::json& named = metadata["problem"];
    if (!named.is_object() || !named.contains("name") || !named["name"].is_string()) {
      return NoPrior(
          "metadata \"problem\" must be {\"name\": \"poisson\" | "
          "\"reaction_diffusion\", \"mesh_cells\": n}");
    }
    problem_name = named["name"].get<std::string>();
    if (named.contains("mesh_cells")) {
      if (!named["mesh_cells"].is_number_integer()) {
        return NoPrior("metadata problem.mesh_cells must be an integer");
      }
      mesh_cells = named["mesh_cells"].get<int64_t>();
    }
  } else if (metadata.contains("data") && metadata["data"].is_object() &&
             metadata["data"].contains("train") && metadata["data"]["train"].is_object() &&
             metadata["data"]["train"].contains("generated_by") &&
             metadata["data"]["train"]["generated_by"].is_string()) {
    source = "metadata data.train.generated_by";
    const std::string command = metadata["data"]["train"]["generated_by"].get<std::string>();
    std::vector<std::string> words = absl::StrSplit(command, ' ', absl::SkipEmpty());
    if (words.size() < 2 || words[0].find("dino-train") == std::string::npos ||
        words[1] != "generate") {
      return NoPrior(
          absl::StrCat(source, " is not a dino-train generate command: '", command, "'"));
    }
    // "--flag value" and "--flag=value".
    auto value_of = [&words](const std::string& flag) -> std::optional<std::string> {
      for (size_t i = 2; i < words.size(); ++i) {
        if (words[i] == flag && i + 1 < words.size()) return words[i + 1];
        if (words[i].rfind(flag + "=", 0) == 0) return words[i].substr(flag.size() + 1);
      }
      return std::nullopt;
    };
    problem_name = value_of("--problem").value_or("");
    if (auto mesh = value_of("--mesh")) {
      if (!absl::SimpleAtoi(*mesh, &mesh_cells)) {
        return NoPrior(absl::StrCat(source, ": --mesh ", *mesh, " is not an integer"));
      }
    }
  } else {
    return NoPrior(
        "the model's metadata names no problem (\"problem\": {\"name\", \"mesh_cells\"}), so "
        "the server does not know its prior");
  }
  absl::StatusOr<pipeline::Problem> problem = pipeline::ParseProblem(problem_name);
  if (!problem.ok()) return NoPrior(absl::StrCat(source, ": ", problem.status().message()));
  if (mesh_cells < pipeline::kMinMesh || mesh_cells > pipeline::kMaxMesh) {
    return NoPrior(absl::StrCat(source, ": mesh_cells must be in [", pipeline::kMinMesh, ", ",
                                pipeline::kMaxMesh, "], got ", mesh_cells));
  }
  const int64_t prior_dim = (mesh_cells + 1) * (mesh_cells + 1);
  if (prior_dim != input_dim) {
    return NoPrior(absl::StrCat(source, " names ", problem_name, " on a ", mesh_cells, " × ",
                                mesh_cells, " mesh (d_M = ", prior_dim,
                                "), but the model's d_M is ", input_dim));
  }
  auto prior = ModelPrior::ForProblem(*problem, static_cast<int>(mesh_cells));
  if (!prior.ok()) return NoPrior(std::string(prior.status().message()));
  return {*std::move(prior), "", source};
}

}  // namespace dino::serving
