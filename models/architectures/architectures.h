// The neural-network architectures of dino-serve (paper §2.3 and §3.2), built as TorchScript
// modules. This is the one place that defines them: the bundled-model builder, the tests and
// the trainer all construct networks through these functions, and the server only relies on
// the model contract they satisfy (docs/model-contract.md).
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dino::models {

// Hidden layers of the paper's networks: 6 softplus layers of width 50 (§3.2).
inline const std::vector<int64_t> kPaperHiddenWidths = {50, 50, 50, 50, 50, 50};

// Names fixed by the model contract.
inline constexpr char kInputBasis[] = "input_basis";    // V [d_M, r_M]
inline constexpr char kOutputBasis[] = "output_basis";  // U [d_Q, r_Q]
inline constexpr char kOutputShift[] = "output_shift";  // b [d_Q]
inline constexpr char kReducedForward[] = "reduced_forward";
// The hidden layers' activation: torch.softplus(a, beta = 1, threshold), which is a itself
// above the threshold (the layer formula of models/architectures/network.cc relies on it).
inline constexpr double kSoftplusThreshold = 20.0;
// The whitening buffers of the project's DIPNets ([r_M] each; see DipnetSpec).
inline constexpr char kWhiteningShift[] = "reduced_input_shift";
inline constexpr char kWhiteningScale[] = "reduced_input_scale";

// Architecture names recorded in model metadata.
inline constexpr char kDipnetArchitecture[] = "dipnet";
inline constexpr char kGenericArchitecture[] = "generic";

// Reduced-basis DIPNet f(m) = U φ(Vᵀm) + b, where φ: R^{r_M} → R^{r_Q} is a dense network
// with softplus hidden layers and a linear last layer. The bases are fixed buffers; φ's
// weights and biases are trainable parameters. φ first applies an affine whitening
// z ↦ (z − reduced_input_shift) ⊙ reduced_input_scale (identity until a trainer sets it),
// because whitened reduced inputs train markedly better.
struct DipnetSpec {
  torch::Tensor input_basis;   // V [d_M, r_M], orthonormal columns.
  torch::Tensor output_basis;  // U [d_Q, r_Q], orthonormal columns.
  torch::Tensor output_shift;  // b [d_Q]; zeros when undefined.
  std::vector<int64_t> hidden_widths = kPaperHiddenWidths;
  torch::Dtype dtype = torch::kFloat64;
  uint64_t seed = 0;  // Seeds the Glorot-uniform weight initialisation.
};

// Generic dense network m ↦ q: softplus hidden layers (the first one is the encoder
// R^{d_M} → R^{width}) and a linear output layer. With the paper's widths and d_M = 4225,
// d_Q = 50 it has 226,600 weights.
struct GenericDenseSpec {
  int64_t input_dim = 0;
  int64_t output_dim = 0;
  std::vector<int64_t> hidden_widths = kPaperHiddenWidths;
  torch::Dtype dtype = torch::kFloat64;
  uint64_t seed = 0;
};

// Throws std::invalid_argument on inconsistent shapes or non-orthonormal bases.
torch::jit::Module BuildDipnet(const DipnetSpec& spec);
torch::jit::Module BuildGenericDense(const GenericDenseSpec& spec);

// A rows × cols matrix with orthonormal columns (Q of the QR factorisation of a Gaussian
// matrix), reproducible from the seed.
torch::Tensor RandomOrthonormalColumns(int64_t rows, int64_t cols, uint64_t seed,
                                       torch::Dtype dtype = torch::kFloat64);

// max |BᵀB − I|: how far the columns of `basis` are from orthonormal.
double OrthonormalityDefect(const torch::Tensor& basis);

// Hidden widths from their command-line spelling "50,50,50"; throws std::invalid_argument
// naming the offending entry.
std::vector<int64_t> ParseHiddenWidths(const std::string& text);

// Number of trainable scalars of a module.
int64_t CountParameters(const torch::jit::Module& module);

}  // namespace dino::models
