#include "models/training/losses.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <tuple>

namespace dino::training {
namespace {

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

// Squared Frobenius norms over the two trailing dimensions: [.., a, b] → [..].
torch::Tensor SquaredNorm2(const torch::Tensor& t) { return t.square().sum({-2, -1}); }

// Column selection: t [B, d, r] → [B, d, k] with the per-sample columns `subsets` [B, k].
torch::Tensor GatherColumns(const torch::Tensor& t, const torch::Tensor& subsets) {
  return t.gather(2, subsets.unsqueeze(1).expand({t.size(0), t.size(1), subsets.size(1)}));
}

// Row selection: t [B, r, d] → [B, k, d] with the per-sample rows `subsets` [B, k].
torch::Tensor GatherRows(const torch::Tensor& t, const torch::Tensor& subsets) {
  return t.gather(1, subsets.unsqueeze(2).expand({t.size(0), subsets.size(1), t.size(2)}));
}

}  // namespace

const char* JacobianLossName(JacobianLoss loss) {
  switch (loss) {
    case JacobianLoss::kNone:
      return "l2";
    case JacobianLoss::kFullH1:
      return "h1";
    case JacobianLoss::kReducedH1:
      return "reduced_h1";
    case JacobianLoss::kReducedH1Subsampled:
      return "reduced_h1_ms";
    case JacobianLoss::kSketchedH1:
      return "sketched_h1";
  }
  return "unknown";
}

JacobianLoss ParseJacobianLoss(const std::string& name) {
  for (JacobianLoss loss : {JacobianLoss::kNone, JacobianLoss::kFullH1, JacobianLoss::kReducedH1,
                            JacobianLoss::kReducedH1Subsampled, JacobianLoss::kSketchedH1}) {
    if (name == JacobianLossName(loss)) return loss;
  }
  Fail("unknown loss '" + name + "'; use l2, h1, reduced_h1, reduced_h1_ms or sketched_h1");
}

void LossConfig::Validate() const {
  if (!(l2_weight >= 0.0) || !(h1_weight >= 0.0) || !std::isfinite(l2_weight) ||
      !std::isfinite(h1_weight)) {
    Fail("loss weights must be finite and non-negative");
  }
  const double effective = jacobian_loss == JacobianLoss::kNone ? l2_weight : l2_weight + h1_weight;
  if (effective == 0.0) Fail("the loss weights are all zero: nothing to train");
  if (svd_rank < 0) Fail("svd_rank must be >= 0 (0: all the data has)");
  if (subsample_size < 1) Fail("subsample_size must be >= 1");
  if (sketch_rank < 1) Fail("sketch_rank must be >= 1");
}

nlohmann::json LossConfig::ToJson() const {
  nlohmann::json json = {
      {"name", JacobianLossName(jacobian_loss)}, {"relative", true}, {"l2_weight", l2_weight}};
  if (jacobian_loss != JacobianLoss::kNone) json["h1_weight"] = h1_weight;
  if (jacobian_loss == JacobianLoss::kReducedH1 ||
      jacobian_loss == JacobianLoss::kReducedH1Subsampled) {
    json["svd_rank"] = svd_rank;
  }
  if (jacobian_loss == JacobianLoss::kReducedH1Subsampled) {
    json["subsample_size"] = subsample_size;
  }
  if (jacobian_loss == JacobianLoss::kSketchedH1) json["sketch_rank"] = sketch_rank;
  return json;
}

nlohmann::json LossValues::ToJson() const {
  return {{"total", total}, {"l2", l2}, {"jacobian", jacobian}};
}

torch::Tensor DrawSubsets(int64_t count, int64_t r, int64_t k, at::Generator& generator) {
  if (k < 1 || k > r) {
    Fail("cannot draw " + std::to_string(k) + " of " + std::to_string(r) + " indices");
  }
  // The ranks of i.i.d. uniforms form a uniformly random permutation; its first k entries are
  // a uniformly random k-subset.
  torch::Tensor keys = torch::rand({count, r}, generator, torch::kFloat64);
  return keys.argsort(/*dim=*/1, /*descending=*/false).narrow(1, 0, k).contiguous();
}

torch::Tensor SubsampledSquaredNorm(const torch::Tensor& e, const torch::Tensor& subsets) {
  return SquaredNorm2(GatherColumns(GatherRows(e, subsets), subsets));
}

torch::Tensor SubsampledSquaredNormExpectation(const torch::Tensor& e, int64_t k) {
  const int64_t r = e.size(-1);
  const double kd = static_cast<double>(k), rd = static_cast<double>(r);
  torch::Tensor diagonal = torch::diagonal(e, 0, -2, -1).square().sum(-1);
  torch::Tensor off_diagonal = SquaredNorm2(e) - diagonal;
  const double off_weight = r > 1 ? kd * (kd - 1.0) / (rd * (rd - 1.0)) : 0.0;
  return (kd / rd) * diagonal + off_weight * off_diagonal;
}

torch::Tensor DrawOrthonormalSketch(int64_t dim, int64_t rank, at::Generator& generator,
                                    const torch::TensorOptions& options) {
  if (rank < 1) Fail("sketch rank must be >= 1");
  if (rank >= dim) return torch::eye(dim, options);
  torch::Tensor gaussian = torch::randn({dim, rank}, generator, torch::kFloat64);
  return std::get<0>(torch::linalg_qr(gaussian)).to(options);
}

double SketchScale(int64_t output_dim, int64_t output_sketch, int64_t input_dim,
                   int64_t input_sketch) {
  return (static_cast<double>(output_dim) / static_cast<double>(output_sketch)) *
         (static_cast<double>(input_dim) / static_cast<double>(input_sketch));
}

torch::Tensor SketchedSquaredNorm(const torch::Tensor& a, const torch::Tensor& q_left,
                                  const torch::Tensor& q_right) {
  const double scale =
      SketchScale(q_left.size(-2), q_left.size(-1), q_right.size(-2), q_right.size(-1));
  return scale * SquaredNorm2(torch::matmul(q_left.transpose(-2, -1), torch::matmul(a, q_right)));
}

Loss::Loss(const models::Network& network, const Dataset& data, const LossConfig& config)
    : network_(network), config_(config) {
  config_.Validate();
  const JacobianLoss loss = config_.jacobian_loss;
  const JacobianForm form = data.jacobian_form();
  const std::string name = std::string("the ") + JacobianLossName(loss) + " loss";
  if (loss != JacobianLoss::kNone && form == JacobianForm::kNone) {
    Fail(name + " needs Jacobian data; the dataset has outputs only");
  }
  if (loss != JacobianLoss::kNone && form == JacobianForm::kReduced) {
    if (!network_.reduced()) {
      Fail(name +
           " of a generic model needs full or truncated-SVD Jacobians; the dataset's "
           "reduced Jacobians are in a DIPNet's bases, which a generic model has none of");
    }
    if (loss != JacobianLoss::kFullH1) {
      Fail(name +
           " needs full or truncated-SVD Jacobians: the reduced Jacobian UᵀJV in the "
           "model's bases determines neither the per-sample SVD of J nor sketches of "
           "J; train on it with the h1 loss");
    }
  }
  PreparationRequest request;
  request.jacobian_norms = loss == JacobianLoss::kFullH1 || loss == JacobianLoss::kSketchedH1;
  request.jacobian_projection = loss == JacobianLoss::kFullH1;
  request.svd = loss == JacobianLoss::kReducedH1 || loss == JacobianLoss::kReducedH1Subsampled;
  request.svd_rank = config_.svd_rank;
  request.keep_jacobian = loss == JacobianLoss::kSketchedH1;
  prepared_ = Prepare(network_, data, request);
  if (loss == JacobianLoss::kReducedH1Subsampled && config_.subsample_size > prepared_.rank) {
    Fail("subsample_size " + std::to_string(config_.subsample_size) + " exceeds the SVD rank " +
         std::to_string(prepared_.rank));
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0);
  Resample(generator);
}

void Loss::Resample(at::Generator& generator) {
  const torch::TensorOptions options = torch::dtype(network_.dtype()).device(network_.device());
  if (config_.jacobian_loss == JacobianLoss::kReducedH1Subsampled) {
    subsets_ = DrawSubsets(prepared_.size, prepared_.rank, config_.subsample_size, generator)
                   .to(network_.device());
  }
  if (config_.jacobian_loss == JacobianLoss::kSketchedH1) {
    const Dataset& data = prepared_.data;
    const int64_t output_dim =
        network_.reduced() ? network_.output_basis().size(0) : data.q.size(1);
    const int64_t input_dim = network_.reduced() ? network_.input_basis().size(0) : data.m.size(1);
    sketch_left_ = DrawOrthonormalSketch(output_dim, config_.sketch_rank, generator, options);
    sketch_right_ = DrawOrthonormalSketch(input_dim, config_.sketch_rank, generator, options);
    sketch_scale_ = SketchScale(output_dim, sketch_left_.size(1), input_dim, sketch_right_.size(1));
    if (network_.reduced()) {
      sketch_left_reduced_ = torch::mm(sketch_left_.t(), network_.output_basis());
      sketch_right_reduced_ = torch::mm(network_.input_basis().t(), sketch_right_);
    }
    sketched_data_ = SketchData();
  }
}

torch::Tensor Loss::SketchData() const {
  torch::NoGradGuard no_grad;
  const Dataset& data = prepared_.data;
  if (data.jacobian.defined()) {
    const int64_t n = prepared_.size, chunk = 64;
    torch::Tensor sketched =
        torch::empty({n, sketch_left_.size(1), sketch_right_.size(1)}, sketch_left_.options());
    for (int64_t start = 0; start < n; start += chunk) {
      const int64_t count = std::min(chunk, n - start);
      sketched.narrow(0, start, count)
          .copy_(
              torch::matmul(sketch_left_.t(),
                            torch::matmul(data.jacobian.narrow(0, start, count), sketch_right_)));
    }
    return sketched;
  }
  torch::Tensor left = torch::matmul(sketch_left_.t(), data.svd_u);                // [n, s_Q, r]
  torch::Tensor right = torch::matmul(data.svd_v.transpose(1, 2), sketch_right_);  // [n, r, s_M]
  return torch::matmul(left * data.svd_sigma.unsqueeze(1), right);
}

LossTerms Loss::Evaluate(const torch::Tensor& indices, bool create_graph) const {
  const torch::Tensor index = indices.to(network_.device(), torch::kLong);
  const JacobianLoss loss = config_.jacobian_loss;
  const PreparedData& p = prepared_;
  const bool want_jacobian = loss != JacobianLoss::kNone;
  std::optional<torch::NoGradGuard> no_grad;
  if (!create_graph) no_grad.emplace();
  // Subsampled loss: the drawn subsets of these samples and the factor r/k.
  torch::Tensor subsets;
  if (loss == JacobianLoss::kReducedH1Subsampled) subsets = subsets_.index_select(0, index);
  const double subsample_factor =
      static_cast<double>(prepared_.rank) / static_cast<double>(config_.subsample_size);

  LossTerms terms;
  torch::Tensor misfit;  // The reduced or sketched Jacobian misfit [B, a, b] where one applies.
  if (network_.reduced()) {
    torch::Tensor z = p.z.index_select(0, index);
    torch::Tensor phi, j_phi;
    if (want_jacobian) {
      std::tie(phi, j_phi) = models::ReducedValueAndJacobian(network_, z, create_graph);
    } else {
      phi = network_.ReducedForward(z);
    }
    terms.l2 =
        (p.l2_perp.index_select(0, index) + (p.y.index_select(0, index) - phi).square().sum(1)) /
        p.q_norm_sq.index_select(0, index);
    switch (loss) {
      case JacobianLoss::kNone:
        break;
      case JacobianLoss::kFullH1:
        terms.jacobian =
            (p.j_perp.index_select(0, index) + SquaredNorm2(p.k.index_select(0, index) - j_phi)) /
            p.j_norm_sq.index_select(0, index);
        break;
      case JacobianLoss::kReducedH1:
        misfit = torch::diag_embed(p.sigma.index_select(0, index)) -
                 torch::matmul(torch::matmul(p.svd_left.index_select(0, index), j_phi),
                               p.svd_right.index_select(0, index));
        break;
      case JacobianLoss::kReducedH1Subsampled: {
        torch::Tensor left = GatherRows(p.svd_left.index_select(0, index), subsets);
        torch::Tensor right = GatherColumns(p.svd_right.index_select(0, index), subsets);
        misfit = torch::diag_embed(p.sigma.index_select(0, index).gather(1, subsets)) -
                 torch::matmul(torch::matmul(left, j_phi), right);
        break;
      }
      case JacobianLoss::kSketchedH1:
        misfit = sketched_data_.index_select(0, index) -
                 torch::matmul(torch::matmul(sketch_left_reduced_, j_phi), sketch_right_reduced_);
        break;
    }
  } else {
    torch::Tensor m = p.data.m.index_select(0, index);
    torch::Tensor f, products;
    // The left factors W of the Jacobian products Wᵀ∇f each loss needs.
    torch::Tensor left;
    switch (loss) {
      case JacobianLoss::kNone:
        break;
      case JacobianLoss::kFullH1:
        left = torch::eye(p.data.q.size(1), p.data.q.options());
        break;
      case JacobianLoss::kReducedH1:
        left = p.svd_left.index_select(0, index);
        break;
      case JacobianLoss::kReducedH1Subsampled:
        left = GatherColumns(p.svd_left.index_select(0, index), subsets);
        break;
      case JacobianLoss::kSketchedH1:
        left = sketch_left_;
        break;
    }
    if (want_jacobian) {
      std::tie(f, products) = models::ValueAndLeftProducts(network_, m, left, create_graph);
    } else {
      f = network_.Forward(m);
    }
    terms.l2 =
        (p.data.q.index_select(0, index) - f).square().sum(1) / p.q_norm_sq.index_select(0, index);
    switch (loss) {
      case JacobianLoss::kNone:
        break;
      case JacobianLoss::kFullH1:
        terms.jacobian = SquaredNorm2(FullJacobianRows(p.data, index) - products) /
                         p.j_norm_sq.index_select(0, index);
        break;
      case JacobianLoss::kReducedH1:
        misfit = torch::diag_embed(p.sigma.index_select(0, index)) -
                 torch::matmul(products, p.svd_right.index_select(0, index));
        break;
      case JacobianLoss::kReducedH1Subsampled:
        misfit =
            torch::diag_embed(p.sigma.index_select(0, index).gather(1, subsets)) -
            torch::matmul(products, GatherColumns(p.svd_right.index_select(0, index), subsets));
        break;
      case JacobianLoss::kSketchedH1:
        misfit = sketched_data_.index_select(0, index) - torch::matmul(products, sketch_right_);
        break;
    }
  }
  switch (loss) {
    case JacobianLoss::kReducedH1:
      terms.jacobian = SquaredNorm2(misfit) / p.sigma_sq.index_select(0, index);
      break;
    case JacobianLoss::kReducedH1Subsampled:
      terms.jacobian = subsample_factor * SquaredNorm2(misfit) / p.sigma_sq.index_select(0, index);
      break;
    case JacobianLoss::kSketchedH1:
      terms.jacobian = sketch_scale_ * SquaredNorm2(misfit) / p.j_norm_sq.index_select(0, index);
      break;
    default:
      break;
  }
  torch::Tensor per_sample = config_.l2_weight * terms.l2;
  if (want_jacobian) per_sample = per_sample + config_.h1_weight * terms.jacobian;
  terms.total = per_sample.mean();
  return terms;
}

LossValues Loss::EvaluateAll(int64_t chunk) const {
  double l2_sum = 0.0, jacobian_sum = 0.0;
  const int64_t n = prepared_.size;
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t count = std::min(chunk, n - start);
    LossTerms terms = Evaluate(torch::arange(start, start + count, torch::kLong),
                               /*create_graph=*/false);
    l2_sum += terms.l2.sum().item<double>();
    if (terms.jacobian.defined()) jacobian_sum += terms.jacobian.sum().item<double>();
  }
  LossValues values;
  values.l2 = l2_sum / static_cast<double>(n);
  values.jacobian = jacobian_sum / static_cast<double>(n);
  values.total = config_.l2_weight * values.l2;
  if (config_.jacobian_loss != JacobianLoss::kNone)
    values.total += config_.h1_weight * values.jacobian;
  return values;
}

}  // namespace dino::training
