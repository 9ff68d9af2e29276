// A model that follows the dino-serve contract (docs/model-contract.md), seen by the trainer
// and the metrics, and the batched network Jacobians they need. For training, the Jacobians
// are built with create_graph so that a loss of them can be differentiated with respect to
// the weights (double backward).
#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace dino::models {

// How a Network computes the reduced Jacobian J_φ of a DIPNet.
enum class ReducedJacobianMethod {
  // Reverse mode over r_Q copies of each z, with double backward for training: works for any
  // model that follows the contract.
  kAutograd,
  // Explicit reverse accumulation through the dense layers of the project's DIPNet
  // (models/architectures): one forward pass over the B inputs, then B·r_Q·Σ w_in·w_out
  // flops of batched products, and plain backward for training. About 6× faster than
  // kAutograd for DIPNet 100-50, because the softplus is evaluated on B rows instead of
  // B·r_Q copies and no double backward is needed.
  kLayerPropagation,
};

// "autograd", "layer_propagation".
const char* ReducedJacobianMethodName(ReducedJacobianMethod method);

struct DenseLayers;  // The layers of a project DIPNet, for kLayerPropagation.

class Network {
 public:
  // Reads the contract members of `module` (a handle: the Network shares the module's
  // parameters and buffers, and sees in-place updates of them; rebuild it after replacing
  // an attribute). A module with input_basis, output_basis, output_shift and reduced_forward
  // is a reduced-basis (DIPNet) model; one with only forward is generic.
  //
  // With `allow_layer_propagation`, a reduced model whose parameters and buffers are those
  // of the project's DIPNet (W0, b0, …, WL, bL chaining r_M → r_Q, whitening buffers) gets
  // kLayerPropagation, but only after a probe on a copy of the module (with random whitening)
  // has reproduced reduced_forward and its autograd Jacobian; any other model gets
  // kAutograd. The duplicated layer formula can therefore never silently diverge from the
  // architecture's definition.
  //
  // Throws std::invalid_argument on a partial or inconsistent reduced-basis contract, or when
  // the model has no floating-point parameter or buffer to take its dtype from.
  //
  // `dtype_without_tensors` is the dtype of a model that has no floating-point parameter or
  // buffer at all (a generic model may compute from its input alone; its metadata says).
  explicit Network(torch::jit::Module module, bool allow_layer_propagation = true,
                   std::optional<torch::Dtype> dtype_without_tensors = std::nullopt);

  bool reduced() const { return reduced_; }
  torch::Dtype dtype() const { return dtype_; }
  torch::Device device() const { return device_; }
  const torch::jit::Module& module() const { return module_; }

  // Reduced-basis models only (undefined tensors otherwise).
  const torch::Tensor& input_basis() const { return input_basis_; }    // V [d_M, r_M]
  const torch::Tensor& output_basis() const { return output_basis_; }  // U [d_Q, r_Q]
  const torch::Tensor& output_shift() const { return output_shift_; }  // b [d_Q]
  int64_t input_rank() const { return reduced_ ? input_basis_.size(1) : 0; }
  int64_t output_rank() const { return reduced_ ? output_basis_.size(1) : 0; }
  // Whether the model has the whitening buffers reduced_input_shift/scale [r_M] that the
  // project's DIPNets carry (models exported from elsewhere may not).
  bool has_whitening() const { return has_whitening_; }
  // kAutograd for generic models (which have no J_φ).
  ReducedJacobianMethod reduced_jacobian_method() const {
    return layers_ ? ReducedJacobianMethod::kLayerPropagation : ReducedJacobianMethod::kAutograd;
  }

  // [B, d_M] → [B, d_Q] and [B, r_M] → [B, r_Q]. With kLayerPropagation both run the
  // verified layer formula directly (φ(mV)Uᵀ + b for forward) instead of the TorchScript
  // methods: same values, differentiable the same way, without interpreter overhead.
  // Without gradients, Forward starts from the folded first layer (FirstLayerAtInputs).
  torch::Tensor Forward(const torch::Tensor& m) const;
  torch::Tensor ReducedForward(const torch::Tensor& z) const;
  // Reduced-basis models: z = mV for m [B, d_M] (ProjectRows; for B ≤ 2 a matrix-vector
  // product with a column-major copy of V, which streams V faster: 150 → 112 µs per point on
  // the bundled model). The copy costs d_M·r_M values and is kept when that is at most
  // 64 MiB.
  torch::Tensor ProjectInput(const torch::Tensor& m) const;
  // Whether inputs reach the first dense layer through one folded matrix (see
  // FirstLayerAtInputs): kLayerPropagation, a first hidden width w₁ below r_M, and weights
  // unchanged since the Network was built.
  bool folds_input_basis() const;

  // kLayerPropagation only: the first layer's pre-activation a₀ = ((mV − shift) ⊙ scale) W₀ + b₀
  // [B, w₁] for inputs m [B, d_M]. When folds_input_basis() and gradients are off, computed
  // as m A + c with A = V diag(scale) W₀ [d_M, w₁] and c = b₀ − (shift ⊙ scale) W₀, made once
  // when the Network is built: the projection every request starts with then streams w₁
  // columns instead of r_M (DIPNet 100-50: half the flops, and A fits a core's L2 cache
  // where V does not). Used only after it reproduced the unfolded formula at construction,
  // and only while the weights' version counters show no in-place update (training). Memory:
  // d_M·w₁ values, and as many again for a column-major copy while that is at most 64 MiB.
  torch::Tensor FirstLayerAtInputs(const torch::Tensor& m) const;

  // The trainable tensors (module.parameters()), with requires_grad switched on.
  std::vector<torch::Tensor> TrainableParameters() const;

  // Throws std::invalid_argument unless forward maps [2, d_M] to [2, d_Q] (and, for reduced
  // models, the bases have d_M and d_Q rows).
  void CheckDimensions(int64_t input_dim, int64_t output_dim) const;

 private:
  torch::jit::Module module_;
  bool reduced_ = false;
  bool has_whitening_ = false;
  torch::Dtype dtype_ = torch::kFloat32;
  torch::Device device_ = torch::kCPU;
  torch::Tensor input_basis_, output_basis_, output_shift_;
  torch::Tensor input_basis_columns_;          // V with column-major strides, or undefined.
  std::shared_ptr<const DenseLayers> layers_;  // Set for kLayerPropagation.
  struct InputFold;
  std::shared_ptr<const InputFold> input_fold_;  // Set when the first layer is folded.
  // The fold of the verified layers, or null when it does not reproduce them.
  std::shared_ptr<const InputFold> MakeInputFold() const;

  friend std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobian(const Network&,
                                                                         const torch::Tensor&,
                                                                         bool);
  friend std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobianAtInputs(
      const Network&, const torch::Tensor&, torch::Tensor*);
};

// a·b for a b with few columns (an input basis V: d_M × r_M, d_M ≫ r_M), the product every
// served request starts with. Without gradients and on the CPU: blocks of 64 rows of a spread
// over LibTorch's intra-op threads (at::set_num_threads; OpenBLAS's own threads would
// multiply with the callers', compute_threads.h), each block a sum of products over slices
// of the inner dimension small enough for OpenBLAS's small-matrix kernels, which skip the
// packing of b that a single call repeats for every block. Measured on the bundled DIPNet
// (V 4225 × 100, fp64, one thread): B = 4: 292 → 163 µs, B = 16: 463 → 313 µs,
// B = 64: 1164 → 904 µs, B = 1000: 16.1 → 15.6 ms. Otherwise plain torch::mm.
torch::Tensor ProjectRows(const torch::Tensor& a, const torch::Tensor& b);

// ∂⟨cotangents, outputs⟩/∂inputs; zeros where the outputs do not depend on the inputs (a
// constant model is a valid model with a zero Jacobian). With create_graph the result stays
// differentiable (double backward).
torch::Tensor ReverseProduct(const torch::Tensor& outputs, const torch::Tensor& inputs,
                             const torch::Tensor& cotangents, bool create_graph);

// φ(z) [B, r_Q] and J_φ(z) = ∂φ/∂z [B, r_Q, r_M] of a reduced-basis model, by the network's
// ReducedJacobianMethod. kAutograd makes one reverse pass over r_Q copies of each z (row
// b·r_Q + i of the copies is z_b; seeding its output with e_i yields row i of J_φ(z_b)).
// Either way the cost is that of O(r_Q) reduced network passes per sample, independent of
// d_M and d_Q (paper §2.3). With create_graph both results stay differentiable with respect
// to the weights; without, they are detached.
std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobian(const Network& network,
                                                                const torch::Tensor& z,
                                                                bool create_graph);

// φ(mV) [B, r_Q] and J_φ(mV) [B, r_Q, r_M] at inputs m [B, d_M], without gradients (serving):
// ReducedValueAndJacobian of ProjectInput(m), except that kLayerPropagation starts from
// FirstLayerAtInputs(m) and writes every chunk of points straight into the results. With
// `reduced_inputs`, the projection z = mV is made and stored there (the trust score needs
// it), and the first layer starts from it: one projection instead of the folded one and z.
std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobianAtInputs(
    const Network& network, const torch::Tensor& m, torch::Tensor* reduced_inputs = nullptr);

// f(m) [B, d_Q] and the left products W_bᵀ ∇f(m_b) [B, k, d_M] for per-sample factors
// `left` [B, d_Q, k], or one factor [d_Q, k] shared by all samples (the identity gives the
// full Jacobian). One reverse pass over k copies of each m; works for any model. With
// create_graph both results stay differentiable with respect to the weights.
std::pair<torch::Tensor, torch::Tensor> ValueAndLeftProducts(const Network& network,
                                                             const torch::Tensor& m,
                                                             const torch::Tensor& left,
                                                             bool create_graph);

}  // namespace dino::models
