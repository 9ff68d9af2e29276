// A loaded DINO surrogate f: R^{d_M} → R^{d_Q} and its exact derivatives.
//
// This is the model layer of the server: it knows TorchScript and the model contract
// (docs/model-contract.md) and nothing of gRPC, queues or files beyond loading one model
// file. Argument names match the wire protocol's field names, so that the errors returned
// here (absl::Status, INVALID_ARGUMENT / FAILED_PRECONDITION / RESOURCE_EXHAUSTED) name the
// field the client got wrong.
//
// A request is a Query. Prepare() checks it against the model (shapes, dtypes, finiteness,
// limits) and brings it into canonical form; Compute() answers any number of prepared
// queries of this model together, as one batched computation, which is how the scheduler's
// dynamic batcher stacks concurrent requests. Each query's answer equals what it would get
// alone (up to the rounding of a batched matrix product).
//
// There are two kinds of models, two subclasses:
//  * ReducedBasisModel, f(m) = U φ(Vᵀm) + b: every derivative comes from the reduced
//    Jacobian J_φ(z) ∈ R^{r_Q × r_M} at z = Vᵀm (paper §2.3): Jv = U J_φ Vᵀv,
//    Jᵀw = V J_φᵀ Uᵀw, UᵀJV = J_φ. J_φ comes from models::ReducedValueAndJacobian (the code
//    the trainer differentiates): explicit layer propagation for the project's DIPNets, one
//    batched reverse pass over r_Q copies of z for other reduced models. A batch of
//    derivative requests is one projection of all its points, one J_φ computation and one
//    projection of all its directions or cotangents.
//  * GenericModel: LibTorch autograd on the full input. A batch's vector-Jacobian rows
//    (Vjp cotangents, ReducedJacobian seeds, Jacobian rows, Jvp with many directions) are one
//    reverse pass over copies of their points; its Jvp rows with few directions are one
//    double-backward pass (Jv = ∂/∂u ⟨Jᵀu, v⟩).
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/architectures/network.h"
#include "server/core/model_prior.h"

namespace dino::serving {

struct ModelInfo {
  int64_t input_dim = 0;   // d_M
  int64_t output_dim = 0;  // d_Q
  bool has_reduced_bases = false;
  int64_t input_rank = 0;   // r_M (reduced-basis models)
  int64_t output_rank = 0;  // r_Q (reduced-basis models)
  std::string architecture;
  torch::Dtype dtype = torch::kFloat32;
  bool has_prior = false;  // The model serves its parameter's prior (SurrogateModel::prior).
  // Whether Method::kHessianVectorProduct is answered. False for the exact PDE models: their
  // second derivatives take second-order adjoint solves, which models/pde does not have, so
  // Prepare refuses the method for them with UNIMPLEMENTED (UM-Bridge: UnsupportedFeature).
  bool has_hessian_vector_product = true;
  // Whether queries may ask for the trust score (Query::want_trust): a reduced-basis model
  // whose file carries its training inputs' summary (models/architectures/training_inputs.h).
  bool has_trust_score = false;
  nlohmann::json metadata = nlohmann::json::object();
};

// Server-wide limits that keep one request from exhausting the machine.
struct ComputeLimits {
  int64_t max_batch_size = 4096;            // Rows of m, directions, cotangents.
  int64_t max_jacobian_elements = 1 << 22;  // d_Q · d_M of a full Jacobian.
};

// kHessianVectorProduct is the second-order action ∂²⟨s, f⟩/∂m² · v (gRPC's
// HessianVectorProduct, UM-Bridge's ApplyHessian).
enum class Method { kEvaluate, kJvp, kVjp, kReducedJacobian, kJacobian, kHessianVectorProduct };
// The RPC name: "Evaluate", "Jvp", "Vjp", "ReducedJacobian", "Jacobian",
// "HessianVectorProduct".
const char* MethodName(Method method);

// One request as the client sent it (any floating dtype; see surrogate.proto for shapes).
struct Query {
  Method method = Method::kEvaluate;
  torch::Tensor m;
  torch::Tensor directions;    // Jvp and HessianVectorProduct (v).
  torch::Tensor cotangents;    // Vjp; HessianVectorProduct: s, [d_Q] or [B, d_Q].
  torch::Tensor output_basis;  // ReducedJacobian client bases (both or neither).
  torch::Tensor input_basis;
  bool want_q = false;                       // Jvp, Vjp, Jacobian; ReducedJacobian always.
  bool want_trust = false;                   // The trust score of each point (any method).
  std::optional<torch::Dtype> output_dtype;  // Default: the model's dtype.
};

// A query checked against one model, in canonical form: the model's dtype, contiguous,
// points as rows. Made by SurrogateModel::Prepare; read by SurrogateModel::Compute.
struct PreparedQuery {
  Method method = Method::kEvaluate;
  torch::Tensor points;  // [P, d_M]
  // Jvp and HessianVectorProduct: directions [P, k, d_M]; Vjp: cotangents [P, k, d_Q].
  torch::Tensor vectors;
  torch::Tensor cotangents;                 // HessianVectorProduct: s [P, d_Q].
  torch::Tensor output_basis, input_basis;  // Client bases, or undefined.
  bool want_q = false;
  bool want_trust = false;
  // Jvp/Vjp/HessianVectorProduct: the single-point form (one point, results [k, ·], q [d_Q])
  // or, for B points with one vector each, results [B, ·]; else [B, k, ·]. Jacobian: q [d_Q].
  enum class Layout { kSinglePoint, kOnePerPoint, kPerPoint } layout = Layout::kPerPoint;
  torch::Dtype output_dtype = torch::kFloat64;
  int64_t points_count() const { return points.size(0); }
};

// Per-point results [P, k, n] in a query's layout: [k, n], [P, n] or [P, k, n].
torch::Tensor InLayout(const torch::Tensor& values, PreparedQuery::Layout layout);
// q [P, d_Q] of a query: [d_Q] in the single-point form.
torch::Tensor QInLayout(const torch::Tensor& q, PreparedQuery::Layout layout);

// How far each point of a query lies from the model's training inputs
// (models/architectures/training_inputs.h): score s(m) per point, out of distribution when
// s(m) > 1, i.e. above the training set's 99.9 % quantile.
struct TrustSignal {
  std::vector<double> score;
  std::vector<bool> out_of_distribution;
  int64_t flagged = 0;  // Points out of distribution.
};

// Results in the requested output dtype.
struct Answer {
  // q (Evaluate), jvp, vjp, reduced_jacobian, jacobian or the Hessian actions (hvp).
  torch::Tensor values;
  torch::Tensor q;  // When asked for (always for ReducedJacobian), else undefined.
  std::optional<TrustSignal> trust = std::nullopt;  // When asked for.
  int64_t bytes() const;                            // Payload size of both tensors.
};

class SurrogateModel {
 public:
  struct Products {
    torch::Tensor values;
    torch::Tensor q;
  };
  struct ReducedJacobians {
    torch::Tensor q;                 // [B, d_Q]
    torch::Tensor reduced_jacobian;  // [B, r_Q, r_M] or [B, k_Q, k_M]
  };
  struct Bases {
    torch::Tensor input_basis;   // V [d_M, r_M]
    torch::Tensor output_basis;  // U [d_Q, r_Q]
    torch::Tensor output_shift;  // b [d_Q]
  };

  // Loads and validates a model file: the contract's methods and buffers, consistent
  // dimensions, orthonormal bases, forward(m) = reduced_forward(mV)Uᵀ + b on a probe batch,
  // finite outputs; a training-input summary (null: none) that fits the input basis.
  // `origin` names the model in errors.
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> Load(const std::string& path,
                                                                    ComputeLimits limits);
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> FromModule(
      torch::jit::Module module, nlohmann::json metadata, const std::string& origin,
      ComputeLimits limits, const nlohmann::json& training_inputs = nullptr);
  virtual ~SurrogateModel() = default;

  const ModelInfo& info() const { return info_; }
  const ComputeLimits& limits() const { return limits_; }

  // The prior of the model's parameter (model_prior.h): an exact PDE model's problem's, or the
  // one a DINO's metadata names. FAILED_PRECONDITION saying why for a model without.
  absl::StatusOr<std::shared_ptr<const ModelPrior>> prior() const;
  // Where the model names its prior (PriorLookup::source); "" without one.
  const std::string& prior_source() const { return prior_.source; }

  // Checks a query (errors name its fields) and converts it for Compute.
  absl::StatusOr<PreparedQuery> Prepare(const Query& query) const;
  // Answers prepared queries of this model in one batched computation; one result per
  // query, in order. Should the batched computation fail (a LibTorch exception), each query
  // is recomputed alone, so that one failing query cannot fail the others.
  std::vector<absl::StatusOr<Answer>> Compute(absl::Span<const PreparedQuery* const> batch) const;
  // Prepare + Compute of one query: the unbatched call.
  absl::StatusOr<Answer> Run(const Query& query) const;

  // The methods one query at a time (the shapes of surrogate.proto; results in the model's
  // dtype), for in-process callers and tests.
  absl::StatusOr<torch::Tensor> Evaluate(const torch::Tensor& m) const;
  absl::StatusOr<Products> Jvp(const torch::Tensor& m, const torch::Tensor& directions,
                               bool want_q) const;
  absl::StatusOr<Products> Vjp(const torch::Tensor& m, const torch::Tensor& cotangents,
                               bool want_q) const;
  absl::StatusOr<Products> Jacobian(const torch::Tensor& m, bool want_q) const;
  // ∂²⟨s, f⟩/∂m² · v: one s [d_Q] per row of m, the directions in Jvp's shapes.
  absl::StatusOr<torch::Tensor> HessianVectorProduct(const torch::Tensor& m,
                                                     const torch::Tensor& cotangents,
                                                     const torch::Tensor& directions) const;
  // With undefined client bases: in the model's own bases (FAILED_PRECONDITION for a model
  // without). Client bases must both be given, with orthonormal columns.
  absl::StatusOr<ReducedJacobians> ReducedJacobian(const torch::Tensor& m,
                                                   const torch::Tensor& output_basis,
                                                   const torch::Tensor& input_basis) const;
  // FAILED_PRECONDITION for a model without reduced bases.
  virtual absl::StatusOr<Bases> GetBases() const = 0;

 protected:
  SurrogateModel(ModelInfo info, ComputeLimits limits, PriorLookup prior);

  // Answers in the model's dtype, in the layouts of PreparedQuery; may throw.
  virtual std::vector<Answer> ComputeBatch(absl::Span<const PreparedQuery* const> batch) const = 0;
  // A model's own check of a query's points [P, d_M] (already finite, in the model's dtype),
  // run by Prepare: INVALID_ARGUMENT naming "m" for points where the model is undefined.
  virtual absl::Status CheckPoints(const torch::Tensor& points) const;

  const ModelInfo info_;
  const ComputeLimits limits_;
  const PriorLookup prior_;

 private:
  // Run, for the one-query methods.
  absl::StatusOr<Products> RunProducts(const Query& query) const;
  // Shape, dtype and finiteness checks; the input as [rows, cols] in the model dtype.
  absl::StatusOr<torch::Tensor> Matrix(const torch::Tensor& t, const char* field,
                                       int64_t cols) const;
  // The directions/cotangents of a Jvp/Vjp query against its points [P, d_M], as [P, k, cols].
  absl::StatusOr<torch::Tensor> PerPointVectors(const torch::Tensor& t, const char* field,
                                                int64_t cols, const torch::Tensor& m,
                                                int64_t points,
                                                PreparedQuery::Layout* layout) const;
  absl::Status PrepareClientBases(const Query& query, PreparedQuery* prepared) const;
};

}  // namespace dino::serving
