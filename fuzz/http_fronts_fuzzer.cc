// One HTTP request to the HTTP fronts as dino-server mounts them (UM-Bridge; KServe's Open
// Inference Protocol over REST), through HttpServer::Dispatch, the route table the socket
// path calls: routing, the Authorization check (Bearer and Basic), the JSON bodies, the
// protocol mappings and the scheduler on small served models. Input, as text:
//   byte 0       bit 0: the OIP front (else UM-Bridge); bit 1: a token is required
//   line 1       "<METHOD> <path>"
//   line 2       the Authorization header ("" when absent)
//   line 3       the Content-Type header
//   the rest     the body
// Every answer must be JSON (each front answers JSON, errors included) with an HTTP status.
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/string_view.h"
#include "fuzz/served_models.h"
#include "server/frontend/auth.h"
#include "server/frontend/http_server.h"
#include "server/frontend/oip_rest.h"
#include "server/frontend/umbridge_service.h"

namespace {

using dino::frontend::HttpServer;

// The token the token-protected fronts require; the seeds carry it.
constexpr char kToken[] = "fuzz-token";

struct Fronts {
  dino::frontend::BearerTokenAuth auth{kToken};
  std::unique_ptr<dino::frontend::UmbridgeService> umbridge[2];
  std::unique_ptr<dino::frontend::OipRestHandler> oip[2];
  std::unique_ptr<HttpServer> servers[4];  // [oip * 2 + token]
};

Fronts& TheFronts() {
  static Fronts* fronts = [] {
    auto* f = new Fronts;
    auto& served = dino::fuzz::Served();
    for (int token = 0; token < 2; ++token) {
      const dino::frontend::BearerTokenAuth* auth = token ? &f->auth : nullptr;
      f->umbridge[token] = std::make_unique<dino::frontend::UmbridgeService>(
          *served.manager, *served.scheduler, nullptr, auth);
      f->oip[token] = std::make_unique<dino::frontend::OipRestHandler>(
          *served.manager, *served.scheduler, nullptr, auth);
      HttpServer::Options options;
      f->servers[token] = std::make_unique<HttpServer>(options);
      f->umbridge[token]->Register(*f->servers[token]);
      f->servers[2 + token] = std::make_unique<HttpServer>(options);
      f->oip[token]->Register(*f->servers[2 + token]);
    }
    return f;
  }();
  return *fronts;
}

// The next line of `*rest` (without its '\n'); the whole of it when there is no '\n'.
absl::string_view NextLine(absl::string_view* rest) {
  const size_t end = rest->find('\n');
  absl::string_view line = rest->substr(0, end);
  rest->remove_prefix(end == absl::string_view::npos ? rest->size() : end + 1);
  return line;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dino::fuzz::Require;
  if (size < 1) return 0;
  const HttpServer& server = *TheFronts().servers[data[0] & 3];
  absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const absl::string_view request_line = NextLine(&rest);
  dino::frontend::HttpRequest request;
  const size_t space = request_line.find(' ');
  if (space == absl::string_view::npos) return 0;
  request.method = std::string(request_line.substr(0, space));
  request.path = std::string(request_line.substr(space + 1));
  request.authorization = std::string(NextLine(&rest));
  request.content_type = std::string(NextLine(&rest));
  request.body = std::string(rest);

  const dino::frontend::HttpResponse response = server.Dispatch(request);
  Require(response.status >= 200 && response.status < 600, "an answer without an HTTP status");
  Require(response.content_type == "application/json", "an answer that is not JSON");
  Require(nlohmann::json::accept(response.body),
          "an answer whose body is not JSON: " + response.body.substr(0, 200));
  return 0;
}
