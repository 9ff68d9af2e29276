#include "models/training/prepared.h"

#include <optional>
#include <stdexcept>
#include <string>

namespace dino::training {
namespace {

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

torch::Tensor SquaredNorm2(const torch::Tensor& t) { return t.square().sum({-2, -1}); }

// Fails naming the first sample where `values` [n] is not positive.
void RequirePositive(const torch::Tensor& values, const std::string& what) {
  torch::Tensor bad = values <= 0;
  if (!bad.any().item<bool>()) return;
  Fail(what + " of sample " + std::to_string(bad.nonzero()[0][0].item<int64_t>()) +
       " is zero: its relative error is undefined");
}

}  // namespace

void CheckNormalizers(const Dataset& data, bool jacobian) {
  RequirePositive(data.q.square().sum(1), "q");
  if (!jacobian || data.jacobian_form() == JacobianForm::kNone) return;
  torch::Tensor norms = JacobianNormSq(data);
  if (!norms.defined()) norms = SquaredNorm2(data.reduced_jacobian);
  RequirePositive(norms, "the Jacobian");
}

PreparedData Prepare(const models::Network& network, const Dataset& input,
                     const PreparationRequest& request) {
  input.Validate();
  network.CheckDimensions(input.input_dim(), input.output_dim());
  const JacobianForm form = input.jacobian_form();
  const bool norms = request.jacobian_norms || request.jacobian_projection;
  if ((norms || request.svd) && form == JacobianForm::kNone) {
    Fail("Jacobian data are needed; the dataset has outputs only");
  }
  if (norms && form == JacobianForm::kReduced && !network.reduced()) {
    Fail("reduced Jacobians are in a DIPNet's bases; a generic model has none");
  }

  PreparedData prepared;
  const Dataset data = input.To(network.device(), network.dtype());
  prepared.size = data.size();
  torch::NoGradGuard no_grad;
  prepared.q_norm_sq = data.q.square().sum(1);
  RequirePositive(prepared.q_norm_sq, "q");
  if (network.reduced()) {
    const torch::Tensor& u = network.output_basis();
    prepared.z = torch::mm(data.m, network.input_basis());
    torch::Tensor centered = data.q - network.output_shift();
    prepared.y = torch::mm(centered, u);
    // The residual itself, not ‖q − b‖² − ‖y‖²: no cancellation when q lies near span(U).
    prepared.l2_perp = (centered - torch::mm(prepared.y, u.t())).square().sum(1);
  }
  if (norms) {
    prepared.j_norm_sq = JacobianNormSq(data);
    if (network.reduced() && request.jacobian_projection) {
      prepared.k = ProjectJacobian(data, network.output_basis(), network.input_basis());
      torch::Tensor k_sq = SquaredNorm2(prepared.k);
      if (!prepared.j_norm_sq.defined()) {
        prepared.j_norm_sq = k_sq;
        prepared.exact_jacobian_norms = false;
      }
      prepared.j_perp = (prepared.j_norm_sq - k_sq).clamp_min(0.0);
    } else if (!prepared.j_norm_sq.defined()) {
      prepared.j_norm_sq = SquaredNorm2(data.reduced_jacobian);
      prepared.exact_jacobian_norms = false;
    }
    RequirePositive(prepared.j_norm_sq, "the Jacobian");
  }
  if (request.svd) {
    SampleSvd svd = TruncatedSampleSvd(data, request.svd_rank);
    prepared.rank = svd.sigma.size(1);
    prepared.sigma = svd.sigma;
    prepared.sigma_sq = svd.sigma.square().sum(1);
    RequirePositive(prepared.sigma_sq, "the Jacobian");
    if (network.reduced()) {
      prepared.svd_left = torch::matmul(svd.u.transpose(1, 2), network.output_basis());
      // In chunks: a [r_M, d_M] · [n, d_M, r] matmul expands the basis to [n, r_M, d_M]
      // (r_M/r times the size of V_data).
      const int64_t n = data.size(), r = svd.v.size(2), chunk = 64;
      prepared.svd_right = torch::empty({n, network.input_basis().size(1), r}, svd.v.options());
      for (int64_t start = 0; start < n; start += chunk) {
        const int64_t count = std::min(chunk, n - start);
        prepared.svd_right.narrow(0, start, count)
            .copy_(torch::matmul(network.input_basis().t(), svd.v.narrow(0, start, count)));
      }
    } else {
      prepared.svd_left = svd.u;
      prepared.svd_right = svd.v;
    }
  }
  if (!network.reduced()) {
    prepared.data = data;
  } else if (request.keep_jacobian) {
    prepared.data.jacobian = data.jacobian;
    prepared.data.svd_u = data.svd_u;
    prepared.data.svd_sigma = data.svd_sigma;
    prepared.data.svd_v = data.svd_v;
  }
  return prepared;
}

}  // namespace dino::training
