// An HTTP/1.1 server for the HTTP frontends (UM-Bridge today, KServe's REST API next): a route
// table of plain functions from a request to a response, served by cpp-httplib on a pool of
// threads. Protocol code never sees cpp-httplib: a frontend is a set of HttpHandlers, so it
// can be tested and mounted without a socket.
//
// The handlers run on the pool's threads and may block there (waiting for the scheduler's
// answer); the pool's size therefore bounds the requests in progress, and further connections
// wait in the listen backlog. An idle keep-alive connection holds its thread until
// keep_alive_timeout_seconds pass.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace httplib {
class Server;
}

namespace dino::frontend {

class TlsIdentityReloader;

struct HttpRequest {
  std::string method;  // "GET", "POST", …
  std::string path;    // Without the query string.
  std::string body;
  std::string content_type;   // The Content-Type header; "" when absent.
  std::string authorization;  // The Authorization header; "" when absent.
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;  // Extra response headers.
};

using HttpHandler = std::function<HttpResponse(const HttpRequest& request)>;

// {"error": "<message>"}: the body of the server's own errors (no route, wrong method, a
// handler that threw, a body over the limit), the shape KServe's REST API uses too.
HttpResponse PlainHttpError(int status, const std::string& message);

// The JSON text of a response body. Invalid UTF-8, which only a client's bytes echoed back (a
// path, a model name) can bring in, becomes U+FFFD instead of throwing: an error answer must
// not fail itself.
std::string JsonBody(const nlohmann::json& body);

class HttpServer {
 public:
  struct Options {
    int threads = 8;                             // Requests served at once.
    int64_t max_body_bytes = int64_t{64} << 20;  // Larger bodies: 413.
    double read_timeout_seconds = 30;  // A client sending its request this slowly is cut off.
    double write_timeout_seconds = 30;
    double keep_alive_timeout_seconds = 5;
    // Set: HTTPS only (cpp-httplib's SSLServer), with this identity and its client CA,
    // reloaded when the files change. Null: plaintext HTTP.
    std::shared_ptr<TlsIdentityReloader> tls;
  };

  explicit HttpServer(Options options);
  ~HttpServer();  // Stop().
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Routes, registered before Start. `method` is "GET", "POST", … An exact path wins over a
  // prefix; of several prefixes the longest wins. A path that has a route for another method
  // gets 405 with an Allow header, any other 404.
  void Handle(const std::string& method, const std::string& path, HttpHandler handler);
  // Every path that starts with `prefix` (path parameters, e.g. "/v2/models/").
  void HandlePrefix(const std::string& method, const std::string& prefix, HttpHandler handler);

  // Listens on host:port (port 0: any free port) and serves on a background thread. Returns
  // the bound port, or UNAVAILABLE naming the address when it cannot bind.
  absl::StatusOr<int> Start(const std::string& host, int port);
  // Stops accepting, lets the requests in progress finish, joins the threads. Idempotent.
  void Stop();

  // The route table as one function, the way the socket path calls it (handlers' exceptions
  // become 500).
  HttpResponse Dispatch(const HttpRequest& request) const;

 private:
  struct Route {
    std::string method;
    std::string path;
    bool prefix = false;
    HttpHandler handler;
  };

  const Options options_;
  std::vector<Route> routes_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
};

}  // namespace dino::frontend
