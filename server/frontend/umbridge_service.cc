#include "server/frontend/umbridge_service.h"

#include <torch/torch.h>

#include <charconv>
#include <chrono>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/frontend/json_reader.h"

namespace dino::frontend {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using serving::Method;

constexpr double kProtocolVersion = 1.0;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

HttpResponse JsonResponse(const json& body) {
  HttpResponse response;
  response.body = JsonBody(body);
  return response;
}

// The core names the fields of its own (gRPC) requests; a UM-Bridge client sent these.
std::string InUmbridgeTerms(absl::string_view message) {
  static constexpr std::pair<absl::string_view, absl::string_view> kFields[] = {
      {"model.name", "name"},
      {"model.version", "config.version"},
      {"model.label", "config.label"},
      {"label", "config.label"},
      {"m", "input[0]"},
      {"cotangents", "sens"},
      {"directions", "vec"},
  };
  for (const auto& [core, umbridge] : kFields) {
    if (absl::StartsWith(message, core) && message.size() > core.size() &&
        (message[core.size()] == ' ' || message[core.size()] == ':')) {
      return absl::StrCat(umbridge, message.substr(core.size()));
    }
  }
  return std::string(message);
}

// [x_1,...,x_n] with each number in its shortest form that reads back to the same double
// (std::to_chars: 0.6 ms for 4225 numbers where nlohmann's dump took 1.5 ms), written with a
// '.' or an exponent so that clients read doubles, as from nlohmann (3 -> 3.0). Finite only.
std::string NumberList(const double* data, int64_t n) {
  std::string out;
  out.reserve(static_cast<size_t>(n) * 24 + 2);
  out.push_back('[');
  char buffer[32];
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) out.push_back(',');
    const std::to_chars_result written = std::to_chars(buffer, buffer + sizeof(buffer), data[i]);
    const absl::string_view number(buffer, static_cast<size_t>(written.ptr - buffer));
    out.append(number.data(), number.size());
    if (number.find_first_of(".e") == absl::string_view::npos) out.append(".0");
  }
  out.push_back(']');
  return out;
}

// What a request selects: the model (name, config.version / config.label) and its deadline.
struct Selection {
  serving::ModelTarget target;
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
};

absl::StatusOr<json> ParseBody(const std::string& body) {
  auto parsed = ParseJson(body);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body is not valid JSON: ", parsed.status().message()));
  }
  if (!parsed->is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  return parsed;
}

absl::StatusOr<Selection> ParseSelection(const json& body) {
  Selection selection;
  auto name = body.find("name");
  if (name == body.end()) return absl::InvalidArgumentError("name is required");
  if (!name->is_string()) return absl::InvalidArgumentError("name must be a string");
  selection.target.name = name->get<std::string>();
  auto config = body.find("config");
  if (config == body.end() || config->is_null()) return selection;
  if (!config->is_object()) return absl::InvalidArgumentError("config must be a JSON object");
  for (const auto& [key, value] : config->items()) {
    if (key == "version") {
      if (!value.is_number_integer() || value.get<int64_t>() < 1) {
        return absl::InvalidArgumentError("config.version must be a positive integer");
      }
      selection.target.version = value.get<int64_t>();
    } else if (key == "label") {
      if (!value.is_string()) return absl::InvalidArgumentError("config.label must be a string");
      selection.target.label = value.get<std::string>();
    } else if (key == "timeout_seconds") {
      if (!value.is_number() || !(value.get<double>() > 0)) {
        return absl::InvalidArgumentError("config.timeout_seconds must be a positive number");
      }
      selection.deadline = std::chrono::system_clock::now() +
                           std::chrono::duration_cast<std::chrono::system_clock::duration>(
                               std::chrono::duration<double>(value.get<double>()));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("config.", key,
                       " is not an option of this server (options: version, label, "
                       "timeout_seconds)"));
    }
  }
  if (selection.target.version != 0 && !selection.target.label.empty()) {
    return absl::InvalidArgumentError("give config.version or config.label, not both");
  }
  return selection;
}

// A list of `size` numbers as a float64 tensor [size].
absl::StatusOr<torch::Tensor> ParseVector(const json& value, const std::string& field,
                                          int64_t size) {
  if (!value.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be a list of numbers"));
  }
  if (static_cast<int64_t>(value.size()) != size) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " has length ", value.size(), "; the model expects ", size));
  }
  torch::Tensor vector = torch::empty({size}, torch::kFloat64);
  double* out = vector.data_ptr<double>();
  for (int64_t i = 0; i < size; ++i) {
    const json& element = value[static_cast<size_t>(i)];
    if (!element.is_number()) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] is not a number"));
    }
    out[i] = element.get<double>();
  }
  return vector;
}

absl::StatusOr<torch::Tensor> ParseField(const json& body, const char* field, int64_t size) {
  auto value = body.find(field);
  if (value == body.end()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  return ParseVector(*value, field, size);
}

// input: the model's one input vector, [[m_1, …, m_dM]].
absl::StatusOr<torch::Tensor> ParseInput(const json& body, int64_t input_dim) {
  auto input = body.find("input");
  if (input == body.end()) return absl::InvalidArgumentError("input is required");
  if (!input->is_array() || input->size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input must be a list of 1 vector (the model has one input, of size ", input_dim, "), got ",
        input->is_array() ? absl::StrCat(input->size(), " vectors") : std::string("no list")));
  }
  return ParseVector((*input)[0], "input[0]", input_dim);
}

// inWrt/outWrt: the model has one input and one output, index 0.
absl::Status CheckIndex(const json& body, const char* field, const char* kind) {
  auto value = body.find(field);
  if (value == body.end()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (!value->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be an integer"));
  }
  if (value->get<int64_t>() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value->get<int64_t>(),
                                                   " is out of range: the model has one ", kind,
                                                   ", index 0"));
  }
  return absl::OkStatus();
}

// A UM-Bridge compute route as a query of the core.
struct Translation {
  Method method;
  const char* name;  // The route, for messages.
};

Translation TranslationOf(int route) {
  static constexpr Translation kTranslations[] = {
      {Method::kEvaluate, "Evaluate"},
      {Method::kVjp, "Gradient"},
      {Method::kJvp, "ApplyJacobian"},
      {Method::kHessianVectorProduct, "ApplyHessian"},
  };
  return kTranslations[route];
}

// The query of a compute route's body for a model with `info`, or why not.
absl::StatusOr<serving::Query> DecodeQuery(Method method, const json& body,
                                           const serving::ModelInfo& info) {
  serving::Query query;
  query.method = method;
  query.output_dtype = torch::kFloat64;  // JSON numbers are doubles.
  switch (method) {
    case Method::kVjp:
    case Method::kJvp:
      if (auto s = CheckIndex(body, "inWrt", "input"); !s.ok()) return s;
      if (auto s = CheckIndex(body, "outWrt", "output"); !s.ok()) return s;
      break;
    case Method::kHessianVectorProduct:
      if (auto s = CheckIndex(body, "inWrt1", "input"); !s.ok()) return s;
      if (auto s = CheckIndex(body, "inWrt2", "input"); !s.ok()) return s;
      if (auto s = CheckIndex(body, "outWrt", "output"); !s.ok()) return s;
      break;
    default:
      break;
  }
  auto m = ParseInput(body, info.input_dim);
  if (!m.ok()) return m.status();
  query.m = *std::move(m);
  if (method == Method::kVjp || method == Method::kHessianVectorProduct) {
    auto sens = ParseField(body, "sens", info.output_dim);
    if (!sens.ok()) return sens.status();
    query.cotangents = *std::move(sens);
  }
  if (method == Method::kJvp || method == Method::kHessianVectorProduct) {
    auto vec = ParseField(body, "vec", info.input_dim);
    if (!vec.ok()) return vec.status();
    query.directions = *std::move(vec);
  }
  return query;
}

}  // namespace

HttpResponse UmbridgeError(const absl::Status& status) {
  const char* type = "InternalError";
  int http_status = 500;
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      type = "ModelNotFound";
      http_status = 400;
      break;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      type = "InvalidInput";
      http_status = 400;
      break;
    case absl::StatusCode::kUnimplemented:
      type = "UnsupportedFeature";
      http_status = 400;
      break;
    case absl::StatusCode::kDataLoss:  // A result that cannot be sent (non-finite values).
      type = "InvalidOutput";
      http_status = 500;
      break;
    case absl::StatusCode::kUnauthenticated:
      type = "Unauthenticated";
      http_status = 401;
      break;
    case absl::StatusCode::kResourceExhausted:
      type = "ResourceExhausted";
      http_status = 429;
      break;
    case absl::StatusCode::kDeadlineExceeded:
      type = "DeadlineExceeded";
      http_status = 504;
      break;
    case absl::StatusCode::kUnavailable:
      type = "Unavailable";
      http_status = 503;
      break;
    default:
      break;
  }
  HttpResponse response;
  response.status = http_status;
  response.body =
      JsonBody({{"error", {{"type", type}, {"message", InUmbridgeTerms(status.message())}}}});
  if (status.code() == absl::StatusCode::kUnauthenticated) {
    response.headers.emplace_back("WWW-Authenticate", "Bearer, Basic realm=\"dino-serve\"");
  }
  return response;
}

UmbridgeService::UmbridgeService(const serving::ModelManager& models,
                                 serving::RequestScheduler& scheduler,
                                 metrics::ServerMetrics* metrics, const BearerTokenAuth* auth)
    : models_(models), scheduler_(scheduler), metrics_(metrics), auth_(auth) {}

void UmbridgeService::Register(HttpServer& server) {
  auto route = [this](HttpResponse (UmbridgeService::*handler)(const HttpRequest&) const) {
    return [this, handler](const HttpRequest& request) { return (this->*handler)(request); };
  };
  server.Handle("GET", "/Info", route(&UmbridgeService::Info));
  server.Handle("POST", "/ModelInfo", route(&UmbridgeService::ModelInfo));
  server.Handle("POST", "/InputSizes", route(&UmbridgeService::InputSizes));
  server.Handle("POST", "/OutputSizes", route(&UmbridgeService::OutputSizes));
  server.Handle("POST", "/Evaluate", route(&UmbridgeService::Evaluate));
  server.Handle("POST", "/Gradient", route(&UmbridgeService::Gradient));
  server.Handle("POST", "/ApplyJacobian", route(&UmbridgeService::ApplyJacobian));
  server.Handle("POST", "/ApplyHessian", route(&UmbridgeService::ApplyHessian));
  for (const char* path :
       {"/EvaluateShMem", "/GradientShMem", "/ApplyJacobianShMem", "/ApplyHessianShMem"}) {
    server.Handle("POST", path, route(&UmbridgeService::SharedMemoryUnsupported));
  }
  server.Handle("POST", "/TestShMem", route(&UmbridgeService::TestSharedMemory));
}

HttpResponse UmbridgeService::Refuse(const char* method, const std::string& model,
                                     const absl::Status& status, double seconds) const {
  if (metrics_ != nullptr) metrics_->RecordRequest(method, model, status.code(), seconds);
  return UmbridgeError(status);
}

HttpResponse UmbridgeService::Info(const HttpRequest& request) const {
  const Clock::time_point start = Clock::now();
  if (auth_ != nullptr) {
    if (auto denied = auth_->CheckHttpAuthorization(request.authorization); !denied.ok()) {
      return Refuse("Info", "", denied, SecondsSince(start));
    }
  }
  json names = json::array();
  for (const auto& listing : models_.List()) names.push_back(listing.name);
  if (metrics_ != nullptr) {
    metrics_->RecordRequest("Info", "", absl::StatusCode::kOk, SecondsSince(start));
  }
  return JsonResponse(json{{"protocolVersion", kProtocolVersion}, {"models", std::move(names)}});
}

absl::StatusOr<serving::ServableHandle> UmbridgeService::AuthorizedModel(
    const HttpRequest& request) const {
  if (auth_ != nullptr) {
    if (auto denied = auth_->CheckHttpAuthorization(request.authorization); !denied.ok()) {
      return denied;
    }
  }
  auto body = ParseBody(request.body);
  if (!body.ok()) return body.status();
  auto selection = ParseSelection(*body);
  if (!selection.ok()) return selection.status();
  return models_.Get(selection->target.name, selection->target.version, selection->target.label);
}

HttpResponse UmbridgeService::ModelInfo(const HttpRequest& request) const {
  const Clock::time_point start = Clock::now();
  absl::StatusOr<serving::ServableHandle> handle = AuthorizedModel(request);
  if (!handle.ok()) return Refuse("ModelInfo", "", handle.status(), SecondsSince(start));
  const serving::ModelInfo& info = handle->model->info();
  json body = {
      {"support",
       {{"Evaluate", true},
        {"Gradient", true},
        {"ApplyJacobian", true},
        {"ApplyHessian", info.has_hessian_vector_product}}},
      // Beyond the protocol (clients read only "support"): what the answers are.
      {"dino",
       {{"version", handle->version},
        {"inputSizes", json::array({info.input_dim})},
        {"outputSizes", json::array({info.output_dim})},
        {"hasReducedBases", info.has_reduced_bases},
        {"ApplyHessian",
         "exact second-order action d^2<sens, f>/dm^2 vec by double backward "
         "(automatic differentiation), not a Gauss-Newton or finite-difference approximation"}}},
  };
  if (metrics_ != nullptr) {
    metrics_->RecordRequest("ModelInfo", handle->name, absl::StatusCode::kOk, SecondsSince(start));
  }
  return JsonResponse(body);
}

HttpResponse UmbridgeService::InputSizes(const HttpRequest& request) const {
  return Sizes(request, /*input=*/true);
}

HttpResponse UmbridgeService::OutputSizes(const HttpRequest& request) const {
  return Sizes(request, /*input=*/false);
}

HttpResponse UmbridgeService::Sizes(const HttpRequest& request, bool input) const {
  const Clock::time_point start = Clock::now();
  const char* method = input ? "InputSizes" : "OutputSizes";
  absl::StatusOr<serving::ServableHandle> handle = AuthorizedModel(request);
  if (!handle.ok()) return Refuse(method, "", handle.status(), SecondsSince(start));
  const serving::ModelInfo& info = handle->model->info();
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(method, handle->name, absl::StatusCode::kOk, SecondsSince(start));
  }
  return JsonResponse(json{{input ? "inputSizes" : "outputSizes",
                            json::array({input ? info.input_dim : info.output_dim})}});
}

HttpResponse UmbridgeService::Evaluate(const HttpRequest& request) const {
  return Compute(Route::kEvaluate, request);
}
HttpResponse UmbridgeService::Gradient(const HttpRequest& request) const {
  return Compute(Route::kGradient, request);
}
HttpResponse UmbridgeService::ApplyJacobian(const HttpRequest& request) const {
  return Compute(Route::kApplyJacobian, request);
}
HttpResponse UmbridgeService::ApplyHessian(const HttpRequest& request) const {
  return Compute(Route::kApplyHessian, request);
}

HttpResponse UmbridgeService::Compute(Route route, const HttpRequest& request) const {
  const Clock::time_point start = Clock::now();
  const Translation translation = TranslationOf(static_cast<int>(route));
  const char* method = serving::MethodName(translation.method);
  if (auth_ != nullptr) {
    if (auto denied = auth_->CheckHttpAuthorization(request.authorization); !denied.ok()) {
      return Refuse(method, "", denied, SecondsSince(start));
    }
  }
  auto body = ParseBody(request.body);
  if (!body.ok()) return Refuse(method, "", body.status(), SecondsSince(start));
  auto selection = ParseSelection(*body);
  if (!selection.ok()) return Refuse(method, "", selection.status(), SecondsSince(start));

  // The sizes to check the vectors against come from the model the scheduler will resolve
  // again; it refuses an unknown model itself (and counts it), so that error passes through.
  absl::StatusOr<serving::Query> query = [&]() -> absl::StatusOr<serving::Query> {
    auto handle =
        models_.Get(selection->target.name, selection->target.version, selection->target.label);
    if (!handle.ok()) return handle.status();
    return DecodeQuery(translation.method, *body, handle->model->info());
  }();

  struct Outcome {
    absl::Status status;
    serving::Answer answer;
  };
  // Shared with the callback, which may still be returning from set_value on a compute thread
  // after this thread has its result.
  auto promise = std::make_shared<std::promise<Outcome>>();
  std::future<Outcome> future = promise->get_future();
  serving::CallControl control;
  control.deadline = selection->deadline;
  scheduler_.Submit(translation.method, selection->target, std::move(query), std::move(control),
                    [promise](const absl::Status& status, int64_t, serving::Answer answer) {
                      promise->set_value(Outcome{status, std::move(answer)});
                    });
  Outcome outcome = future.get();
  if (!outcome.status.ok()) return UmbridgeError(outcome.status);

  torch::Tensor values = outcome.answer.values.to(torch::kFloat64).contiguous().view(-1);
  if (!torch::isfinite(values).all().item<bool>()) {
    return UmbridgeError(absl::DataLossError(absl::StrCat(
        "the model's ", translation.name, " result contains NaN or Inf, which JSON cannot carry")));
  }
  const std::string list = NumberList(values.data_ptr<double>(), values.numel());
  HttpResponse response;
  response.body = route == Route::kEvaluate ? absl::StrCat("{\"output\":[", list, "]}")
                                            : absl::StrCat("{\"output\":", list, "}");
  return response;
}

HttpResponse UmbridgeService::SharedMemoryUnsupported(const HttpRequest& request) const {
  if (auth_ != nullptr) {
    if (auto denied = auth_->CheckHttpAuthorization(request.authorization); !denied.ok()) {
      return UmbridgeError(denied);
    }
  }
  return UmbridgeError(absl::UnimplementedError(
      absl::StrCat("this server does not exchange vectors through shared memory (", request.path,
                   "); send them in the JSON body to ",
                   request.path.substr(0, request.path.size() - std::string("ShMem").size()))));
}

HttpResponse UmbridgeService::TestSharedMemory(const HttpRequest& request) const {
  // UM-Bridge's clients probe with this before using shared memory, and fall back to HTTP when
  // the probe's value does not come back; {} is that answer.
  if (auth_ != nullptr) {
    if (auto denied = auth_->CheckHttpAuthorization(request.authorization); !denied.ok()) {
      return UmbridgeError(denied);
    }
  }
  return JsonResponse(json::object());
}

}  // namespace dino::frontend
