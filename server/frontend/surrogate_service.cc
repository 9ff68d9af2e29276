#include "server/frontend/surrogate_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/frontend/tensor_codec.h"

namespace dino::frontend {
namespace {

using Clock = std::chrono::steady_clock;
using serving::ServableHandle;
using serving::SurrogateModel;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Runs model code, turning a LibTorch exception (a model failing at run time, memory
// exhausted) into INTERNAL with its first line, so one bad call never takes the server down.
template <typename Fn>
absl::Status Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    std::string what = e.what();
    return absl::InternalError(
        absl::StrCat("the model failed while computing: ", what.substr(0, what.find('\n'))));
  }
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

SurrogateService::SurrogateService(serving::ModelManager& manager, metrics::ServerMetrics* metrics,
                                   int64_t max_response_bytes, const BearerTokenAuth* auth)
    : manager_(manager), metrics_(metrics), max_response_bytes_(max_response_bytes), auth_(auth) {}

bool SurrogateService::Refused(const char* method, grpc::CallbackServerContext* context,
                               grpc::ServerUnaryReactor* reactor) {
  if (auth_ == nullptr) return false;
  grpc::Status denied = auth_->Check(*context);
  if (denied.ok()) return false;
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(method, "", absl::StatusCode::kUnauthenticated, 0.0);
  }
  reactor->Finish(denied);
  return true;
}

template <typename Request, typename Response, typename Work>
grpc::ServerUnaryReactor* SurrogateService::Dispatch(const char* method,
                                                     grpc::CallbackServerContext* context,
                                                     const Request* request, Response* response,
                                                     Work work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Clock::time_point start = Clock::now();
  auto finish = [this, reactor, method, start](const std::string& model,
                                               const absl::Status& status) {
    if (metrics_ != nullptr)
      metrics_->RecordRequest(method, model, status.code(), SecondsSince(start));
    reactor->Finish(ToGrpcStatus(status));
  };
  if (Refused(method, context, reactor)) return reactor;
  auto handle = manager_.Get(request->model().name(), request->model().version());
  if (!handle.ok()) {
    // The model label stays empty: clients must not be able to mint label values.
    finish("", handle.status());
    return reactor;
  }
  if (metrics_ != nullptr) metrics_->AddInFlight(handle->name, 1);
  auto finish_in_flight = [this, finish](const std::string& model, const absl::Status& status) {
    if (metrics_ != nullptr) metrics_->AddInFlight(model, -1);
    finish(model, status);
  };
  const bool queued =
      handle->executor->Submit([context, request, response, work, finish = finish_in_flight,
                                max_response_bytes = max_response_bytes_, handle = *handle] {
        // An expired call also counts as cancelled, so the deadline is checked first.
        if (context->deadline() <= std::chrono::system_clock::now()) {
          finish(handle.name,
                 absl::DeadlineExceededError("the deadline passed before the call ran"));
          return;
        }
        if (context->IsCancelled()) {
          finish(handle.name, absl::CancelledError("the call was cancelled before it ran"));
          return;
        }
        absl::Status status = Guarded([&] { return work(*handle.model, *request, response); });
        if (status.ok()) {
          response->set_version(handle.version);
          const size_t bytes = response->ByteSizeLong();
          if (static_cast<int64_t>(bytes) > max_response_bytes) {
            response->Clear();
            status = absl::ResourceExhaustedError(absl::StrCat(
                "the response would be ", bytes, " bytes, above the server's limit of ",
                max_response_bytes, " (--max_message_bytes); ask for fewer rows at a time"));
          }
        }
        finish(handle.name, status);
      });
  if (!queued) {
    finish_in_flight(handle->name, absl::UnavailableError("the server is shutting down"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* SurrogateService::ListModels(grpc::CallbackServerContext* context,
                                                       const dino::v1::ListModelsRequest*,
                                                       dino::v1::ListModelsResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (Refused("ListModels", context, reactor)) return reactor;
  for (const auto& listing : manager_.List()) {
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
  if (Refused("GetModelInfo", context, reactor)) return reactor;
  auto handle = manager_.Get(request->model().name(), request->model().version());
  if (!handle.ok()) {
    if (metrics_ != nullptr)
      metrics_->RecordRequest("GetModelInfo", "", handle.status().code(), SecondsSince(start));
    reactor->Finish(ToGrpcStatus(handle.status()));
    return reactor;
  }
  const serving::ModelInfo& info = handle->model->info();
  response->set_name(handle->name);
  response->set_version(handle->version);
  for (const auto& listing : manager_.List()) {
    if (listing.name != handle->name) continue;
    for (int64_t version : listing.versions) response->add_versions(version);
  }
  response->set_input_dim(info.input_dim);
  response->set_output_dim(info.output_dim);
  response->set_has_reduced_bases(info.has_reduced_bases);
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
  return Dispatch(
      "GetBases", context, request, response,
      [](const SurrogateModel& model, const dino::v1::GetBasesRequest& req,
         dino::v1::GetBasesResponse* resp) -> absl::Status {
        if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
        auto bases = model.GetBases();
        if (!bases.ok()) return bases.status();
        EncodeTensor(bases->input_basis, req.output_dtype(), resp->mutable_input_basis());
        EncodeTensor(bases->output_basis, req.output_dtype(), resp->mutable_output_basis());
        EncodeTensor(bases->output_shift, req.output_dtype(), resp->mutable_output_shift());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* SurrogateService::Evaluate(grpc::CallbackServerContext* context,
                                                     const dino::v1::EvaluateRequest* request,
                                                     dino::v1::EvaluateResponse* response) {
  return Dispatch("Evaluate", context, request, response,
                  [](const SurrogateModel& model, const dino::v1::EvaluateRequest& req,
                     dino::v1::EvaluateResponse* resp) -> absl::Status {
                    if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
                    auto m = DecodeTensor(req.m(), req.has_m(), "m");
                    if (!m.ok()) return m.status();
                    auto q = model.Evaluate(*m);
                    if (!q.ok()) return q.status();
                    EncodeTensor(*q, req.output_dtype(), resp->mutable_q());
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* SurrogateService::Jvp(grpc::CallbackServerContext* context,
                                                const dino::v1::JvpRequest* request,
                                                dino::v1::JvpResponse* response) {
  return Dispatch("Jvp", context, request, response,
                  [](const SurrogateModel& model, const dino::v1::JvpRequest& req,
                     dino::v1::JvpResponse* resp) -> absl::Status {
                    if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
                    auto m = DecodeTensor(req.m(), req.has_m(), "m");
                    if (!m.ok()) return m.status();
                    auto v = DecodeTensor(req.directions(), req.has_directions(), "directions");
                    if (!v.ok()) return v.status();
                    auto result = model.Jvp(*m, *v, req.return_q());
                    if (!result.ok()) return result.status();
                    EncodeTensor(result->values, req.output_dtype(), resp->mutable_jvp());
                    if (req.return_q())
                      EncodeTensor(result->q, req.output_dtype(), resp->mutable_q());
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* SurrogateService::Vjp(grpc::CallbackServerContext* context,
                                                const dino::v1::VjpRequest* request,
                                                dino::v1::VjpResponse* response) {
  return Dispatch("Vjp", context, request, response,
                  [](const SurrogateModel& model, const dino::v1::VjpRequest& req,
                     dino::v1::VjpResponse* resp) -> absl::Status {
                    if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
                    auto m = DecodeTensor(req.m(), req.has_m(), "m");
                    if (!m.ok()) return m.status();
                    auto w = DecodeTensor(req.cotangents(), req.has_cotangents(), "cotangents");
                    if (!w.ok()) return w.status();
                    auto result = model.Vjp(*m, *w, req.return_q());
                    if (!result.ok()) return result.status();
                    EncodeTensor(result->values, req.output_dtype(), resp->mutable_vjp());
                    if (req.return_q())
                      EncodeTensor(result->q, req.output_dtype(), resp->mutable_q());
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* SurrogateService::ReducedJacobian(
    grpc::CallbackServerContext* context, const dino::v1::ReducedJacobianRequest* request,
    dino::v1::ReducedJacobianResponse* response) {
  return Dispatch("ReducedJacobian", context, request, response,
                  [](const SurrogateModel& model, const dino::v1::ReducedJacobianRequest& req,
                     dino::v1::ReducedJacobianResponse* resp) -> absl::Status {
                    if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
                    auto m = DecodeTensor(req.m(), req.has_m(), "m");
                    if (!m.ok()) return m.status();
                    auto u =
                        DecodeTensor(req.output_basis(), req.has_output_basis(), "output_basis",
                                     /*required=*/false);
                    if (!u.ok()) return u.status();
                    auto v = DecodeTensor(req.input_basis(), req.has_input_basis(), "input_basis",
                                          /*required=*/false);
                    if (!v.ok()) return v.status();
                    auto result = model.ReducedJacobian(*m, *u, *v);
                    if (!result.ok()) return result.status();
                    EncodeTensor(result->q, req.output_dtype(), resp->mutable_q());
                    EncodeTensor(result->reduced_jacobian, req.output_dtype(),
                                 resp->mutable_reduced_jacobian());
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* SurrogateService::Jacobian(grpc::CallbackServerContext* context,
                                                     const dino::v1::JacobianRequest* request,
                                                     dino::v1::JacobianResponse* response) {
  return Dispatch("Jacobian", context, request, response,
                  [](const SurrogateModel& model, const dino::v1::JacobianRequest& req,
                     dino::v1::JacobianResponse* resp) -> absl::Status {
                    if (auto s = CheckOutputDtype(req.output_dtype()); !s.ok()) return s;
                    auto m = DecodeTensor(req.m(), req.has_m(), "m");
                    if (!m.ok()) return m.status();
                    auto result = model.Jacobian(*m, req.return_q());
                    if (!result.ok()) return result.status();
                    EncodeTensor(result->values, req.output_dtype(), resp->mutable_jacobian());
                    if (req.return_q())
                      EncodeTensor(result->q, req.output_dtype(), resp->mutable_q());
                    return absl::OkStatus();
                  });
}

}  // namespace dino::frontend
