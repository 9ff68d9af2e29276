#include "server/frontend/oip_rest.h"

#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/frontend/oip_mapping.h"

namespace dino::frontend {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

RestResponse Json(int status_code, const json& body) {
  RestResponse response;
  response.status_code = status_code;
  response.body = JsonBody(body);
  return response;
}

RestResponse Error(int status_code, const std::string& message) {
  return Json(status_code, json{{"error", message}});
}

RestResponse Error(const absl::Status& status) {
  return Error(oip::HttpStatusOf(status.code()), std::string(status.message()));
}

std::optional<std::string_view> FindHeader(const RestHeaders& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (absl::EqualsIgnoreCase(key, absl::string_view(name.data(), name.size()))) {
      return std::string_view(value);
    }
  }
  return std::nullopt;
}

// Appends the numbers of `data` (nested arrays allowed, read row-major) to `out`.
template <typename T>
absl::Status FlattenNumbers(const json& data, const std::string& input,
                            google::protobuf::RepeatedField<T>* out) {
  if (data.is_number()) {
    out->Add(static_cast<T>(data.get<double>()));
    return absl::OkStatus();
  }
  if (!data.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs['", input, "'].data must hold numbers (nested arrays allowed), found ",
                     data.type_name()));
  }
  for (const json& element : data) {
    if (auto status = FlattenNumbers(element, input, out); !status.ok()) return status;
  }
  return absl::OkStatus();
}

// A JSON parameters object → OIP parameters (bool, integer or string values).
absl::Status ParametersFromJson(
    const json& parameters, const std::string& field,
    google::protobuf::Map<std::string, inference::InferParameter>* out) {
  if (!parameters.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be an object"));
  }
  for (const auto& [key, value] : parameters.items()) {
    inference::InferParameter parameter;
    if (value.is_boolean()) {
      parameter.set_bool_param(value.get<bool>());
    } else if (value.is_number_integer()) {
      parameter.set_int64_param(value.get<int64_t>());
    } else if (value.is_string()) {
      parameter.set_string_param(value.get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".", key, " must be a boolean, an integer or a string"));
    }
    (*out)[key] = parameter;
  }
  return absl::OkStatus();
}

absl::Status InputFromJson(const json& input, size_t index,
                           inference::ModelInferRequest::InferInputTensor* out) {
  const std::string where = absl::StrCat("inputs[", index, "]");
  if (!input.is_object()) return absl::InvalidArgumentError(where + " must be an object");
  if (!input.contains("name") || !input["name"].is_string()) {
    return absl::InvalidArgumentError(where + ".name must be a string");
  }
  out->set_name(input["name"].get<std::string>());
  const std::string& name = out->name();
  if (!input.contains("datatype") || !input["datatype"].is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs['", name, "'].datatype must be a string"));
  }
  out->set_datatype(input["datatype"].get<std::string>());
  if (!input.contains("shape") || !input["shape"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("inputs['", name, "'].shape must be an array of integers"));
  }
  for (const json& extent : input["shape"]) {
    if (!extent.is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat("inputs['", name, "'].shape must be an array of integers"));
    }
    out->add_shape(extent.get<int64_t>());
  }
  if (input.contains("parameters")) {
    if (auto status =
            ParametersFromJson(input["parameters"], absl::StrCat("inputs['", name, "'].parameters"),
                               out->mutable_parameters());
        !status.ok()) {
      return status;
    }
    if (auto it = out->parameters().find("binary_data_size"); it != out->parameters().end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "inputs['", name,
          "']: binary tensor data (Triton's binary_data_size) is not supported; send JSON data"));
    }
  }
  if (!input.contains("data")) {
    return absl::InvalidArgumentError(absl::StrCat("inputs['", name, "'].data is required"));
  }
  // Other datatypes carry no data here: the shared decoder refuses them, naming the input.
  if (out->datatype() == "FP32") {
    return FlattenNumbers(input["data"], name, out->mutable_contents()->mutable_fp32_contents());
  }
  if (out->datatype() == "FP64") {
    return FlattenNumbers(input["data"], name, out->mutable_contents()->mutable_fp64_contents());
  }
  return absl::OkStatus();
}

// The values of one output, from its typed contents or its raw bytes.
json OutputData(const inference::ModelInferResponse& response, int index) {
  const auto& output = response.outputs(index);
  json data = json::array();
  if (index < response.raw_output_contents_size()) {
    const std::string& raw = response.raw_output_contents(index);
    if (output.datatype() == "FP64") {
      std::vector<double> values(raw.size() / sizeof(double));
      std::memcpy(values.data(), raw.data(), values.size() * sizeof(double));
      for (double v : values) data.push_back(v);
    } else {
      std::vector<float> values(raw.size() / sizeof(float));
      std::memcpy(values.data(), raw.data(), values.size() * sizeof(float));
      for (float v : values) data.push_back(v);
    }
  } else if (output.datatype() == "FP64") {
    for (double v : output.contents().fp64_contents()) data.push_back(v);
  } else {
    for (float v : output.contents().fp32_contents()) data.push_back(v);
  }
  return data;
}

json TensorMetadataToJson(const inference::ModelMetadataResponse::TensorMetadata& tensor) {
  return json{{"name", tensor.name()},
              {"datatype", tensor.datatype()},
              {"shape", std::vector<int64_t>(tensor.shape().begin(), tensor.shape().end())}};
}

}  // namespace

namespace oip {

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // Client closed request (nginx's convention).
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

absl::Status InferRequestFromJson(std::string_view body, const std::string& name,
                                  const std::string& version,
                                  inference::ModelInferRequest* request) {
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::InvalidArgumentError("the request body is not valid JSON");
  }
  if (!parsed.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  request->set_model_name(name);
  request->set_model_version(version);
  if (parsed.contains("id")) {
    if (!parsed["id"].is_string()) return absl::InvalidArgumentError("id must be a string");
    request->set_id(parsed["id"].get<std::string>());
  }
  if (parsed.contains("parameters")) {
    if (auto status =
            ParametersFromJson(parsed["parameters"], "parameters", request->mutable_parameters());
        !status.ok()) {
      return status;
    }
  }
  if (!parsed.contains("inputs") || !parsed["inputs"].is_array()) {
    return absl::InvalidArgumentError("inputs must be an array of tensors");
  }
  size_t index = 0;
  for (const json& input : parsed["inputs"]) {
    if (auto status = InputFromJson(input, index++, request->add_inputs()); !status.ok()) {
      return status;
    }
  }
  if (parsed.contains("outputs")) {
    if (!parsed["outputs"].is_array()) {
      return absl::InvalidArgumentError("outputs must be an array of {\"name\": ...}");
    }
    index = 0;
    for (const json& output : parsed["outputs"]) {
      const std::string where = absl::StrCat("outputs[", index++, "]");
      if (!output.is_object() || !output.contains("name") || !output["name"].is_string()) {
        return absl::InvalidArgumentError(where + ".name must be a string");
      }
      auto* requested = request->add_outputs();
      requested->set_name(output["name"].get<std::string>());
      if (output.contains("parameters")) {
        if (auto status = ParametersFromJson(output["parameters"], where + ".parameters",
                                             requested->mutable_parameters());
            !status.ok()) {
          return status;
        }
        auto it = requested->parameters().find("binary_data");
        if (it != requested->parameters().end() && it->second.bool_param()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "outputs['", requested->name(),
              "']: binary tensor data (Triton's binary_data) is not supported; omit it for "
              "JSON data"));
        }
      }
    }
  }
  return absl::OkStatus();
}

json InferResponseToJson(const inference::ModelInferResponse& response) {
  json body{{"model_name", response.model_name()}, {"model_version", response.model_version()}};
  if (!response.id().empty()) body["id"] = response.id();
  json outputs = json::array();
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& output = response.outputs(i);
    outputs.push_back(
        json{{"name", output.name()},
             {"datatype", output.datatype()},
             {"shape", std::vector<int64_t>(output.shape().begin(), output.shape().end())},
             {"data", OutputData(response, i)}});
  }
  body["outputs"] = std::move(outputs);
  return body;
}

json ModelMetadataToJson(const inference::ModelMetadataResponse& response) {
  json inputs = json::array(), outputs = json::array();
  for (const auto& tensor : response.inputs()) inputs.push_back(TensorMetadataToJson(tensor));
  for (const auto& tensor : response.outputs()) outputs.push_back(TensorMetadataToJson(tensor));
  return json{{"name", response.name()},
              {"versions",
               std::vector<std::string>(response.versions().begin(), response.versions().end())},
              {"platform", response.platform()},
              {"inputs", std::move(inputs)},
              {"outputs", std::move(outputs)}};
}

json ServerMetadataToJson(const inference::ServerMetadataResponse& response) {
  return json{{"name", response.name()},
              {"version", response.version()},
              {"extensions", std::vector<std::string>(response.extensions().begin(),
                                                      response.extensions().end())}};
}

}  // namespace oip

OipRestHandler::OipRestHandler(const serving::ModelManager& models,
                               serving::RequestScheduler& scheduler,
                               metrics::ServerMetrics* metrics, const BearerTokenAuth* auth)
    : models_(models), scheduler_(scheduler), metrics_(metrics), auth_(auth) {}

RestResponse OipRestHandler::Handle(std::string_view http_method, std::string_view path,
                                    std::string_view body, const RestHeaders& headers,
                                    serving::CallControl control) const {
  const Clock::time_point start = Clock::now();
  // absl's string_view is not std's in every abseil build: work on owned strings.
  const std::string method_text(http_method);
  const std::string path_text(path.substr(0, path.find('?')));
  std::vector<std::string> segments = absl::StrSplit(path_text, '/', absl::SkipEmpty());
  const bool get = http_method == "GET", post = http_method == "POST";
  const auto wrong_method = [&](const char* allowed) {
    return Error(405, absl::StrCat(method_text, " ", path_text, ": this route takes ", allowed));
  };
  if (segments.empty() || segments[0] != "v2") {
    return Error(404, absl::StrCat("no route ", path_text, "; routes start with /v2"));
  }

  // Health: open to probes, no token.
  if (segments.size() == 3 && segments[1] == "health" &&
      (segments[2] == "live" || segments[2] == "ready")) {
    if (!get) return wrong_method("GET");
    if (segments[2] == "live") return Json(200, json{{"live", true}});
    if (!oip::ServerReady(models_, accepting_.load())) {
      return Error(503, accepting_.load() ? "no model is loaded" : "the server is shutting down");
    }
    return Json(200, json{{"ready", true}});
  }

  if (auth_ != nullptr) {
    if (absl::Status denied =
            auth_->CheckAuthorization(FindHeader(headers, "authorization"), "header");
        !denied.ok()) {
      if (metrics_ != nullptr) {
        metrics_->RecordRequest("REST", "", absl::StatusCode::kUnauthenticated, 0.0);
      }
      return Error(denied);
    }
  }

  if (segments.size() == 1) {
    if (!get) return wrong_method("GET");
    inference::ServerMetadataResponse metadata;
    oip::ServerMetadata(&metadata);
    if (metrics_ != nullptr) {
      metrics_->RecordRequest("ServerMetadata", "", absl::StatusCode::kOk, SecondsSince(start));
    }
    return Json(200, oip::ServerMetadataToJson(metadata));
  }

  // /v2/models/{name}[/versions/{version}][/ready | /infer]
  if (segments[1] != "models" || segments.size() < 3) {
    return Error(404, absl::StrCat("no route ", path_text));
  }
  const std::string& name = segments[2];
  std::string version;
  size_t next = 3;
  if (segments.size() >= 5 && segments[3] == "versions") {
    version = segments[4];
    next = 5;
  }
  if (segments.size() > next + 1) return Error(404, absl::StrCat("no route ", path_text));
  const std::string action = segments.size() == next + 1 ? segments[next] : "";

  if (action.empty()) {
    if (!get) return wrong_method("GET");
    inference::ModelMetadataRequest request;
    request.set_name(name);
    request.set_version(version);
    inference::ModelMetadataResponse metadata;
    const absl::Status status = oip::ModelMetadata(models_, request, &metadata);
    if (metrics_ != nullptr) {
      metrics_->RecordRequest("ModelMetadata", status.ok() ? name : "", status.code(),
                              SecondsSince(start));
    }
    if (!status.ok()) return Error(status);
    return Json(200, oip::ModelMetadataToJson(metadata));
  }
  if (action == "ready") {
    if (!get) return wrong_method("GET");
    inference::ModelReadyRequest request;
    request.set_name(name);
    request.set_version(version);
    const bool ready = accepting_.load() && oip::ModelReady(models_, request);
    if (metrics_ != nullptr) {
      metrics_->RecordRequest("ModelReady", ready ? name : "", absl::StatusCode::kOk,
                              SecondsSince(start));
    }
    // The protocol: 200 when ready, 4xx when not.
    if (!ready) {
      return Error(400, absl::StrCat("model '", name, "'", version.empty() ? "" : " version '",
                                     version, version.empty() ? "" : "'", " is not ready"));
    }
    return Json(200, json{{"name", name}, {"ready", true}});
  }
  if (action == "infer") {
    if (!post) return wrong_method("POST");
    return Infer(name, version, body, headers, std::move(control));
  }
  return Error(404, absl::StrCat("no route ", path_text));
}

RestResponse OipRestHandler::Infer(const std::string& name, const std::string& version,
                                   std::string_view body, const RestHeaders& headers,
                                   serving::CallControl control) const {
  if (FindHeader(headers, "inference-header-content-length").has_value()) {
    return Error(400,
                 "binary tensor data (Triton's Inference-Header-Content-Length) is not "
                 "supported; send a JSON body");
  }
  inference::ModelInferRequest request;
  if (absl::Status status = oip::InferRequestFromJson(body, name, version, &request);
      !status.ok()) {
    return Error(status);
  }
  inference::ModelInferResponse response;
  std::promise<absl::Status> answered;
  std::future<absl::Status> status = answered.get_future();
  oip::SubmitInfer(scheduler_, request, std::move(control), &response,
                   [&answered](const absl::Status& s) { answered.set_value(s); });
  const absl::Status result = status.get();
  if (!result.ok()) return Error(result);
  return Json(200, oip::InferResponseToJson(response));
}

void OipRestHandler::Register(HttpServer& server) const {
  auto route = [this](const HttpRequest& request) {
    RestHeaders headers;
    if (!request.authorization.empty()) headers.emplace("authorization", request.authorization);
    if (!request.content_type.empty()) headers.emplace("content-type", request.content_type);
    const RestResponse answer = Handle(request.method, request.path, request.body, headers);
    HttpResponse response;
    response.status = answer.status_code;
    response.content_type = answer.content_type;
    response.body = answer.body;
    return response;
  };
  for (const char* method : {"GET", "POST"}) {
    server.Handle(method, "/v2", route);
    server.HandlePrefix(method, "/v2/", route);
  }
}

}  // namespace dino::frontend
