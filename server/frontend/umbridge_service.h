// UM-Bridge protocol 1.0 frontend (https://um-bridge-docs.readthedocs.io): GET /Info and
// POST /ModelInfo, /InputSizes, /OutputSizes, /Evaluate, /Gradient, /ApplyJacobian,
// /ApplyHessian, JSON in and out. It only translates: JSON ⇄ serving::Query/Answer and
// absl::Status ⇄ the protocol's error objects {"error": {"type", "message"}}. The requests go
// through the core's RequestScheduler like gRPC's (queues, batching, limits, metrics).
//
// A DINO f: R^{d_M} → R^{d_Q} is a UM-Bridge model with one input of size d_M and one output
// of size d_Q, so inWrt, inWrt1, inWrt2 and outWrt must be 0:
//   Evaluate       {"output": [f(m)]}
//   Gradient       {"output": J(m)ᵀ sens}                    (gRPC Vjp)
//   ApplyJacobian  {"output": J(m) vec}                      (gRPC Jvp)
//   ApplyHessian   {"output": ∂²⟨sens, f⟩/∂m² · vec}          (gRPC HessianVectorProduct)
// Every served model is listed by /Info and supports all four. `config` selects what gRPC's
// ModelRef selects: {"version": 3} or {"label": "stable"} (default: the default version), and
// may give {"timeout_seconds": 2.5}, the call's deadline; other keys are refused.
//
// Bodies are read as JSON whatever their Content-Type says (UM-Bridge's clients send
// application/json, `curl -d` sends application/x-www-form-urlencoded); answers are
// application/json.
//
// Errors: the protocol's types with its status codes (ModelNotFound, InvalidInput,
// UnsupportedFeature: 400; InvalidOutput: 500), and for conditions the protocol has no type
// for, the core's: Unauthenticated 401, ResourceExhausted 429, DeadlineExceeded 504,
// Unavailable 503, InternalError 500.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/frontend/http_server.h"
#include "server/metrics/server_metrics.h"

namespace dino::frontend {

// The protocol's error response for a status of the core (its code picks type and HTTP
// status; its message is the message).
HttpResponse UmbridgeError(const absl::Status& status);

class UmbridgeService {
 public:
  // `metrics` (may be null) counts the calls answered here rather than by the scheduler:
  // discovery and requests refused before they name a model. `auth` (may be null: open) is
  // checked on every route (--require_token_for_inference).
  UmbridgeService(const serving::ModelManager& models, serving::RequestScheduler& scheduler,
                  metrics::ServerMetrics* metrics, const BearerTokenAuth* auth = nullptr);

  // Adds the protocol's routes to `server`.
  void Register(HttpServer& server);

  HttpResponse Info(const HttpRequest& request) const;
  HttpResponse ModelInfo(const HttpRequest& request) const;
  HttpResponse InputSizes(const HttpRequest& request) const;
  HttpResponse OutputSizes(const HttpRequest& request) const;
  HttpResponse Evaluate(const HttpRequest& request) const;
  HttpResponse Gradient(const HttpRequest& request) const;
  HttpResponse ApplyJacobian(const HttpRequest& request) const;
  HttpResponse ApplyHessian(const HttpRequest& request) const;
  // The shared-memory variants (EvaluateShMem, …) of UM-Bridge's own servers: refused with
  // UnsupportedFeature; /TestShMem answers {} so that clients fall back to HTTP.
  HttpResponse SharedMemoryUnsupported(const HttpRequest& request) const;
  HttpResponse TestSharedMemory(const HttpRequest& request) const;

 private:
  enum class Route { kEvaluate, kGradient, kApplyJacobian, kApplyHessian };
  // The servable a discovery request's body names ({"name", "config"}), after the token check.
  absl::StatusOr<serving::ServableHandle> AuthorizedModel(const HttpRequest& request) const;
  HttpResponse Sizes(const HttpRequest& request, bool input) const;
  HttpResponse Compute(Route route, const HttpRequest& request) const;
  // Answers a request refused before the scheduler saw it, and counts it.
  HttpResponse Refuse(const char* method, const std::string& model, const absl::Status& status,
                      double seconds) const;

  const serving::ModelManager& models_;
  serving::RequestScheduler& scheduler_;
  metrics::ServerMetrics* metrics_;
  const BearerTokenAuth* auth_;
};

}  // namespace dino::frontend
