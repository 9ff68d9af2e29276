#include "models/training/dataset.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace dino::training {
namespace {

std::string ShapeString(const torch::Tensor& t) {
  std::ostringstream out;
  out << "[";
  for (int64_t i = 0; i < t.dim(); ++i) out << (i ? ", " : "") << t.size(i);
  out << "]";
  return out.str();
}

[[noreturn]] void Fail(const std::string& why) { throw std::invalid_argument(why); }

// Tolerance on max |BᵀB − I| for orthonormal factors, by precision (as the server's).
double OrthonormalityTolerance(torch::Dtype dtype) {
  return dtype == torch::kFloat64 ? 1e-6 : 1e-4;
}

// Fails naming the first sample whose entries are not all finite. A NaN or an infinity makes
// the sum non-finite, so one sum per slice of about 2²⁴ numbers (at memory speed, no boolean
// temporaries the size of a full Jacobian) clears the usual case; only a non-finite sum
// (a bad value, or an overflow of huge finite ones) looks at the elements.
void CheckFinite(const torch::Tensor& t, const char* field) {
  const int64_t n = t.size(0);
  if (n == 0) return;
  const int64_t per_sample = std::max<int64_t>(1, t.numel() / n);
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 24) / per_sample);
  for (int64_t start = 0; start < n; start += step) {
    const torch::Tensor slice = t.narrow(0, start, std::min(step, n - start));
    if (std::isfinite(slice.sum().item<double>())) continue;
    torch::Tensor bad = torch::logical_not(torch::isfinite(slice));
    if (bad.dim() > 1) bad = bad.flatten(1).any(1);
    if (!bad.any().item<bool>()) continue;  // Finite values whose sum overflowed.
    const int64_t sample = start + bad.nonzero()[0][0].item<int64_t>();
    Fail(std::string(field) + " contains a non-finite value (NaN or Inf) in sample " +
         std::to_string(sample));
  }
}

void CheckShape(const torch::Tensor& t, const char* field, const std::vector<int64_t>& shape,
                const char* meaning) {
  if (t.sizes() != c10::IntArrayRef(shape)) {
    Fail(std::string(field) + " must have shape " + meaning + ", got " + ShapeString(t));
  }
}

// Fails naming the first sample whose factor [n, d, r] is not orthonormal.
void CheckOrthonormalFactors(const torch::Tensor& factor, const char* field) {
  const int64_t r = factor.size(2);
  torch::Tensor gram =
      torch::matmul(factor.transpose(1, 2), factor) - torch::eye(r, factor.options()).unsqueeze(0);
  torch::Tensor defect = gram.abs().flatten(1).amax(1);
  const double tolerance = OrthonormalityTolerance(factor.scalar_type());
  torch::Tensor bad = defect > tolerance;
  if (!bad.any().item<bool>()) return;
  const int64_t sample = bad.nonzero().select(1, 0)[0].item<int64_t>();
  Fail(std::string(field) + " of sample " + std::to_string(sample) +
       " does not have orthonormal columns (max |BᵀB − I| = " +
       std::to_string(defect[sample].item<double>()) + ")");
}

template <typename Fn>
void ForEachField(const Dataset& data, Fn fn) {
  for (const auto& [tensor, name] : data.Fields()) fn(*tensor, name);
}

// A dataset whose defined fields are f(field) (undefined ones stay undefined).
template <typename Fn>
Dataset MapFields(const Dataset& data, Fn f) {
  Dataset out;
  const std::pair<const torch::Tensor*, torch::Tensor*> fields[] = {
      {&data.m, &out.m},
      {&data.q, &out.q},
      {&data.jacobian, &out.jacobian},
      {&data.svd_u, &out.svd_u},
      {&data.svd_sigma, &out.svd_sigma},
      {&data.svd_v, &out.svd_v},
      {&data.reduced_jacobian, &out.reduced_jacobian},
      {&data.jacobian_norm_sq, &out.jacobian_norm_sq}};
  for (const auto& [source, destination] : fields) {
    if (source->defined()) *destination = f(*source);
  }
  return out;
}

void RequireJacobianOutsideBases(const Dataset& data, const char* what) {
  switch (data.jacobian_form()) {
    case JacobianForm::kNone:
      Fail(std::string(what) + " needs Jacobian data; the dataset has outputs only");
    case JacobianForm::kReduced:
      Fail(std::string(what) +
           " needs the Jacobian itself (full or truncated SVD); the reduced Jacobian Uᵀ∇qV in "
           "a model's bases does not determine it");
    default:
      return;
  }
}

}  // namespace

const char* JacobianFormName(JacobianForm form) {
  switch (form) {
    case JacobianForm::kNone:
      return "none";
    case JacobianForm::kFull:
      return "full";
    case JacobianForm::kTruncatedSvd:
      return "truncated_svd";
    case JacobianForm::kReduced:
      return "reduced";
  }
  return "unknown";
}

JacobianForm Dataset::jacobian_form() const {
  const bool full = jacobian.defined();
  const bool svd = svd_u.defined() || svd_sigma.defined() || svd_v.defined();
  const bool reduced = reduced_jacobian.defined();
  if (static_cast<int>(full) + static_cast<int>(svd) + static_cast<int>(reduced) > 1) {
    Fail(
        "a dataset carries one Jacobian form: jacobian, or svd_u/svd_sigma/svd_v, or "
        "reduced_jacobian; this one has several");
  }
  if (full) return JacobianForm::kFull;
  if (svd) return JacobianForm::kTruncatedSvd;
  if (reduced) return JacobianForm::kReduced;
  return JacobianForm::kNone;
}

void Dataset::Validate() const {
  if (!m.defined() || !q.defined()) Fail("a dataset needs both m and q");
  if (m.dim() != 2) Fail("m must have shape [n, d_M], got " + ShapeString(m));
  if (q.dim() != 2) Fail("q must have shape [n, d_Q], got " + ShapeString(q));
  const int64_t n = m.size(0), d_m = m.size(1), d_q = q.size(1);
  if (n == 0) Fail("the dataset has no samples");
  if (d_m == 0 || d_q == 0) Fail("d_M and d_Q must be positive");
  if (q.size(0) != n) {
    Fail("m has " + std::to_string(n) + " samples but q has " + std::to_string(q.size(0)));
  }
  const torch::Dtype dtype = m.scalar_type();
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) {
    Fail("m must be float32 or float64");
  }
  ForEachField(*this, [&](const torch::Tensor& t, const char* name) {
    if (t.scalar_type() != dtype) Fail(std::string(name) + " must have the dtype of m");
    if (t.device() != m.device()) Fail(std::string(name) + " must be on the device of m");
  });

  const JacobianForm form = jacobian_form();
  if (jacobian_norm_sq.defined() && form != JacobianForm::kReduced) {
    Fail("jacobian_norm_sq accompanies reduced_jacobian only (the other forms determine ‖J‖)");
  }
  switch (form) {
    case JacobianForm::kNone:
      break;
    case JacobianForm::kFull:
      CheckShape(jacobian, "jacobian", {n, d_q, d_m}, "[n, d_Q, d_M]");
      break;
    case JacobianForm::kTruncatedSvd: {
      if (!svd_u.defined() || !svd_sigma.defined() || !svd_v.defined()) {
        Fail("the truncated SVD needs all of svd_u, svd_sigma and svd_v");
      }
      if (svd_sigma.dim() != 2) {
        Fail("svd_sigma must have shape [n, r], got " + ShapeString(svd_sigma));
      }
      const int64_t r = svd_sigma.size(1);
      if (r == 0) Fail("the truncated SVD has rank 0");
      if (r > std::min(d_q, d_m)) {
        Fail("the truncated SVD has rank " + std::to_string(r) +
             " > min(d_Q, d_M) = " + std::to_string(std::min(d_q, d_m)));
      }
      CheckShape(svd_sigma, "svd_sigma", {n, r}, "[n, r]");
      CheckShape(svd_u, "svd_u", {n, d_q, r}, "[n, d_Q, r]");
      CheckShape(svd_v, "svd_v", {n, d_m, r}, "[n, d_M, r]");
      break;
    }
    case JacobianForm::kReduced:
      if (reduced_jacobian.dim() != 3 || reduced_jacobian.size(0) != n) {
        Fail("reduced_jacobian must have shape [n, r_Q, r_M], got " +
             ShapeString(reduced_jacobian));
      }
      if (jacobian_norm_sq.defined()) {
        CheckShape(jacobian_norm_sq, "jacobian_norm_sq", {n}, "[n]");
      }
      break;
  }

  ForEachField(*this, [](const torch::Tensor& t, const char* name) { CheckFinite(t, name); });

  if (form == JacobianForm::kTruncatedSvd) {
    if ((svd_sigma < 0).any().item<bool>()) {
      const int64_t sample = (svd_sigma < 0).any(1).nonzero()[0][0].item<int64_t>();
      Fail("svd_sigma of sample " + std::to_string(sample) + " has a negative singular value");
    }
    CheckOrthonormalFactors(svd_u, "svd_u");
    CheckOrthonormalFactors(svd_v, "svd_v");
  }
  if (form == JacobianForm::kReduced && jacobian_norm_sq.defined()) {
    // ‖UᵀJV‖_F ≤ ‖J‖_F for orthonormal bases: a smaller norm means inconsistent data.
    torch::Tensor reduced_sq = reduced_jacobian.flatten(1).square().sum(1);
    const double slack = OrthonormalityTolerance(dtype);
    torch::Tensor bad = jacobian_norm_sq < reduced_sq * (1.0 - slack);
    if (bad.any().item<bool>()) {
      const int64_t sample = bad.nonzero()[0][0].item<int64_t>();
      Fail("jacobian_norm_sq of sample " + std::to_string(sample) + " (" +
           std::to_string(jacobian_norm_sq[sample].item<double>()) +
           ") is below ‖reduced_jacobian‖²_F (" +
           std::to_string(reduced_sq[sample].item<double>()) +
           "), impossible for a projection onto orthonormal bases");
    }
  }
}

Dataset Dataset::Select(const torch::Tensor& indices) const {
  torch::Tensor index = indices.to(m.device(), torch::kLong);
  return MapFields(*this, [&index](const torch::Tensor& t) { return t.index_select(0, index); });
}

Dataset Dataset::To(torch::Device device, torch::Dtype dtype) const {
  return MapFields(*this, [&](const torch::Tensor& t) { return t.to(device, dtype); });
}

std::vector<std::pair<const torch::Tensor*, const char*>> Dataset::Fields() const {
  std::vector<std::pair<const torch::Tensor*, const char*>> fields;
  for (const auto& field : std::initializer_list<std::pair<const torch::Tensor*, const char*>>{
           {&m, "m"},
           {&q, "q"},
           {&jacobian, "jacobian"},
           {&svd_u, "svd_u"},
           {&svd_sigma, "svd_sigma"},
           {&svd_v, "svd_v"},
           {&reduced_jacobian, "reduced_jacobian"},
           {&jacobian_norm_sq, "jacobian_norm_sq"}}) {
    if (field.first->defined()) fields.push_back(field);
  }
  return fields;
}

Dataset ConcatDatasets(const std::vector<Dataset>& parts) {
  if (parts.empty()) Fail("no datasets to concatenate");
  if (parts.size() == 1) return parts.front();
  // Field by field through MapFields on the first part, so that the set of fields is one
  // definition; every part must carry the same fields.
  size_t field = 0;
  std::vector<std::vector<torch::Tensor>> columns;
  for (const Dataset& part : parts) {
    std::vector<torch::Tensor> fields;
    ForEachField(part, [&fields](const torch::Tensor& t, const char*) { fields.push_back(t); });
    if (!columns.empty() && fields.size() != columns.front().size()) {
      Fail("the datasets to concatenate carry different fields");
    }
    columns.push_back(std::move(fields));
  }
  return MapFields(parts.front(), [&](const torch::Tensor&) {
    std::vector<torch::Tensor> pieces;
    for (const auto& fields : columns) pieces.push_back(fields[field]);
    ++field;
    return torch::cat(pieces, 0);
  });
}

nlohmann::json Dataset::Summary() const {
  nlohmann::json summary = {{"samples", size()},
                            {"input_dim", m.defined() ? input_dim() : 0},
                            {"output_dim", q.defined() ? output_dim() : 0},
                            {"jacobian_form", JacobianFormName(jacobian_form())}};
  if (jacobian_form() == JacobianForm::kTruncatedSvd) summary["svd_rank"] = svd_rank();
  if (jacobian_form() == JacobianForm::kReduced) {
    summary["reduced_shape"] = {reduced_jacobian.size(1), reduced_jacobian.size(2)};
    summary["jacobian_norms"] = jacobian_norm_sq.defined();
  }
  return summary;
}

DatasetSplit SplitDataset(const Dataset& data, int64_t validation_size, uint64_t seed) {
  const int64_t n = data.size();
  if (validation_size < 0 || validation_size >= n) {
    Fail("validation_size must be in [0, n − 1] = [0, " + std::to_string(n - 1) + "], got " +
         std::to_string(validation_size));
  }
  DatasetSplit split;
  if (validation_size == 0) {
    split.train = data;  // Shares the tensors: no copy of possibly gigabytes of Jacobians.
    return split;
  }
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::Tensor order = torch::randperm(n, generator, torch::kLong);
  split.validation = data.Select(order.narrow(0, 0, validation_size));
  split.train = data.Select(order.narrow(0, validation_size, n - validation_size));
  return split;
}

torch::Tensor JacobianNormSq(const Dataset& data) {
  switch (data.jacobian_form()) {
    case JacobianForm::kFull:
      // A norm reduction, not square().sum(): no temporary the size of J.
      return at::linalg_vector_norm(data.jacobian.flatten(1), 2, {1}).square();
    case JacobianForm::kTruncatedSvd:
      return data.svd_sigma.square().sum(1);
    case JacobianForm::kReduced:
      return data.jacobian_norm_sq;
    case JacobianForm::kNone:
      break;
  }
  return {};
}

torch::Tensor ProjectJacobian(const Dataset& data, const torch::Tensor& output_basis,
                              const torch::Tensor& input_basis, int64_t chunk) {
  const torch::Tensor u = output_basis.to(data.m.options());
  const torch::Tensor v = input_basis.to(data.m.options());
  const int64_t n = data.size(), r_q = u.size(1), r_m = v.size(1);
  switch (data.jacobian_form()) {
    case JacobianForm::kNone:
      Fail("projecting the Jacobian needs Jacobian data; the dataset has outputs only");
    case JacobianForm::kReduced:
      if (data.reduced_jacobian.size(1) != r_q || data.reduced_jacobian.size(2) != r_m) {
        Fail("reduced_jacobian has shape " + ShapeString(data.reduced_jacobian) +
             " but the model's bases need [n, r_Q, r_M] = [n, " + std::to_string(r_q) + ", " +
             std::to_string(r_m) + "]");
      }
      return data.reduced_jacobian;
    case JacobianForm::kTruncatedSvd: {
      // In chunks: matmul folds [n, r, d_M] (a transposed view) into one matrix by copying
      // it, as large as V_data itself (gigabytes for a few thousand samples).
      torch::Tensor out = torch::empty({n, r_q, r_m}, data.m.options());
      for (int64_t start = 0; start < n; start += chunk) {
        const int64_t count = std::min(chunk, n - start);
        torch::Tensor left = torch::matmul(u.t(), data.svd_u.narrow(0, start, count));
        torch::Tensor right = torch::matmul(data.svd_v.narrow(0, start, count).transpose(1, 2), v);
        out.narrow(0, start, count)
            .copy_(
                torch::matmul(left * data.svd_sigma.narrow(0, start, count).unsqueeze(1), right));
      }
      return out;
    }
    case JacobianForm::kFull: {
      const int64_t d_q = data.output_dim(), d_m = data.input_dim();
      // Apply the cheaper side first: Uᵀ(JV) costs d_Q·d_M·r_M + r_Q·d_Q·r_M, (UᵀJ)V costs
      // r_Q·d_Q·d_M + r_Q·d_M·r_M.
      const bool right_first =
          d_q * d_m * r_m + r_q * d_q * r_m < r_q * d_q * d_m + r_q * d_m * r_m;
      torch::Tensor out = torch::empty({n, r_q, r_m}, data.m.options());
      for (int64_t start = 0; start < n; start += chunk) {
        const int64_t count = std::min(chunk, n - start);
        torch::Tensor j = data.jacobian.narrow(0, start, count);
        out.narrow(0, start, count)
            .copy_(right_first ? torch::matmul(u.t(), torch::matmul(j, v))
                               : torch::matmul(torch::matmul(u.t(), j), v));
      }
      return out;
    }
  }
  return {};
}

SampleSvd TruncatedSampleSvd(const Dataset& data, int64_t rank, int64_t chunk) {
  RequireJacobianOutsideBases(data, "the per-sample SVD");
  const int64_t n = data.size(), d_q = data.output_dim(), d_m = data.input_dim();
  const int64_t available =
      data.jacobian_form() == JacobianForm::kFull ? std::min(d_q, d_m) : data.svd_rank();
  if (rank < 0 || rank > available) {
    Fail("SVD rank " + std::to_string(rank) + " is outside [1, " + std::to_string(available) +
         "] (what the " + JacobianFormName(data.jacobian_form()) + " Jacobian data has)");
  }
  if (rank == 0) rank = available;
  SampleSvd svd;
  if (data.jacobian_form() == JacobianForm::kTruncatedSvd) {
    const int64_t r = data.svd_rank();
    const bool sorted =
        r == 1 || (data.svd_sigma.narrow(1, 0, r - 1) >= data.svd_sigma.narrow(1, 1, r - 1))
                      .all()
                      .item<bool>();
    if (sorted) {
      // Leading columns: views of the data, no copies.
      return {data.svd_u.narrow(2, 0, rank), data.svd_sigma.narrow(1, 0, rank),
              data.svd_v.narrow(2, 0, rank)};
    }
    // Keep the `rank` largest singular values of each sample, descending.
    torch::Tensor order = std::get<1>(data.svd_sigma.sort(/*dim=*/1, /*descending=*/true));
    order = order.narrow(1, 0, rank);
    svd.sigma = data.svd_sigma.gather(1, order);
    svd.u = data.svd_u.gather(2, order.unsqueeze(1).expand({n, d_q, rank}));
    svd.v = data.svd_v.gather(2, order.unsqueeze(1).expand({n, d_m, rank}));
    return svd;
  }
  svd.u = torch::empty({n, d_q, rank}, data.m.options());
  svd.sigma = torch::empty({n, rank}, data.m.options());
  svd.v = torch::empty({n, d_m, rank}, data.m.options());
  // Through a QR factorisation of the long side, then the SVD of the small triangle: several
  // times faster than LAPACK's SVD of a wide 50 × 4225 matrix, and as accurate (the standard
  // QR preconditioning of the SVD). Wide J: Jᵀ = QR, R = U_R S V_Rᵀ, so J = V_R S (Q U_R)ᵀ.
  // Tall J: J = QR, so J = (Q U_R) S V_Rᵀ.
  const bool wide = d_q <= d_m;
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t count = std::min(chunk, n - start);
    const torch::Tensor j = data.jacobian.narrow(0, start, count);
    auto [q, r] = torch::linalg_qr(wide ? j.transpose(1, 2) : j);
    auto [u_r, s, v_r_t] = torch::linalg_svd(r, /*full_matrices=*/false);
    torch::Tensor small = v_r_t.narrow(1, 0, rank).transpose(1, 2);  // V_R's leading columns.
    torch::Tensor large = torch::matmul(q, u_r.narrow(2, 0, rank));  // Q U_R's.
    svd.u.narrow(0, start, count).copy_(wide ? small : large);
    svd.sigma.narrow(0, start, count).copy_(s.narrow(1, 0, rank));
    svd.v.narrow(0, start, count).copy_(wide ? large : small);
  }
  return svd;
}

torch::Tensor FullJacobianRows(const Dataset& data, const torch::Tensor& indices) {
  RequireJacobianOutsideBases(data, "the full Jacobian");
  torch::Tensor index = indices.to(data.m.device(), torch::kLong);
  if (data.jacobian_form() == JacobianForm::kFull) return data.jacobian.index_select(0, index);
  torch::Tensor u = data.svd_u.index_select(0, index);
  torch::Tensor sigma = data.svd_sigma.index_select(0, index);
  torch::Tensor v = data.svd_v.index_select(0, index);
  return torch::matmul(u * sigma.unsqueeze(1), v.transpose(1, 2));
}

}  // namespace dino::training
