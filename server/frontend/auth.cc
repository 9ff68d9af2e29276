#include "server/frontend/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace dino::frontend {
namespace {

// Compares in time independent of where the strings differ, so that response timing does
// not reveal a prefix of the token (only whether the lengths agree).
bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}

}  // namespace

absl::StatusOr<BearerTokenAuth> BearerTokenAuth::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read token file ", path));
  std::stringstream content;
  content << in.rdbuf();
  std::string token(absl::StripAsciiWhitespace(content.str()));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("token file ", path, " is empty"));
  if (token.find_first_of(" \t\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("token file ", path, " must hold one token without whitespace"));
  }
  return BearerTokenAuth(std::move(token));
}

BearerTokenAuth BearerTokenAuth::RefuseAll(std::string why) {
  BearerTokenAuth auth;
  auth.refuses_all_ = true;
  auth.refusal_ = std::move(why);
  return auth;
}

grpc::Status BearerTokenAuth::Check(const grpc::ServerContextBase& context) const {
  if (refuses_all_) return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, refusal_);
  if (token_.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  std::optional<std::string_view> value;
  if (it != metadata.end()) value = std::string_view(it->second.data(), it->second.size());
  const absl::Status status = CheckAuthorization(value, "metadata");
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(status.message()));
}

absl::Status BearerTokenAuth::CheckAuthorization(std::optional<std::string_view> authorization,
                                                 const char* carrier) const {
  if (refuses_all_) return absl::PermissionDeniedError(refusal_);
  if (token_.empty()) return absl::OkStatus();
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        absl::StrCat("this call needs the ", carrier, " 'authorization: Bearer <token>'"));
  }
  const std::string value(*authorization);
  constexpr char kScheme[] = "Bearer ";
  if (!absl::StartsWithIgnoreCase(value, kScheme)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the authorization ", carrier, " must be 'Bearer <token>'"));
  }
  if (!ConstantTimeEquals(value.substr(sizeof(kScheme) - 1), token_)) {
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return absl::OkStatus();
}

absl::Status BearerTokenAuth::CheckHttpAuthorization(absl::string_view authorization) const {
  const std::string_view header(authorization.data(), authorization.size());
  if (token_.empty() || refuses_all_) return CheckAuthorization(header, "header");
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "this request needs the header 'Authorization: Bearer <token>' (or the token as the "
        "password of the URL, http://user:<token>@host:port)");
  }
  constexpr absl::string_view kBasic = "Basic ";
  if (!absl::StartsWithIgnoreCase(authorization, kBasic)) {
    return CheckAuthorization(header, "header");
  }
  std::string credentials;
  if (!absl::Base64Unescape(authorization.substr(kBasic.size()), &credentials) ||
      credentials.find(':') == std::string::npos) {
    return absl::UnauthenticatedError(
        "the Basic authorization header must be base64(<user>:<token>)");
  }
  if (!ConstantTimeEquals(credentials.substr(credentials.find(':') + 1), token_)) {
    return absl::UnauthenticatedError("the bearer token is not valid");
  }
  return absl::OkStatus();
}

}  // namespace dino::frontend
