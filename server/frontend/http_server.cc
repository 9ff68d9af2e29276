#include "server/frontend/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/frontend/tls.h"

namespace dino::frontend {
namespace {

// cpp-httplib takes timeouts as seconds and microseconds.
std::pair<time_t, time_t> SecondsAndMicros(double seconds) {
  const auto whole = static_cast<time_t>(seconds);
  return {whole, static_cast<time_t>((seconds - static_cast<double>(whole)) * 1e6)};
}

}  // namespace

HttpResponse PlainHttpError(int status, const std::string& message) {
  HttpResponse response;
  response.status = status;
  response.body = JsonBody({{"error", message}});
  return response;
}

std::string JsonBody(const nlohmann::json& body) {
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

HttpServer::HttpServer(Options options) : options_(options) {}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Handle(const std::string& method, const std::string& path, HttpHandler handler) {
  routes_.push_back(Route{method, path, /*prefix=*/false, std::move(handler)});
}

void HttpServer::HandlePrefix(const std::string& method, const std::string& prefix,
                              HttpHandler handler) {
  routes_.push_back(Route{method, prefix, /*prefix=*/true, std::move(handler)});
}

HttpResponse HttpServer::Dispatch(const HttpRequest& request) const {
  const Route* exact = nullptr;
  const Route* longest_prefix = nullptr;
  std::vector<std::string> allowed;  // Methods routed for this path, for a 405.
  for (const Route& route : routes_) {
    const bool matches =
        route.prefix ? absl::StartsWith(request.path, route.path) : request.path == route.path;
    if (!matches) continue;
    if (route.method != request.method) {
      if (std::find(allowed.begin(), allowed.end(), route.method) == allowed.end()) {
        allowed.push_back(route.method);
      }
      continue;
    }
    if (!route.prefix) {
      exact = &route;
    } else if (longest_prefix == nullptr || route.path.size() > longest_prefix->path.size()) {
      longest_prefix = &route;
    }
  }
  const Route* route = exact != nullptr ? exact : longest_prefix;
  if (route == nullptr) {
    if (!allowed.empty()) {
      HttpResponse response =
          PlainHttpError(405, absl::StrCat(request.path, " accepts ", absl::StrJoin(allowed, ", "),
                                           ", not ", request.method));
      response.headers.emplace_back("Allow", absl::StrJoin(allowed, ", "));
      return response;
    }
    return PlainHttpError(404, absl::StrCat("no route for ", request.method, " ", request.path));
  }
  try {
    return route->handler(request);
  } catch (const std::exception& e) {
    return PlainHttpError(500, absl::StrCat("the server failed on ", request.method, " ",
                                            request.path, ": ", e.what()));
  }
}

absl::StatusOr<int> HttpServer::Start(const std::string& host, int port) {
  if (server_) return absl::FailedPreconditionError("the HTTP server is already started");
  std::unique_ptr<httplib::Server> server;
  if (options_.tls != nullptr) {
    // The reloader installs the current certificate on each handshake (see tls.h).
    auto tls_server = std::make_unique<httplib::SSLServer>(
        [tls = options_.tls](SSL_CTX& context) { return tls->ConfigureContext(context); });
    if (!tls_server->is_valid()) {
      return absl::InternalError("OpenSSL refused the HTTPS server's TLS settings");
    }
    server = std::move(tls_server);
  } else {
    server = std::make_unique<httplib::Server>();
  }
  const int threads = std::max(1, options_.threads);
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  const auto [read_s, read_us] = SecondsAndMicros(options_.read_timeout_seconds);
  server->set_read_timeout(read_s, read_us);
  const auto [write_s, write_us] = SecondsAndMicros(options_.write_timeout_seconds);
  server->set_write_timeout(write_s, write_us);
  server->set_keep_alive_timeout(
      std::max<time_t>(1, static_cast<time_t>(options_.keep_alive_timeout_seconds)));
  // Small JSON answers would otherwise wait for Nagle's algorithm on keep-alive connections.
  server->set_tcp_nodelay(true);

  // Every method and path goes to Dispatch: the route table, not cpp-httplib's, decides.
  auto serve = [this](const httplib::Request& in, httplib::Response& out) {
    HttpRequest request;
    request.method = in.method;
    request.path = in.path;
    request.body = in.body;
    request.content_type = in.get_header_value("Content-Type");
    request.authorization = in.get_header_value("Authorization");
    HttpResponse response = Dispatch(request);
    out.status = response.status;
    for (const auto& [name, value] : response.headers) out.set_header(name, value);
    out.set_content(std::move(response.body), response.content_type.c_str());
  };
  const char* kAnyPath = ".*";
  server->Get(kAnyPath, serve);
  server->Post(kAnyPath, serve);
  server->Put(kAnyPath, serve);
  server->Delete(kAnyPath, serve);
  server->Patch(kAnyPath, serve);
  server->Options(kAnyPath, serve);
  // cpp-httplib's own refusals (a body over the limit: 413; an unparsable request: 400) get a
  // JSON body like every other error.
  server->set_error_handler([max_body = options_.max_body_bytes](const httplib::Request&,
                                                                 httplib::Response& out) {
    if (!out.body.empty()) return;
    const std::string message =
        out.status == 413 ? absl::StrCat("the request body is larger than the server's limit of ",
                                         max_body, " bytes")
                          : absl::StrCat("HTTP status ", out.status);
    out.set_content(JsonBody({{"error", message}}), "application/json");
  });

  int bound = port;
  if (port == 0) {
    bound = server->bind_to_any_port(host);
  } else if (!server->bind_to_port(host, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for HTTP on ", host, ":", port));
  }
  server_ = std::move(server);
  listener_ = std::thread([this] { server_->listen_after_bind(); });
  // Stop() only reaches a server that has entered its accept loop; wait for it, so that a
  // Stop() right after Start() cannot miss it and leave the listener running.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!server_->is_running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return bound;
}

void HttpServer::Stop() {
  if (!server_) return;
  server_->stop();
  if (listener_.joinable()) listener_.join();
  server_.reset();
}

}  // namespace dino::frontend
