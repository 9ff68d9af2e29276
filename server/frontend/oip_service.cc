#include "server/frontend/oip_service.h"

#include <chrono>

#include "server/frontend/oip_mapping.h"
#include "server/frontend/surrogate_service.h"

namespace dino::frontend {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

OipService::OipService(const serving::ModelManager& models, serving::RequestScheduler& scheduler,
                       metrics::ServerMetrics* metrics, const BearerTokenAuth* auth)
    : models_(models), scheduler_(scheduler), metrics_(metrics), auth_(auth) {}

void OipService::Answer(const char* method, const std::string& model, const absl::Status& status,
                        double seconds, grpc::ServerUnaryReactor* reactor) {
  if (metrics_ != nullptr) metrics_->RecordRequest(method, model, status.code(), seconds);
  reactor->Finish(ToGrpcStatus(status));
}

grpc::ServerUnaryReactor* OipService::ServerLive(grpc::CallbackServerContext* context,
                                                 const inference::ServerLiveRequest*,
                                                 inference::ServerLiveResponse* response) {
  auto* reactor = context->DefaultReactor();
  // Answering at all is being live.
  response->set_live(true);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* OipService::ServerReady(grpc::CallbackServerContext* context,
                                                  const inference::ServerReadyRequest*,
                                                  inference::ServerReadyResponse* response) {
  auto* reactor = context->DefaultReactor();
  response->set_ready(oip::ServerReady(models_, accepting_.load()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* OipService::ModelReady(grpc::CallbackServerContext* context,
                                                 const inference::ModelReadyRequest* request,
                                                 inference::ModelReadyResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "ModelReady", context, reactor)) return reactor;
  response->set_ready(accepting_.load() && oip::ModelReady(models_, *request));
  Answer("ModelReady", response->ready() ? request->name() : "", absl::OkStatus(),
         SecondsSince(start), reactor);
  return reactor;
}

grpc::ServerUnaryReactor* OipService::ServerMetadata(grpc::CallbackServerContext* context,
                                                     const inference::ServerMetadataRequest*,
                                                     inference::ServerMetadataResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "ServerMetadata", context, reactor)) return reactor;
  oip::ServerMetadata(response);
  Answer("ServerMetadata", "", absl::OkStatus(), SecondsSince(start), reactor);
  return reactor;
}

grpc::ServerUnaryReactor* OipService::ModelMetadata(grpc::CallbackServerContext* context,
                                                    const inference::ModelMetadataRequest* request,
                                                    inference::ModelMetadataResponse* response) {
  const Clock::time_point start = Clock::now();
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "ModelMetadata", context, reactor)) return reactor;
  const absl::Status status = oip::ModelMetadata(models_, *request, response);
  Answer("ModelMetadata", status.ok() ? request->name() : "", status, SecondsSince(start), reactor);
  return reactor;
}

grpc::ServerUnaryReactor* OipService::ModelInfer(grpc::CallbackServerContext* context,
                                                 const inference::ModelInferRequest* request,
                                                 inference::ModelInferResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (RefuseUnauthorizedCall(auth_, metrics_, "ModelInfer", context, reactor)) return reactor;
  serving::CallControl control;
  control.deadline = context->deadline();
  control.is_cancelled = [context] { return context->IsCancelled(); };
  // The scheduler counts the request under its core method (Evaluate, Jvp, ...).
  oip::SubmitInfer(
      scheduler_, *request, std::move(control), response,
      [reactor](const absl::Status& status) { reactor->Finish(ToGrpcStatus(status)); });
  return reactor;
}

}  // namespace dino::frontend
