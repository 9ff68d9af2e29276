#include "models/training/metrics.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace dino::training {
namespace {

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

torch::Tensor SquaredNorm2(const torch::Tensor& t) { return t.square().sum({-2, -1}); }

// Sums of per-sample relative errors e = sqrt(error² / reference²) and of e², for the mean
// and the root mean square. The references are positive (checked by Prepare).
struct ErrorSums {
  double sum = 0.0;
  double sum_sq = 0.0;

  void Add(const torch::Tensor& error_sq, const torch::Tensor& reference_sq) {
    torch::Tensor relative_sq = (error_sq / reference_sq).to(torch::kFloat64);
    sum += relative_sq.sqrt().sum().item<double>();
    sum_sq += relative_sq.sum().item<double>();
  }
  double Accuracy(int64_t n) const { return 1.0 - sum / static_cast<double>(n); }
  double RmsAccuracy(int64_t n) const { return 1.0 - std::sqrt(sum_sq / static_cast<double>(n)); }
};

}  // namespace

nlohmann::json Accuracies::ToJson() const {
  nlohmann::json json = {{"samples", samples}, {"l2_accuracy", l2}, {"l2_accuracy_rms", l2_rms}};
  if (h1) {
    json["h1_accuracy"] = *h1;
    json["h1_accuracy_rms"] = *h1_rms;
  }
  if (reduced_h1) {
    json["reduced_h1_accuracy"] = *reduced_h1;
    json["reduced_h1_accuracy_rms"] = *reduced_h1_rms;
    json["reduced_rank"] = reduced_rank;
  }
  if (basis_l2) json["basis_l2_accuracy"] = *basis_l2;
  if (basis_h1) json["basis_h1_accuracy"] = *basis_h1;
  return json;
}

AccuracyEvaluator::AccuracyEvaluator(const models::Network& network, const Dataset& data,
                                     const MetricsOptions& options)
    : network_(network), options_(options) {
  if (options_.chunk < 1) Fail("the metrics chunk size must be >= 1");
  const JacobianForm form = data.jacobian_form();
  const bool full_or_svd = form == JacobianForm::kFull || form == JacobianForm::kTruncatedSvd;
  // ‖J − ∇f‖ is known from J itself, or for a DIPNet from UᵀJV and ‖J‖ (Prop. 2.4); the
  // per-sample SVD only from J.
  has_h1_ = full_or_svd || (form == JacobianForm::kReduced && network_.reduced() &&
                            data.jacobian_norm_sq.defined());
  has_reduced_ = full_or_svd;
  PreparationRequest request;
  request.jacobian_norms = has_h1_;
  request.jacobian_projection = has_h1_;
  request.svd = has_reduced_;
  request.svd_rank = options_.reduced_rank;
  prepared_ = Prepare(network_, data, request);
}

Accuracies AccuracyEvaluator::Evaluate() const {
  const PreparedData& p = prepared_;
  const int64_t n = p.size;
  const bool want_jacobian = has_h1_ || has_reduced_;
  ErrorSums l2, h1, reduced;
  for (int64_t start = 0; start < n; start += options_.chunk) {
    const int64_t count = std::min(options_.chunk, n - start);
    const torch::Tensor index = torch::arange(start, start + count, torch::kLong);
    const torch::Tensor q_norm_sq = p.q_norm_sq.narrow(0, start, count);
    if (network_.reduced()) {
      torch::Tensor z = p.z.narrow(0, start, count);
      torch::Tensor phi, j_phi;
      if (want_jacobian) {
        std::tie(phi, j_phi) = models::ReducedValueAndJacobian(network_, z, /*create_graph=*/false);
      }
      torch::NoGradGuard no_grad;
      if (!want_jacobian) phi = network_.ReducedForward(z);
      l2.Add(
          p.l2_perp.narrow(0, start, count) + (p.y.narrow(0, start, count) - phi).square().sum(1),
          q_norm_sq);
      if (has_h1_) {
        h1.Add(p.j_perp.narrow(0, start, count) + SquaredNorm2(p.k.narrow(0, start, count) - j_phi),
               p.j_norm_sq.narrow(0, start, count));
      }
      if (has_reduced_) {
        torch::Tensor projected =
            torch::matmul(torch::matmul(p.svd_left.narrow(0, start, count), j_phi),
                          p.svd_right.narrow(0, start, count));
        reduced.Add(SquaredNorm2(torch::diag_embed(p.sigma.narrow(0, start, count)) - projected),
                    p.sigma_sq.narrow(0, start, count));
      }
      continue;
    }

    // Generic models: Jacobian products from reverse passes over copies of each m.
    const torch::Tensor m = p.data.m.narrow(0, start, count);
    torch::Tensor f;
    if (has_h1_) {
      auto [value, jacobian] =
          models::ValueAndLeftProducts(network_, m, torch::eye(p.data.output_dim(), m.options()),
                                       /*create_graph=*/false);
      f = value;
      torch::NoGradGuard no_grad;
      h1.Add(SquaredNorm2(FullJacobianRows(p.data, index) - jacobian),
             p.j_norm_sq.narrow(0, start, count));
    }
    if (has_reduced_) {
      auto [value, left_products] = models::ValueAndLeftProducts(
          network_, m, p.svd_left.narrow(0, start, count), /*create_graph=*/false);
      f = value;
      torch::NoGradGuard no_grad;
      torch::Tensor projected = torch::matmul(left_products, p.svd_right.narrow(0, start, count));
      reduced.Add(SquaredNorm2(torch::diag_embed(p.sigma.narrow(0, start, count)) - projected),
                  p.sigma_sq.narrow(0, start, count));
    }
    torch::NoGradGuard no_grad;
    if (!f.defined()) f = network_.Forward(m);
    l2.Add((p.data.q.narrow(0, start, count) - f).square().sum(1), q_norm_sq);
  }

  Accuracies accuracies;
  if (network_.reduced() && n > 0) {
    // The error of the best approximation in the bases is the part outside them.
    ErrorSums basis_l2;
    basis_l2.Add(p.l2_perp, p.q_norm_sq);
    accuracies.basis_l2 = basis_l2.Accuracy(n);
    if (has_h1_ && p.exact_jacobian_norms) {
      ErrorSums basis_h1;
      basis_h1.Add(p.j_perp, p.j_norm_sq);
      accuracies.basis_h1 = basis_h1.Accuracy(n);
    }
  }
  accuracies.samples = n;
  accuracies.l2 = l2.Accuracy(n);
  accuracies.l2_rms = l2.RmsAccuracy(n);
  if (has_h1_) {
    accuracies.h1 = h1.Accuracy(n);
    accuracies.h1_rms = h1.RmsAccuracy(n);
  }
  if (has_reduced_) {
    accuracies.reduced_h1 = reduced.Accuracy(n);
    accuracies.reduced_h1_rms = reduced.RmsAccuracy(n);
    accuracies.reduced_rank = p.rank;
  }
  return accuracies;
}

Accuracies EvaluateAccuracies(const torch::jit::Module& module, const Dataset& data,
                              const MetricsOptions& options) {
  return AccuracyEvaluator(models::Network(module), data, options).Evaluate();
}

}  // namespace dino::training
