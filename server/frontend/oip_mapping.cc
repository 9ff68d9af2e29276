#include "server/frontend/oip_mapping.h"

#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

namespace dino::frontend::oip {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "raw_input_contents are little-endian; a big-endian host would need byte swaps");

using serving::Method;

constexpr const char* kKnownInputs[] = {kInputM, kInputDirections, kInputCotangents,
                                        kInputOutputBasis, kInputInputBasis};
constexpr const char* kKnownOutputs[] = {kOutputQ, kOutputJvp, kOutputVjp, kOutputReducedJacobian,
                                         kOutputJacobian};

bool IsOneOf(const std::string& name, absl::Span<const char* const> names) {
  for (const char* known : names) {
    if (name == known) return true;
  }
  return false;
}

const char* DatatypeName(torch::Dtype dtype) { return dtype == torch::kFloat64 ? "FP64" : "FP32"; }

// The core's messages name dino.v1's ModelRef fields; an OIP client sent model_name and
// model_version.
absl::Status InOipTerms(const absl::Status& status) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrReplaceAll(status.message(), {{"model.name", "model_name"},
                                                             {"model.version", "model_version"},
                                                             {"model.label", "model_version"}}));
}

// A view of `bytes` as a tensor when they are aligned for its elements, else a copy (the
// view is valid while the request lives and is never written to).
torch::Tensor TensorOfBytes(const void* bytes, const std::vector<int64_t>& shape,
                            torch::Dtype dtype, size_t element_size) {
  const auto options = torch::TensorOptions().dtype(dtype);
  auto view = torch::from_blob(const_cast<void*>(bytes), shape, options);
  if (reinterpret_cast<uintptr_t>(bytes) % element_size == 0) return view;
  return view.clone();
}

// One input tensor; `raw` is its raw_input_contents entry, or null for typed contents.
absl::StatusOr<torch::Tensor> DecodeInput(
    const inference::ModelInferRequest::InferInputTensor& input, const std::string* raw) {
  const std::string& name = input.name();
  torch::Dtype dtype;
  size_t element_size;
  if (input.datatype() == "FP32") {
    dtype = torch::kFloat32;
    element_size = 4;
  } else if (input.datatype() == "FP64") {
    dtype = torch::kFloat64;
    element_size = 8;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "input '", name, "': datatype must be FP32 or FP64, got '", input.datatype(), "'"));
  }
  std::vector<int64_t> shape(input.shape().begin(), input.shape().end());
  uint64_t elements = 1;
  for (int64_t extent : shape) {
    if (extent < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", name, "': shape [", absl::StrJoin(shape, ", "), "] has a negative extent"));
    }
    if (extent != 0 &&
        elements > std::numeric_limits<uint64_t>::max() / 8 / static_cast<uint64_t>(extent)) {
      return absl::InvalidArgumentError(absl::StrCat("input '", name, "': shape is too large"));
    }
    elements *= static_cast<uint64_t>(extent);
  }
  const auto shape_text = [&shape] { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); };
  if (raw != nullptr) {
    if (input.has_contents()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", name, "' has contents although the request uses raw_input_contents"));
    }
    if (raw->size() != elements * element_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", name, "': raw_input_contents holds ", raw->size(), " bytes, shape ",
          shape_text(), " of ", input.datatype(), " needs ", elements * element_size));
    }
    return TensorOfBytes(raw->data(), shape, dtype, element_size);
  }
  const inference::InferTensorContents& contents = input.contents();
  const int other_fields =
      contents.bool_contents_size() + contents.int_contents_size() +
      contents.int64_contents_size() + contents.uint_contents_size() +
      contents.uint64_contents_size() + contents.bytes_contents_size() +
      (dtype == torch::kFloat32 ? contents.fp64_contents_size() : contents.fp32_contents_size());
  const char* field = dtype == torch::kFloat32 ? "fp32_contents" : "fp64_contents";
  if (other_fields != 0) {
    return absl::InvalidArgumentError(absl::StrCat("input '", name, "': datatype ",
                                                   input.datatype(), " takes its values in ", field,
                                                   " only"));
  }
  const uint64_t given =
      dtype == torch::kFloat32 ? contents.fp32_contents_size() : contents.fp64_contents_size();
  if (given != elements) {
    return absl::InvalidArgumentError(absl::StrCat("input '", name, "': ", field, " holds ", given,
                                                   " values, shape ", shape_text(), " needs ",
                                                   elements));
  }
  // Repeated numeric fields are contiguous and aligned arrays.
  const void* data = dtype == torch::kFloat32
                         ? static_cast<const void*>(contents.fp32_contents().data())
                         : static_cast<const void*>(contents.fp64_contents().data());
  if (elements == 0) return torch::empty(shape, torch::TensorOptions().dtype(dtype));
  return TensorOfBytes(data, shape, dtype, element_size);
}

// The request's output_datatype parameter, if any.
absl::StatusOr<std::optional<torch::Dtype>> OutputDatatype(
    const inference::ModelInferRequest& request) {
  auto it = request.parameters().find(kOutputDatatypeParameter);
  if (it == request.parameters().end()) return std::optional<torch::Dtype>();
  if (it->second.parameter_choice_case() == inference::InferParameter::kStringParam) {
    if (it->second.string_param() == "FP32") return std::optional(torch::kFloat32);
    if (it->second.string_param() == "FP64") return std::optional(torch::kFloat64);
  }
  return absl::InvalidArgumentError(absl::StrCat("parameter '", kOutputDatatypeParameter,
                                                 "' must be the string \"FP32\" or \"FP64\""));
}

// The input a derivative output needs, and the output each optional input belongs to.
const char* RequiredInputOf(const std::string& derivative) {
  if (derivative == kOutputJvp) return kInputDirections;
  if (derivative == kOutputVjp) return kInputCotangents;
  return nullptr;
}

const char* OutputUsing(const std::string& input) {
  if (input == kInputDirections) return kOutputJvp;
  if (input == kInputCotangents) return kOutputVjp;
  if (input == kInputOutputBasis || input == kInputInputBasis) return kOutputReducedJacobian;
  return nullptr;
}

Method MethodOf(const std::string& derivative) {
  if (derivative == kOutputJvp) return Method::kJvp;
  if (derivative == kOutputVjp) return Method::kVjp;
  if (derivative == kOutputReducedJacobian) return Method::kReducedJacobian;
  if (derivative == kOutputJacobian) return Method::kJacobian;
  return Method::kEvaluate;
}

void AddTensorMetadata(
    const std::string& name, torch::Dtype dtype, std::vector<int64_t> shape,
    google::protobuf::RepeatedPtrField<inference::ModelMetadataResponse::TensorMetadata>* out) {
  auto* tensor = out->Add();
  tensor->set_name(name);
  tensor->set_datatype(DatatypeName(dtype));
  for (int64_t extent : shape) tensor->add_shape(extent);
}

}  // namespace

std::vector<std::string> ServerExtensions() {
  // "parameters": request parameters are read (output_datatype).
  return {"parameters"};
}

serving::ModelTarget TargetOf(const std::string& model_name, const std::string& model_version) {
  serving::ModelTarget target;
  target.name = model_name;
  int64_t number = 0;
  if (model_version.empty()) {
    // The default version.
  } else if (absl::ascii_isdigit(static_cast<unsigned char>(model_version[0])) &&
             absl::SimpleAtoi(model_version, &number)) {
    target.version = number;
  } else {
    target.label = model_version;
  }
  return target;
}

absl::Status DecodeInferRequest(const inference::ModelInferRequest& request, InferCall* call,
                                serving::Query* query) {
  call->target = TargetOf(request.model_name(), request.model_version());
  if (request.model_name().empty()) return absl::InvalidArgumentError("model_name is required");
  auto output_dtype = OutputDatatype(request);
  if (!output_dtype.ok()) return output_dtype.status();
  query->output_dtype = *output_dtype;

  // Requested outputs: at most one derivative, and q.
  std::string derivative;
  bool want_q = false;
  for (const auto& output : request.outputs()) {
    const std::string& name = output.name();
    if (!IsOneOf(name, kKnownOutputs)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "output '", name, "' is not an output; known: ", absl::StrJoin(kKnownOutputs, ", ")));
    }
    for (const std::string& earlier : call->outputs) {
      if (earlier == name) {
        return absl::InvalidArgumentError(absl::StrCat("output '", name, "' is requested twice"));
      }
    }
    call->outputs.push_back(name);
    if (name == kOutputQ) {
      want_q = true;
    } else if (!derivative.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("outputs '", derivative, "' and '", name,
                       "' cannot be requested together: one derivative output per request"));
    } else {
      derivative = name;
    }
  }

  // Inputs by name, each decoded from its typed or raw contents.
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("raw_input_contents has ", request.raw_input_contents_size(), " entries for ",
                     request.inputs_size(), " inputs: one per input, in order"));
  }
  std::map<std::string, torch::Tensor> inputs;
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& input = request.inputs(i);
    if (!IsOneOf(input.name(), kKnownInputs)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input '", input.name(),
                       "' is not an input; known: ", absl::StrJoin(kKnownInputs, ", ")));
    }
    if (inputs.count(input.name()) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("input '", input.name(), "' is given twice"));
    }
    auto tensor = DecodeInput(input, raw ? &request.raw_input_contents(i) : nullptr);
    if (!tensor.ok()) return tensor.status();
    inputs[input.name()] = *std::move(tensor);
  }

  if (call->outputs.empty()) {
    // Every output the model produces for these inputs.
    const bool directions = inputs.count(kInputDirections) != 0;
    const bool cotangents = inputs.count(kInputCotangents) != 0;
    if (directions && cotangents) {
      return absl::InvalidArgumentError(
          "inputs 'directions' and 'cotangents' cannot be given together: request output 'jvp' "
          "or 'vjp'");
    }
    if (directions) derivative = kOutputJvp;
    if (cotangents) derivative = kOutputVjp;
    want_q = true;
    call->outputs.push_back(kOutputQ);
    if (!derivative.empty()) call->outputs.push_back(derivative);
  }
  call->method = MethodOf(derivative);
  call->raw_outputs = raw;

  if (inputs.count(kInputM) == 0) return absl::InvalidArgumentError("input 'm' is required");
  if (const char* needed = RequiredInputOf(derivative);
      needed != nullptr && inputs.count(needed) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("input '", needed, "' is required for output '", derivative, "'"));
  }
  for (const auto& [name, unused] : inputs) {
    const char* user = OutputUsing(name);
    if (user != nullptr && derivative != user) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", name, "' is only used with output '", user, "', which is not requested"));
    }
  }

  query->method = call->method;
  query->m = inputs[kInputM];
  if (auto it = inputs.find(kInputDirections); it != inputs.end()) query->directions = it->second;
  if (auto it = inputs.find(kInputCotangents); it != inputs.end()) query->cotangents = it->second;
  if (auto it = inputs.find(kInputOutputBasis); it != inputs.end()) {
    query->output_basis = it->second;
  }
  if (auto it = inputs.find(kInputInputBasis); it != inputs.end()) query->input_basis = it->second;
  query->want_q = want_q && call->method != Method::kEvaluate;
  return absl::OkStatus();
}

void EncodeInferResponse(const inference::ModelInferRequest& request, const InferCall& call,
                         int64_t version, const serving::Answer& answer,
                         inference::ModelInferResponse* response) {
  response->set_model_name(call.target.name);
  response->set_model_version(std::to_string(version));
  response->set_id(request.id());
  for (const std::string& name : call.outputs) {
    // Evaluate's values are q; a derivative method's values are the derivative and its q
    // rides along.
    const torch::Tensor& source =
        name == kOutputQ && call.method != Method::kEvaluate ? answer.q : answer.values;
    const torch::Tensor tensor = source.contiguous();
    auto* output = response->add_outputs();
    output->set_name(name);
    output->set_datatype(DatatypeName(tensor.scalar_type()));
    for (int64_t extent : tensor.sizes()) output->add_shape(extent);
    const size_t bytes = tensor.numel() * tensor.element_size();
    if (call.raw_outputs) {
      response->add_raw_output_contents()->assign(static_cast<const char*>(tensor.data_ptr()),
                                                  bytes);
    } else if (tensor.scalar_type() == torch::kFloat64) {
      auto* values = output->mutable_contents()->mutable_fp64_contents();
      values->Resize(static_cast<int>(tensor.numel()), 0.0);
      if (bytes != 0) std::memcpy(values->mutable_data(), tensor.data_ptr(), bytes);
    } else {
      auto* values = output->mutable_contents()->mutable_fp32_contents();
      values->Resize(static_cast<int>(tensor.numel()), 0.0f);
      if (bytes != 0) std::memcpy(values->mutable_data(), tensor.data_ptr(), bytes);
    }
  }
}

void SubmitInfer(serving::RequestScheduler& scheduler, const inference::ModelInferRequest& request,
                 serving::CallControl control, inference::ModelInferResponse* response,
                 std::function<void(const absl::Status&)> done) {
  auto call = std::make_shared<InferCall>();
  serving::Query query;
  absl::Status decoded = DecodeInferRequest(request, call.get(), &query);
  absl::StatusOr<serving::Query> submitted =
      decoded.ok() ? absl::StatusOr<serving::Query>(std::move(query)) : decoded;
  const serving::ModelTarget target = call->target;
  scheduler.Submit(call->method, target, std::move(submitted), std::move(control),
                   [call, &request, response, done = std::move(done)](
                       const absl::Status& status, int64_t version, serving::Answer answer) {
                     if (status.ok())
                       EncodeInferResponse(request, *call, version, answer, response);
                     done(InOipTerms(status));
                   });
}

absl::Status ModelMetadata(const serving::ModelManager& models,
                           const inference::ModelMetadataRequest& request,
                           inference::ModelMetadataResponse* response) {
  if (request.name().empty()) return absl::InvalidArgumentError("name is required");
  const serving::ModelTarget target = TargetOf(request.name(), request.version());
  auto handle = models.Get(target.name, target.version, target.label);
  if (!handle.ok()) return InOipTerms(handle.status());
  const serving::ModelInfo& info = handle->model->info();
  response->set_name(handle->name);
  for (const auto& listing : models.List()) {
    if (listing.name != handle->name) continue;
    for (int64_t version : listing.versions) response->add_versions(std::to_string(version));
  }
  // A TorchScript module served by LibTorch: Triton's name for that platform.
  response->set_platform("pytorch_libtorch");
  const int64_t d_m = info.input_dim, d_q = info.output_dim;
  const torch::Dtype dtype = info.dtype;
  auto* inputs = response->mutable_inputs();
  AddTensorMetadata(kInputM, dtype, {-1, d_m}, inputs);
  AddTensorMetadata(kInputDirections, dtype, {-1, d_m}, inputs);
  AddTensorMetadata(kInputCotangents, dtype, {-1, d_q}, inputs);
  AddTensorMetadata(kInputOutputBasis, dtype, {d_q, -1}, inputs);
  AddTensorMetadata(kInputInputBasis, dtype, {d_m, -1}, inputs);
  auto* outputs = response->mutable_outputs();
  AddTensorMetadata(kOutputQ, dtype, {-1, d_q}, outputs);
  AddTensorMetadata(kOutputJvp, dtype, {-1, d_q}, outputs);
  AddTensorMetadata(kOutputVjp, dtype, {-1, d_m}, outputs);
  // In the model's bases when it has them; in client bases (any ranks) otherwise.
  if (info.has_reduced_bases) {
    AddTensorMetadata(kOutputReducedJacobian, dtype, {-1, info.output_rank, info.input_rank},
                      outputs);
  } else {
    AddTensorMetadata(kOutputReducedJacobian, dtype, {-1, -1, -1}, outputs);
  }
  AddTensorMetadata(kOutputJacobian, dtype, {d_q, d_m}, outputs);
  return absl::OkStatus();
}

bool ModelReady(const serving::ModelManager& models, const inference::ModelReadyRequest& request) {
  if (request.name().empty()) return false;
  const serving::ModelTarget target = TargetOf(request.name(), request.version());
  return models.Get(target.name, target.version, target.label).ok();
}

void ServerMetadata(inference::ServerMetadataResponse* response) {
  response->set_name(kServerName);
  response->set_version(DINO_SERVE_VERSION);
  for (const std::string& extension : ServerExtensions()) response->add_extensions(extension);
}

bool ServerReady(const serving::ModelManager& models, bool accepting) {
  return accepting && models.loaded_versions() > 0;
}

}  // namespace dino::frontend::oip
