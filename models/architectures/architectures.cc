#include "models/architectures/architectures.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <sstream>
#include <stdexcept>

namespace dino::models {
namespace {

// Registers the weights of a dense stack in_dim → widths... → out_dim as parameters
// W<i> [fan_in, fan_out] (so that a layer is addmm(b<i>, h, W<i>)) and b<i> [fan_out], and
// returns the TorchScript statements that apply the stack to the variable `h`.
std::string AddDenseStack(torch::jit::Module& module, int64_t in_dim,
                          const std::vector<int64_t>& widths, int64_t out_dim, torch::Dtype dtype,
                          uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int64_t> dims = {in_dim};
  dims.insert(dims.end(), widths.begin(), widths.end());
  dims.push_back(out_dim);
  std::ostringstream body;
  for (size_t layer = 0; layer + 1 < dims.size(); ++layer) {
    const int64_t fan_in = dims[layer], fan_out = dims[layer + 1];
    if (fan_in <= 0 || fan_out <= 0) {
      throw std::invalid_argument("layer widths must be positive");
    }
    // Glorot-uniform weights and zero biases (the Keras defaults of the reference code).
    const double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
    torch::Tensor weight = torch::empty({fan_in, fan_out}, torch::kFloat64);
    weight.uniform_(-limit, limit, generator);
    module.register_parameter("W" + std::to_string(layer), weight.to(dtype), /*is_buffer=*/false);
    module.register_parameter("b" + std::to_string(layer), torch::zeros({fan_out}, dtype),
                              /*is_buffer=*/false);
    const bool last = layer + 2 == dims.size();
    body << "    h = ";
    if (!last) body << "torch.softplus(";
    body << "torch.addmm(self.b" << layer << ", h, self.W" << layer << ")";
    if (!last) body << ", 1.0, " << std::fixed << kSoftplusThreshold << ")";
    body << "\n";
  }
  return body.str();
}

void CheckOrthonormal(const torch::Tensor& basis, const char* name) {
  if (!basis.defined() || basis.dim() != 2) {
    throw std::invalid_argument(std::string(name) + " must be a matrix");
  }
  const double defect = OrthonormalityDefect(basis);
  if (defect > 1e-6) {
    throw std::invalid_argument(
        std::string(name) +
        " does not have orthonormal columns (max |BᵀB − I| = " + std::to_string(defect) + ")");
  }
}

}  // namespace

torch::jit::Module BuildDipnet(const DipnetSpec& spec) {
  CheckOrthonormal(spec.input_basis, kInputBasis);
  CheckOrthonormal(spec.output_basis, kOutputBasis);
  const int64_t r_m = spec.input_basis.size(1);
  const int64_t d_q = spec.output_basis.size(0), r_q = spec.output_basis.size(1);
  torch::Tensor shift =
      spec.output_shift.defined() ? spec.output_shift : torch::zeros({d_q}, spec.dtype);
  if (shift.dim() != 1 || shift.size(0) != d_q) {
    throw std::invalid_argument("output_shift must have shape [d_Q] = [" + std::to_string(d_q) +
                                "]");
  }
  torch::jit::Module module("DIPNet");
  module.register_buffer(kInputBasis, spec.input_basis.to(spec.dtype).contiguous());
  module.register_buffer(kOutputBasis, spec.output_basis.to(spec.dtype).contiguous());
  module.register_buffer(kOutputShift, shift.to(spec.dtype).contiguous());
  module.register_buffer(kWhiteningShift, torch::zeros({r_m}, spec.dtype));
  module.register_buffer(kWhiteningScale, torch::ones({r_m}, spec.dtype));
  const std::string stack =
      AddDenseStack(module, r_m, spec.hidden_widths, r_q, spec.dtype, spec.seed);
  module.define(
      "def reduced_forward(self, z: Tensor) -> Tensor:\n"
      "    h = (z - self." +
      std::string(kWhiteningShift) + ") * self." + kWhiteningScale + "\n" + stack +
      "    return h\n"
      "\n"
      "def forward(self, m: Tensor) -> Tensor:\n"
      "    z = torch.mm(m, self.input_basis)\n"
      "    return torch.addmm(self.output_shift, self.reduced_forward(z), "
      "self.output_basis.t())\n");
  return module;
}

torch::jit::Module BuildGenericDense(const GenericDenseSpec& spec) {
  if (spec.input_dim <= 0 || spec.output_dim <= 0) {
    throw std::invalid_argument("input_dim and output_dim must be positive");
  }
  torch::jit::Module module("GenericDense");
  const std::string stack = AddDenseStack(module, spec.input_dim, spec.hidden_widths,
                                          spec.output_dim, spec.dtype, spec.seed);
  module.define("def forward(self, m: Tensor) -> Tensor:\n    h = m\n" + stack + "    return h\n");
  return module;
}

torch::Tensor RandomOrthonormalColumns(int64_t rows, int64_t cols, uint64_t seed,
                                       torch::Dtype dtype) {
  if (cols > rows) {
    throw std::invalid_argument("cannot have more orthonormal columns than rows");
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::Tensor gaussian = torch::empty({rows, cols}, torch::kFloat64);
  gaussian.normal_(0.0, 1.0, generator);
  auto [q, r] = torch::linalg_qr(gaussian);
  // Fix the signs so that R has a positive diagonal: the result then depends on the seed only.
  q = q * torch::sign(torch::diagonal(r)).unsqueeze(0);
  return q.to(dtype).contiguous();
}

double OrthonormalityDefect(const torch::Tensor& basis) {
  torch::Tensor b = basis.to(torch::kFloat64);
  torch::Tensor gram = torch::mm(b.t(), b) - torch::eye(b.size(1), torch::kFloat64);
  return gram.numel() == 0 ? 0.0 : gram.abs().max().item<double>();
}

std::vector<int64_t> ParseHiddenWidths(const std::string& text) {
  std::vector<int64_t> widths;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    if (part.empty()) continue;
    size_t used = 0;
    int64_t width = 0;
    try {
      width = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != part.size() || width <= 0) {
      throw std::invalid_argument("hidden widths: '" + part + "' is not a positive integer");
    }
    widths.push_back(width);
  }
  if (widths.empty()) throw std::invalid_argument("hidden widths: none given");
  return widths;
}

int64_t CountParameters(const torch::jit::Module& module) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) count += p.numel();
  return count;
}

}  // namespace dino::models
