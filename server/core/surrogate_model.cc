#include "server/core/surrogate_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/architectures/architectures.h"
#include "models/architectures/model_file.h"

namespace dino::serving {
namespace {

namespace dm = dino::models;

std::string ShapeString(const torch::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

// Tolerance on ‖BᵀB − I‖_max for bases, by the precision they arrived in.
double OrthonormalityTolerance(torch::Dtype dtype) {
  return dtype == torch::kFloat64 ? 1e-6 : 1e-4;
}

absl::Status CheckFinite(const torch::Tensor& t, const char* field) {
  torch::Tensor bad = torch::logical_not(torch::isfinite(t));
  if (!bad.any().item<bool>()) return absl::OkStatus();
  torch::Tensor where = bad.nonzero().select(0, 0);
  return absl::InvalidArgumentError(
      absl::StrCat(field, " contains a non-finite value (NaN or Inf) at index [",
                   absl::StrJoin(std::vector<int64_t>(where.data_ptr<int64_t>(),
                                                      where.data_ptr<int64_t>() + where.numel()),
                                 ", "),
                   "]"));
}

bool HasAttribute(const torch::jit::Module& module, const char* name) {
  return module.hasattr(name) && module.attr(name).isTensor();
}

// Reverse-mode products ∂⟨cotangents, outputs⟩/∂inputs, with zeros where the outputs do
// not depend on the inputs (a constant model is a valid, if dull, model).
torch::Tensor ReverseProduct(const torch::Tensor& outputs, const torch::Tensor& inputs,
                             const torch::Tensor& cotangents, bool create_graph = false) {
  if (!outputs.requires_grad()) return torch::zeros_like(inputs);
  auto grads = torch::autograd::grad({outputs}, {inputs}, {cotangents},
                                     /*retain_graph=*/create_graph, create_graph,
                                     /*allow_unused=*/true);
  return grads[0].defined() ? grads[0] : torch::zeros_like(inputs);
}

}  // namespace

SurrogateModel::SurrogateModel(torch::jit::Module module, ModelInfo info, ComputeLimits limits)
    : module_(std::move(module)), info_(std::move(info)), limits_(limits) {
  if (info_.has_reduced_bases) {
    input_basis_ = module_.attr(dm::kInputBasis).toTensor();
    output_basis_ = module_.attr(dm::kOutputBasis).toTensor();
    output_shift_ = module_.attr(dm::kOutputShift).toTensor();
    reduced_network_ =
        std::make_shared<const training::Network>(module_, /*allow_layer_propagation=*/true);
  }
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> SurrogateModel::Load(const std::string& path,
                                                                           ComputeLimits limits) {
  dm::LoadedModelFile file;
  try {
    file = dm::LoadModelFile(path);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return FromModule(std::move(file.module), std::move(file.metadata), path, limits);
}

absl::StatusOr<std::shared_ptr<const SurrogateModel>> SurrogateModel::FromModule(
    torch::jit::Module module, nlohmann::json metadata, const std::string& origin,
    ComputeLimits limits) {
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
    const bool has_v = HasAttribute(module, dm::kInputBasis);
    const bool has_u = HasAttribute(module, dm::kOutputBasis);
    const bool has_b = HasAttribute(module, dm::kOutputShift);
    const bool has_reduced = module.find_method(dm::kReducedForward).has_value();
    const bool any = has_v || has_u || has_b || has_reduced;
    info.has_reduced_bases = has_v && has_u && has_b && has_reduced;
    if (any && !info.has_reduced_bases) {
      return fail(
          "a reduced-basis model needs all of the buffers input_basis, output_basis, "
          "output_shift and the method reduced_forward; this one has only some of them");
    }

    if (info.has_reduced_bases) {
      const torch::Tensor v = module.attr(dm::kInputBasis).toTensor();
      const torch::Tensor u = module.attr(dm::kOutputBasis).toTensor();
      const torch::Tensor b = module.attr(dm::kOutputShift).toTensor();
      if (v.dim() != 2 || u.dim() != 2 || b.dim() != 1 || b.size(0) != u.size(0)) {
        return fail(absl::StrCat("inconsistent basis shapes: input_basis ", ShapeString(v),
                                 ", output_basis ", ShapeString(u), ", output_shift ",
                                 ShapeString(b)));
      }
      if (v.scalar_type() != u.scalar_type() || v.scalar_type() != b.scalar_type() ||
          !torch::isFloatingType(v.scalar_type())) {
        return fail("input_basis, output_basis and output_shift must share one float dtype");
      }
      info.input_dim = v.size(0);
      info.input_rank = v.size(1);
      info.output_dim = u.size(0);
      info.output_rank = u.size(1);
      info.dtype = v.scalar_type();
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
      info.dtype = torch::kFloat32;
      bool found = false;
      // The dtype of the first floating-point parameter, else buffer, else the metadata's.
      for (const auto& p : module.parameters()) {
        if (!found && torch::isFloatingType(p.scalar_type())) {
          info.dtype = p.scalar_type();
          found = true;
        }
      }
      for (const auto& b : module.buffers()) {
        if (!found && torch::isFloatingType(b.scalar_type())) {
          info.dtype = b.scalar_type();
          found = true;
        }
      }
      if (!found && info.metadata.value("dtype", "") == "fp64") info.dtype = torch::kFloat64;
      info.architecture = dm::kGenericArchitecture;
    }
    if (info.dtype != torch::kFloat32 && info.dtype != torch::kFloat64) {
      return fail("the model must compute in float32 or float64");
    }
    if (info.metadata.contains("architecture") && info.metadata["architecture"].is_string()) {
      info.architecture = info.metadata["architecture"].get<std::string>();
    }

    // Probe: the output shape, finiteness, and for reduced models the contract identity.
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
      const torch::Tensor v = module.attr(dm::kInputBasis).toTensor();
      const torch::Tensor u = module.attr(dm::kOutputBasis).toTensor();
      const torch::Tensor b = module.attr(dm::kOutputShift).toTensor();
      torch::Tensor reduced =
          module.get_method(dm::kReducedForward)({torch::mm(probe, v)}).toTensor();
      if (reduced.dim() != 2 || reduced.size(0) != 2 || reduced.size(1) != info.output_rank) {
        return fail(absl::StrCat("reduced_forward(z [2, ", info.input_rank,
                                 "]) must return [2, r_Q = ", info.output_rank, "], returned ",
                                 ShapeString(reduced)));
      }
      torch::Tensor composed = torch::addmm(b, reduced, u.t());
      const double scale = std::max(1.0, out.abs().max().item<double>());
      const double mismatch = (composed - out).abs().max().item<double>() / scale;
      const double tolerance = info.dtype == torch::kFloat64 ? 1e-9 : 1e-4;
      if (mismatch > tolerance) {
        return fail(
            absl::StrCat("forward(m) differs from reduced_forward(m·input_basis)·output_basisᵀ + "
                         "output_shift by ",
                         mismatch, " (relative); the model contract requires them to agree"));
      }
    }
    return std::shared_ptr<const SurrogateModel>(
        new SurrogateModel(std::move(module), std::move(info), limits));
  } catch (const std::exception& e) {
    std::string what = e.what();
    return fail(what.substr(0, what.find('\n')));
  }
}

torch::Tensor SurrogateModel::Forward(const torch::Tensor& m) const {
  return module_.forward({m}).toTensor();
}

torch::Tensor SurrogateModel::ReducedForward(const torch::Tensor& z) const {
  return module_.get_method(dm::kReducedForward)({z}).toTensor();
}

absl::StatusOr<torch::Tensor> SurrogateModel::Batch(const torch::Tensor& t, const char* field,
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

absl::StatusOr<torch::Tensor> SurrogateModel::Point(const torch::Tensor& t,
                                                    const char* field) const {
  auto matrix = Batch(t, field, info_.input_dim);
  if (!matrix.ok()) return matrix.status();
  if (matrix->size(0) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be one point, shape [",
                                                   info_.input_dim, "] or [1, ", info_.input_dim,
                                                   "], got ", ShapeString(t)));
  }
  return matrix;
}

std::pair<torch::Tensor, torch::Tensor> SurrogateModel::ReducedJacobianAt(
    const torch::Tensor& z) const {
  return training::ReducedValueAndJacobian(*reduced_network_, z, /*create_graph=*/false);
}

std::pair<torch::Tensor, torch::Tensor> SurrogateModel::GenericVjpRows(
    const torch::Tensor& m_rows, const torch::Tensor& cotangents) const {
  torch::AutoGradMode grad_mode(true);
  torch::Tensor inputs = m_rows.detach().contiguous().requires_grad_(true);
  torch::Tensor outputs = Forward(inputs);
  torch::Tensor products = ReverseProduct(outputs, inputs, cotangents);
  return {outputs.detach(), products};
}

absl::StatusOr<torch::Tensor> SurrogateModel::Evaluate(const torch::Tensor& m) const {
  auto batch = Batch(m, "m", info_.input_dim);
  if (!batch.ok()) return batch.status();
  torch::NoGradGuard no_grad;
  return Forward(*batch);
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Jvp(const torch::Tensor& m,
                                                             const torch::Tensor& directions,
                                                             bool want_q) const {
  auto point = Point(m, "m");
  if (!point.ok()) return point.status();
  auto dirs = Batch(directions, "directions", info_.input_dim);
  if (!dirs.ok()) return dirs.status();
  const int64_t k = dirs->size(0);
  Products result;
  if (info_.has_reduced_bases) {
    auto [phi, jacobian] = ReducedJacobianAt(torch::mm(*point, input_basis_));
    // J v = U J_φ (Vᵀ v), for all directions at once: [k, d_Q].
    result.values =
        torch::mm(torch::mm(torch::mm(*dirs, input_basis_), jacobian[0].t()), output_basis_.t());
    if (want_q) result.q = torch::addmm(output_shift_, phi, output_basis_.t())[0];
    return result;
  }
  if (k >= info_.output_dim) {
    torch::Tensor q;
    auto jacobian = GenericJacobian(*point, &q);
    if (!jacobian.ok()) return jacobian.status();
    result.values = torch::mm(*dirs, jacobian->t());
    if (want_q) result.q = q;
    return result;
  }
  // Double backward: g(u) = J(m)ᵀu is linear in u, so ∂⟨g(u), v⟩/∂u = J(m) v.
  torch::AutoGradMode grad_mode(true);
  torch::Tensor inputs =
      point->expand({k, info_.input_dim}).detach().contiguous().requires_grad_(true);
  torch::Tensor outputs = Forward(inputs);
  torch::Tensor u = torch::zeros_like(outputs).requires_grad_(true);
  torch::Tensor g = ReverseProduct(outputs, inputs, u, /*create_graph=*/true);
  result.values = ReverseProduct(g, u, *dirs).detach();
  if (want_q) result.q = outputs.detach()[0];
  return result;
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Vjp(const torch::Tensor& m,
                                                             const torch::Tensor& cotangents,
                                                             bool want_q) const {
  auto point = Point(m, "m");
  if (!point.ok()) return point.status();
  auto weights = Batch(cotangents, "cotangents", info_.output_dim);
  if (!weights.ok()) return weights.status();
  const int64_t k = weights->size(0);
  Products result;
  if (info_.has_reduced_bases) {
    auto [phi, jacobian] = ReducedJacobianAt(torch::mm(*point, input_basis_));
    // Jᵀ w = V J_φᵀ (Uᵀ w): [k, d_M].
    result.values =
        torch::mm(torch::mm(torch::mm(*weights, output_basis_), jacobian[0]), input_basis_.t());
    if (want_q) result.q = torch::addmm(output_shift_, phi, output_basis_.t())[0];
    return result;
  }
  auto [outputs, products] = GenericVjpRows(point->expand({k, info_.input_dim}), *weights);
  result.values = products;
  if (want_q) result.q = outputs[0];
  return result;
}

absl::StatusOr<torch::Tensor> SurrogateModel::GenericJacobian(const torch::Tensor& m,
                                                              torch::Tensor* q) const {
  const int64_t d_q = info_.output_dim;
  auto [outputs, rows] =
      GenericVjpRows(m.expand({d_q, info_.input_dim}), torch::eye(d_q, m.options()));
  if (q != nullptr) *q = outputs[0];
  return rows;
}

absl::StatusOr<SurrogateModel::Products> SurrogateModel::Jacobian(const torch::Tensor& m,
                                                                  bool want_q) const {
  const int64_t elements = info_.output_dim * info_.input_dim;
  if (elements > limits_.max_jacobian_elements) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the full Jacobian has d_Q·d_M = ", info_.output_dim, "·", info_.input_dim,
                     " = ", elements, " elements, above the server's limit of ",
                     limits_.max_jacobian_elements, "; use Jvp, Vjp or ReducedJacobian"));
  }
  auto point = Point(m, "m");
  if (!point.ok()) return point.status();
  Products result;
  if (info_.has_reduced_bases) {
    auto [phi, jacobian] = ReducedJacobianAt(torch::mm(*point, input_basis_));
    result.values = torch::mm(torch::mm(output_basis_, jacobian[0]), input_basis_.t());
    if (want_q) result.q = torch::addmm(output_shift_, phi, output_basis_.t())[0];
    return result;
  }
  torch::Tensor q;
  auto jacobian = GenericJacobian(*point, &q);
  if (!jacobian.ok()) return jacobian.status();
  result.values = *jacobian;
  if (want_q) result.q = q;
  return result;
}

absl::StatusOr<SurrogateModel::ReducedJacobians> SurrogateModel::ReducedJacobian(
    const torch::Tensor& m, const torch::Tensor& output_basis,
    const torch::Tensor& input_basis) const {
  auto batch = Batch(m, "m", info_.input_dim);
  if (!batch.ok()) return batch.status();
  const bool client_bases = output_basis.defined() || input_basis.defined();
  if (client_bases && !(output_basis.defined() && input_basis.defined())) {
    return absl::InvalidArgumentError(
        absl::StrCat("give both output_basis and input_basis, or neither; ",
                     output_basis.defined() ? "input_basis" : "output_basis", " is missing"));
  }
  if (!client_bases && !info_.has_reduced_bases) {
    return absl::FailedPreconditionError(
        "this model has no reduced bases of its own; supply output_basis [d_Q, k_Q] and "
        "input_basis [d_M, k_M]");
  }
  torch::Tensor u_c, v_c;
  if (client_bases) {
    const std::pair<const torch::Tensor*, const char*> checks[] = {{&output_basis, "output_basis"},
                                                                   {&input_basis, "input_basis"}};
    const int64_t rows[] = {info_.output_dim, info_.input_dim};
    torch::Tensor* outs[] = {&u_c, &v_c};
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
  }
  const int64_t batch_size = batch->size(0);
  ReducedJacobians result;
  if (info_.has_reduced_bases) {
    auto [phi, jacobian] = ReducedJacobianAt(torch::mm(*batch, input_basis_));
    result.q = torch::addmm(output_shift_, phi, output_basis_.t());
    result.reduced_jacobian =
        client_bases ? torch::matmul(torch::matmul(torch::mm(u_c.t(), output_basis_), jacobian),
                                     torch::mm(input_basis_.t(), v_c))
                     : jacobian;
    return result;
  }
  // Generic model: k_Q reverse passes per point, batched: row b·k_Q + i is m_b seeded with
  // column i of U_c, giving (U_cᵀ ∇f(m_b))_i; then project onto V_c.
  const int64_t k_q = u_c.size(1);
  torch::Tensor copies = batch->repeat_interleave(k_q, 0);
  torch::Tensor seeds = u_c.t().repeat({batch_size, 1});
  auto [outputs, rows] = GenericVjpRows(copies, seeds);
  result.q = outputs.view({batch_size, k_q, info_.output_dim}).select(1, 0);
  result.reduced_jacobian = torch::mm(rows, v_c).view({batch_size, k_q, v_c.size(1)});
  return result;
}

absl::StatusOr<SurrogateModel::Bases> SurrogateModel::GetBases() const {
  if (!info_.has_reduced_bases) {
    return absl::FailedPreconditionError("this model has no reduced bases");
  }
  return Bases{input_basis_, output_basis_, output_shift_};
}

}  // namespace dino::serving
