// KServe's Open Inference Protocol v2 over HTTP/REST, independent of any HTTP server: an
// HTTP server calls OipRestHandler::Handle with a request's method, path, body and headers
// and sends back the status code, content type and body it returns. JSON is translated to
// and from the same inference.ModelInferRequest / ModelInferResponse that the gRPC service
// uses, and answered through the same mapping (oip_mapping.h), so both transports give the
// same results and the same errors.
//
// Routes (docs/oip.md):
//   GET  /v2/health/live, /v2/health/ready
//   GET  /v2                                              server metadata
//   GET  /v2/models/{name}[/versions/{version}]           model metadata
//   GET  /v2/models/{name}[/versions/{version}]/ready
//   POST /v2/models/{name}[/versions/{version}]/infer     JSON tensors in and out
// Errors: {"error": "<message naming the field>"} with 400 (bad request), 401 (token),
// 404 (unknown model, version or route), 405 (wrong method), 429 (limits, full queue),
// 499 (cancelled), 503 (unavailable, not ready), 504 (deadline) or 500.
#pragma once

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/frontend/http_server.h"
#include "server/metrics/server_metrics.h"

namespace dino::frontend {

struct RestResponse {
  int status_code = 200;
  std::string content_type = "application/json";
  std::string body;
};

// Request headers, name → value; names are matched case-insensitively.
using RestHeaders = std::multimap<std::string, std::string>;

class OipRestHandler {
 public:
  // `metrics` (may be null) counts the calls answered here rather than by the scheduler;
  // `auth` (may be null: open) is checked on every route but the health routes.
  OipRestHandler(const serving::ModelManager& models, serving::RequestScheduler& scheduler,
                 metrics::ServerMetrics* metrics, const BearerTokenAuth* auth = nullptr);

  // /v2/health/ready answers 503 once the server stops accepting requests (draining).
  void SetAccepting(bool accepting) { accepting_.store(accepting); }

  // Answers one HTTP request; `path` may carry a query string (ignored). Inference blocks
  // the calling thread until the scheduler answers (HTTP servers give each connection a
  // thread); `control` carries the transport's deadline and cancellation.
  RestResponse Handle(std::string_view http_method, std::string_view path, std::string_view body,
                      const RestHeaders& headers, serving::CallControl control = {}) const;

  // Mounts every /v2 route on `server` (before it starts); `this` must outlive the server.
  void Register(HttpServer& server) const;

 private:
  RestResponse Infer(const std::string& name, const std::string& version, std::string_view body,
                     const RestHeaders& headers, serving::CallControl control) const;

  const serving::ModelManager& models_;
  serving::RequestScheduler& scheduler_;
  metrics::ServerMetrics* metrics_;
  const BearerTokenAuth* auth_;
  std::atomic<bool> accepting_{true};
};

namespace oip {

// The HTTP status of a core status code.
int HttpStatusOf(absl::StatusCode code);

// An inference request's JSON body → the gRPC request for model `name`, version `version`
// (from the path). Typed contents (fp32_contents / fp64_contents) carry the data; errors are
// INVALID_ARGUMENT naming the JSON field.
absl::Status InferRequestFromJson(std::string_view body, const std::string& name,
                                  const std::string& version,
                                  inference::ModelInferRequest* request);

// The JSON body of an inference response: {"model_name", "model_version", "id", "outputs":
// [{"name", "datatype", "shape", "data": [row-major values]}]}.
nlohmann::json InferResponseToJson(const inference::ModelInferResponse& response);

nlohmann::json ModelMetadataToJson(const inference::ModelMetadataResponse& response);
nlohmann::json ServerMetadataToJson(const inference::ServerMetadataResponse& response);

}  // namespace oip
}  // namespace dino::frontend
