#include "server/frontend/surrogate_service.h"

#include <chrono>
#include <optional>

#include "absl/strings/str_cat.h"
#include "server/frontend/tensor_codec.h"

namespace dino::frontend {
namespace {

using Clock = std::chrono::steady_clock;
using serving::Method;
using serving::Query;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A request's output_dtype field: unset (the model's dtype) or FP32/FP64.
absl::StatusOr<std::optional<torch::Dtype>> OutputDtype(dino::v1::DType output_dtype) {
  if (auto status = CheckOutputDtype(output_dtype); !status.ok()) return status;
  if (output_dtype == dino::v1::FP32) return std::optional(torch::kFloat32);
  if (output_dtype == dino::v1::FP64) return std::optional(torch::kFloat64);
  return std::optional<torch::Dtype>();
}

// The answer's trust signal, when the request asked for it, into the response's `trust`.
template <typename Response>
void EncodeTrust(const serving::Answer& answer, Response* out) {
  if (!answer.trust) return;
  dino::v1::TrustSignal* trust = out->mutable_trust();
  trust->mutable_score()->Add(answer.trust->score.begin(), answer.trust->score.end());
  trust->mutable_out_of_distribution()->Reserve(
      static_cast<int>(answer.trust->out_of_distribution.size()));
  for (bool flagged : answer.trust->out_of_distribution) trust->add_out_of_distribution(flagged);
}

// A query of `method` with the request's output_dtype, or the error naming the field.
absl::StatusOr<Query> NewQuery(Method method, dino::v1::DType output_dtype) {
  auto dtype = OutputDtype(output_dtype);
  if (!dtype.ok()) return dtype.status();
  Query query;
  query.method = method;
  query.output_dtype = *dtype;
  return query;
}

// Decodes a tensor field into `*out`, or returns why not.
absl::Status Decode(const dino::v1::Tensor& message, bool present, const char* field,
                    torch::Tensor* out, bool required = true) {
  auto tensor = DecodeTensor(message, present, field, required);
  if (!tensor.ok()) return tensor.status();
  *out = *std::move(tensor);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Query> QueryOf(const dino::v1::EvaluateRequest& request) {
  auto query = NewQuery(Method::kEvaluate, request.output_dtype());
  if (!query.ok()) return query;
  query->want_trust = request.return_trust();
  if (auto s = Decode(request.m(), request.has_m(), "m", &query->m); !s.ok()) return s;
  return query;
}

absl::StatusOr<Query> QueryOf(const dino::v1::JvpRequest& request) {
  auto query = NewQuery(Method::kJvp, request.output_dtype());
  if (!query.ok()) return query;
  query->want_trust = request.return_trust();
  query->want_q = request.return_q();
  absl::Status s = Decode(request.m(), request.has_m(), "m", &query->m);
  if (s.ok()) {
    s = Decode(request.directions(), request.has_directions(), "directions", &query->directions);
  }
  if (!s.ok()) return s;
  return query;
}

absl::StatusOr<Query> QueryOf(const dino::v1::VjpRequest& request) {
  auto query = NewQuery(Method::kVjp, request.output_dtype());
  if (!query.ok()) return query;
  query->want_trust = request.return_trust();
  query->want_q = request.return_q();
  absl::Status s = Decode(request.m(), request.has_m(), "m", &query->m);
  if (s.ok()) {
    s = Decode(request.cotangents(), request.has_cotangents(), "cotangents", &query->cotangents);
  }
  if (!s.ok()) return s;
  return query;
}

absl::StatusOr<Query> QueryOf(const dino::v1::ReducedJacobianRequest& request) {
  auto query = NewQuery(Method::kReducedJacobian, request.output_dtype());
  if (!query.ok()) return query;
  query->want_trust = request.return_trust();
  absl::Status s = Decode(request.m(), request.has_m(), "m", &query->m);
  if (s.ok()) {
    s = Decode(request.output_basis(), request.has_output_basis(), "output_basis",
               &query->output_basis, /*required=*/false);
  }
  if (s.ok()) {
    s = Decode(request.input_basis(), request.has_input_basis(), "input_basis", &query->input_basis,
               /*required=*/false);
  }
  if (!s.ok()) return s;
  return query;
}

absl::StatusOr<Query> QueryOf(const dino::v1::HessianVectorProductRequest& request) {
  auto query = NewQuery(Method::kHessianVectorProduct, request.output_dtype());
  if (!query.ok()) return query;
  absl::Status s = Decode(request.m(), request.has_m(), "m", &query->m);
  if (s.ok()) {
    s = Decode(request.cotangents(), request.has_cotangents(), "cotangents", &query->cotangents);
  }
  if (s.ok()) {
    s = Decode(request.directions(), request.has_directions(), "directions", &query->directions);
  }
  if (!s.ok()) return s;
  return query;
}

absl::StatusOr<Query> QueryOf(const dino::v1::JacobianRequest& request) {
  auto query = NewQuery(Method::kJacobian, request.output_dtype());
  if (!query.ok()) return query;
  query->want_trust = request.return_trust();
  query->want_q = request.return_q();
  if (auto s = Decode(request.m(), request.has_m(), "m", &query->m); !s.ok()) return s;
  return query;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

bool RefuseUnauthorizedCall(const BearerTokenAuth* auth, metrics::ServerMetrics* metrics,
                            const char* method, grpc::CallbackServerContext* context,
                            grpc::ServerUnaryReactor* reactor) {
  if (auth == nullptr) return false;
  grpc::Status denied = auth->Check(*context);
  if (denied.ok()) return false;
  if (metrics != nullptr) {
    metrics->RecordRequest(method, "", static_cast<absl::StatusCode>(denied.error_code()), 0.0);
  }
  reactor->Finish(denied);
  return true;
}

SurrogateService::SurrogateService(const serving::ModelManager& models,
                                   serving::RequestScheduler& scheduler,
                                   metrics::ServerMetrics* metrics, const BearerTokenAuth* auth)
    : models_(models), scheduler_(scheduler), metrics_(metrics), auth_(auth) {}

template <typename Response, typename Encode>
grpc::ServerUnaryReactor* SurrogateService::Infer(Method method,
                                                  grpc::CallbackServerContext* context,
                                                  const dino::v1::ModelRef& model,
                                                  absl::StatusOr<Query> query, Response* response,
                                                  Encode encode) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, serving::MethodName(method), context, reactor))
    return reactor;
  serving::CallControl control;
  control.deadline = context->deadline();
  control.is_cancelled = [context] { return context->IsCancelled(); };
  scheduler_.Submit(method, serving::ModelTarget{model.name(), model.version(), model.label()},
                    std::move(query), std::move(control),
                    [reactor, response, encode](const absl::Status& status, int64_t version,
                                                serving::Answer answer) {
                      if (status.ok()) {
                        response->set_version(version);
                        encode(answer, response);
                      }
                      reactor->Finish(ToGrpcStatus(status));
                    });
  return reactor;
}

grpc::ServerUnaryReactor* SurrogateService::ListModels(grpc::CallbackServerContext* context,
                                                       const dino::v1::ListModelsRequest*,
                                                       dino::v1::ListModelsResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "ListModels", context, reactor)) return reactor;
  for (const auto& listing : models_.List()) {
    auto* model = response->add_models();
    model->set_name(listing.name);
    for (int64_t version : listing.versions) {
      auto* entry = model->add_versions();
      entry->set_version(version);
      entry->set_is_default(version == listing.default_version);
    }
  }
  if (metrics_ != nullptr)
    metrics_->RecordRequest("ListModels", "", absl::StatusCode::kOk, SecondsSince(start));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SurrogateService::GetModelInfo(
    grpc::CallbackServerContext* context, const dino::v1::GetModelInfoRequest* request,
    dino::v1::GetModelInfoResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "GetModelInfo", context, reactor)) return reactor;
  auto handle =
      models_.Get(request->model().name(), request->model().version(), request->model().label());
  if (!handle.ok()) {
    if (metrics_ != nullptr)
      metrics_->RecordRequest("GetModelInfo", "", handle.status().code(), SecondsSince(start));
    reactor->Finish(ToGrpcStatus(handle.status()));
    return reactor;
  }
  const serving::ModelInfo& info = handle->model->info();
  response->set_name(handle->name);
  response->set_version(handle->version);
  for (const auto& listing : models_.List()) {
    if (listing.name != handle->name) continue;
    for (int64_t version : listing.versions) response->add_versions(version);
  }
  response->set_input_dim(info.input_dim);
  response->set_output_dim(info.output_dim);
  response->set_has_reduced_bases(info.has_reduced_bases);
  response->set_has_prior(info.has_prior);
  response->set_has_trust_score(info.has_trust_score);
  response->set_input_rank(info.input_rank);
  response->set_output_rank(info.output_rank);
  response->set_architecture(info.architecture);
  response->set_dtype(WireDtype(info.dtype));
  response->set_metadata_json(info.metadata.dump());
  if (metrics_ != nullptr) {
    metrics_->RecordRequest("GetModelInfo", handle->name, absl::StatusCode::kOk,
                            SecondsSince(start));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* SurrogateService::GetBases(grpc::CallbackServerContext* context,
                                                     const dino::v1::GetBasesRequest* request,
                                                     dino::v1::GetBasesResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "GetBases", context, reactor)) return reactor;
  auto dtype = OutputDtype(request->output_dtype());
  absl::Status status = dtype.status();
  if (status.ok()) {
    auto found = scheduler_.GetBases(
        serving::ModelTarget{request->model().name(), request->model().version(),
                             request->model().label()},
        *dtype);
    status = found.status();
    if (found.ok()) {
      response->set_version(found->version);
      const auto unchanged = dino::v1::DTYPE_UNSPECIFIED;
      EncodeTensor(found->bases.input_basis, unchanged, response->mutable_input_basis());
      EncodeTensor(found->bases.output_basis, unchanged, response->mutable_output_basis());
      EncodeTensor(found->bases.output_shift, unchanged, response->mutable_output_shift());
    }
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* SurrogateService::Evaluate(grpc::CallbackServerContext* context,
                                                     const dino::v1::EvaluateRequest* request,
                                                     dino::v1::EvaluateResponse* response) {
  return Infer(Method::kEvaluate, context, request->model(), QueryOf(*request), response,
               [](const serving::Answer& answer, dino::v1::EvaluateResponse* out) {
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, out->mutable_q());
                 EncodeTrust(answer, out);
               });
}

grpc::ServerUnaryReactor* SurrogateService::Jvp(grpc::CallbackServerContext* context,
                                                const dino::v1::JvpRequest* request,
                                                dino::v1::JvpResponse* response) {
  return Infer(Method::kJvp, context, request->model(), QueryOf(*request), response,
               [](const serving::Answer& answer, dino::v1::JvpResponse* out) {
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, out->mutable_jvp());
                 if (answer.q.defined()) {
                   EncodeTensor(answer.q, dino::v1::DTYPE_UNSPECIFIED, out->mutable_q());
                 }
                 EncodeTrust(answer, out);
               });
}

grpc::ServerUnaryReactor* SurrogateService::Vjp(grpc::CallbackServerContext* context,
                                                const dino::v1::VjpRequest* request,
                                                dino::v1::VjpResponse* response) {
  return Infer(Method::kVjp, context, request->model(), QueryOf(*request), response,
               [](const serving::Answer& answer, dino::v1::VjpResponse* out) {
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, out->mutable_vjp());
                 if (answer.q.defined()) {
                   EncodeTensor(answer.q, dino::v1::DTYPE_UNSPECIFIED, out->mutable_q());
                 }
                 EncodeTrust(answer, out);
               });
}

grpc::ServerUnaryReactor* SurrogateService::ReducedJacobian(
    grpc::CallbackServerContext* context, const dino::v1::ReducedJacobianRequest* request,
    dino::v1::ReducedJacobianResponse* response) {
  return Infer(Method::kReducedJacobian, context, request->model(), QueryOf(*request), response,
               [](const serving::Answer& answer, dino::v1::ReducedJacobianResponse* out) {
                 EncodeTensor(answer.q, dino::v1::DTYPE_UNSPECIFIED, out->mutable_q());
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED,
                              out->mutable_reduced_jacobian());
                 EncodeTrust(answer, out);
               });
}

grpc::ServerUnaryReactor* SurrogateService::Jacobian(grpc::CallbackServerContext* context,
                                                     const dino::v1::JacobianRequest* request,
                                                     dino::v1::JacobianResponse* response) {
  return Infer(Method::kJacobian, context, request->model(), QueryOf(*request), response,
               [](const serving::Answer& answer, dino::v1::JacobianResponse* out) {
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, out->mutable_jacobian());
                 if (answer.q.defined()) {
                   EncodeTensor(answer.q, dino::v1::DTYPE_UNSPECIFIED, out->mutable_q());
                 }
                 EncodeTrust(answer, out);
               });
}

grpc::ServerUnaryReactor* SurrogateService::HessianVectorProduct(
    grpc::CallbackServerContext* context, const dino::v1::HessianVectorProductRequest* request,
    dino::v1::HessianVectorProductResponse* response) {
  return Infer(Method::kHessianVectorProduct, context, request->model(), QueryOf(*request),
               response,
               [](const serving::Answer& answer, dino::v1::HessianVectorProductResponse* out) {
                 EncodeTensor(answer.values, dino::v1::DTYPE_UNSPECIFIED, out->mutable_hvp());
               });
}

}  // namespace dino::frontend
