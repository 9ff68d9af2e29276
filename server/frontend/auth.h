// Bearer-token authorization of RPCs (--admin_token_file): a call is authorized when its
// metadata carries "authorization: Bearer <token>" with the configured token. The token keeps
// clients that can reach the port from training or managing models; transport security is
// --tls_cert's (server/frontend/tls.h) or a mesh's, and applies underneath the token.
#pragma once

#include <grpcpp/grpcpp.h>

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dino::frontend {

class BearerTokenAuth {
 public:
  // No token: every call is authorized.
  BearerTokenAuth() = default;
  explicit BearerTokenAuth(std::string token) : token_(std::move(token)) {}
  // Every call refused with PERMISSION_DENIED and `why` (which says how to enable the RPCs):
  // what model control gets when the operator configured no identity check.
  static BearerTokenAuth RefuseAll(std::string why);

  // The token in `path`: its content without surrounding whitespace. INVALID_ARGUMENT when
  // the file cannot be read or holds no token.
  static absl::StatusOr<BearerTokenAuth> FromFile(const std::string& path);

  bool enabled() const { return !token_.empty() || refuses_all_; }
  // OK, or UNAUTHENTICATED saying what is missing or wrong (never echoing a token).
  grpc::Status Check(const grpc::ServerContextBase& context) const;
  // The same check of an HTTP Authorization header's value (empty: none sent). Besides
  // "Bearer <token>" it accepts "Basic base64(<any user>:<token>)", the header that HTTP
  // clients send for credentials in the URL (http://user:<token>@host:port), because
  // clients such as UM-Bridge's cannot add headers of their own.
  absl::Status CheckHttpAuthorization(absl::string_view authorization) const;
  // The same check of an authorization value from any transport (nullopt: none was sent);
  // `carrier` names where it travels in the messages ("metadata", "header").
  absl::Status CheckAuthorization(std::optional<std::string_view> authorization,
                                  const char* carrier) const;

 private:
  std::string token_;
  bool refuses_all_ = false;
  std::string refusal_;
};

}  // namespace dino::frontend
