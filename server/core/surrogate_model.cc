#include "server/core/surrogate_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/architectures/architectures.h"
#include "models/architectures/model_file.h"
#include "models/architectures/training_inputs.h"

namespace dino::serving {
namespace {

namespace dm = dino::models;
using Layout = PreparedQuery::Layout;

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// Tolerance on ‖BᵀB − I‖_max for bases, by the precision they arrived in.
double OrthonormalityTolerance(torch::Dtype dtype) {
  return dtype == torch::kFloat64 ? 1e-6 : 1e-4;
}

// Whether every element is finite, by the exponent bits: all ones exactly for Inf and NaN,
// which is when adding one unit of the exponent's lowest bit carries into the sign bit. Only
// AND, ADD and OR on integers, which the compiler vectorizes even for baseline x86-64 (a
// 64-bit compare would not be), and no temporaries: checking a request of 4 million values
// costs a fraction of computing it.
template <typename Bits>
bool AllFiniteBits(const void* data, int64_t n, Bits exponent_mask) {
  const auto* bits = static_cast<const Bits*>(data);
  const Bits exponent_lsb = exponent_mask & (~exponent_mask + 1);
  const Bits sign = Bits{1} << (8 * sizeof(Bits) - 1);
  Bits carries = 0;
  for (int64_t i = 0; i < n; ++i) carries |= (bits[i] & exponent_mask) + exponent_lsb;
  return (carries & sign) == 0;
}

bool AllFinite(const torch::Tensor& t) {
  if (t.is_contiguous() && t.scalar_type() == torch::kFloat64) {
    return AllFiniteBits<uint64_t>(t.data_ptr(), t.numel(), 0x7FF0000000000000ULL);
  }
  if (t.is_contiguous() && t.scalar_type() == torch::kFloat32) {
    return AllFiniteBits<uint32_t>(t.data_ptr(), t.numel(), 0x7F800000U);
  }
  return torch::isfinite(t).all().item<bool>();
}

absl::Status CheckFinite(const torch::Tensor& t, const char* field) {
  if (AllFinite(t)) return absl::OkStatus();
  torch::Tensor where = torch::logical_not(torch::isfinite(t)).nonzero().select(0, 0);
  return absl::InvalidArgumentError(
      absl::StrCat(field, " contains a non-finite value (NaN or Inf) at index [",
                   absl::StrJoin(std::vector<int64_t>(where.data_ptr<int64_t>(),
                                                      where.data_ptr<int64_t>() + where.numel()),
                                 ", "),
                   "]"));
}

// Rows of the queries' tensors stacked into one, without a copy for a batch of one.
template <typename Get>
torch::Tensor Stack(const std::vector<const PreparedQuery*>& queries, Get get) {
  if (queries.size() == 1) return get(*queries[0]);
  std::vector<torch::Tensor> parts;
  parts.reserve(queries.size());
  for (const PreparedQuery* query : queries) parts.push_back(get(*query));
  return torch::cat(parts, 0);
}

// Answers the Evaluate queries of a batch (at `index` in it) with one forward pass of their
// stacked points.
void EvaluateTogether(const dm::Network& network,
                      const std::vector<const PreparedQuery*>& evaluations,
                      const std::vector<size_t>& index, std::vector<Answer>& answers) {
  if (evaluations.empty()) return;
  torch::NoGradGuard no_grad;
  torch::Tensor q =
      network.Forward(Stack(evaluations, [](const PreparedQuery& p) { return p.points; }));
  int64_t offset = 0;
  for (size_t j = 0; j < evaluations.size(); ++j) {
    const int64_t rows = evaluations[j]->points_count();
    answers[index[j]].values = q.narrow(0, offset, rows);
    offset += rows;
  }
}

// The trust signal of points [P, d_M] with reduced coordinates z [P, r_M].
TrustSignal TrustOf(const dm::TrainingInputSummary& summary, const torch::Tensor& points,
                    const torch::Tensor& z) {
  TrustSignal trust;
  trust.score = summary.Score(points, z.contiguous());
  trust.out_of_distribution.reserve(trust.score.size());
  for (double score : trust.score) {
    const bool out = dm::TrainingInputSummary::OutOfDistribution(score);
    trust.out_of_distribution.push_back(out);
    trust.flagged += out ? 1 : 0;
  }
  return trust;
}

// A query of `method` at the points `m`, for the one-query methods.
Query QueryAt(Method method, const torch::Tensor& m, bool want_q) {
  Query query;
  query.method = method;
  query.m = m;
  query.want_q = want_q;
  return query;
}

// ∂²⟨s_b, g(x_b)⟩/∂x_b² · v_b for every row b of x (rows are independent points), by double
// backward: the gradient ∇⟨s, g⟩ = J_gᵀs is built differentiably, and its reverse product with
// v is the Hessian's action, the Hessian of ⟨s, g⟩ being symmetric.
torch::Tensor SecondOrderAction(const std::function<torch::Tensor(const torch::Tensor&)>& g,
                                const torch::Tensor& x, const torch::Tensor& s,
                                const torch::Tensor& v) {
  torch::AutoGradMode grad_mode(true);
  torch::Tensor inputs = x.detach().contiguous().requires_grad_(true);
  torch::Tensor outputs = g(inputs);
  torch::Tensor gradient = dm::ReverseProduct(outputs, inputs, s, /*create_graph=*/true);
  return dm::ReverseProduct(gradient, inputs, v, /*create_graph=*/false).detach();
}

// The HessianVectorProduct queries of a batch, each with its position in the batch, as rows
// (point, cotangent, direction): a point with k directions is k rows.
struct HessianQueries {
  std::vector<const PreparedQuery*> queries;
  std::vector<size_t> index;
  // The queries' points [P, d_M], stacked in order, once each.
  torch::Tensor PointsOnce() const {
    return Stack(queries, [](const PreparedQuery& p) { return p.points; });
  }
  // Rows [P, ·] of a per-point tensor (such as PointsOnce() or a function of it), each
  // repeated once per direction of its point: the rows of this batch.
  torch::Tensor PerDirection(const torch::Tensor& per_point) const {
    std::vector<int64_t> repeats;
    for (const PreparedQuery* query : queries) {
      repeats.insert(repeats.end(), query->points_count(), query->vectors.size(1));
    }
    return per_point.repeat_interleave(torch::tensor(repeats, torch::kLong), 0);
  }
  torch::Tensor Points() const { return PerDirection(PointsOnce()); }
  torch::Tensor Cotangents() const {
    return PerDirection(Stack(queries, [](const PreparedQuery& p) { return p.cotangents; }));
  }
  torch::Tensor Directions() const {
    return Stack(queries, [](const PreparedQuery& p) { return p.vectors.flatten(0, 1); });
  }
  // Hands each query its rows of `actions` [rows, d_M], in its layout.
  void Scatter(const torch::Tensor& actions, std::vector<Answer>& answers) const {
    int64_t row = 0;
    for (size_t j = 0; j < queries.size(); ++j) {
      const int64_t points = queries[j]->points_count(), k = queries[j]->vectors.size(1);
      answers[index[j]].values =
          InLayout(actions.narrow(0, row, points * k).view({points, k, -1}), queries[j]->layout);
      row += points * k;
    }
  }
};

// ---------------------------------------------------------------------------------------
// f(m) = U φ(Vᵀm) + b.
class ReducedBasisModel final : public SurrogateModel {
 public:
  ReducedBasisModel(dm::Network network, ModelInfo info, ComputeLimits limits, PriorLookup prior,
                    std::optional<dm::TrainingInputSummary> training_inputs)
      : SurrogateModel(std::move(info), limits, std::move(prior)),
        network_(std::move(network)),
        training_inputs_(std::move(training_inputs)) {}

  absl::StatusOr<Bases> GetBases() const override {
    return Bases{network_.input_basis(), network_.output_basis(), network_.output_shift()};
  }

 protected:
  std::vector<Answer> ComputeBatch(absl::Span<const PreparedQuery* const> batch) const override {
    torch::NoGradGuard no_grad;
    const torch::Tensor& v = network_.input_basis();
    const torch::Tensor& u = network_.output_basis();
    std::vector<Answer> answers(batch.size());
    std::vector<const PreparedQuery*> evaluations, derivatives;
    std::vector<size_t> evaluation_index, derivative_index;
    HessianQueries hessians;
    std::vector<const PreparedQuery*> trusted_evaluations;
    std::vector<size_t> trusted_evaluation_index;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Method method = batch[i]->method;
      if (method == Method::kHessianVectorProduct) {
        hessians.queries.push_back(batch[i]);
        hessians.index.push_back(i);
        continue;
      }
      if (method == Method::kEvaluate && batch[i]->want_trust) {
        trusted_evaluations.push_back(batch[i]);
        trusted_evaluation_index.push_back(i);
        continue;
      }
      const bool evaluate = method == Method::kEvaluate;
      (evaluate ? evaluations : derivatives).push_back(batch[i]);
      (evaluate ? evaluation_index : derivative_index).push_back(i);
    }
    EvaluateTogether(network_, evaluations, evaluation_index, answers);
    if (!trusted_evaluations.empty()) {
      // forward(m) = φ(Vᵀm)Uᵀ + b in its parts (Network::Forward's own formula for the
      // project's DIPNets), so that the trust score reuses z.
      const torch::Tensor z = network_.ProjectInput(
          Stack(trusted_evaluations, [](const PreparedQuery& p) { return p.points; }));
      const torch::Tensor q =
          torch::addmm(network_.output_shift(), network_.ReducedForward(z), u.t());
      int64_t row = 0;
      for (size_t j = 0; j < trusted_evaluations.size(); ++j) {
        const int64_t rows = trusted_evaluations[j]->points_count();
        answers[trusted_evaluation_index[j]].values = q.narrow(0, row, rows);
        row += rows;
      }
      AttachTrust(trusted_evaluations, trusted_evaluation_index, z, answers);
    }
    if (!hessians.queries.empty()) {
      // ⟨s, f(m)⟩ = ⟨Uᵀs, φ(Vᵀm)⟩ + ⟨s, b⟩, so its Hessian is V ∇²_z⟨Uᵀs, φ(z)⟩ Vᵀ: the
      // double backward runs on the reduced network only, r_M inputs per point.
      // Each point projected once (its directions share it), then repeated in reduced space.
      const torch::Tensor point_z = network_.ProjectInput(hessians.PointsOnce());
      torch::Tensor z = hessians.PerDirection(point_z);
      torch::Tensor reduced_cotangents = torch::mm(hessians.Cotangents(), u);
      torch::Tensor reduced_directions = network_.ProjectInput(hessians.Directions());
      torch::Tensor reduced_actions =
          SecondOrderAction([this](const torch::Tensor& x) { return network_.ReducedForward(x); },
                            z, reduced_cotangents, reduced_directions);
      hessians.Scatter(torch::mm(reduced_actions, v.t()), answers);
      AttachTrust(hessians.queries, hessians.index, point_z, answers);
    }
    if (derivatives.empty()) return answers;

    // One projection of all points, one J_φ computation: [P, r_Q], [P, r_Q, r_M].
    const torch::Tensor points =
        Stack(derivatives, [](const PreparedQuery& p) { return p.points; });
    // The trust score needs z = mV: then the Jacobians start from it too, one projection.
    torch::Tensor z;
    auto [phi, jacobians] = dm::ReducedValueAndJacobianAtInputs(
        network_, points, AnyWantsTrust(derivatives) ? &z : nullptr);
    AttachTrust(derivatives, derivative_index, z, answers);
    // q = φ Uᵀ + b only where a query returns it.
    const bool any_q = std::any_of(derivatives.begin(), derivatives.end(), [](const auto* p) {
      return p->want_q || p->method == Method::kReducedJacobian;
    });
    torch::Tensor q_all =
        any_q ? torch::addmm(network_.output_shift(), phi, u.t()) : torch::Tensor();

    // The Jvp directions and Vjp cotangents of all queries, each projected once: Vᵀv, Uᵀw.
    std::vector<const PreparedQuery*> jvps, vjps;
    std::vector<size_t> jvp_index, vjp_index;  // Positions in `batch`.
    for (size_t j = 0; j < derivatives.size(); ++j) {
      const Method method = derivatives[j]->method;
      if (method == Method::kJvp) {
        jvps.push_back(derivatives[j]);
        jvp_index.push_back(derivative_index[j]);
      } else if (method == Method::kVjp) {
        vjps.push_back(derivatives[j]);
        vjp_index.push_back(derivative_index[j]);
      }
    }
    auto flat_vectors = [](const PreparedQuery& p) { return p.vectors.flatten(0, 1); };
    torch::Tensor reduced_directions =
        jvps.empty() ? torch::Tensor() : network_.ProjectInput(Stack(jvps, flat_vectors));
    torch::Tensor reduced_cotangents =
        vjps.empty() ? torch::Tensor() : torch::mm(Stack(vjps, flat_vectors), u);
    std::vector<torch::Tensor> jvp_parts, vjp_parts;  // [P_i·k_i, r_Q] and [P_i·k_i, r_M]
    int64_t point = 0, direction_row = 0, cotangent_row = 0;
    for (size_t j = 0; j < derivatives.size(); ++j) {
      const PreparedQuery& query = *derivatives[j];
      Answer& answer = answers[derivative_index[j]];
      const int64_t points = query.points_count();
      torch::Tensor jacobian = jacobians.narrow(0, point, points);  // [P_i, r_Q, r_M]
      torch::Tensor q = any_q ? q_all.narrow(0, point, points) : torch::Tensor();
      point += points;
      switch (query.method) {
        case Method::kJvp: {
          const int64_t rows = points * query.vectors.size(1);
          // (Vᵀv) J_φᵀ per point: [P_i, k_i, r_M] × [P_i, r_M, r_Q].
          jvp_parts.push_back(torch::bmm(reduced_directions.narrow(0, direction_row, rows)
                                             .view({points, query.vectors.size(1), -1}),
                                         jacobian.transpose(1, 2))
                                  .flatten(0, 1));
          direction_row += rows;
          if (query.want_q) answer.q = QInLayout(q, query.layout);
          break;
        }
        case Method::kVjp: {
          const int64_t rows = points * query.vectors.size(1);
          // (Uᵀw) J_φ per point: [P_i, k_i, r_Q] × [P_i, r_Q, r_M].
          vjp_parts.push_back(torch::bmm(reduced_cotangents.narrow(0, cotangent_row, rows)
                                             .view({points, query.vectors.size(1), -1}),
                                         jacobian)
                                  .flatten(0, 1));
          cotangent_row += rows;
          if (query.want_q) answer.q = QInLayout(q, query.layout);
          break;
        }
        case Method::kReducedJacobian:
          answer.q = q;
          answer.values =
              query.output_basis.defined()
                  ? torch::matmul(torch::matmul(torch::mm(query.output_basis.t(), u), jacobian),
                                  torch::mm(v.t(), query.input_basis))
                  : jacobian;
          break;
        case Method::kJacobian:
          answer.values = torch::mm(torch::mm(u, jacobian[0]), v.t());
          if (query.want_q) answer.q = q[0];
          break;
        case Method::kEvaluate:
        case Method::kHessianVectorProduct:
          break;
      }
    }
    // Back to full space, once for all queries: U(J_φVᵀv) and V(J_φᵀUᵀw).
    auto scatter = [&answers](const std::vector<const PreparedQuery*>& queries,
                              const std::vector<size_t>& index,
                              const std::vector<torch::Tensor>& parts, const torch::Tensor& basis) {
      if (queries.empty()) return;
      torch::Tensor full =
          torch::mm(parts.size() == 1 ? parts[0] : torch::cat(parts, 0), basis.t());
      int64_t row = 0;
      for (size_t j = 0; j < queries.size(); ++j) {
        const int64_t points = queries[j]->points_count(), k = queries[j]->vectors.size(1);
        answers[index[j]].values =
            InLayout(full.narrow(0, row, points * k).view({points, k, -1}), queries[j]->layout);
        row += points * k;
      }
    };
    scatter(jvps, jvp_index, jvp_parts, u);
    scatter(vjps, vjp_index, vjp_parts, v);
    return answers;
  }

 private:
  static bool AnyWantsTrust(const std::vector<const PreparedQuery*>& queries) {
    return std::any_of(queries.begin(), queries.end(), [](const auto* p) { return p->want_trust; });
  }
  // The trust signal of the queries that ask for it (Prepare admits them only when the model
  // has a training-input summary), from the reduced coordinates z [P, r_M] of all `queries`'
  // points stacked in order (undefined when none asks).
  void AttachTrust(const std::vector<const PreparedQuery*>& queries,
                   const std::vector<size_t>& index, const torch::Tensor& z,
                   std::vector<Answer>& answers) const {
    int64_t row = 0;
    for (size_t j = 0; j < queries.size(); ++j) {
      const int64_t points = queries[j]->points_count();
      if (queries[j]->want_trust) {
        answers[index[j]].trust =
            TrustOf(*training_inputs_, queries[j]->points, z.narrow(0, row, points));
      }
      row += points;
    }
  }

  const dm::Network network_;
  const std::optional<dm::TrainingInputSummary> training_inputs_;
};

// ---------------------------------------------------------------------------------------
// Any model that follows the contract: autograd on the full input.
class GenericModel final : public SurrogateModel {
 public:
  GenericModel(dm::Network network, ModelInfo info, ComputeLimits limits, PriorLookup prior)
      : SurrogateModel(std::move(info), limits, std::move(prior)), network_(std::move(network)) {}

  absl::StatusOr<Bases> GetBases() const override {
    return absl::FailedPreconditionError("this model has no reduced bases");
  }

 protected:
  // Reverse rows (point copy, seed): Vjp cotangents, ReducedJacobian seeds U_c, Jacobian and
  // many-direction Jvp seeds I; forward-mode rows (point copy, direction) for few-direction
  // Jvp. Each kind is one pass for the whole batch.
  struct Rows {
    std::vector<torch::Tensor> points, seeds;
    int64_t count = 0;
    int64_t Add(const torch::Tensor& copies, const torch::Tensor& seed_rows) {
      points.push_back(copies);
      seeds.push_back(seed_rows);
      const int64_t first = count;
      count += copies.size(0);
      return first;
    }
  };

  std::vector<Answer> ComputeBatch(absl::Span<const PreparedQuery* const> batch) const override {
    const int64_t d_q = info_.output_dim;
    const auto options = torch::dtype(info_.dtype);
    std::vector<Answer> answers(batch.size());
    std::vector<int64_t> first_row(batch.size(), -1);
    Rows reverse, forward_mode;
    std::vector<const PreparedQuery*> evaluations;
    std::vector<size_t> evaluation_index;
    HessianQueries hessians;
    for (size_t i = 0; i < batch.size(); ++i) {
      const PreparedQuery& query = *batch[i];
      const int64_t points = query.points_count();
      switch (query.method) {
        case Method::kEvaluate:
          evaluations.push_back(&query);
          evaluation_index.push_back(i);
          break;
        case Method::kHessianVectorProduct:
          hessians.queries.push_back(&query);
          hessians.index.push_back(i);
          break;
        case Method::kVjp: {
          const int64_t k = query.vectors.size(1);
          first_row[i] =
              reverse.Add(query.points.repeat_interleave(k, 0), query.vectors.flatten(0, 1));
          break;
        }
        case Method::kReducedJacobian: {
          const int64_t k = query.output_basis.size(1);
          first_row[i] = reverse.Add(query.points.repeat_interleave(k, 0),
                                     query.output_basis.t().repeat({points, 1}));
          break;
        }
        case Method::kJacobian:
          first_row[i] =
              reverse.Add(query.points.expand({d_q, info_.input_dim}), torch::eye(d_q, options));
          break;
        case Method::kJvp: {
          const int64_t k = query.vectors.size(1);
          if (k >= d_q) {  // Cheaper from the Jacobian rows at each point.
            first_row[i] = reverse.Add(query.points.repeat_interleave(d_q, 0),
                                       torch::eye(d_q, options).repeat({points, 1}));
          } else {
            first_row[i] =
                forward_mode.Add(query.points.repeat_interleave(k, 0), query.vectors.flatten(0, 1));
          }
          break;
        }
      }
    }
    EvaluateTogether(network_, evaluations, evaluation_index, answers);
    if (!hessians.queries.empty()) {
      hessians.Scatter(
          SecondOrderAction([this](const torch::Tensor& x) { return network_.Forward(x); },
                            hessians.Points(), hessians.Cotangents(), hessians.Directions()),
          answers);
    }
    torch::Tensor reverse_values, reverse_rows, forward_values, forward_rows;
    if (reverse.count > 0) {
      torch::AutoGradMode grad_mode(true);
      torch::Tensor inputs = Cat(reverse.points).detach().contiguous().requires_grad_(true);
      torch::Tensor outputs = network_.Forward(inputs);
      reverse_rows = dm::ReverseProduct(outputs, inputs, Cat(reverse.seeds), false);
      reverse_values = outputs.detach();
    }
    if (forward_mode.count > 0) {
      // Double backward: g(u) = J(m)ᵀu is linear in u, so ∂⟨g(u), v⟩/∂u = J(m) v.
      torch::AutoGradMode grad_mode(true);
      torch::Tensor inputs = Cat(forward_mode.points).detach().contiguous().requires_grad_(true);
      torch::Tensor outputs = network_.Forward(inputs);
      torch::Tensor cotangent = torch::zeros_like(outputs).requires_grad_(true);
      torch::Tensor g = dm::ReverseProduct(outputs, inputs, cotangent, /*create_graph=*/true);
      forward_rows = dm::ReverseProduct(g, cotangent, Cat(forward_mode.seeds), false).detach();
      forward_values = outputs.detach();
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      const PreparedQuery& query = *batch[i];
      Answer& answer = answers[i];
      const int64_t points = query.points_count();
      switch (query.method) {
        case Method::kEvaluate:
        case Method::kHessianVectorProduct:
          break;
        case Method::kVjp: {
          const int64_t k = query.vectors.size(1);
          answer.values = InLayout(
              reverse_rows.narrow(0, first_row[i], points * k).view({points, k, -1}), query.layout);
          if (query.want_q)
            answer.q =
                QInLayout(PointValues(reverse_values, i, k, points, first_row), query.layout);
          break;
        }
        case Method::kReducedJacobian: {
          const int64_t k = query.output_basis.size(1);
          answer.values =
              torch::matmul(reverse_rows.narrow(0, first_row[i], points * k).view({points, k, -1}),
                            query.input_basis);
          answer.q = PointValues(reverse_values, i, k, points, first_row);
          break;
        }
        case Method::kJacobian:
          answer.values = reverse_rows.narrow(0, first_row[i], d_q);
          if (query.want_q) answer.q = reverse_values[first_row[i]];
          break;
        case Method::kJvp: {
          const int64_t k = query.vectors.size(1);
          torch::Tensor values, q;
          if (k >= d_q) {
            torch::Tensor jacobians =
                reverse_rows.narrow(0, first_row[i], points * d_q).view({points, d_q, -1});
            values = torch::bmm(query.vectors, jacobians.transpose(1, 2));
            q = PointValues(reverse_values, i, d_q, points, first_row);
          } else {
            values = forward_rows.narrow(0, first_row[i], points * k).view({points, k, d_q});
            q = PointValues(forward_values, i, k, points, first_row);
          }
          answer.values = InLayout(values, query.layout);
          if (query.want_q) answer.q = QInLayout(q, query.layout);
          break;
        }
      }
    }
    return answers;
  }

 private:
  static torch::Tensor Cat(const std::vector<torch::Tensor>& parts) {
    return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
  }
  // f at each of a query's points: the first of its `copies` rows per point.
  static torch::Tensor PointValues(const torch::Tensor& values, size_t query, int64_t copies,
                                   int64_t points, const std::vector<int64_t>& first_row) {
    return values.narrow(0, first_row[query], points * copies)
        .view({points, copies, -1})
        .select(1, 0);
  }

  const dm::Network network_;
};

}  // namespace

torch::Tensor InLayout(const torch::Tensor& values, PreparedQuery::Layout layout) {
  switch (layout) {
    case Layout::kSinglePoint:
      return values[0];
    case Layout::kOnePerPoint:
      return values.select(1, 0);
    case Layout::kPerPoint:
      return values;
  }
  return values;
}

torch::Tensor QInLayout(const torch::Tensor& q, PreparedQuery::Layout layout) {
  return layout == Layout::kSinglePoint ? q[0] : q;
}

// The model's info with has_prior filled in from its prior.
static ModelInfo WithPrior(ModelInfo info, const PriorLookup& prior) {
  info.has_prior = prior.prior != nullptr;
  return info;
}

SurrogateModel::SurrogateModel(ModelInfo info, ComputeLimits limits, PriorLookup prior)
    : info_(WithPrior(std::move(info), prior)), limits_(limits), prior_(std::move(prior)) {}

absl::StatusOr<std::shared_ptr<const ModelPrior>> SurrogateModel::prior() const {
  if (prior_.prior == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("this model has no prior: ", prior_.why_none));
  }
  return prior_.prior;
}

absl::Status SurrogateModel::CheckPoints(const torch::Tensor&) const { return absl::OkStatus(); }

const char* MethodName(Method method) {
  switch (method) {
    case Method::kEvaluate:
      return "Evaluate";
    case Method::kJvp:
      return "Jvp";
    case Method::kVjp:
      return "Vjp";
    case Method::kReducedJacobian:
      return "ReducedJacobian";
    case Method::kJacobian:
      return "Jacobian";
    case Method::kHessianVectorProduct:
      return "HessianVectorProduct";
  }
  return "?";
}

int64_t Answer::bytes() const {
  int64_t total = 0;
  for (const torch::Tensor* t : {&values, &q}) {
    if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return total;
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> SurrogateModel::Load(const std::string& path,
                                                                           ComputeLimits limits) {
  dm::LoadedModelFile file;
  try {
    file = dm::LoadModelFile(path);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return FromModule(std::move(file.module), std::move(file.metadata), path, limits,
                    file.training_inputs);
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> SurrogateModel::FromModule(
    torch::jit::Module module, nlohmann::json metadata, const std::string& origin,
    ComputeLimits limits, const nlohmann::json& training_inputs) {
  auto fail = [&origin](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", why));
  };
  try {
    module.eval();
    // Serving differentiates with respect to inputs only: parameters need no gradients,
    // which also keeps their graph nodes out of every derivative computation.
    for (auto parameter : module.parameters()) parameter.requires_grad_(false);
    if (!module.find_method("forward")) return fail("the model has no forward method");

    ModelInfo info;
    info.metadata = std::move(metadata);
    const std::optional<torch::Dtype> declared_dtype = info.metadata.value("dtype", "") == "fp64"
                                                           ? std::optional(torch::kFloat64)
                                                           : std::optional(torch::kFloat32);
    // The one reading of the contract (models/architectures/network.h): reduced or generic,
    // dtype, and the verified direct DIPNet path where it applies.
    std::optional<dm::Network> network;
    try {
      network.emplace(module, /*allow_layer_propagation=*/true, declared_dtype);
    } catch (const std::invalid_argument& e) {
      return fail(e.what());
    }
    info.has_reduced_bases = network->reduced();
    info.dtype = network->dtype();
    if (info.has_reduced_bases) {
      const torch::Tensor& v = network->input_basis();
      const torch::Tensor& u = network->output_basis();
      const torch::Tensor& b = network->output_shift();
      if (v.scalar_type() != u.scalar_type() || v.scalar_type() != b.scalar_type() ||
          !torch::isFloatingType(v.scalar_type())) {
        return fail("input_basis, output_basis and output_shift must share one float dtype");
      }
      info.input_dim = v.size(0);
      info.input_rank = v.size(1);
      info.output_dim = u.size(0);
      info.output_rank = u.size(1);
      const double tolerance = OrthonormalityTolerance(info.dtype);
      if (dm::OrthonormalityDefect(v) > tolerance || dm::OrthonormalityDefect(u) > tolerance) {
        return fail("input_basis and output_basis must have orthonormal columns");
      }
      info.architecture = dm::kDipnetArchitecture;
    } else {
      // A generic model declares its input dimension in its metadata.
      if (!info.metadata.contains("input_dim") || !info.metadata["input_dim"].is_number_integer()) {
        return fail(
            "a model without reduced bases must declare \"input_dim\" (d_M) in its "
            "metadata.json");
      }
      info.input_dim = info.metadata["input_dim"].get<int64_t>();
      if (info.input_dim <= 0) return fail("metadata input_dim must be positive");
      info.architecture = dm::kGenericArchitecture;
    }
    if (info.dtype != torch::kFloat32 && info.dtype != torch::kFloat64) {
      return fail("the model must compute in float32 or float64");
    }
    if (info.metadata.contains("architecture") && info.metadata["architecture"].is_string()) {
      info.architecture = info.metadata["architecture"].get<std::string>();
    }

    // Probe: the output shape, finiteness, and for reduced models the contract identity
    // between the TorchScript forward and the composition through reduced_forward.
    auto generator = at::make_generator<at::CPUGeneratorImpl>(12345);
    torch::Tensor probe = torch::empty({2, info.input_dim}, torch::kFloat64);
    probe.normal_(0.0, 1.0, generator);
    probe = probe.to(info.dtype);
    torch::NoGradGuard no_grad;
    torch::Tensor out = module.forward({probe}).toTensor();
    if (out.dim() != 2 || out.size(0) != 2) {
      return fail(absl::StrCat("forward(m [2, ", info.input_dim,
                               "]) must return [2, d_Q], returned ", ShapeString(out)));
    }
    if (info.has_reduced_bases && out.size(1) != info.output_dim) {
      return fail(absl::StrCat("forward returns ", out.size(1), " outputs but output_basis has ",
                               info.output_dim, " rows"));
    }
    info.output_dim = out.size(1);
    if (!torch::isfinite(out).all().item<bool>()) {
      return fail("forward returned non-finite values on a standard normal probe input");
    }
    if (info.has_reduced_bases) {
      torch::Tensor reduced =
          module.get_method(dm::kReducedForward)({torch::mm(probe, network->input_basis())})
              .toTensor();
      if (reduced.dim() != 2 || reduced.size(0) != 2 || reduced.size(1) != info.output_rank) {
        return fail(absl::StrCat("reduced_forward(z [2, ", info.input_rank,
                                 "]) must return [2, r_Q = ", info.output_rank, "], returned ",
                                 ShapeString(reduced)));
      }
      const double scale = std::max(1.0, out.abs().max().item<double>());
      const double tolerance = info.dtype == torch::kFloat64 ? 1e-9 : 1e-4;
      for (const torch::Tensor& composed :
           {torch::addmm(network->output_shift(), reduced, network->output_basis().t()),
            network->Forward(probe)}) {
        const double mismatch = (composed - out).abs().max().item<double>() / scale;
        if (mismatch > tolerance) {
          return fail(
              absl::StrCat("forward(m) differs from reduced_forward(m·input_basis)·output_basisᵀ + "
                           "output_shift by ",
                           mismatch, " (relative); the model contract requires them to agree"));
        }
      }
      std::optional<dm::TrainingInputSummary> summary;
      if (!training_inputs.is_null()) {
        summary = dm::TrainingInputSummary::FromJson(training_inputs, info.input_rank);
        info.has_trust_score = true;
      }
      PriorLookup prior = PriorFromMetadata(info.metadata, info.input_dim);
      return std::shared_ptr<const SurrogateModel>(new ReducedBasisModel(
          *std::move(network), std::move(info), limits, std::move(prior), std::move(summary)));
    }
    if (!training_inputs.is_null()) {
      return fail(absl::StrCat(dm::kTrainingInputsFile,
                               " is only for reduced-basis models (it summarises Vᵀm)"));
    }
    PriorLookup prior = PriorFromMetadata(info.metadata, info.input_dim);
    return std::shared_ptr<const SurrogateModel>(
        new GenericModel(*std::move(network), std::move(info), limits, std::move(prior)));
  } catch (const std::exception& e) {
    std::string what = e.what();
    return fail(what.substr(0, what.find('\n')));
  }
}

absl::StatusOr<torch::Tensor> SurrogateModel::Matrix(const torch::Tensor& t, const char* field,
                                                     int64_t cols) const {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (!torch::isFloatingType(t.scalar_type())) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be float32 or float64"));
  }
  torch::Tensor matrix = t.dim() == 1 ? t.unsqueeze(0) : t;
  if (matrix.dim() != 2 || matrix.size(1) != cols) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must have shape [rows, ", cols,
                                                   "] or [", cols, "], got ", ShapeString(t)));
  }
  if (matrix.size(0) == 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has no rows"));
  }
  if (matrix.size(0) > limits_.max_batch_size) {
    return absl::ResourceExhaustedError(absl::StrCat(field, " has ", matrix.size(0),
                                                     " rows, above the server's limit of ",
                                                     limits_.max_batch_size));
  }
  if (auto status = CheckFinite(matrix, field); !status.ok()) return status;
  return matrix.to(info_.dtype).contiguous();
}

absl::StatusOr<torch::Tensor> SurrogateModel::PerPointVectors(const torch::Tensor& t,
                                                              const char* field, int64_t cols,
                                                              const torch::Tensor& m,
                                                              int64_t points,
                                                              Layout* layout) const {
  if (!t.defined()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (t.dim() == 3) {
    *layout = Layout::kPerPoint;
    if (!torch::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(absl::StrCat(field, " must be float32 or float64"));
    }
    if (t.size(0) != points || t.size(1) < 1 || t.size(2) != cols) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, " of rank 3 must have shape [B, k, ", cols, "] with B = ", points,
                       " (the rows of m) and k ≥ 1, got ", ShapeString(t)));
    }
    if (t.size(0) * t.size(1) > limits_.max_batch_size) {
      return absl::ResourceExhaustedError(
          absl::StrCat(field, " has ", t.size(0) * t.size(1),
                       " vectors in all, above the server's limit of ", limits_.max_batch_size));
    }
    if (auto status = CheckFinite(t, field); !status.ok()) return status;
    return t.to(info_.dtype).contiguous();
  }
  if (points == 1) {  // One point, k vectors: [k, cols] or [cols].
    *layout = Layout::kSinglePoint;
    auto matrix = Matrix(t, field, cols);
    if (!matrix.ok()) return matrix.status();
    return matrix->unsqueeze(0);
  }
  *layout = Layout::kOnePerPoint;
  if (t.dim() != 2 || t.size(0) != points) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, " must have shape [B, ", cols, "] (one per point) or [B, k, ", cols,
        "] with B = ", points, " (m has shape ", ShapeString(m), "), got ", ShapeString(t)));
  }
  auto matrix = Matrix(t, field, cols);
  if (!matrix.ok()) return matrix.status();
  return matrix->unsqueeze(1);
}

absl::Status SurrogateModel::PrepareClientBases(const Query& query, PreparedQuery* prepared) const {
  const bool client_bases = query.output_basis.defined() || query.input_basis.defined();
  if (client_bases && !(query.output_basis.defined() && query.input_basis.defined())) {
    return absl::InvalidArgumentError(
        absl::StrCat("give both output_basis and input_basis, or neither; ",
                     query.output_basis.defined() ? "input_basis" : "output_basis", " is missing"));
  }
  if (!client_bases) {
    if (!info_.has_reduced_bases) {
      return absl::FailedPreconditionError(
          "this model has no reduced bases of its own; supply output_basis [d_Q, k_Q] and "
          "input_basis [d_M, k_M]");
    }
    return absl::OkStatus();
  }
  const std::pair<const torch::Tensor*, const char*> checks[] = {
      {&query.output_basis, "output_basis"}, {&query.input_basis, "input_basis"}};
  const int64_t rows[] = {info_.output_dim, info_.input_dim};
  torch::Tensor* outs[] = {&prepared->output_basis, &prepared->input_basis};
  for (int i = 0; i < 2; ++i) {
    const torch::Tensor& basis = *checks[i].first;
    const char* field = checks[i].second;
    if (!torch::isFloatingType(basis.scalar_type()) || basis.dim() != 2 ||
        basis.size(0) != rows[i] || basis.size(1) < 1 || basis.size(1) > rows[i]) {
      return absl::InvalidArgumentError(absl::StrCat(field, " must have shape [", rows[i],
                                                     ", k] with 1 ≤ k ≤ ", rows[i], ", got ",
                                                     ShapeString(basis)));
    }
    if (auto status = CheckFinite(basis, field); !status.ok()) return status;
    const double defect = dm::OrthonormalityDefect(basis);
    const double tolerance = OrthonormalityTolerance(basis.scalar_type());
    if (defect > tolerance) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " must have orthonormal columns: max |BᵀB − I| = ", defect, " > ", tolerance));
    }
    *outs[i] = basis.to(info_.dtype).contiguous();
  }
  return absl::OkStatus();
}

absl::StatusOr<PreparedQuery> SurrogateModel::Prepare(const Query& query) const {
  PreparedQuery prepared;
  prepared.method = query.method;
  prepared.want_q = query.want_q;
  prepared.want_trust = query.want_trust;
  prepared.output_dtype = query.output_dtype.value_or(info_.dtype);
  if (query.want_trust && !info_.has_trust_score) {
    return absl::FailedPreconditionError(absl::StrCat(
        "return_trust: this model has no summary of its training inputs to score against",
        info_.has_reduced_bases ? " (add one with dino-train training-inputs)"
                                : " (only reduced-basis models have one)"));
  }
  if (query.method == Method::kHessianVectorProduct && !info_.has_hessian_vector_product) {
    return absl::UnimplementedError(absl::StrCat(
        "this model (architecture ", info_.architecture,
        ") has no second-order action: HessianVectorProduct (UM-Bridge ApplyHessian) needs "
        "second-order adjoints, which it does not implement"));
  }
  if (query.method == Method::kJacobian) {
    const int64_t elements = info_.output_dim * info_.input_dim;
    if (elements > limits_.max_jacobian_elements) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the full Jacobian has d_Q·d_M = ", info_.output_dim, "·", info_.input_dim,
                       " = ", elements, " elements, above the server's limit of ",
                       limits_.max_jacobian_elements, "; use Jvp, Vjp or ReducedJacobian"));
    }
  }
  auto points = Matrix(query.m, "m", info_.input_dim);
  if (!points.ok()) return points.status();
  if (auto status = CheckPoints(*points); !status.ok()) return status;
  prepared.points = *std::move(points);
  const int64_t count = prepared.points.size(0);
  switch (query.method) {
    case Method::kEvaluate:
      break;
    case Method::kJvp:
    case Method::kVjp: {
      const bool jvp = query.method == Method::kJvp;
      auto vectors = PerPointVectors(
          jvp ? query.directions : query.cotangents, jvp ? "directions" : "cotangents",
          jvp ? info_.input_dim : info_.output_dim, query.m, count, &prepared.layout);
      if (!vectors.ok()) return vectors.status();
      prepared.vectors = *std::move(vectors);
      break;
    }
    case Method::kJacobian:
      if (count != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("m must be one point, shape [", info_.input_dim, "] or [1, ",
                         info_.input_dim, "], got ", ShapeString(query.m)));
      }
      prepared.layout = Layout::kSinglePoint;
      break;
    case Method::kReducedJacobian:
      prepared.want_q = true;
      if (auto status = PrepareClientBases(query, &prepared); !status.ok()) return status;
      break;
    case Method::kHessianVectorProduct: {
      // One s per point; the directions in Jvp's layouts.
      auto cotangents = Matrix(query.cotangents, "cotangents", info_.output_dim);
      if (!cotangents.ok()) return cotangents.status();
      if (cotangents->size(0) != count) {
        return absl::InvalidArgumentError(
            absl::StrCat("cotangents must have one row per point of m (", count, "), got ",
                         cotangents->size(0)));
      }
      auto directions = PerPointVectors(query.directions, "directions", info_.input_dim, query.m,
                                        count, &prepared.layout);
      if (!directions.ok()) return directions.status();
      prepared.cotangents = *std::move(cotangents);
      prepared.vectors = *std::move(directions);
      break;
    }
  }
  return prepared;
}

std::vector<absl::StatusOr<Answer>> SurrogateModel::Compute(
    absl::Span<const PreparedQuery* const> batch) const {
  auto failed = [](const std::exception& e) {
    std::string what = e.what();
    return absl::InternalError(
        absl::StrCat("the model failed while computing: ", what.substr(0, what.find('\n'))));
  };
  auto converted = [](Answer answer, torch::Dtype dtype) {
    for (torch::Tensor* t : {&answer.values, &answer.q}) {
      if (t->defined() && t->scalar_type() != dtype) *t = t->to(dtype);
    }
    return answer;
  };
  std::vector<absl::StatusOr<Answer>> results;
  results.reserve(batch.size());
  try {
    std::vector<Answer> answers = ComputeBatch(batch);
    for (size_t i = 0; i < batch.size(); ++i) {
      results.push_back(converted(std::move(answers[i]), batch[i]->output_dtype));
    }
    return results;
  } catch (const std::exception& e) {
    if (batch.size() == 1) {
      results.push_back(failed(e));
      return results;
    }
  }
  // Some query broke the batched computation: each alone, so only the culprit fails.
  results.clear();
  for (const PreparedQuery* query : batch) {
    try {
      results.push_back(converted(std::move(ComputeBatch({&query, 1})[0]), query->output_dtype));
    } catch (const std::exception& e) {
      results.push_back(failed(e));
    }
  }
  return results;
}

absl::StatusOr<Answer> SurrogateModel::Run(const Query& query) const {
  auto prepared = Prepare(query);
  if (!prepared.ok()) return prepared.status();
  const PreparedQuery* one = &*prepared;
  return std::move(Compute({&one, 1})[0]);
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::RunProducts(const Query& query) const {
  auto answer = Run(query);
  if (!answer.ok()) return answer.status();
  return Products{answer->values, answer->q};
}

absl::StatusOr<torch::Tensor> SurrogateModel::Evaluate(const torch::Tensor& m) const {
  auto products = RunProducts(QueryAt(Method::kEvaluate, m, /*want_q=*/false));
  if (!products.ok()) return products.status();
  return products->values;
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Jvp(const torch::Tensor& m,
                                                             const torch::Tensor& directions,
                                                             bool want_q) const {
  Query query = QueryAt(Method::kJvp, m, want_q);
  query.directions = directions;
  return RunProducts(query);
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Vjp(const torch::Tensor& m,
                                                             const torch::Tensor& cotangents,
                                                             bool want_q) const {
  Query query = QueryAt(Method::kVjp, m, want_q);
  query.cotangents = cotangents;
  return RunProducts(query);
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Jacobian(const torch::Tensor& m,
                                                                  bool want_q) const {
  return RunProducts(QueryAt(Method::kJacobian, m, want_q));
}

absl::StatusOr<torch::Tensor> SurrogateModel::HessianVectorProduct(
    const torch::Tensor& m, const torch::Tensor& cotangents,
    const torch::Tensor& directions) const {
  Query query = QueryAt(Method::kHessianVectorProduct, m, /*want_q=*/false);
  query.cotangents = cotangents;
  query.directions = directions;
  auto products = RunProducts(query);
  if (!products.ok()) return products.status();
  return products->values;
}

absl::StatusOr<SurrogateModel::ReducedJacobians> SurrogateModel::ReducedJacobian(
    const torch::Tensor& m, const torch::Tensor& output_basis,
    const torch::Tensor& input_basis) const {
  Query query = QueryAt(Method::kReducedJacobian, m, /*want_q=*/true);
  query.output_basis = output_basis;
  query.input_basis = input_basis;
  auto products = RunProducts(query);
  if (!products.ok()) return products.status();
  return ReducedJacobians{products->q, products->values};
}

}  // namespace dino::serving
