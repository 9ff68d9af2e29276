#include "client/dino_client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <chrono>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/tensor_codec.h"

namespace dino::client {
namespace {

// Timeouts from here up (including absl::InfiniteDuration()) mean "no deadline": now + the
// timeout in nanoseconds would overflow std::chrono::system_clock's int64 representation.
constexpr absl::Duration kNoDeadline = absl::Hours(24 * 365 * 100);

void SetModelRef(const ModelRef& model, v1::ModelRef* ref) {
  ref->set_name(model.name);
  ref->set_version(model.version);
}

absl::StatusOr<v1::DType> OutputDType(const CallOptions& call) {
  if (!call.output_dtype.has_value()) return v1::DTYPE_UNSPECIFIED;
  absl::StatusOr<v1::DType> dtype = ToProtoDType(*call.output_dtype);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("output_dtype: ", dtype.status().message()));
  }
  return dtype;
}

// A response tensor that breaks the protocol is the server's fault, not the caller's: report
// it as INTERNAL naming the RPC, rather than the codec's INVALID_ARGUMENT.
absl::StatusOr<NpyArray> DecodeResponseTensor(const v1::Tensor& tensor, absl::string_view rpc,
                                              absl::string_view field) {
  absl::StatusOr<NpyArray> array = DecodeTensor(tensor, field);
  if (!array.ok()) {
    return absl::InternalError(
        absl::StrCat("malformed ", rpc, " response: ", array.status().message()));
  }
  return array;
}

// Encodes the request's input arrays, each into its field (named in errors).
absl::Status EncodeInputs(
    std::initializer_list<std::tuple<const NpyArray*, v1::Tensor*, const char*>> inputs) {
  for (const auto& [array, field, name] : inputs) {
    if (absl::Status s = EncodeTensor(*array, field, name); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// Decodes the q of a Jvp, Vjp or Jacobian response when the caller asked for it.
absl::Status DecodeRequestedQ(bool requested, const v1::Tensor& tensor, absl::string_view rpc,
                              std::optional<NpyArray>* q) {
  if (!requested) return absl::OkStatus();
  absl::StatusOr<NpyArray> decoded = DecodeResponseTensor(tensor, rpc, "q");
  if (!decoded.ok()) return decoded.status();
  *q = *std::move(decoded);
  return absl::OkStatus();
}

}  // namespace

template <typename Request, typename Response>
absl::Status DinoClient::Invoke(grpc::Status (v1::Surrogate::StubInterface::*rpc)(
                                    grpc::ClientContext*, const Request&, Response*),
                                Request& request, Response* response,
                                const CallOptions& call) const {
  absl::StatusOr<v1::DType> out_dtype = OutputDType(call);
  if (!out_dtype.ok()) return out_dtype.status();
  request.set_output_dtype(*out_dtype);
  grpc::ClientContext context;
  Prepare(&context, call);
  return FromGrpcStatus((stub_.get()->*rpc)(&context, request, response));
}

absl::string_view HealthStatusName(HealthStatus status) {
  switch (status) {
    case HealthStatus::kUnknown:
      return "UNKNOWN";
    case HealthStatus::kServing:
      return "SERVING";
    case HealthStatus::kNotServing:
      return "NOT_SERVING";
    case HealthStatus::kServiceUnknown:
      return "SERVICE_UNKNOWN";
  }
  return "UNKNOWN";
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share the canonical numbering 0..16.
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::Status ValidateBearerToken(absl::string_view token) {
  if (token.empty()) return absl::InvalidArgumentError("empty bearer token");
  for (size_t i = 0; i < token.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(token[i]);
    if (c < 0x21 || c > 0x7e) {
      // The token is a secret: say where the bad character is, not what the token is.
      return absl::InvalidArgumentError(
          absl::StrCat("bearer token: character ", i + 1, " of ", token.size(),
                       " is not visible ASCII (whitespace, control or non-ASCII byte)"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<std::string> ReadPemFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(flag, ": cannot read ", path));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (contents.str().find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", path, " holds no PEM data"));
  }
  return contents.str();
}

}  // namespace

absl::Status ApplyTlsFlags(const TlsClientFlags& flags, ClientOptions* options) {
  const TlsClientFiles& files = flags.files;
  if (!flags.tls && files.ca_path.empty() && files.cert_path.empty() && files.key_path.empty() &&
      flags.server_name.empty()) {
    return absl::OkStatus();
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      TlsChannelCredentials(files);
  if (!credentials.ok()) return credentials.status();
  options->credentials = *std::move(credentials);
  options->tls_server_name = flags.server_name;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(
    const TlsClientFiles& files) {
  if (files.cert_path.empty() != files.key_path.empty()) {
    return absl::InvalidArgumentError(files.cert_path.empty() ? "--tls_key needs --tls_cert"
                                                              : "--tls_cert needs --tls_key");
  }
  grpc::SslCredentialsOptions ssl;
  if (!files.ca_path.empty()) {
    absl::StatusOr<std::string> ca = ReadPemFile(files.ca_path, "--tls_ca");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *std::move(ca);
  }
  if (!files.cert_path.empty()) {
    absl::StatusOr<std::string> cert = ReadPemFile(files.cert_path, "--tls_cert");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPemFile(files.key_path, "--tls_key");
    if (!key.ok()) return key.status();
    ssl.pem_cert_chain = *std::move(cert);
    ssl.pem_private_key = *std::move(key);
  }
  return grpc::SslCredentials(ssl);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const ClientOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("empty server target");
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("timeout must be positive, got ", absl::FormatDuration(options.timeout)));
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes must be positive, got ", options.max_message_bytes));
  }
  if (!options.bearer_token.empty()) {
    if (absl::Status s = ValidateBearerToken(options.bearer_token); !s.ok()) return s;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.tls_server_name.empty()) {
    if (options.credentials == nullptr) {
      return absl::InvalidArgumentError("tls_server_name needs TLS credentials");
    }
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  std::shared_ptr<grpc::ChannelCredentials> credentials =
      options.credentials != nullptr ? options.credentials : grpc::InsecureChannelCredentials();
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create a channel to ", options.target));
  }
  return channel;
}

void ConfigureContext(const ClientOptions& options, std::optional<absl::Duration> timeout,
                      grpc::ClientContext* context) {
  if (timeout.has_value() && *timeout < kNoDeadline) {
    context->set_deadline(std::chrono::system_clock::now() + absl::ToChronoNanoseconds(*timeout));
  }
  context->set_wait_for_ready(options.wait_for_ready);
  if (!options.bearer_token.empty()) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", options.bearer_token));
  }
}

absl::StatusOr<DinoClient> DinoClient::Connect(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = CreateClientChannel(options);
  if (!channel.ok()) return channel.status();
  return DinoClient(*std::move(channel), options);
}

DinoClient::DinoClient(std::shared_ptr<grpc::ChannelInterface> channel,
                       const ClientOptions& options)
    : options_(options),
      channel_(std::move(channel)),
      stub_(v1::Surrogate::NewStub(channel_)),
      health_stub_(grpc::health::v1::Health::NewStub(channel_)) {}

void DinoClient::Prepare(grpc::ClientContext* context, const CallOptions& call) const {
  ConfigureContext(options_, call.timeout.value_or(options_.timeout), context);
}

absl::Status DinoClient::WaitForReady(absl::Duration timeout) const {
  const auto deadline = timeout < kNoDeadline
                            ? std::chrono::system_clock::now() + absl::ToChronoNanoseconds(timeout)
                            : std::chrono::system_clock::time_point::max();
  if (!channel_->WaitForConnected(deadline)) {
    return absl::DeadlineExceededError(absl::StrCat("could not connect to ", options_.target,
                                                    " within ", absl::FormatDuration(timeout)));
  }
  return absl::OkStatus();
}

absl::StatusOr<HealthStatus> DinoClient::CheckHealth(absl::string_view service,
                                                     const CallOptions& call) const {
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(std::string(service));
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  Prepare(&context, call);
  if (grpc::Status s = health_stub_->Check(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  switch (response.status()) {
    case grpc::health::v1::HealthCheckResponse::SERVING:
      return HealthStatus::kServing;
    case grpc::health::v1::HealthCheckResponse::NOT_SERVING:
      return HealthStatus::kNotServing;
    case grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN:
      return HealthStatus::kServiceUnknown;
    default:
      return HealthStatus::kUnknown;
  }
}

absl::StatusOr<std::vector<ModelSummary>> DinoClient::ListModels(const CallOptions& call) const {
  v1::ListModelsRequest request;
  v1::ListModelsResponse response;
  grpc::ClientContext context;
  Prepare(&context, call);
  if (grpc::Status s = stub_->ListModels(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  std::vector<ModelSummary> out;
  out.reserve(response.models_size());
  for (const v1::ModelSummary& m : response.models()) {
    ModelSummary summary;
    summary.name = m.name();
    for (const v1::ModelVersionSummary& v : m.versions()) {
      summary.versions.push_back(v.version());
      if (v.is_default()) summary.default_version = v.version();
    }
    out.push_back(std::move(summary));
  }
  return out;
}

absl::StatusOr<ModelInfo> DinoClient::GetModelInfo(const ModelRef& model,
                                                   const CallOptions& call) const {
  v1::GetModelInfoRequest request;
  SetModelRef(model, request.mutable_model());
  v1::GetModelInfoResponse response;
  grpc::ClientContext context;
  Prepare(&context, call);
  if (grpc::Status s = stub_->GetModelInfo(&context, request, &response); !s.ok()) {
    return FromGrpcStatus(s);
  }
  absl::StatusOr<NpyDType> dtype = FromProtoDType(response.dtype());
  if (!dtype.ok()) {
    return absl::InternalError(
        absl::StrCat("malformed GetModelInfo response: dtype: ", dtype.status().message()));
  }
  ModelInfo info;
  info.name = response.name();
  info.version = response.version();
  info.versions.assign(response.versions().begin(), response.versions().end());
  info.input_dim = response.input_dim();
  info.output_dim = response.output_dim();
  info.has_reduced_bases = response.has_reduced_bases();
  info.input_rank = response.input_rank();
  info.output_rank = response.output_rank();
  info.architecture = response.architecture();
  info.dtype = *dtype;
  info.metadata_json = response.metadata_json();
  return info;
}

absl::StatusOr<Bases> DinoClient::GetBases(const ModelRef& model, const CallOptions& call) const {
  v1::GetBasesRequest request;
  SetModelRef(model, request.mutable_model());
  v1::GetBasesResponse response;
  if (absl::Status s = Invoke(&v1::Surrogate::StubInterface::GetBases, request, &response, call);
      !s.ok()) {
    return s;
  }
  Bases bases;
  bases.version = response.version();
  absl::StatusOr<NpyArray> v =
      DecodeResponseTensor(response.input_basis(), "GetBases", "input_basis");
  if (!v.ok()) return v.status();
  absl::StatusOr<NpyArray> u =
      DecodeResponseTensor(response.output_basis(), "GetBases", "output_basis");
  if (!u.ok()) return u.status();
  absl::StatusOr<NpyArray> b =
      DecodeResponseTensor(response.output_shift(), "GetBases", "output_shift");
  if (!b.ok()) return b.status();
  bases.input_basis = *std::move(v);
  bases.output_basis = *std::move(u);
  bases.output_shift = *std::move(b);
  return bases;
}

absl::StatusOr<EvaluateResult> DinoClient::Evaluate(const ModelRef& model, const NpyArray& m,
                                                    const CallOptions& call) const {
  v1::EvaluateRequest request;
  SetModelRef(model, request.mutable_model());
  if (absl::Status s = EncodeInputs({{&m, request.mutable_m(), "m"}}); !s.ok()) return s;
  v1::EvaluateResponse response;
  if (absl::Status s = Invoke(&v1::Surrogate::StubInterface::Evaluate, request, &response, call);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<NpyArray> q = DecodeResponseTensor(response.q(), "Evaluate", "q");
  if (!q.ok()) return q.status();
  return EvaluateResult{response.version(), *std::move(q)};
}

absl::StatusOr<JvpResult> DinoClient::Jvp(const ModelRef& model, const NpyArray& m,
                                          const NpyArray& directions, bool return_q,
                                          const CallOptions& call) const {
  v1::JvpRequest request;
  SetModelRef(model, request.mutable_model());
  request.set_return_q(return_q);
  if (absl::Status s = EncodeInputs({{&m, request.mutable_m(), "m"},
                                     {&directions, request.mutable_directions(), "directions"}});
      !s.ok()) {
    return s;
  }
  v1::JvpResponse response;
  if (absl::Status s = Invoke(&v1::Surrogate::StubInterface::Jvp, request, &response, call);
      !s.ok()) {
    return s;
  }
  JvpResult result;
  result.version = response.version();
  absl::StatusOr<NpyArray> jvp = DecodeResponseTensor(response.jvp(), "Jvp", "jvp");
  if (!jvp.ok()) return jvp.status();
  result.jvp = *std::move(jvp);
  if (absl::Status s = DecodeRequestedQ(return_q, response.q(), "Jvp", &result.q); !s.ok()) {
    return s;
  }
  return result;
}

absl::StatusOr<VjpResult> DinoClient::Vjp(const ModelRef& model, const NpyArray& m,
                                          const NpyArray& cotangents, bool return_q,
                                          const CallOptions& call) const {
  v1::VjpRequest request;
  SetModelRef(model, request.mutable_model());
  request.set_return_q(return_q);
  if (absl::Status s = EncodeInputs({{&m, request.mutable_m(), "m"},
                                     {&cotangents, request.mutable_cotangents(), "cotangents"}});
      !s.ok()) {
    return s;
  }
  v1::VjpResponse response;
  if (absl::Status s = Invoke(&v1::Surrogate::StubInterface::Vjp, request, &response, call);
      !s.ok()) {
    return s;
  }
  VjpResult result;
  result.version = response.version();
  absl::StatusOr<NpyArray> vjp = DecodeResponseTensor(response.vjp(), "Vjp", "vjp");
  if (!vjp.ok()) return vjp.status();
  result.vjp = *std::move(vjp);
  if (absl::Status s = DecodeRequestedQ(return_q, response.q(), "Vjp", &result.q); !s.ok()) {
    return s;
  }
  return result;
}

absl::StatusOr<ReducedJacobianResult> DinoClient::ReducedJacobian(const ModelRef& model,
                                                                  const NpyArray& m,
                                                                  const CallOptions& call) const {
  return ReducedJacobianImpl(model, m, nullptr, nullptr, call);
}

absl::StatusOr<ReducedJacobianResult> DinoClient::ReducedJacobian(const ModelRef& model,
                                                                  const NpyArray& m,
                                                                  const NpyArray& output_basis,
                                                                  const NpyArray& input_basis,
                                                                  const CallOptions& call) const {
  return ReducedJacobianImpl(model, m, &output_basis, &input_basis, call);
}

absl::StatusOr<ReducedJacobianResult> DinoClient::ReducedJacobianImpl(
    const ModelRef& model, const NpyArray& m, const NpyArray* output_basis,
    const NpyArray* input_basis, const CallOptions& call) const {
  v1::ReducedJacobianRequest request;
  SetModelRef(model, request.mutable_model());
  absl::Status encoded = EncodeInputs({{&m, request.mutable_m(), "m"}});
  // Client bases come both or not at all (the two public overloads); an unset field means
  // "the model's own bases", so the fields are only touched when there are bases.
  if (encoded.ok() && output_basis != nullptr && input_basis != nullptr) {
    encoded = EncodeInputs({{output_basis, request.mutable_output_basis(), "output_basis"},
                            {input_basis, request.mutable_input_basis(), "input_basis"}});
  }
  if (!encoded.ok()) return encoded;
  v1::ReducedJacobianResponse response;
  if (absl::Status s =
          Invoke(&v1::Surrogate::StubInterface::ReducedJacobian, request, &response, call);
      !s.ok()) {
    return s;
  }
  ReducedJacobianResult result;
  result.version = response.version();
  absl::StatusOr<NpyArray> q = DecodeResponseTensor(response.q(), "ReducedJacobian", "q");
  if (!q.ok()) return q.status();
  absl::StatusOr<NpyArray> jr =
      DecodeResponseTensor(response.reduced_jacobian(), "ReducedJacobian", "reduced_jacobian");
  if (!jr.ok()) return jr.status();
  result.q = *std::move(q);
  result.reduced_jacobian = *std::move(jr);
  return result;
}

absl::StatusOr<JacobianResult> DinoClient::Jacobian(const ModelRef& model, const NpyArray& m,
                                                    bool return_q, const CallOptions& call) const {
  v1::JacobianRequest request;
  SetModelRef(model, request.mutable_model());
  request.set_return_q(return_q);
  if (absl::Status s = EncodeInputs({{&m, request.mutable_m(), "m"}}); !s.ok()) return s;
  v1::JacobianResponse response;
  if (absl::Status s = Invoke(&v1::Surrogate::StubInterface::Jacobian, request, &response, call);
      !s.ok()) {
    return s;
  }
  JacobianResult result;
  result.version = response.version();
  absl::StatusOr<NpyArray> jacobian =
      DecodeResponseTensor(response.jacobian(), "Jacobian", "jacobian");
  if (!jacobian.ok()) return jacobian.status();
  result.jacobian = *std::move(jacobian);
  if (absl::Status s = DecodeRequestedQ(return_q, response.q(), "Jacobian", &result.q); !s.ok()) {
    return s;
  }
  return result;
}

}  // namespace dino::client
