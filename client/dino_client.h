// dino_client: a synchronous C++ client for the dino.v1.Surrogate service (fine-tuning and
// version management: training_client.h).
//
// Wraps the generated stub so callers deal in NpyArray values and absl::Status rather than
// proto messages and grpc::Status. Every method is const and thread-safe (gRPC stubs and
// channels are), so one DinoClient may be shared by many threads.
//
//   dino::client::ClientOptions options;
//   options.target = "localhost:50051";
//   absl::StatusOr<dino::client::DinoClient> client = dino::client::DinoClient::Connect(options);
//   absl::StatusOr<dino::client::EvaluateResult> r = client->Evaluate({"poisson"}, m);
//
// A failed RPC returns the server's gRPC code and message unchanged (the numeric codes of
// grpc::StatusCode and absl::StatusCode agree), so callers can branch on e.g.
// absl::IsNotFound. A response that violates the protocol (say a Tensor whose byte count
// does not match its shape) is reported as INTERNAL naming the RPC and field.
#ifndef DINO_CLIENT_DINO_CLIENT_H_
#define DINO_CLIENT_DINO_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/status.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "dino/v1/surrogate.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "models/io/npy.h"

namespace dino::client {

// How to reach the server.
struct ClientOptions {
  // gRPC target, e.g. "localhost:50051", "dns:///dino:50051" or "unix:///run/dino.sock".
  std::string target = "localhost:50051";
  // Deadline of each call unless CallOptions overrides it; absl::InfiniteDuration() for none.
  absl::Duration timeout = absl::Seconds(30);
  // Largest message sent or received, in bytes. gRPC's default receive limit (4 MiB) is far
  // below a full Jacobian or a large batch; the server enforces its own limits anyway.
  int max_message_bytes = 1 << 30;
  // When true, a call made while the channel is not connected waits (until its deadline)
  // for the server instead of failing at once with UNAVAILABLE. Useful while a server starts.
  bool wait_for_ready = false;
  // Channel credentials; null means plaintext (grpc::InsecureChannelCredentials()). For a
  // server run with --tls_cert: TlsChannelCredentials.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // When non-empty, the name checked against the server's certificate instead of the
  // target's host (an IP target, or a certificate issued for another name).
  std::string tls_server_name;
  // When non-empty, every call carries the metadata "authorization: Bearer <bearer_token>"
  // (needed by the Training and ModelAdmin services of a server run with --admin_token_file,
  // and by every service with --require_token_for_inference). Printable ASCII without spaces
  // (see ValidateBearerToken). Over plaintext the token travels unencrypted.
  std::string bearer_token;
};

// Selects a model; version 0 means the model's default (highest) version.
struct ModelRef {
  std::string name;
  int64_t version = 0;
};

// Per-call settings.
struct CallOptions {
  // Dtype of returned tensors (kFloat32 or kFloat64); unset means the model's own dtype.
  std::optional<NpyDType> output_dtype;
  // Overrides ClientOptions::timeout for this call.
  std::optional<absl::Duration> timeout;
};

struct ModelSummary {
  std::string name;
  std::vector<int64_t> versions;  // Ascending.
  int64_t default_version = 0;    // 0 if the server marked none as default.
};

struct ModelInfo {
  std::string name;
  int64_t version = 0;  // The version described.
  std::vector<int64_t> versions;
  int64_t input_dim = 0;   // d_M
  int64_t output_dim = 0;  // d_Q
  bool has_reduced_bases = false;
  int64_t input_rank = 0;   // r_M
  int64_t output_rank = 0;  // r_Q
  std::string architecture;
  NpyDType dtype = NpyDType::kFloat32;  // The dtype the model computes in.
  std::string metadata_json;            // "{}" when the model has no metadata.
};

struct Bases {
  int64_t version = 0;
  NpyArray input_basis;   // V, [d_M, r_M]
  NpyArray output_basis;  // U, [d_Q, r_Q]
  NpyArray output_shift;  // b, [d_Q]
};

struct EvaluateResult {
  int64_t version = 0;
  NpyArray q;  // [B, d_Q]
};

struct JvpResult {
  int64_t version = 0;
  NpyArray jvp;               // [k, d_Q], [B, d_Q] or [B, k, d_Q]; see DinoClient::Jvp
  std::optional<NpyArray> q;  // [d_Q] (one point) or [B, d_Q], when requested
};

struct VjpResult {
  int64_t version = 0;
  NpyArray vjp;               // [k, d_M], [B, d_M] or [B, k, d_M]; see DinoClient::Vjp
  std::optional<NpyArray> q;  // [d_Q] (one point) or [B, d_Q], when requested
};

struct ReducedJacobianResult {
  int64_t version = 0;
  NpyArray q;                 // [B, d_Q]
  NpyArray reduced_jacobian;  // [B, r_Q, r_M] (model bases) or [B, k_Q, k_M] (client bases)
};

struct JacobianResult {
  int64_t version = 0;
  NpyArray jacobian;          // [d_Q, d_M]
  std::optional<NpyArray> q;  // [d_Q], when requested
};

// grpc.health.v1.HealthCheckResponse.ServingStatus.
enum class HealthStatus { kUnknown, kServing, kNotServing, kServiceUnknown };
// "SERVING", "NOT_SERVING", ...: the protocol's spelling.
absl::string_view HealthStatusName(HealthStatus status);

// grpc::Status -> absl::Status with the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// OK for a token that can travel in an "authorization: Bearer ..." header: non-empty,
// visible ASCII (0x21-0x7E) only. InvalidArgument otherwise, without echoing the token.
absl::Status ValidateBearerToken(absl::string_view token);

// TLS settings as PEM files: what the `dino` CLI's and dino-bench's --tls_ca, --tls_cert and
// --tls_key flags name.
struct TlsClientFiles {
  std::string ca_path;    // CA(s) that signed the server's certificate; "": the system roots.
  std::string cert_path;  // Client certificate chain for mutual TLS (with key_path).
  std::string key_path;   // Its private key.
};

// TLS channel credentials from `files`; INVALID_ARGUMENT naming the flag (--tls_ca,
// --tls_cert, --tls_key) of a file that cannot be read, or a certificate without its key.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> TlsChannelCredentials(
    const TlsClientFiles& files);

// What the `dino` CLI's and dino-bench's --tls, --tls_ca, --tls_cert, --tls_key and
// --tls_server_name flags ask for. TLS is on when `tls` is set or any other field is.
struct TlsClientFlags {
  bool tls = false;
  TlsClientFiles files;
  std::string server_name;
};

// Sets options->credentials and tls_server_name from `flags` when they ask for TLS (errors as
// TlsChannelCredentials'); leaves `options` alone otherwise.
absl::Status ApplyTlsFlags(const TlsClientFlags& flags, ClientOptions* options);

// Checks `options` (non-empty target, positive timeout and message size, valid bearer token)
// and creates a channel to options.target with its credentials and message limits. Shared by
// DinoClient and TrainingClient; the channel connects lazily.
absl::StatusOr<std::shared_ptr<grpc::Channel>> CreateClientChannel(const ClientOptions& options);

// Prepares a fresh context: deadline now + `timeout` (none when nullopt or at least 100
// years, e.g. absl::InfiniteDuration()), options.wait_for_ready and, with a bearer token,
// the authorization metadata.
void ConfigureContext(const ClientOptions& options, std::optional<absl::Duration> timeout,
                      grpc::ClientContext* context);

class DinoClient {
 public:
  // Creates a channel to options.target. The channel connects lazily, so this fails only for
  // invalid options (empty target, non-positive timeout or message size, invalid bearer
  // token); an unreachable server shows up as UNAVAILABLE on the first call (or use
  // WaitForReady).
  static absl::StatusOr<DinoClient> Connect(const ClientOptions& options);

  // Uses an existing channel (e.g. an in-process one in tests); target and credentials in
  // `options` are ignored (the bearer token is used as given).
  DinoClient(std::shared_ptr<grpc::ChannelInterface> channel, const ClientOptions& options);

  DinoClient(DinoClient&&) = default;
  DinoClient& operator=(DinoClient&&) = default;

  const ClientOptions& options() const { return options_; }
  // The generated stubs, for callers that need a request field this wrapper does not expose.
  v1::Surrogate::StubInterface& stub() const { return *stub_; }
  const std::shared_ptr<grpc::ChannelInterface>& channel() const { return channel_; }

  // Waits until the channel is connected; DEADLINE_EXCEEDED (naming the target) otherwise.
  absl::Status WaitForReady(absl::Duration timeout) const;

  // grpc.health.v1.Health/Check for `service` ("" = the server as a whole).
  absl::StatusOr<HealthStatus> CheckHealth(absl::string_view service = "",
                                           const CallOptions& call = {}) const;

  absl::StatusOr<std::vector<ModelSummary>> ListModels(const CallOptions& call = {}) const;
  absl::StatusOr<ModelInfo> GetModelInfo(const ModelRef& model, const CallOptions& call = {}) const;
  // FAILED_PRECONDITION (from the server) for a model without reduced bases.
  absl::StatusOr<Bases> GetBases(const ModelRef& model, const CallOptions& call = {}) const;

  // q = f(m); m is [B, d_M] or [d_M], FP32 or FP64.
  absl::StatusOr<EvaluateResult> Evaluate(const ModelRef& model, const NpyArray& m,
                                          const CallOptions& call = {}) const;
  // Jacobian-vector products, in the three shapes of the proto's JvpRequest (the shapes are
  // passed through unchanged; the server checks them and names the field in errors):
  //   one point:              m [d_M] or [1, d_M], directions [k, d_M] or [d_M] → [k, d_Q];
  //   B ≥ 2 points, one each: m [B, d_M], directions [B, d_M] → [B, d_Q] (row b: J(m_b)·v_b);
  //   B points, k each:       m [B, d_M], directions [B, k, d_M] → [B, k, d_Q].
  // A server older than the per-point forms refuses them with INVALID_ARGUMENT.
  absl::StatusOr<JvpResult> Jvp(const ModelRef& model, const NpyArray& m,
                                const NpyArray& directions, bool return_q = false,
                                const CallOptions& call = {}) const;
  // Vector-Jacobian products J(m)ᵀ·w in the same three shapes (VjpRequest):
  //   one point: cotangents [k, d_Q] or [d_Q] → [k, d_M]; B ≥ 2 points, one each:
  //   m [B, d_M], cotangents [B, d_Q] → [B, d_M]; B points, k each: [B, k, d_Q] → [B, k, d_M].
  absl::StatusOr<VjpResult> Vjp(const ModelRef& model, const NpyArray& m,
                                const NpyArray& cotangents, bool return_q = false,
                                const CallOptions& call = {}) const;
  // Uᵀ·J(m)·V with the model's own bases; m is [B, d_M] or [d_M].
  absl::StatusOr<ReducedJacobianResult> ReducedJacobian(const ModelRef& model, const NpyArray& m,
                                                        const CallOptions& call = {}) const;
  // U_cᵀ·J(m)·V_c with client bases: output_basis [d_Q, k_Q], input_basis [d_M, k_M], both
  // with orthonormal columns.
  absl::StatusOr<ReducedJacobianResult> ReducedJacobian(const ModelRef& model, const NpyArray& m,
                                                        const NpyArray& output_basis,
                                                        const NpyArray& input_basis,
                                                        const CallOptions& call = {}) const;
  // The full [d_Q, d_M] Jacobian at m ([d_M] or [1, d_M]).
  absl::StatusOr<JacobianResult> Jacobian(const ModelRef& model, const NpyArray& m,
                                          bool return_q = false,
                                          const CallOptions& call = {}) const;

 private:
  absl::StatusOr<ReducedJacobianResult> ReducedJacobianImpl(const ModelRef& model,
                                                            const NpyArray& m,
                                                            const NpyArray* output_basis,
                                                            const NpyArray* input_basis,
                                                            const CallOptions& call) const;
  // Applies the deadline and wait-for-ready policy to a fresh context.
  void Prepare(grpc::ClientContext* context, const CallOptions& call) const;
  // Sets the request's output_dtype from `call`, makes the call through `rpc` (a Surrogate
  // stub method) and translates its status. Shared by every tensor-returning RPC.
  template <typename Request, typename Response>
  absl::Status Invoke(grpc::Status (v1::Surrogate::StubInterface::*rpc)(grpc::ClientContext*,
                                                                        const Request&, Response*),
                      Request& request, Response* response, const CallOptions& call) const;

  ClientOptions options_;
  std::shared_ptr<grpc::ChannelInterface> channel_;
  std::unique_ptr<v1::Surrogate::StubInterface> stub_;
  std::unique_ptr<grpc::health::v1::Health::StubInterface> health_stub_;
};

}  // namespace dino::client

#endif  // DINO_CLIENT_DINO_CLIENT_H_
