#include "models/architectures/training_inputs.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace dino::models {
namespace {

constexpr int kFormat = 1;

std::vector<double> ToVector(const torch::Tensor& t) {
  torch::Tensor flat = t.to(torch::kFloat64).contiguous().flatten();
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

void Fail(const std::string& why) { throw std::invalid_argument("training_inputs.json: " + why); }

double FiniteNumber(const nlohmann::json& json, const char* field) {
  if (!json.contains(field) || !json[field].is_number()) Fail(std::string(field) + " is missing");
  const double value = json[field].get<double>();
  if (!std::isfinite(value)) Fail(std::string(field) + " is not finite");
  return value;
}

// A float64 tensor of `shape` from nested JSON arrays.
torch::Tensor TensorField(const nlohmann::json& json, const char* field,
                          const std::vector<int64_t>& shape) {
  if (!json.contains(field) || !json[field].is_array()) Fail(std::string(field) + " is missing");
  std::vector<double> values;
  const nlohmann::json& value = json[field];
  auto bad_shape = [&] {
    std::string expected;
    for (int64_t n : shape) expected += (expected.empty() ? "" : ", ") + std::to_string(n);
    Fail(std::string(field) + " must have shape [" + expected + "]");
  };
  if (shape.size() == 1) {
    if (static_cast<int64_t>(value.size()) != shape[0]) bad_shape();
    for (const auto& x : value) {
      if (!x.is_number()) bad_shape();
      values.push_back(x.get<double>());
    }
  } else {
    if (static_cast<int64_t>(value.size()) != shape[0]) bad_shape();
    for (const auto& row : value) {
      if (!row.is_array() || static_cast<int64_t>(row.size()) != shape[1]) bad_shape();
      for (const auto& x : row) {
        if (!x.is_number()) bad_shape();
        values.push_back(x.get<double>());
      }
    }
  }
  torch::Tensor t = torch::tensor(values, torch::kFloat64).view(shape);
  if (!torch::isfinite(t).all().item<bool>()) Fail(std::string(field) + " is not finite");
  return t;
}

// ρ = ‖m − VVᵀm‖/‖m‖ from ‖m‖² and ‖z‖² = ‖VVᵀm‖² (V orthonormal); 0 for m = 0. Rounding
// can make ‖m‖² − ‖z‖² slightly negative.
double ResidualRatio(double m_norm_sq, double z_norm_sq) {
  return m_norm_sq > 0 ? std::sqrt(std::max(0.0, m_norm_sq - z_norm_sq) / m_norm_sq) : 0.0;
}

// ρ of every row, m [N, d_M] and z [N, r_M] in float64.
torch::Tensor ResidualRatios(const torch::Tensor& m, const torch::Tensor& z) {
  const torch::Tensor m_norm_sq = m.square().sum(1);
  const torch::Tensor z_norm_sq = z.square().sum(1);
  return torch::where(m_norm_sq > 0,
                      ((m_norm_sq - z_norm_sq).clamp_min(0) / m_norm_sq.clamp_min(1e-300)).sqrt(),
                      torch::zeros_like(m_norm_sq));
}

}  // namespace

double UpperQuantile(const torch::Tensor& values, double q) {
  torch::Tensor sorted = std::get<0>(values.to(torch::kFloat64).flatten().sort());
  const int64_t n = sorted.numel();
  if (n == 0) throw std::invalid_argument("a quantile of no values");
  const auto rank = static_cast<int64_t>(std::ceil(q * static_cast<double>(n - 1)));
  return sorted[std::clamp<int64_t>(rank, 0, n - 1)].item<double>();
}

TrainingInputSummary TrainingInputSummary::Fit(const torch::Tensor& input_basis,
                                               const torch::Tensor& m) {
  if (input_basis.dim() != 2 || m.dim() != 2 || m.size(1) != input_basis.size(0)) {
    throw std::invalid_argument("training inputs m must be [N, d_M] with d_M = " +
                                std::to_string(input_basis.size(0)) + " rows of the input basis");
  }
  const int64_t n = m.size(0), r = input_basis.size(1);
  if (n <= r + 2) {
    throw std::invalid_argument("summarising training inputs needs more than r_M + 2 = " +
                                std::to_string(r + 2) + " samples, got " + std::to_string(n));
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor x = m.to(torch::kFloat64);
  const torch::Tensor z = torch::mm(x, input_basis.to(torch::kFloat64));
  TrainingInputSummary summary;
  summary.samples = n;
  summary.mean = z.mean(0);
  const torch::Tensor centered = z - summary.mean;
  // Σ = QΛQᵀ, W = Λ^{-1/2}Qᵀ. A direction the training z's do not vary along (a basis column
  // orthogonal to every training input) gets a tiny variance floor instead of a division by
  // zero, so that any input that moves along it is far out of distribution.
  const torch::Tensor covariance = torch::mm(centered.t(), centered) / static_cast<double>(n - 1);
  auto [eigenvalues, eigenvectors] = torch::linalg_eigh(covariance);
  const double floor =
      1e-12 * std::max(eigenvalues.max().item<double>(), std::numeric_limits<double>::min());
  summary.whitening = (eigenvectors * eigenvalues.clamp_min(floor).rsqrt()).t().contiguous();

  // Leave-one-out distances in closed form: with the scatter S = (N − 1)Σ and
  // h_i = e_iᵀS⁻¹e_i for e_i = z_i − μ, removing sample i gives S₍ᵢ₎ = S − c·e_ieᵢᵀ with
  // c = N/(N − 1), z_i − μ₍ᵢ₎ = c·e_i and (Sherman–Morrison)
  //     D₍ᵢ₎² = (N − 2)·c²·h_i / (1 − c·h_i).
  const double nd = static_cast<double>(n), c = nd / (nd - 1.0);
  const torch::Tensor h = torch::mm(centered, summary.whitening.t()).square().sum(1) / (nd - 1.0);
  const torch::Tensor denominator = 1.0 - c * h;
  const torch::Tensor loo_distance =
      torch::where(denominator > 0, ((nd - 2.0) * c * c * h / denominator.clamp_min(1e-300)).sqrt(),
                   torch::full_like(h, std::numeric_limits<double>::infinity()));
  summary.distance_scale = UpperQuantile(loo_distance, kQuantile);

  const torch::Tensor residual = ResidualRatios(x, z);
  summary.residual_mean = residual.mean().item<double>();
  const double excess = UpperQuantile(residual, kQuantile) - summary.residual_mean;
  summary.residual_scale = excess > 1e-12 ? excess : 0.0;

  summary.threshold = UpperQuantile(
      torch::maximum(loo_distance / summary.distance_scale,
                     summary.residual_scale > 0
                         ? (residual - summary.residual_mean) / summary.residual_scale
                         : torch::full_like(residual, -std::numeric_limits<double>::infinity())),
      kQuantile);
  summary.CacheForScoring();
  return summary;
}

void TrainingInputSummary::CacheForScoring() {
  mean_values_ = ToVector(mean);
  whitening_columns_ = ToVector(whitening.t());
}

namespace {

// s(m) of one input: m [d], z [r].
template <typename T>
double ScoreRow(const T* m, int64_t d, const T* z, const std::vector<double>& mean,
                const std::vector<double>& whitening_columns, std::vector<double>& u,
                const TrainingInputSummary& s) {
  const auto r = static_cast<int64_t>(mean.size());
  // u = W(z − μ) as a sum of W's columns (contiguous in whitening_columns), which the
  // compiler vectorises, where a row-by-row dot product would be a serial reduction.
  std::fill(u.begin(), u.end(), 0.0);
  double z_norm_sq = 0.0;
  for (int64_t j = 0; j < r; ++j) {
    const double zj = static_cast<double>(z[j]);
    z_norm_sq += zj * zj;
    const double deviation = zj - mean[j];
    const double* column = whitening_columns.data() + j * r;
    for (int64_t i = 0; i < r; ++i) u[i] += deviation * column[i];
  }
  double distance_sq = 0.0;
  for (int64_t i = 0; i < r; ++i) distance_sq += u[i] * u[i];
  double score = std::sqrt(distance_sq) / s.distance_scale;
  if (s.residual_scale > 0) {
    // ‖m‖² with independent partial sums, so that the additions pipeline.
    constexpr int kLanes = 8;
    double partial[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= d; k += kLanes) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const double x = static_cast<double>(m[k + lane]);
        partial[lane] += x * x;
      }
    }
    double m_norm_sq = 0.0;
    for (; k < d; ++k) m_norm_sq += static_cast<double>(m[k]) * static_cast<double>(m[k]);
    for (double p : partial) m_norm_sq += p;
    score =
        std::max(score, (ResidualRatio(m_norm_sq, z_norm_sq) - s.residual_mean) / s.residual_scale);
  }
  return score / s.threshold;
}

}  // namespace

std::vector<double> TrainingInputSummary::Score(const torch::Tensor& m,
                                                const torch::Tensor& z) const {
  const int64_t r = input_rank();
  if (m.dim() != 2 || z.dim() != 2 || z.size(0) != m.size(0) || z.size(1) != r ||
      m.scalar_type() != z.scalar_type() || !m.is_contiguous() || !z.is_contiguous() ||
      static_cast<int64_t>(mean_values_.size()) != r) {
    throw std::invalid_argument("trust score: m [P, d_M] and z [P, r_M = " + std::to_string(r) +
                                "] must be contiguous, of one floating dtype");
  }
  const int64_t points = m.size(0), d = m.size(1);
  std::vector<double> scores(points), u(r);
  for (int64_t p = 0; p < points; ++p) {
    if (m.scalar_type() == torch::kFloat64) {
      scores[p] = ScoreRow(m.data_ptr<double>() + p * d, d, z.data_ptr<double>() + p * r,
                           mean_values_, whitening_columns_, u, *this);
    } else if (m.scalar_type() == torch::kFloat32) {
      scores[p] = ScoreRow(m.data_ptr<float>() + p * d, d, z.data_ptr<float>() + p * r,
                           mean_values_, whitening_columns_, u, *this);
    } else {
      throw std::invalid_argument("trust score: m must be float32 or float64");
    }
  }
  return scores;
}

nlohmann::json TrainingInputSummary::ToJson() const {
  const int64_t r = input_rank();
  const std::vector<double> w = ToVector(whitening);
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t i = 0; i < r; ++i) {
    rows.push_back(std::vector<double>(w.begin() + i * r, w.begin() + (i + 1) * r));
  }
  return {{"format", kFormat},
          {"score",
           "max(D / distance_scale, (rho - residual_mean) / residual_scale) / threshold, "
           "D = |whitening (V^T m - mean)|, rho = |m - V V^T m| / |m|; out of distribution "
           "when above 1 (models/architectures/training_inputs.h)"},
          {"quantile", kQuantile},
          {"samples", samples},
          {"input_rank", r},
          {"distance_scale", distance_scale},
          {"residual_mean", residual_mean},
          {"residual_scale", residual_scale},
          {"threshold", threshold},
          {"mean", ToVector(mean)},
          {"whitening", rows}};
}

TrainingInputSummary TrainingInputSummary::FromJson(const nlohmann::json& json,
                                                    int64_t input_rank) {
  if (!json.is_object()) Fail("not a JSON object");
  if (!json.contains("format") || json["format"] != kFormat) {
    Fail("format must be " + std::to_string(kFormat));
  }
  if (!json.contains("input_rank") || json["input_rank"] != input_rank) {
    Fail("input_rank must be the model's r_M = " + std::to_string(input_rank));
  }
  TrainingInputSummary summary;
  if (!json.contains("samples") || !json["samples"].is_number_integer()) Fail("samples is missing");
  summary.samples = json["samples"].get<int64_t>();
  summary.mean = TensorField(json, "mean", {input_rank});
  summary.whitening = TensorField(json, "whitening", {input_rank, input_rank});
  summary.distance_scale = FiniteNumber(json, "distance_scale");
  summary.residual_mean = FiniteNumber(json, "residual_mean");
  summary.residual_scale = FiniteNumber(json, "residual_scale");
  summary.threshold = FiniteNumber(json, "threshold");
  if (summary.distance_scale <= 0) Fail("distance_scale must be positive");
  if (summary.residual_scale < 0) Fail("residual_scale must not be negative");
  if (summary.threshold <= 0) Fail("threshold must be positive");
  summary.CacheForScoring();
  return summary;
}

}  // namespace dino::models
