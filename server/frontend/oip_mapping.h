// The one mapping between KServe's Open Inference Protocol v2 (OIP) and the serving core,
// shared by the gRPC service (oip_service.h) and the REST functions (oip_rest.h): the REST
// side turns its JSON into the same inference.ModelInferRequest and reads the same
// inference.ModelInferResponse back, so that both transports decode, validate and answer
// identically. docs/oip.md is the user-facing description.
//
// ModelInfer: input `m` [B, d_M] or [d_M] and requested outputs choose one core Method:
//   outputs          inputs besides m                       Method             want_q
//   q                —                                       kEvaluate
//   jvp (+q)         directions [B, d_M] | [B, k, d_M]       kJvp               q requested
//   vjp (+q)         cotangents [B, d_Q] | [B, k, d_Q]       kVjp               q requested
//   reduced_jacobian (+q)  optional output_basis [d_Q, k_Q] and input_basis [d_M, k_M]
//                                                            kReducedJacobian   (always)
//   jacobian (+q)    —  (m is one point)                     kJacobian          q requested
// No requested outputs: jvp and q when `directions` is given, vjp and q with `cotangents`,
// else q. At most one derivative output per request; an input the chosen method does not
// use, an unknown input or output name, a duplicate, a datatype other than FP32/FP64, or
// contents that do not match the shape are INVALID_ARGUMENT naming the input.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "inference/grpc_predict_v2.pb.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/core/surrogate_model.h"

namespace dino::frontend::oip {

// Output and input tensor names of the mapping.
inline constexpr char kInputM[] = "m";
inline constexpr char kInputDirections[] = "directions";
inline constexpr char kInputCotangents[] = "cotangents";
inline constexpr char kInputOutputBasis[] = "output_basis";
inline constexpr char kInputInputBasis[] = "input_basis";
inline constexpr char kOutputQ[] = "q";
inline constexpr char kOutputJvp[] = "jvp";
inline constexpr char kOutputVjp[] = "vjp";
inline constexpr char kOutputReducedJacobian[] = "reduced_jacobian";
inline constexpr char kOutputJacobian[] = "jacobian";
// Request parameter choosing the datatype of the outputs ("FP32" or "FP64"; default: the
// model's).
inline constexpr char kOutputDatatypeParameter[] = "output_datatype";

// The server's name and version in ServerMetadata, and the OIP extensions it implements.
inline constexpr char kServerName[] = "dino-serve";
std::vector<std::string> ServerExtensions();

// OIP's version string: "" (the default version), a version number, or else a version label
// (dino-serve's config.json labels, e.g. "stable").
serving::ModelTarget TargetOf(const std::string& model_name, const std::string& model_version);

// A decoded ModelInfer request: what to submit to the scheduler and how to answer.
struct InferCall {
  serving::Method method = serving::Method::kEvaluate;
  serving::ModelTarget target;
  // Output names in response order: the derivative output (if any), then q when returned.
  std::vector<std::string> outputs;
  bool raw_outputs = false;  // The request used raw_input_contents.
};

// Decodes `request` into the call and its query. The query's tensors may view the request's
// bytes, so `request` must outlive the computation. Errors are INVALID_ARGUMENT naming the
// input, output or parameter.
absl::Status DecodeInferRequest(const inference::ModelInferRequest& request, InferCall* call,
                                serving::Query* query);

// Fills the response of a call answered by model version `version`.
void EncodeInferResponse(const inference::ModelInferRequest& request, const InferCall& call,
                         int64_t version, const serving::Answer& answer,
                         inference::ModelInferResponse* response);

// Decodes `request`, submits it to the scheduler (the one request path of every frontend) and
// calls `done` exactly once: with OK after filling `*response`, or with the error (decoding
// errors are answered through the scheduler too, so they are counted like any refusal).
// `request` and `response` must stay alive until `done` runs; `done` must not block.
void SubmitInfer(serving::RequestScheduler& scheduler, const inference::ModelInferRequest& request,
                 serving::CallControl control, inference::ModelInferResponse* response,
                 std::function<void(const absl::Status&)> done);

// ModelMetadata: NOT_FOUND for an unknown model or version.
absl::Status ModelMetadata(const serving::ModelManager& models,
                           const inference::ModelMetadataRequest& request,
                           inference::ModelMetadataResponse* response);

// ModelReady: whether the model (version) is loaded; an unknown one is not ready (no error).
bool ModelReady(const serving::ModelManager& models, const inference::ModelReadyRequest& request);

void ServerMetadata(inference::ServerMetadataResponse* response);

// ServerReady: accepting requests (not draining) with at least one model version loaded.
bool ServerReady(const serving::ModelManager& models, bool accepting);

}  // namespace dino::frontend::oip
