// A loaded DINO surrogate f: R^{d_M} → R^{d_Q} and its exact derivatives.
//
// This is the model layer of the server: it knows TorchScript and the model contract
// (docs/model-contract.md) and nothing of gRPC or files beyond loading one model file.
// Argument names match the wire protocol's field names, so that the errors returned here
// (absl::Status, INVALID_ARGUMENT / FAILED_PRECONDITION / RESOURCE_EXHAUSTED) name the
// field the client got wrong.
//
// Derivatives:
//  * Reduced-basis (DIPNet) models f(m) = U φ(Vᵀm) + b: everything is computed from the
//    reduced Jacobian J_φ(z) ∈ R^{r_Q × r_M} at z = Vᵀm (paper §2.3): Jv = U J_φ Vᵀv,
//    Jᵀw = V J_φᵀ Uᵀw, UᵀJV = J_φ. J_φ comes from models/training's ReducedValueAndJacobian
//    (the code the trainer differentiates): explicit layer propagation for the project's
//    DIPNets, one batched reverse pass over r_Q copies of z for other reduced models; beyond
//    the two projections a derivative costs O(r_Q r_M) per layer width.
//  * Generic models use LibTorch autograd on the full input: vector-Jacobian products by
//    one reverse pass over k copies of m; Jacobian-vector products by the double-backward
//    identity Jv = ∂/∂u ⟨Jᵀu, v⟩ for few directions, or from the full Jacobian when
//    k ≥ d_Q.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/status/statusor.h"
#include "models/training/network.h"

namespace dino::serving {

struct ModelInfo {
  int64_t input_dim = 0;   // d_M
  int64_t output_dim = 0;  // d_Q
  bool has_reduced_bases = false;
  int64_t input_rank = 0;   // r_M (reduced-basis models)
  int64_t output_rank = 0;  // r_Q (reduced-basis models)
  std::string architecture;
  torch::Dtype dtype = torch::kFloat32;
  nlohmann::json metadata = nlohmann::json::object();
};

// Server-wide limits that keep one request from exhausting the machine.
struct ComputeLimits {
  int64_t max_batch_size = 4096;            // Rows of m, directions, cotangents.
  int64_t max_jacobian_elements = 1 << 22;  // d_Q · d_M of a full Jacobian.
};

class SurrogateModel {
 public:
  struct Products {
    torch::Tensor values;  // [k, d_Q] (Jvp), [k, d_M] (Vjp) or [d_Q, d_M] (Jacobian).
    torch::Tensor q;       // [d_Q] when requested, else undefined.
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
  // finite outputs. `origin` names the model in errors.
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> Load(const std::string& path,
                                                                    ComputeLimits limits);
  static absl::StatusOr<std::shared_ptr<const SurrogateModel>> FromModule(torch::jit::Module module,
                                                                          nlohmann::json metadata,
                                                                          const std::string& origin,
                                                                          ComputeLimits limits);

  const ModelInfo& info() const { return info_; }

  // All inputs may have any floating dtype; they are converted to the model's dtype and
  // results are in the model's dtype. m: [B, d_M] or [d_M] (B = 1) for the batched methods,
  // [d_M] or [1, d_M] for the single-point ones.
  absl::StatusOr<torch::Tensor> Evaluate(const torch::Tensor& m) const;
  absl::StatusOr<Products> Jvp(const torch::Tensor& m, const torch::Tensor& directions,
                               bool want_q) const;
  absl::StatusOr<Products> Vjp(const torch::Tensor& m, const torch::Tensor& cotangents,
                               bool want_q) const;
  absl::StatusOr<Products> Jacobian(const torch::Tensor& m, bool want_q) const;
  // With undefined client bases: in the model's own bases (FAILED_PRECONDITION for a model
  // without). Client bases must both be given, with orthonormal columns.
  absl::StatusOr<ReducedJacobians> ReducedJacobian(const torch::Tensor& m,
                                                   const torch::Tensor& output_basis,
                                                   const torch::Tensor& input_basis) const;
  absl::StatusOr<Bases> GetBases() const;

 private:
  SurrogateModel(torch::jit::Module module, ModelInfo info, ComputeLimits limits);

  torch::Tensor Forward(const torch::Tensor& m) const;
  torch::Tensor ReducedForward(const torch::Tensor& z) const;
  // φ(z) [B, r_Q] and J_φ(z) [B, r_Q, r_M].
  std::pair<torch::Tensor, torch::Tensor> ReducedJacobianAt(const torch::Tensor& z) const;
  // Rows of the cotangents [B·k, d_Q] times the Jacobians at the rows of m_rows [B·k, d_M]:
  // returns (f(m_rows) [B·k, d_Q], ∇f(m_rows)ᵀ-products [B·k, d_M]).
  std::pair<torch::Tensor, torch::Tensor> GenericVjpRows(const torch::Tensor& m_rows,
                                                         const torch::Tensor& cotangents) const;
  absl::StatusOr<torch::Tensor> GenericJacobian(const torch::Tensor& m, torch::Tensor* q) const;

  // Shape, dtype and finiteness checks; return the input as [rows, cols] in the model dtype.
  absl::StatusOr<torch::Tensor> Batch(const torch::Tensor& t, const char* field,
                                      int64_t cols) const;
  absl::StatusOr<torch::Tensor> Point(const torch::Tensor& t, const char* field) const;

  mutable torch::jit::Module module_;  // Running methods mutates no state; see Load().
  ModelInfo info_;
  ComputeLimits limits_;
  torch::Tensor input_basis_, output_basis_, output_shift_;  // Reduced-basis models only.
  // The trainer's view of a reduced-basis model, so that serving and training compute J_φ
  // with the same code (layer propagation for the project's DIPNets, autograd otherwise).
  std::shared_ptr<const training::Network> reduced_network_;
};

}  // namespace dino::serving
