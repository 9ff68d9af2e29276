// Synthetic problems with exact Jacobians and small networks for the trainer's tests and
// benchmark: q(m) = A tanh(B m) + c, whose Jacobian A diag(1 − tanh²(Bm)) B is known in
// closed form and has rank ≤ h (the inner width), like the low-rank PDE Jacobians of the
// paper.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "models/architectures/architectures.h"
#include "models/training/dataset.h"

namespace dino::training::testing {

inline torch::Tensor Gaussian(std::vector<int64_t> shape, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn(shape, generator, torch::kFloat64);
}

struct SmoothMap {
  torch::Tensor a;  // [d_Q, h]
  torch::Tensor b;  // [h, d_M]
  torch::Tensor c;  // [d_Q]

  torch::Tensor Evaluate(const torch::Tensor& m) const {
    return torch::addmm(c, torch::tanh(torch::mm(m, b.t())), a.t());
  }
  // [n, d_Q, d_M]
  torch::Tensor Jacobian(const torch::Tensor& m) const {
    torch::Tensor slope = 1.0 - torch::tanh(torch::mm(m, b.t())).square();  // [n, h]
    return torch::matmul(a.unsqueeze(0) * slope.unsqueeze(1), b);
  }
};

// B scaled so that Bm is O(1) for m ~ N(0, I): the map is visibly nonlinear.
inline SmoothMap MakeSmoothMap(int64_t d_m, int64_t d_q, int64_t h, uint64_t seed) {
  SmoothMap map;
  map.a = Gaussian({d_q, h}, seed) / std::sqrt(static_cast<double>(h));
  map.b = Gaussian({h, d_m}, seed + 1) * (1.5 / std::sqrt(static_cast<double>(d_m)));
  map.c = 0.5 * Gaussian({d_q}, seed + 2);
  return map;
}

// n samples m ~ N(0, I) with q and the full Jacobians.
inline Dataset MakeFullDataset(const SmoothMap& map, int64_t n, uint64_t seed) {
  Dataset data;
  data.m = Gaussian({n, map.b.size(1)}, seed);
  data.q = map.Evaluate(data.m);
  data.jacobian = map.Jacobian(data.m);
  return data;
}

// The same samples with the per-sample SVD of J truncated to `rank` (exact when rank ≥ h).
inline Dataset WithTruncatedSvd(const Dataset& full, int64_t rank) {
  auto [u, s, vh] = torch::linalg_svd(full.jacobian, /*full_matrices=*/false);
  Dataset data;
  data.m = full.m;
  data.q = full.q;
  data.svd_u = u.narrow(2, 0, rank).contiguous();
  data.svd_sigma = s.narrow(1, 0, rank).contiguous();
  data.svd_v = vh.narrow(1, 0, rank).transpose(1, 2).contiguous();
  return data;
}

// The same samples with UᵀJV in the bases U [d_Q, r_Q], V [d_M, r_M] (and ‖J‖² if asked).
inline Dataset WithReducedJacobian(const Dataset& full, const torch::Tensor& u,
                                   const torch::Tensor& v, bool with_norms) {
  Dataset data;
  data.m = full.m;
  data.q = full.q;
  data.reduced_jacobian = torch::matmul(torch::matmul(u.t(), full.jacobian), v);
  if (with_norms) data.jacobian_norm_sq = full.jacobian.square().sum({1, 2});
  return data;
}

// Dominant eigenvectors of E[JᵀJ] (active subspace, [d_M, r]) and of E[JJᵀ] ([d_Q, r]):
// the paper's derivative-informed bases (2.24), (2.25).
inline torch::Tensor ActiveSubspace(const torch::Tensor& jacobians, int64_t rank) {
  // Σ_i J_iᵀJ_i as one product of the stacked rows: no [n, d_M, d_M] temporary.
  torch::Tensor rows = jacobians.reshape({-1, jacobians.size(2)});
  torch::Tensor gram = torch::mm(rows.t(), rows) / static_cast<double>(jacobians.size(0));
  auto [values, vectors] = torch::linalg_eigh(gram);
  return vectors.flip({1}).narrow(1, 0, rank).contiguous();
}
inline torch::Tensor OutputSubspace(const torch::Tensor& jacobians, int64_t rank) {
  torch::Tensor gram = torch::matmul(jacobians, jacobians.transpose(1, 2)).mean(0);
  auto [values, vectors] = torch::linalg_eigh(gram);
  return vectors.flip({1}).narrow(1, 0, rank).contiguous();
}

// Networks scaled up from the Glorot initialisation, with random biases, so that they are
// visibly nonlinear (finite differences then test something).
inline void Roughen(torch::jit::Module& module, uint64_t seed) {
  torch::NoGradGuard no_grad;
  uint64_t offset = 0;
  for (auto p : module.named_parameters()) {
    if (p.name.rfind("b", 0) == 0) {
      p.value.copy_(0.5 * Gaussian(p.value.sizes().vec(), seed + offset++));
    } else {
      p.value.mul_(2.0);
    }
  }
}

inline torch::jit::Module SmallDipnet(const torch::Tensor& input_basis,
                                      const torch::Tensor& output_basis,
                                      const torch::Tensor& output_shift,
                                      std::vector<int64_t> hidden, uint64_t seed, bool rough) {
  dino::models::DipnetSpec spec;
  spec.input_basis = input_basis;
  spec.output_basis = output_basis;
  spec.output_shift = output_shift;
  spec.hidden_widths = std::move(hidden);
  spec.seed = seed;
  torch::jit::Module module = dino::models::BuildDipnet(spec);
  if (rough) Roughen(module, seed + 100);
  return module;
}

inline torch::jit::Module SmallGeneric(int64_t d_m, int64_t d_q, std::vector<int64_t> hidden,
                                       uint64_t seed, bool rough) {
  dino::models::GenericDenseSpec spec;
  spec.input_dim = d_m;
  spec.output_dim = d_q;
  spec.hidden_widths = std::move(hidden);
  spec.seed = seed;
  torch::jit::Module module = dino::models::BuildGenericDense(spec);
  if (rough) Roughen(module, seed + 100);
  return module;
}

// ∇f(m_i) [n, d_Q, d_M] one output component at a time with plain autograd on forward: an
// independent reference for the library's batched Jacobians.
inline torch::Tensor DirectJacobian(const torch::jit::Module& module, const torch::Tensor& m) {
  const int64_t n = m.size(0), d_m = m.size(1);
  std::vector<torch::Tensor> samples;
  for (int64_t i = 0; i < n; ++i) {
    torch::Tensor x = m[i].unsqueeze(0).detach().clone().requires_grad_(true);
    torch::Tensor y = module.get_method("forward")({x}).toTensor()[0];
    std::vector<torch::Tensor> rows;
    for (int64_t k = 0; k < y.size(0); ++k) {
      rows.push_back(torch::autograd::grad({y[k]}, {x}, {}, /*retain_graph=*/true)[0].view({d_m}));
    }
    samples.push_back(torch::stack(rows).detach());
  }
  return torch::stack(samples);
}

inline torch::Tensor DirectForward(const torch::jit::Module& module, const torch::Tensor& m) {
  torch::NoGradGuard no_grad;
  return module.get_method("forward")({m}).toTensor();
}

}  // namespace dino::training::testing
