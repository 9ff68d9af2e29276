#include "tests/client/fake_surrogate.h"

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/tensor_codec.h"

namespace dino::testing {
namespace {

struct FakeModel {
  std::string name;
  std::vector<int64_t> versions;
  int64_t d_m, d_q;
  v1::DType dtype;
  bool has_bases;
  int64_t r_m, r_q;
  std::string architecture;
  std::string metadata_json;
  bool slow = false;
  bool malformed = false;
};

const std::vector<FakeModel>& Models() {
  static const std::vector<FakeModel>* models = new std::vector<FakeModel>{
      {"linear", {1, 2}, 3, 2, v1::FP64, true, 2, 1, "dipnet", R"({"note": "fake linear"})"},
      {"malformed", {1}, 3, 2, v1::FP64, true, 2, 1, "dipnet", "{}", false, true},
      {"plain", {1}, 4, 3, v1::FP32, false, 0, 0, "generic", "{}"},
      {"slow", {1}, 4, 3, v1::FP32, false, 0, 0, "generic", "{}", true},
  };
  return *models;
}

grpc::Status Invalid(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, message);
}

// Resolves a ModelRef to a model and concrete version.
grpc::Status Lookup(const v1::ModelRef& ref, const FakeModel** model, int64_t* version) {
  if (ref.name().empty()) return Invalid("model.name is required");
  for (const FakeModel& m : Models()) {
    if (m.name != ref.name()) continue;
    if (ref.version() == 0) {
      *version = m.versions.back();
    } else {
      bool found = false;
      for (int64_t v : m.versions) found = found || v == ref.version();
      if (!found) {
        return grpc::Status(grpc::StatusCode::NOT_FOUND,
                            absl::StrCat("model '", m.name, "' has no version ", ref.version()));
      }
      *version = ref.version();
    }
    *model = &m;
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("unknown model '", ref.name(), "'"));
}

// Waits 2 s for the "slow" model, returning CANCELLED early if the call goes away.
grpc::Status MaybeStall(const FakeModel& model, grpc::ServerContext* context) {
  if (!model.slow) return grpc::Status::OK;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < until) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return grpc::Status::OK;
}

// Decodes `tensor` as rows of `width` values: accepted shapes are [width] (one row) and
// [rows, width] (and, when `single_row`, only one row).
grpc::Status Rows(const v1::Tensor& tensor, const std::string& field, int64_t width,
                  bool single_row, std::vector<double>* values, int64_t* rows) {
  absl::StatusOr<NpyArray> array = client::DecodeTensor(tensor, field);
  if (!array.ok()) return Invalid(std::string(array.status().message()));
  const bool vector = array->rank() == 1 && array->shape[0] == width;
  const bool matrix =
      array->rank() == 2 && array->shape[1] == width && (!single_row || array->shape[0] == 1);
  if (!vector && !matrix) {
    return Invalid(absl::StrCat(field, ": expected shape [", width, "]",
                                single_row ? " or [1, " : " or [B, ", width, "], got ",
                                ShapeToString(array->shape)));
  }
  *values = array->ToDoubles();
  for (double v : *values) {
    if (!std::isfinite(v)) return Invalid(absl::StrCat(field, ": contains NaN or Inf"));
  }
  *rows = vector ? 1 : array->shape[0];
  return grpc::Status::OK;
}

v1::DType ResolveDType(const FakeModel& model, v1::DType requested) {
  return requested == v1::DTYPE_UNSPECIFIED ? model.dtype : requested;
}

void Fill(const std::vector<double>& values, std::vector<int64_t> shape, v1::DType dtype,
          v1::Tensor* tensor) {
  NpyArray array = *NpyArray::FromValues<double>(std::move(shape), values);
  if (dtype == v1::FP32) array = *array.AsType(NpyDType::kFloat32);
  (void)client::EncodeTensor(array, tensor, "out");
}

// J = v·A for the model's dimensions, A[i][j] = 1 + i + 0.5·j.
std::vector<double> JacobianOf(const FakeModel& model, int64_t version) {
  std::vector<double> j(model.d_q * model.d_m);
  for (int64_t i = 0; i < model.d_q; ++i) {
    for (int64_t k = 0; k < model.d_m; ++k) {
      j[i * model.d_m + k] = static_cast<double>(version) * (1.0 + i + 0.5 * k);
    }
  }
  return j;
}

std::vector<double> ShiftOf(const FakeModel& model) {
  std::vector<double> b(model.d_q);
  for (int64_t i = 0; i < model.d_q; ++i) b[i] = 0.1 * i;
  return b;
}

// out[r] = J·x[r] (+ b) for each row r of x.
std::vector<double> Apply(const FakeModel& model, int64_t version, const std::vector<double>& x,
                          int64_t rows, bool add_shift) {
  const std::vector<double> j = JacobianOf(model, version);
  const std::vector<double> b = ShiftOf(model);
  std::vector<double> out(rows * model.d_q, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < model.d_q; ++i) {
      double sum = add_shift ? b[i] : 0.0;
      for (int64_t k = 0; k < model.d_m; ++k) sum += j[i * model.d_m + k] * x[r * model.d_m + k];
      out[r * model.d_q + i] = sum;
    }
  }
  return out;
}

// Identity columns: [n, r] with ones at (i, i).
std::vector<double> IdentityColumns(int64_t n, int64_t r) {
  std::vector<double> e(n * r, 0.0);
  for (int64_t i = 0; i < r; ++i) e[i * r + i] = 1.0;
  return e;
}

// Checks a client basis [n, k] for shape and orthonormal columns.
grpc::Status ClientBasis(const v1::Tensor& tensor, const std::string& field, int64_t n,
                         std::vector<double>* values, int64_t* k) {
  absl::StatusOr<NpyArray> array = client::DecodeTensor(tensor, field);
  if (!array.ok()) return Invalid(std::string(array.status().message()));
  if (array->rank() != 2 || array->shape[0] != n) {
    return Invalid(
        absl::StrCat(field, ": expected shape [", n, ", k], got ", ShapeToString(array->shape)));
  }
  *k = array->shape[1];
  *values = array->ToDoubles();
  const double tol = array->dtype == NpyDType::kFloat32 ? 1e-4 : 1e-6;
  for (int64_t a = 0; a < *k; ++a) {
    for (int64_t b = 0; b < *k; ++b) {
      double dot = 0;
      for (int64_t i = 0; i < n; ++i) dot += (*values)[i * *k + a] * (*values)[i * *k + b];
      if (std::abs(dot - (a == b ? 1.0 : 0.0)) > tol) {
        return Invalid(absl::StrCat(field, ": columns are not orthonormal"));
      }
    }
  }
  return grpc::Status::OK;
}

}  // namespace

std::vector<double> LinearJacobian(int64_t version) { return JacobianOf(Models()[0], version); }
std::vector<double> LinearShift() { return ShiftOf(Models()[0]); }

grpc::Status FakeSurrogateService::ListModels(grpc::ServerContext*, const v1::ListModelsRequest*,
                                              v1::ListModelsResponse* response) {
  for (const FakeModel& m : Models()) {
    v1::ModelSummary* summary = response->add_models();
    summary->set_name(m.name);
    for (int64_t v : m.versions) {
      v1::ModelVersionSummary* version = summary->add_versions();
      version->set_version(v);
      version->set_is_default(v == m.versions.back());
    }
  }
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::GetModelInfo(grpc::ServerContext*,
                                                const v1::GetModelInfoRequest* request,
                                                v1::GetModelInfoResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  response->set_name(model->name);
  response->set_version(version);
  for (int64_t v : model->versions) response->add_versions(v);
  response->set_input_dim(model->d_m);
  response->set_output_dim(model->d_q);
  response->set_has_reduced_bases(model->has_bases);
  response->set_input_rank(model->r_m);
  response->set_output_rank(model->r_q);
  response->set_architecture(model->architecture);
  response->set_dtype(model->dtype);
  response->set_metadata_json(model->metadata_json);
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::GetBases(grpc::ServerContext*,
                                            const v1::GetBasesRequest* request,
                                            v1::GetBasesResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  if (!model->has_bases) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("model '", model->name, "' has no reduced bases"));
  }
  const v1::DType dtype = ResolveDType(*model, request->output_dtype());
  response->set_version(version);
  Fill(IdentityColumns(model->d_m, model->r_m), {model->d_m, model->r_m}, dtype,
       response->mutable_input_basis());
  Fill(IdentityColumns(model->d_q, model->r_q), {model->d_q, model->r_q}, dtype,
       response->mutable_output_basis());
  Fill(ShiftOf(*model), {model->d_q}, dtype, response->mutable_output_shift());
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::Evaluate(grpc::ServerContext* context,
                                            const v1::EvaluateRequest* request,
                                            v1::EvaluateResponse* response) {
  if (refuse_every_evaluate_ > 0 && ++evaluate_calls_ % refuse_every_evaluate_ == 0) {
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("queue full (the fake refuses every ", refuse_every_evaluate_,
                                     "th Evaluate call)"));
  }
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  std::vector<double> m;
  int64_t batch;
  if (grpc::Status s = Rows(request->m(), "m", model->d_m, false, &m, &batch); !s.ok()) return s;
  if (grpc::Status s = MaybeStall(*model, context); !s.ok()) return s;
  response->set_version(version);
  Fill(Apply(*model, version, m, batch, true), {batch, model->d_q},
       ResolveDType(*model, request->output_dtype()), response->mutable_q());
  if (model->malformed) response->mutable_q()->mutable_data()->pop_back();
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::Jvp(grpc::ServerContext* context, const v1::JvpRequest* request,
                                       v1::JvpResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  std::vector<double> m, v;
  int64_t one, k;
  if (grpc::Status s = Rows(request->m(), "m", model->d_m, true, &m, &one); !s.ok()) return s;
  if (grpc::Status s = Rows(request->directions(), "directions", model->d_m, false, &v, &k);
      !s.ok()) {
    return s;
  }
  if (grpc::Status s = MaybeStall(*model, context); !s.ok()) return s;
  const v1::DType dtype = ResolveDType(*model, request->output_dtype());
  response->set_version(version);
  Fill(Apply(*model, version, v, k, false), {k, model->d_q}, dtype, response->mutable_jvp());
  if (request->return_q()) {
    Fill(Apply(*model, version, m, 1, true), {model->d_q}, dtype, response->mutable_q());
  }
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::Vjp(grpc::ServerContext* context, const v1::VjpRequest* request,
                                       v1::VjpResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  std::vector<double> m, w;
  int64_t one, k;
  if (grpc::Status s = Rows(request->m(), "m", model->d_m, true, &m, &one); !s.ok()) return s;
  if (grpc::Status s = Rows(request->cotangents(), "cotangents", model->d_q, false, &w, &k);
      !s.ok()) {
    return s;
  }
  if (grpc::Status s = MaybeStall(*model, context); !s.ok()) return s;
  const v1::DType dtype = ResolveDType(*model, request->output_dtype());
  const std::vector<double> j = JacobianOf(*model, version);
  std::vector<double> out(k * model->d_m, 0.0);
  for (int64_t r = 0; r < k; ++r) {
    for (int64_t c = 0; c < model->d_m; ++c) {
      for (int64_t i = 0; i < model->d_q; ++i) {
        out[r * model->d_m + c] += j[i * model->d_m + c] * w[r * model->d_q + i];
      }
    }
  }
  response->set_version(version);
  Fill(out, {k, model->d_m}, dtype, response->mutable_vjp());
  if (request->return_q()) {
    Fill(Apply(*model, version, m, 1, true), {model->d_q}, dtype, response->mutable_q());
  }
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::ReducedJacobian(grpc::ServerContext* context,
                                                   const v1::ReducedJacobianRequest* request,
                                                   v1::ReducedJacobianResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  std::vector<double> m;
  int64_t batch;
  if (grpc::Status s = Rows(request->m(), "m", model->d_m, false, &m, &batch); !s.ok()) return s;
  const bool has_u = request->has_output_basis(), has_v = request->has_input_basis();
  if (has_u != has_v) {
    return Invalid("output_basis and input_basis must be given together");
  }
  std::vector<double> u, v;
  int64_t k_q, k_m;
  if (has_u) {
    if (grpc::Status s = ClientBasis(request->output_basis(), "output_basis", model->d_q, &u, &k_q);
        !s.ok()) {
      return s;
    }
    if (grpc::Status s = ClientBasis(request->input_basis(), "input_basis", model->d_m, &v, &k_m);
        !s.ok()) {
      return s;
    }
  } else {
    if (!model->has_bases) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("model '", model->name, "' has no reduced bases"));
    }
    k_q = model->r_q;
    k_m = model->r_m;
    u = IdentityColumns(model->d_q, k_q);
    v = IdentityColumns(model->d_m, k_m);
  }
  if (grpc::Status s = MaybeStall(*model, context); !s.ok()) return s;
  // The model is affine, so the reduced Jacobian is the same at every point of the batch.
  const std::vector<double> j = JacobianOf(*model, version);
  std::vector<double> reduced(k_q * k_m, 0.0);
  for (int64_t a = 0; a < k_q; ++a) {
    for (int64_t b = 0; b < k_m; ++b) {
      double sum = 0;
      for (int64_t i = 0; i < model->d_q; ++i) {
        for (int64_t c = 0; c < model->d_m; ++c) {
          sum += u[i * k_q + a] * j[i * model->d_m + c] * v[c * k_m + b];
        }
      }
      reduced[a * k_m + b] = sum;
    }
  }
  std::vector<double> all;
  for (int64_t r = 0; r < batch; ++r) all.insert(all.end(), reduced.begin(), reduced.end());
  const v1::DType dtype = ResolveDType(*model, request->output_dtype());
  response->set_version(version);
  Fill(Apply(*model, version, m, batch, true), {batch, model->d_q}, dtype, response->mutable_q());
  Fill(all, {batch, k_q, k_m}, dtype, response->mutable_reduced_jacobian());
  return grpc::Status::OK;
}

grpc::Status FakeSurrogateService::Jacobian(grpc::ServerContext* context,
                                            const v1::JacobianRequest* request,
                                            v1::JacobianResponse* response) {
  const FakeModel* model;
  int64_t version;
  if (grpc::Status s = Lookup(request->model(), &model, &version); !s.ok()) return s;
  std::vector<double> m;
  int64_t one;
  if (grpc::Status s = Rows(request->m(), "m", model->d_m, true, &m, &one); !s.ok()) return s;
  if (grpc::Status s = MaybeStall(*model, context); !s.ok()) return s;
  const v1::DType dtype = ResolveDType(*model, request->output_dtype());
  response->set_version(version);
  Fill(JacobianOf(*model, version), {model->d_q, model->d_m}, dtype, response->mutable_jacobian());
  if (request->return_q()) {
    Fill(Apply(*model, version, m, 1, true), {model->d_q}, dtype, response->mutable_q());
  }
  return grpc::Status::OK;
}

FakeServer StartFakeServer(int port, const std::string& admin_token,
                           int64_t refuse_every_evaluate) {
  grpc::EnableDefaultHealthCheckService(true);
  FakeServer fake;
  fake.service = std::make_unique<FakeSurrogateService>(refuse_every_evaluate);
  fake.training = std::make_unique<FakeTrainingService>(admin_token);
  fake.admin = std::make_unique<FakeModelAdminService>(admin_token);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                           &fake.port);
  builder.RegisterService(fake.service.get());
  builder.RegisterService(fake.training.get());
  builder.RegisterService(fake.admin.get());
  fake.server = builder.BuildAndStart();
  return fake;
}

}  // namespace dino::testing
