#include "models/architectures/network.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

#include "models/architectures/architectures.h"

namespace dino::models {

// The layers of the project's DIPNet as architectures.cc builds them:
//   h₀ = (z − shift) ⊙ scale,  a_l = h_l W_l + b_l,  h_{l+1} = softplus(a_l) for l < L,
//   φ(z) = a_L.
struct DenseLayers {
  std::vector<torch::Tensor> weights;  // W_l [w_l, w_{l+1}]
  std::vector<torch::Tensor> biases;   // b_l [w_{l+1}]
  torch::Tensor shift, scale;          // [r_M]
};

// The input basis and whitening folded into the first dense layer (FirstLayerAtInputs), with
// the version counters of the tensors it was made from: any in-place update (an optimizer
// step) makes it stale, and stale means unused.
struct Network::InputFold {
  torch::Tensor weight;          // A = V diag(scale) W₀ [d_M, w₁]
  torch::Tensor weight_columns;  // A with column-major strides for one or two rows, or undefined.
  torch::Tensor bias;            // c = b₀ − (shift ⊙ scale) W₀ [w₁]
  std::vector<torch::Tensor> sources;
  std::vector<int64_t> versions;

  bool Current() const {
    for (size_t i = 0; i < sources.size(); ++i) {
      if (sources[i]._version() != versions[i]) return false;
    }
    return true;
  }
};

namespace {

namespace dm = dino::models;

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

bool HasTensor(const torch::jit::Module& module, const char* name) {
  return module.hasattr(name) && module.attr(name).isTensor();
}

// The layers of `module` when its parameters are exactly W0, b0, …, WL, bL chaining
// r_M → … → r_Q and it has the whitening buffers; nullptr otherwise.
std::shared_ptr<DenseLayers> MatchLayers(const torch::jit::Module& module, int64_t r_m,
                                         int64_t r_q) {
  if (!HasTensor(module, kWhiteningShift) || !HasTensor(module, kWhiteningScale)) return nullptr;
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& p : module.named_parameters()) parameters[p.name] = p.value;
  if (parameters.empty() || parameters.size() % 2 != 0) return nullptr;
  auto layers = std::make_shared<DenseLayers>();
  int64_t width = r_m;
  for (size_t l = 0; l < parameters.size() / 2; ++l) {
    auto weight = parameters.find("W" + std::to_string(l));
    auto bias = parameters.find("b" + std::to_string(l));
    if (weight == parameters.end() || bias == parameters.end()) return nullptr;
    const torch::Tensor& w = weight->second;
    const torch::Tensor& b = bias->second;
    if (w.dim() != 2 || w.size(0) != width || b.dim() != 1 || b.size(0) != w.size(1)) {
      return nullptr;
    }
    width = w.size(1);
    layers->weights.push_back(w);
    layers->biases.push_back(b);
  }
  if (width != r_q) return nullptr;
  layers->shift = module.attr(kWhiteningShift).toTensor();
  layers->scale = module.attr(kWhiteningScale).toTensor();
  return layers;
}

// The first layer's pre-activation a₀ = ((z − shift) ⊙ scale) W₀ + b₀.
torch::Tensor FirstLayer(const DenseLayers& layers, const torch::Tensor& z) {
  return torch::addmm(layers.biases[0], (z - layers.shift) * layers.scale, layers.weights[0]);
}

// φ from a₀: a_l = softplus(a_{l−1}) W_l + b_l, φ = a_L.
torch::Tensor ValueFromFirstLayer(const DenseLayers& layers, torch::Tensor a) {
  for (size_t l = 1; l < layers.weights.size(); ++l) {
    a = torch::addmm(layers.biases[l], torch::softplus(a, 1.0, kSoftplusThreshold),
                     layers.weights[l]);
  }
  return a;
}

// φ(z) by the layers: the same formula as reduced_forward, without the TorchScript
// interpreter (a batch-1 call is a few dozen small operations, where the interpreter's
// per-operation overhead would dominate).
torch::Tensor PropagateValue(const DenseLayers& layers, const torch::Tensor& z) {
  return ValueFromFirstLayer(layers, FirstLayer(layers, z));
}

// softplus′(a) = sigmoid(a), and exactly 1 above the threshold where softplus is the identity.
torch::Tensor SoftplusSlope(const torch::Tensor& a) {
  if (torch::GradMode::is_enabled()) {
    return torch::where(a > kSoftplusThreshold, torch::ones_like(a), torch::sigmoid(a));
  }
  return torch::sigmoid(a).masked_fill_(a > kSoftplusThreshold, 1.0);
}

// J_φ's last factor, W₀ᵀ diag(scale) [w₁, r_M], contiguous.
torch::Tensor FirstFactor(const DenseLayers& layers) {
  return (layers.weights[0].t() * layers.scale).contiguous();
}

// Without gradients: φ and J_φ of the points whose first-layer pre-activations are `first`
// [B, w₁], written into `value` [B, r_Q] and `jacobian` [B, r_Q, r_M] (contiguous). J_φ is
// accumulated from the left, so that every product has r_Q rows per point:
//   g = W_Lᵀ diag(s_{L−1}),  g ← g W_lᵀ diag(s_{l−1}) for l = L−1 … 1,  J_φ = g (W₀ᵀ diag(scale)),
// with the slopes s_l = softplus′(a_l). The points' g are kept transposed and side by side,
// gᵀ [w_l, B·r_Q], so that each layer is one product W_l gᵀ whose long side (B·r_Q) is the
// one BLAS's kernels run along: (B·r_Q × w)(w × w) in row-major order ran at 31–37 GFLOP/s,
// W gᵀ at 74–81 (OpenBLAS 0.3.21 SkylakeX, fp64, w = 50, one thread). The last product is
// written into `jacobian` directly: no copy of a result that can be 40 MB for 1000 points.
// `first_factor` is FirstFactor(layers), made once per call of the caller, not per chunk.
void PropagateJacobianInto(const DenseLayers& layers, const torch::Tensor& first_factor,
                           const torch::Tensor& first, torch::Tensor value,
                           torch::Tensor jacobian) {
  const size_t last = layers.weights.size() - 1;
  const int64_t batch = first.size(0);
  if (last == 0) {
    value.copy_(first);
    jacobian.copy_(first_factor.unsqueeze(0).expand_as(jacobian));
    return;
  }
  // The forward pass transposed, aᵀ [w_l, B], for the same reason as gᵀ below; it also
  // leaves the slopes sᵀ [w_l, B] in the order in which the products below read them.
  std::vector<torch::Tensor> slopes_t;
  slopes_t.reserve(last);
  torch::Tensor a_t = first.t();
  for (size_t l = 1; l <= last; ++l) {
    slopes_t.push_back(SoftplusSlope(a_t));
    a_t = torch::addmm(layers.biases[l].unsqueeze(1), layers.weights[l].t(),
                       torch::softplus(a_t, 1.0, kSoftplusThreshold));
  }
  value.copy_(a_t.t());
  const int64_t r_q = layers.weights[last].size(1);
  const int64_t rows = batch * r_q;
  // gᵀ[j, p, i] = W_L[j, i] s_{L−1}[p, j]: point p's g, transposed, in columns
  // p·r_Q … p·r_Q + r_Q − 1.
  torch::Tensor g_t =
      (layers.weights[last].unsqueeze(1) * slopes_t[last - 1].unsqueeze(2)).contiguous();
  for (size_t l = last - 1; l > 0; --l) {
    g_t = torch::mm(layers.weights[l], g_t.view({g_t.size(0), rows}));  // [w_l, B·r_Q]
    g_t.view({g_t.size(0), batch, r_q}).mul_(slopes_t[l - 1].unsqueeze(2));
  }
  torch::Tensor jacobian_rows = jacobian.view({rows, jacobian.size(2)});
  torch::mm_out(jacobian_rows, g_t.view({g_t.size(0), rows}).t(), first_factor);
}

// φ(z) and J_φ(z) by reverse accumulation through the layers:
//   J_φ = W_Lᵀ diag(s_{L−1}) W_{L−1}ᵀ ⋯ diag(s₀) W₀ᵀ diag(scale),  s_l = softplus′(a_l),
// evaluated from the left, so that every product has r_Q rows. Differentiable with respect
// to the weights when gradients are on (training); otherwise PropagateJacobianInto.
std::pair<torch::Tensor, torch::Tensor> PropagateJacobian(const DenseLayers& layers,
                                                          const torch::Tensor& z) {
  const size_t last = layers.weights.size() - 1;
  if (!torch::GradMode::is_enabled()) {
    const int64_t r_q = layers.weights[last].size(1), r_m = layers.weights[0].size(0);
    torch::Tensor value = torch::empty({z.size(0), r_q}, z.options());
    torch::Tensor jacobian = torch::empty({z.size(0), r_q, r_m}, z.options());
    PropagateJacobianInto(layers, FirstFactor(layers), FirstLayer(layers, z), value, jacobian);
    return {value, jacobian};
  }
  torch::Tensor h = (z - layers.shift) * layers.scale;
  std::vector<torch::Tensor> slopes;
  torch::Tensor value;
  for (size_t l = 0; l <= last; ++l) {
    torch::Tensor a = torch::addmm(layers.biases[l], h, layers.weights[l]);
    if (l == last) {
      value = a;
      break;
    }
    slopes.push_back(SoftplusSlope(a));
    h = torch::softplus(a, 1.0, kSoftplusThreshold);
  }
  torch::Tensor g = layers.weights[last].t().unsqueeze(0);  // [1, r_Q, w_L]
  for (size_t l = last; l-- > 0;) {
    g = torch::matmul(g * slopes[l].unsqueeze(1), layers.weights[l].t());
  }
  g = g * layers.scale;
  return {value, g.expand({z.size(0), g.size(1), g.size(2)})};
}

// Up to this many rows, a product with a column-major copy of a basis streams it faster.
constexpr int64_t kMatrixVectorRows = 2;
// From this many rows on, the folded first layer is multiplied transposed (FirstLayerAtInputs).
constexpr int64_t kTransposedProductRows = 128;
// The largest basis (or folded first layer) of which a column-major copy is kept: beyond it
// the memory matters more than the microseconds.
constexpr int64_t kMaxColumnCopyBytes = int64_t{64} << 20;

// Points per PropagateJacobian call when a large batch is computed without gradients.
constexpr int64_t kPropagationChunk = 32;

// φ and J_φ of the points whose first-layer pre-activations are `first` [P, w₁], without
// gradients. Chunks of points keep the [chunk, r_Q, width] intermediates in cache: all points
// at once made the cost per point grow with the batch (DIPNet 100-50: 100 µs per point at
// B = 16, 190 µs at B = 256; dino_serving_benchmark). Chunks are spread over LibTorch's
// intra-op threads, and each writes its part of the results in place.
std::pair<torch::Tensor, torch::Tensor> PropagateInChunks(const DenseLayers& layers,
                                                          const torch::Tensor& first) {
  const int64_t batch = first.size(0);
  const int64_t r_q = layers.weights.back().size(1), r_m = layers.weights[0].size(0);
  torch::Tensor value = torch::empty({batch, r_q}, first.options());
  torch::Tensor jacobian = torch::empty({batch, r_q, r_m}, first.options());
  const int64_t chunks = (batch + kPropagationChunk - 1) / kPropagationChunk;
  const torch::Tensor first_factor = FirstFactor(layers);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    torch::NoGradGuard no_grad;  // Grad mode is per thread.
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t start = chunk * kPropagationChunk;
      const int64_t count = std::min(kPropagationChunk, batch - start);
      PropagateJacobianInto(layers, first_factor, first.narrow(0, start, count),
                            value.narrow(0, start, count), jacobian.narrow(0, start, count));
    }
  });
  return {value, jacobian};
}

// Whether PropagateJacobian reproduces reduced_forward and its autograd Jacobian on a copy of
// `module` with random whitening (so that a model ignoring its whitening buffers, or with
// another activation, is caught). Any failure means no.
bool PropagationReproducesModel(const torch::jit::Module& module, torch::Dtype dtype,
                                torch::Device device, int64_t r_m, int64_t r_q) {
  try {
    torch::jit::Module copy = module.deepcopy();
    auto generator = at::make_generator<at::CPUGeneratorImpl>(20240611);
    const auto options = torch::dtype(dtype).device(device);
    {
      torch::NoGradGuard no_grad;
      copy.attr(kWhiteningShift)
          .toTensor()
          .copy_(0.5 * torch::randn({r_m}, generator, torch::kFloat64).to(options));
      copy.attr(kWhiteningScale)
          .toTensor()
          .copy_((0.5 + torch::rand({r_m}, generator, torch::kFloat64)).to(options));
    }
    const std::shared_ptr<DenseLayers> layers = MatchLayers(copy, r_m, r_q);
    if (!layers) return false;
    const Network reference(copy, /*allow_layer_propagation=*/false);
    const torch::Tensor z = torch::randn({3, r_m}, generator, torch::kFloat64).to(options);
    auto [value_ref, jacobian_ref] = ReducedValueAndJacobian(reference, z, false);
    // Both implementations: the differentiable one (training) and the in-place one (serving).
    std::pair<torch::Tensor, torch::Tensor> trained;
    {
      torch::AutoGradMode grad_mode(true);
      trained = PropagateJacobian(*layers, z);
    }
    torch::NoGradGuard no_grad;
    auto [value, jacobian] = PropagateJacobian(*layers, z);
    const torch::Tensor value_only = PropagateValue(*layers, z);
    const double tolerance = dtype == torch::kFloat64 ? 1e-9 : 1e-3;
    auto close = [tolerance](const torch::Tensor& a, const torch::Tensor& b) {
      return a.sizes() == b.sizes() && (a.detach() - b).abs().max().item<double>() <=
                                           tolerance * std::max(1.0, b.abs().max().item<double>());
    };
    return close(value, value_ref) && close(value_only, value_ref) &&
           close(jacobian, jacobian_ref) && close(trained.first, value_ref) &&
           close(trained.second, jacobian_ref);
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

torch::Tensor ReverseProduct(const torch::Tensor& outputs, const torch::Tensor& inputs,
                             const torch::Tensor& cotangents, bool create_graph) {
  if (!outputs.requires_grad()) return torch::zeros_like(inputs);
  auto grads = torch::autograd::grad({outputs}, {inputs}, {cotangents},
                                     /*retain_graph=*/create_graph, create_graph,
                                     /*allow_unused=*/true);
  return grads[0].defined() ? grads[0] : torch::zeros_like(inputs);
}

const char* ReducedJacobianMethodName(ReducedJacobianMethod method) {
  return method == ReducedJacobianMethod::kLayerPropagation ? "layer_propagation" : "autograd";
}

Network::Network(torch::jit::Module module, bool allow_layer_propagation,
                 std::optional<torch::Dtype> dtype_without_tensors)
    : module_(std::move(module)) {
  if (!module_.find_method("forward")) Fail("the model has no forward method");
  const bool has_v = HasTensor(module_, dm::kInputBasis);
  const bool has_u = HasTensor(module_, dm::kOutputBasis);
  const bool has_b = HasTensor(module_, dm::kOutputShift);
  const bool has_reduced = module_.find_method(dm::kReducedForward).has_value();
  reduced_ = has_v && has_u && has_b && has_reduced;
  if ((has_v || has_u || has_b || has_reduced) && !reduced_) {
    Fail(
        "a reduced-basis model needs all of the buffers input_basis, output_basis, "
        "output_shift and the method reduced_forward; this one has only some of them");
  }
  bool found = false;
  if (reduced_) {
    input_basis_ = module_.attr(dm::kInputBasis).toTensor();
    output_basis_ = module_.attr(dm::kOutputBasis).toTensor();
    output_shift_ = module_.attr(dm::kOutputShift).toTensor();
    if (input_basis_.dim() != 2 || output_basis_.dim() != 2 || output_shift_.dim() != 1 ||
        output_shift_.size(0) != output_basis_.size(0)) {
      Fail(
          "inconsistent basis shapes: input_basis [d_M, r_M], output_basis [d_Q, r_Q] and "
          "output_shift [d_Q] are required");
    }
    dtype_ = input_basis_.scalar_type();
    device_ = input_basis_.device();
    if (input_basis_.is_cpu() &&
        input_basis_.numel() * input_basis_.element_size() <= kMaxColumnCopyBytes) {
      input_basis_columns_ = input_basis_.t().contiguous().t();
    }
    found = true;
    has_whitening_ = HasTensor(module_, kWhiteningShift) && HasTensor(module_, kWhiteningScale);
    if (has_whitening_) {
      const torch::Tensor shift = module_.attr(kWhiteningShift).toTensor();
      const torch::Tensor scale = module_.attr(kWhiteningScale).toTensor();
      const int64_t r_m = input_basis_.size(1);
      if (shift.sizes() != c10::IntArrayRef{r_m} || scale.sizes() != c10::IntArrayRef{r_m}) {
        Fail("reduced_input_shift and reduced_input_scale must have shape [r_M] = [" +
             std::to_string(r_m) + "]");
      }
    }
  }
  for (const auto& p : module_.parameters()) {
    if (!found && torch::isFloatingType(p.scalar_type())) {
      dtype_ = p.scalar_type();
      device_ = p.device();
      found = true;
    }
  }
  for (const auto& b : module_.buffers()) {
    if (!found && torch::isFloatingType(b.scalar_type())) {
      dtype_ = b.scalar_type();
      device_ = b.device();
      found = true;
    }
  }
  if (!found && dtype_without_tensors) {
    dtype_ = *dtype_without_tensors;
    found = true;
  }
  if (!found) Fail("the model has no floating-point parameter or buffer to take its dtype from");
  if (dtype_ != torch::kFloat32 && dtype_ != torch::kFloat64) {
    Fail("the model must compute in float32 or float64");
  }
  if (reduced_ && allow_layer_propagation) {
    const int64_t r_m = input_basis_.size(1), r_q = output_basis_.size(1);
    std::shared_ptr<DenseLayers> layers = MatchLayers(module_, r_m, r_q);
    if (layers && PropagationReproducesModel(module_, dtype_, device_, r_m, r_q)) {
      layers_ = std::move(layers);
    }
  }
  if (layers_ && input_basis_.is_cpu() && layers_->weights[0].size(1) < input_basis_.size(1)) {
    input_fold_ = MakeInputFold();
  }
}

std::shared_ptr<const Network::InputFold> Network::MakeInputFold() const {
  torch::NoGradGuard no_grad;
  const DenseLayers& layers = *layers_;
  auto fold = std::make_shared<InputFold>();
  const torch::Tensor scaled_weight = layers.scale.unsqueeze(1) * layers.weights[0];
  fold->weight = torch::mm(input_basis_, scaled_weight);
  if (fold->weight.numel() * fold->weight.element_size() <= kMaxColumnCopyBytes) {
    fold->weight_columns = fold->weight.t().contiguous().t();
  }
  fold->bias = layers.biases[0] - torch::mv(scaled_weight.t(), layers.shift);
  fold->sources = {input_basis_, layers.weights[0], layers.biases[0], layers.shift, layers.scale};
  for (const torch::Tensor& source : fold->sources) fold->versions.push_back(source._version());
  // The fold must reproduce the unfolded first layer (itself checked against the model by
  // PropagationReproducesModel) on inputs of the model's scale, or it is not used.
  auto generator = at::make_generator<at::CPUGeneratorImpl>(20240612);
  const torch::Tensor m = torch::randn({3, input_basis_.size(0)}, generator, torch::kFloat64)
                              .to(input_basis_.options());
  const torch::Tensor reference = FirstLayer(layers, torch::mm(m, input_basis_));
  const torch::Tensor folded = torch::addmm(fold->bias, m, fold->weight);
  const double tolerance = dtype_ == torch::kFloat64 ? 1e-9 : 1e-3;
  const double error = (folded - reference).abs().max().item<double>();
  if (!(error <= tolerance * std::max(1.0, reference.abs().max().item<double>()))) return nullptr;
  return fold;
}

bool Network::folds_input_basis() const { return input_fold_ && input_fold_->Current(); }

torch::Tensor Network::FirstLayerAtInputs(const torch::Tensor& m) const {
  if (!layers_) Fail("FirstLayerAtInputs needs a model with verified dense layers");
  if (torch::GradMode::is_enabled() || !folds_input_basis()) {
    return FirstLayer(*layers_, ProjectInput(m));
  }
  if (m.size(0) <= kMatrixVectorRows && input_fold_->weight_columns.defined()) {
    return torch::addmm(input_fold_->bias, m, input_fold_->weight_columns);
  }
  if (m.size(0) >= kTransposedProductRows && input_fold_->weight_columns.defined()) {
    // a₀ᵀ = Aᵀmᵀ + c: the long side (B) along BLAS's kernels, as in PropagateJacobianInto.
    // Evaluate, B = 1000, DIPNet 100-50, one thread: 24.9 → 17.5–18.5 µs per point
    // (dino_serving_benchmark). The result is a transposed view, which every consumer takes.
    return torch::addmm(input_fold_->bias.unsqueeze(1), input_fold_->weight_columns.t(), m.t()).t();
  }
  return ProjectRows(m, input_fold_->weight).add_(input_fold_->bias);
}

torch::Tensor ProjectRows(const torch::Tensor& a, const torch::Tensor& b) {
  constexpr int64_t kRowsPerTask = 64;
  // The largest M·N·K for which OpenBLAS 0.3.21's SkylakeX kernels multiply without packing
  // (found by measurement: larger slices were as slow as one unsliced product).
  constexpr int64_t kSmallProductSize = 1'000'000;
  if (torch::GradMode::is_enabled() || !a.is_cpu() || a.dim() != 2 || b.dim() != 2) {
    return torch::mm(a, b);
  }
  const int64_t rows = a.size(0), inner = a.size(1), columns = b.size(1);
  const int64_t slice = std::max<int64_t>(
      16, kSmallProductSize / std::max<int64_t>(1, std::min(rows, kRowsPerTask) * columns));
  if (slice >= inner && rows < 2 * kRowsPerTask) return torch::mm(a, b);
  torch::Tensor out = torch::empty({rows, columns}, a.options());
  auto multiply_block = [&](int64_t first_row, int64_t row_count) {
    torch::Tensor block = out.narrow(0, first_row, row_count);
    torch::Tensor a_rows = a.narrow(0, first_row, row_count);
    for (int64_t begin = 0; begin < inner; begin += slice) {
      const int64_t count = std::min(slice, inner - begin);
      if (begin == 0) {
        torch::mm_out(block, a_rows.narrow(1, 0, count), b.narrow(0, 0, count));
      } else {
        block.addmm_(a_rows.narrow(1, begin, count), b.narrow(0, begin, count));
      }
    }
  };
  if (rows < 2 * kRowsPerTask || at::get_num_threads() < 2) {
    for (int64_t first = 0; first < rows; first += kRowsPerTask) {
      multiply_block(first, std::min(kRowsPerTask, rows - first));
    }
    return out;
  }
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t first, int64_t end) {
    torch::NoGradGuard no_grad;  // Grad mode is per thread.
    for (int64_t block = first; block < end; block += kRowsPerTask) {
      multiply_block(block, std::min(kRowsPerTask, end - block));
    }
  });
  return out;
}

torch::Tensor Network::ProjectInput(const torch::Tensor& m) const {
  if (m.size(0) <= kMatrixVectorRows && input_basis_columns_.defined() &&
      !torch::GradMode::is_enabled()) {
    return torch::mm(m, input_basis_columns_);
  }
  return ProjectRows(m, input_basis_);
}

torch::Tensor Network::Forward(const torch::Tensor& m) const {
  // The contract's identity forward(m) = φ(mV)Uᵀ + b, through the verified layers.
  if (layers_) {
    return torch::addmm(output_shift_, ValueFromFirstLayer(*layers_, FirstLayerAtInputs(m)),
                        output_basis_.t());
  }
  return module_.get_method("forward")({m}).toTensor();
}

torch::Tensor Network::ReducedForward(const torch::Tensor& z) const {
  if (layers_) return PropagateValue(*layers_, z);
  return module_.get_method(dm::kReducedForward)({z}).toTensor();
}

std::vector<torch::Tensor> Network::TrainableParameters() const {
  std::vector<torch::Tensor> parameters;
  for (auto p : module_.parameters()) {
    p.requires_grad_(true);
    parameters.push_back(p);
  }
  return parameters;
}

void Network::CheckDimensions(int64_t input_dim, int64_t output_dim) const {
  if (reduced_ && (input_basis_.size(0) != input_dim || output_basis_.size(0) != output_dim)) {
    Fail("the model's bases are for d_M = " + std::to_string(input_basis_.size(0)) +
         ", d_Q = " + std::to_string(output_basis_.size(0)) + " but the data has d_M = " +
         std::to_string(input_dim) + ", d_Q = " + std::to_string(output_dim));
  }
  torch::NoGradGuard no_grad;
  torch::Tensor probe = torch::zeros({2, input_dim}, torch::dtype(dtype_).device(device_));
  torch::Tensor out;
  try {
    out = Forward(probe);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    Fail("the model's forward fails on inputs of shape [2, " + std::to_string(input_dim) +
         "] (the data's d_M): " + what.substr(0, what.find('\n')));
  }
  if (out.dim() != 2 || out.size(0) != 2 || out.size(1) != output_dim) {
    Fail("the model maps [2, d_M] to a tensor of " + std::to_string(out.dim()) + " dimensions" +
         (out.dim() == 2 ? " with " + std::to_string(out.size(1)) + " columns" : "") +
         ", but the data has d_Q = " + std::to_string(output_dim));
  }
}

std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobian(const Network& network,
                                                                const torch::Tensor& z,
                                                                bool create_graph) {
  if (!network.reduced()) Fail("ReducedValueAndJacobian needs a reduced-basis model");
  if (network.layers_ && !create_graph) {
    torch::NoGradGuard no_grad;
    return PropagateInChunks(*network.layers_, FirstLayer(*network.layers_, z));
  }
  if (network.layers_) {
    // A plain function of the weights: ordinary autograd differentiates it.
    torch::AutoGradMode grad_mode(create_graph);
    return PropagateJacobian(*network.layers_, z.detach());
  }
  const int64_t batch = z.size(0), r_q = network.output_rank(), r_m = z.size(1);
  torch::AutoGradMode grad_mode(true);
  torch::Tensor copies = z.detach().repeat_interleave(r_q, 0).requires_grad_(true);
  torch::Tensor outputs = network.ReducedForward(copies);
  torch::Tensor seeds = torch::eye(r_q, z.options()).repeat({batch, 1});
  torch::Tensor rows = ReverseProduct(outputs, copies, seeds, create_graph);
  torch::Tensor value = outputs.view({batch, r_q, r_q}).select(1, 0);
  torch::Tensor jacobian = rows.view({batch, r_q, r_m});
  if (!create_graph) return {value.detach(), jacobian.detach()};
  return {value, jacobian};
}

std::pair<torch::Tensor, torch::Tensor> ReducedValueAndJacobianAtInputs(
    const Network& network, const torch::Tensor& m, torch::Tensor* reduced_inputs) {
  torch::NoGradGuard no_grad;
  if (network.layers_ && reduced_inputs == nullptr) {
    return PropagateInChunks(*network.layers_, network.FirstLayerAtInputs(m));
  }
  const torch::Tensor z = network.ProjectInput(m);
  if (reduced_inputs != nullptr) *reduced_inputs = z;
  if (!network.layers_) return ReducedValueAndJacobian(network, z, /*create_graph=*/false);
  return PropagateInChunks(*network.layers_, FirstLayer(*network.layers_, z));
}

std::pair<torch::Tensor, torch::Tensor> ValueAndLeftProducts(const Network& network,
                                                             const torch::Tensor& m,
                                                             const torch::Tensor& left,
                                                             bool create_graph) {
  const bool shared = left.dim() == 2;
  if (!shared && (left.dim() != 3 || left.size(0) != m.size(0))) {
    Fail("left factors must have shape [d_Q, k] or [B, d_Q, k]");
  }
  const int64_t batch = m.size(0), d_m = m.size(1);
  const int64_t d_q = left.size(shared ? 0 : 1), k = left.size(shared ? 1 : 2);
  if (k == 0) Fail("left factors need at least one column");
  torch::AutoGradMode grad_mode(true);
  torch::Tensor copies = m.detach().repeat_interleave(k, 0).requires_grad_(true);
  torch::Tensor outputs = network.Forward(copies);
  if (outputs.dim() != 2 || outputs.size(1) != d_q) {
    Fail("left factors have " + std::to_string(d_q) + " rows but the model has d_Q = " +
         std::to_string(outputs.dim() == 2 ? outputs.size(1) : -1));
  }
  torch::Tensor cotangents =
      shared ? left.t().repeat({batch, 1}) : left.transpose(1, 2).reshape({batch * k, d_q});
  torch::Tensor rows = ReverseProduct(outputs, copies, cotangents, create_graph);
  torch::Tensor value = outputs.view({batch, k, d_q}).select(1, 0);
  torch::Tensor products = rows.view({batch, k, d_m});
  if (!create_graph) return {value.detach(), products.detach()};
  return {value, products};
}

}  // namespace dino::models
