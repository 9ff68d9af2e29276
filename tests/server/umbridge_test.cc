// The UM-Bridge frontend over real HTTP on loopback, in process: the HTTP server (routes, 404,
// 405, body limit, shutdown) and the protocol (every route's JSON shape, error objects that
// name the field, version selection through config, tokens, the numbers against the model
// itself, ApplyHessian against finite differences of Gradient, concurrent clients). The same
// routes in the real dino-server against gRPC: tests/python/umbridge_interop_test.py.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <vector>

#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/frontend/http_server.h"
#include "server/frontend/json_reader.h"
#include "server/frontend/umbridge_service.h"
#include "server/metrics/server_metrics.h"
#include "tests/common/scratch_dir.h"
#include "tests/common/test_models.h"

// After every header that includes Eigen: httplib.h includes <resolv.h>, whose macro _res
// would rewrite a variable of Eigen's templates.
#include <httplib.h>  // NOLINT(build/include_order)

namespace dino::frontend {
namespace {

using dino::testing::SmallDims;
using nlohmann::json;
using ::testing::HasSubstr;

constexpr SmallDims kDims{};

torch::Tensor Gaussian(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape, torch::kFloat64);
}

json ToJson(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

torch::Tensor FromJson(const json& values) {
  return torch::tensor(values.get<std::vector<double>>(), torch::kFloat64);
}

double RelativeError(const torch::Tensor& actual, const torch::Tensor& expected) {
  return (actual - expected).norm().item<double>() / expected.norm().item<double>();
}

struct Reply {
  int status = 0;
  json body;
  std::string raw;
};

// Serves a repository (dipnet versions 1 and 2, label "stable" → 1; a generic model) through
// the scheduler and the UM-Bridge routes on a free port.
class UmbridgeTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(/*token=*/""); }
  void TearDown() override { Stop(); }

  void Start(const std::string& token) {
    using dino::testing::SmallMetadata;
    using dino::testing::WriteModel;
    WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 1), SmallMetadata("dipnet", 40),
               scratch_.path(), "dipnet", 1);
    WriteModel(dino::testing::SmallDipnet(kDims, torch::kFloat64, 2), SmallMetadata("dipnet", 40),
               scratch_.path(), "dipnet", 2);
    std::ofstream(scratch_ / "dipnet/config.json")
        << R"({"version_policy": {"all": {}}, "labels": {"stable": 1}})";
    WriteModel(dino::testing::SmallGeneric(kDims, torch::kFloat64, 3), SmallMetadata("generic", 40),
               scratch_.path(), "generic", 1);
    serving::ModelManager::Options options;
    options.repository = scratch_.path();
    options.default_config.executors = 2;
    manager_ = std::make_unique<serving::ModelManager>(options);
    auto report = manager_->SyncRepository();
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_EQ(report->loaded.size(), 3u);
    metrics_ = std::make_unique<metrics::ServerMetrics>();
    serving::RequestScheduler::Options scheduler_options;
    scheduler_options.observer = metrics_.get();
    scheduler_options.run_inline_when_idle = true;
    scheduler_ = std::make_unique<serving::RequestScheduler>(*manager_, scheduler_options);
    auth_ = BearerTokenAuth(token);
    service_ = std::make_unique<UmbridgeService>(*manager_, *scheduler_, metrics_.get(),
                                                 token.empty() ? nullptr : &auth_);
    HttpServer::Options http_options;
    http_options.threads = 4;
    http_options.max_body_bytes = 1 << 20;
    http_ = std::make_unique<HttpServer>(http_options);
    service_->Register(*http_);
    auto port = http_->Start("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  void Stop() {
    if (http_) http_->Stop();
    http_.reset();
    service_.reset();
    if (scheduler_) scheduler_->Shutdown();
    scheduler_.reset();
    manager_.reset();
  }

  Reply Send(const std::string& method, const std::string& path, const std::string& body,
             const httplib::Headers& headers = {}) {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(30, 0);
    httplib::Result result = method == "GET"
                                 ? client.Get(path.c_str(), headers)
                                 : client.Post(path.c_str(), headers, body, "application/json");
    Reply reply;
    if (!result) {
      ADD_FAILURE() << method << " " << path << " failed: " << httplib::to_string(result.error());
      return reply;
    }
    reply.status = result->status;
    reply.raw = result->body;
    reply.body = json::parse(result->body, nullptr, /*allow_exceptions=*/false);
    return reply;
  }
  Reply Post(const std::string& path, const json& body) { return Send("POST", path, body.dump()); }

  // The protocol's error object with `type` and a message containing `words`, status `status`.
  static void ExpectError(const Reply& reply, int status, const std::string& type,
                          const std::string& words) {
    EXPECT_EQ(reply.status, status) << reply.raw;
    ASSERT_TRUE(reply.body.contains("error")) << reply.raw;
    EXPECT_EQ(reply.body["error"]["type"], type) << reply.raw;
    EXPECT_THAT(reply.body["error"]["message"].get<std::string>(), HasSubstr(words));
  }

  std::shared_ptr<const serving::SurrogateModel> Model(const std::string& name,
                                                       int64_t version = 0) {
    auto handle = manager_->Get(name, version);
    EXPECT_TRUE(handle.ok()) << handle.status();
    return handle->model;
  }

  static json Request(const std::string& name, const torch::Tensor& m) {
    return json{{"name", name}, {"input", json::array({ToJson(m)})}, {"config", json::object()}};
  }

  dino::testing::ScopedTempDir scratch_{"dino-umbridge-"};
  std::unique_ptr<serving::ModelManager> manager_;
  std::unique_ptr<metrics::ServerMetrics> metrics_;
  std::unique_ptr<serving::RequestScheduler> scheduler_;
  BearerTokenAuth auth_;
  std::unique_ptr<UmbridgeService> service_;
  std::unique_ptr<HttpServer> http_;
  int port_ = 0;
};

TEST_F(UmbridgeTest, InfoListsEveryServedModelWithProtocolVersion) {
  Reply reply = Send("GET", "/Info", "");
  ASSERT_EQ(reply.status, 200) << reply.raw;
  EXPECT_EQ(reply.body["protocolVersion"], 1.0);
  EXPECT_EQ(reply.body["models"], json::array({"dipnet", "generic"}));
}

TEST_F(UmbridgeTest, ModelInfoAndSizes) {
  for (const std::string name : {"dipnet", "generic"}) {
    Reply info = Post("/ModelInfo", json{{"name", name}});
    ASSERT_EQ(info.status, 200) << info.raw;
    EXPECT_EQ(info.body["support"], (json{{"Evaluate", true},
                                          {"Gradient", true},
                                          {"ApplyJacobian", true},
                                          {"ApplyHessian", true}}));
    EXPECT_THAT(info.body["dino"]["ApplyHessian"].get<std::string>(), HasSubstr("double backward"));
    Reply inputs = Post("/InputSizes", json{{"name", name}, {"config", json::object()}});
    ASSERT_EQ(inputs.status, 200) << inputs.raw;
    EXPECT_EQ(inputs.body, (json{{"inputSizes", {kDims.d_m}}}));
    Reply outputs = Post("/OutputSizes", json{{"name", name}});
    ASSERT_EQ(outputs.status, 200) << outputs.raw;
    EXPECT_EQ(outputs.body, (json{{"outputSizes", {kDims.d_q}}}));
  }
}

TEST_F(UmbridgeTest, EveryRouteEqualsTheModelsOwnAnswer) {
  for (const std::string name : {"dipnet", "generic"}) {
    SCOPED_TRACE(name);
    auto model = Model(name);
    torch::Tensor m = Gaussian({kDims.d_m}, 5);
    torch::Tensor sens = Gaussian({kDims.d_q}, 6);
    torch::Tensor vec = Gaussian({kDims.d_m}, 7);

    Reply evaluate = Post("/Evaluate", Request(name, m));
    ASSERT_EQ(evaluate.status, 200) << evaluate.raw;
    ASSERT_EQ(evaluate.body["output"].size(), 1u);  // One output vector.
    // Bit for bit: the numbers are written in their shortest form that reads back exactly.
    EXPECT_TRUE(torch::equal(FromJson(evaluate.body["output"][0]), (*model->Evaluate(m))[0]));

    json gradient = Request(name, m);
    gradient["inWrt"] = 0;
    gradient["outWrt"] = 0;
    gradient["sens"] = ToJson(sens);
    Reply vjp = Post("/Gradient", gradient);
    ASSERT_EQ(vjp.status, 200) << vjp.raw;
    EXPECT_LE(RelativeError(FromJson(vjp.body["output"]), model->Vjp(m, sens, false)->values[0]),
              1e-15);

    json jacobian = Request(name, m);
    jacobian["inWrt"] = 0;
    jacobian["outWrt"] = 0;
    jacobian["vec"] = ToJson(vec);
    Reply jvp = Post("/ApplyJacobian", jacobian);
    ASSERT_EQ(jvp.status, 200) << jvp.raw;
    EXPECT_LE(RelativeError(FromJson(jvp.body["output"]), model->Jvp(m, vec, false)->values[0]),
              1e-15);

    json hessian = Request(name, m);
    hessian["inWrt1"] = 0;
    hessian["inWrt2"] = 0;
    hessian["outWrt"] = 0;
    hessian["sens"] = ToJson(sens);
    hessian["vec"] = ToJson(vec);
    Reply action = Post("/ApplyHessian", hessian);
    ASSERT_EQ(action.status, 200) << action.raw;
    torch::Tensor served = FromJson(action.body["output"]);
    ASSERT_EQ(served.size(0), kDims.d_m);
    // The second-order action by central differences of the Gradient route itself.
    const double h = 1e-5;
    auto gradient_at = [&](const torch::Tensor& point) {
      json body = gradient;
      body["input"] = json::array({ToJson(point)});
      Reply reply = Post("/Gradient", body);
      EXPECT_EQ(reply.status, 200) << reply.raw;
      return FromJson(reply.body["output"]);
    };
    torch::Tensor fd = (gradient_at(m + h * vec) - gradient_at(m - h * vec)) / (2 * h);
    ASSERT_GT(fd.norm().item<double>(), 1e-3);  // The test models are visibly nonlinear.
    EXPECT_LE(RelativeError(served, fd), 1e-6);
  }
}

TEST_F(UmbridgeTest, ConfigSelectsVersionOrLabel) {
  torch::Tensor m = Gaussian({kDims.d_m}, 8);
  auto evaluate = [&](const json& config) {
    json body = Request("dipnet", m);
    body["config"] = config;
    Reply reply = Post("/Evaluate", body);
    EXPECT_EQ(reply.status, 200) << reply.raw;
    return FromJson(reply.body["output"][0]);
  };
  torch::Tensor v1 = (*Model("dipnet", 1)->Evaluate(m))[0];
  torch::Tensor v2 = (*Model("dipnet", 2)->Evaluate(m))[0];
  ASSERT_GT(RelativeError(v1, v2), 1e-3);  // Different weights: the selection is visible.
  EXPECT_LE(RelativeError(evaluate(json::object()), v2), 1e-15);  // Default: the latest.
  EXPECT_LE(RelativeError(evaluate(json{{"version", 1}}), v1), 1e-15);
  EXPECT_LE(RelativeError(evaluate(json{{"label", "stable"}}), v1), 1e-15);
  EXPECT_LE(RelativeError(evaluate(json{{"timeout_seconds", 30}}), v2), 1e-15);
  Reply info = Post("/ModelInfo", json{{"name", "dipnet"}, {"config", {{"version", 1}}}});
  EXPECT_EQ(info.body["dino"]["version"], 1);

  json missing = Request("dipnet", m);
  missing["config"] = {{"version", 7}};
  ExpectError(Post("/Evaluate", missing), 400, "ModelNotFound", "config.version");
  missing["config"] = {{"label", "canary"}};
  ExpectError(Post("/Evaluate", missing), 400, "ModelNotFound", "config.label");
  missing["config"] = {{"flavour", "x"}};
  ExpectError(Post("/Evaluate", missing), 400, "InvalidInput", "config.flavour");
  missing["config"] = {{"version", "one"}};
  ExpectError(Post("/Evaluate", missing), 400, "InvalidInput", "config.version");
}

TEST_F(UmbridgeTest, ErrorsAreProtocolObjectsNamingTheField) {
  torch::Tensor m = Gaussian({kDims.d_m}, 9);
  ExpectError(Post("/Evaluate", Request("nope", m)), 400, "ModelNotFound", "nope");
  ExpectError(Post("/ModelInfo", json{{"name", "nope"}}), 400, "ModelNotFound", "nope");
  ExpectError(Post("/InputSizes", json{{"name", "nope"}}), 400, "ModelNotFound", "nope");
  ExpectError(Send("POST", "/Evaluate", "{\"name\": \"dipnet\", "), 400, "InvalidInput",
              "not valid JSON");
  ExpectError(Send("POST", "/Evaluate", "[1, 2]"), 400, "InvalidInput", "JSON object");
  ExpectError(Post("/Evaluate", json{{"input", json::array({ToJson(m)})}}), 400, "InvalidInput",
              "name is required");
  ExpectError(Post("/Evaluate", Request("dipnet", Gaussian({kDims.d_m + 1}, 1))), 400,
              "InvalidInput", "input[0] has length 41; the model expects 40");
  json two_inputs = Request("dipnet", m);
  two_inputs["input"].push_back(ToJson(m));
  ExpectError(Post("/Evaluate", two_inputs), 400, "InvalidInput", "input must be a list of 1");
  json not_number = Request("dipnet", m);
  not_number["input"][0][3] = "x";
  ExpectError(Post("/Evaluate", not_number), 400, "InvalidInput", "input[0][3] is not a number");

  json gradient = Request("dipnet", m);
  gradient["inWrt"] = 0;
  gradient["outWrt"] = 0;
  ExpectError(Post("/Gradient", gradient), 400, "InvalidInput", "sens is required");
  gradient["sens"] = ToJson(Gaussian({kDims.d_q - 1}, 2));
  ExpectError(Post("/Gradient", gradient), 400, "InvalidInput", "sens has length 11");
  gradient["outWrt"] = 1;
  ExpectError(Post("/Gradient", gradient), 400, "InvalidInput", "outWrt = 1 is out of range");
  gradient["outWrt"] = 0;
  gradient["inWrt"] = -1;
  ExpectError(Post("/Gradient", gradient), 400, "InvalidInput", "inWrt = -1 is out of range");
  json jacobian = Request("dipnet", m);
  jacobian["inWrt"] = 0;
  jacobian["outWrt"] = 0;
  jacobian["vec"] = ToJson(Gaussian({3}, 3));
  ExpectError(Post("/ApplyJacobian", jacobian), 400, "InvalidInput", "vec has length 3");
  json hessian = Request("generic", m);
  hessian["inWrt1"] = 0;
  hessian["inWrt2"] = 2;
  hessian["outWrt"] = 0;
  ExpectError(Post("/ApplyHessian", hessian), 400, "InvalidInput", "inWrt2 = 2 is out of range");
  // JSON has no NaN, but numbers beyond double's range: refused while parsing.
  std::string overflow = R"({"name": "dipnet", "input": [[1e999)";
  for (int i = 1; i < kDims.d_m; ++i) overflow += ", 0";
  ExpectError(Send("POST", "/Evaluate", overflow + "]]}"), 400, "InvalidInput", "1e999");
  ExpectError(Post("/EvaluateShMem", json{{"name", "dipnet"}}), 400, "UnsupportedFeature",
              "shared memory");
  EXPECT_EQ(Post("/TestShMem", json{{"name", "dipnet"}}).body, json::object());

  // Still serving after all of that.
  Reply after = Post("/Evaluate", Request("dipnet", m));
  EXPECT_EQ(after.status, 200) << after.raw;
}

TEST_F(UmbridgeTest, HttpServerRoutesLimitsAndMethods) {
  Reply unknown = Send("GET", "/Nowhere", "");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(unknown.body["error"].get<std::string>(), HasSubstr("/Nowhere"));
  Reply wrong_method = Send("GET", "/Evaluate", "");
  EXPECT_EQ(wrong_method.status, 405);
  EXPECT_THAT(wrong_method.body["error"].get<std::string>(), HasSubstr("POST"));
  // The server's body limit (1 MiB here): cpp-httplib refuses before any handler runs.
  Reply too_large = Send("POST", "/Evaluate", std::string(2 << 20, ' '));
  EXPECT_EQ(too_large.status, 413);
  EXPECT_THAT(too_large.body["error"].get<std::string>(), HasSubstr("limit"));
}

TEST(JsonReaderTest, ValidDocumentsEqualNlohmannsParse) {
  const std::string documents[] = {
      R"({"name": "dipnet", "input": [[1, -2.5, 3e2, -0.0, 1E-3, 0.1]], "config": {}})",
      R"([true, false, null, "", "a\"b\\c\/d\b\f\n\r\t", "\u00e9\u20ac\ud83d\ude00", "é€😀"])",
      R"( {"nested": {"deep": [[[]], {}], "n": 9223372036854775807, "big": 9223372036854775808}} )",
      R"({"dup": 1, "dup": 2, "x": -12345678901234})",
      "0",
      "-1.5e-7",
      "\"text\"",
      "1e-400",
  };
  for (const std::string& document : documents) {
    auto parsed = ParseJson(document);
    ASSERT_TRUE(parsed.ok()) << document << ": " << parsed.status();
    EXPECT_EQ(*parsed, json::parse(document)) << document;
  }
  // Every double round-trips bit for bit, as with strtod.
  std::mt19937_64 random(1);
  std::vector<double> values(2000);
  for (double& value : values) {
    value = std::ldexp(std::uniform_real_distribution<double>(-1, 1)(random),
                       std::uniform_int_distribution<int>(-1000, 1000)(random));
  }
  auto parsed = ParseJson(json(values).dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->get<std::vector<double>>(), values);
}

TEST(JsonReaderTest, InvalidDocumentsNameTheByteAndWhatWasExpected) {
  const std::pair<std::string, std::string> cases[] = {
      {"", "at byte 0: expected a value"},
      {"{\"a\": 1,}", "at byte 8: expected a string key"},
      {"[1 2]", "at byte 3: expected ',' or ']'"},
      {"[01]", "at byte 2: expected ',' or ']'"},
      {"[1.]", "a digit after '.'"},
      {"[1e]", "a digit in the exponent"},
      {"[+1]", "expected a value"},
      {"[NaN]", "expected a value"},
      {"[1e999]", "within double's range, not 1e999"},
      {"\"abc", "closing the string"},
      {"\"a\tb\"", "no control character"},
      {"\"\\x\"", "an escape"},
      {"\"\\udc00\"", "high surrogate"},
      {"\"\\ud83dx\"", "low surrogate"},
      {"\"\xff\"", "UTF-8"},
      {"\"\xc0\xaf\"", "UTF-8"},  // An overlong '/'.
      {"tru", "'true'"},
      {"{} {}", "the end of the document"},
      {std::string(100, '[') + std::string(100, ']'), "levels of nesting"},
  };
  for (const auto& [document, words] : cases) {
    auto parsed = ParseJson(document);
    ASSERT_FALSE(parsed.ok()) << document;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(words)) << document;
  }
}

TEST(HttpServerTest, DispatchPrefersExactThenLongestPrefixAndContainsExceptions) {
  HttpServer server(HttpServer::Options{});
  auto answer = [](const std::string& text) {
    return [text](const HttpRequest&) {
      HttpResponse response;
      response.body = text;
      return response;
    };
  };
  server.HandlePrefix("GET", "/v2/", answer("short"));
  server.HandlePrefix("GET", "/v2/models/", answer("long"));
  server.Handle("GET", "/v2/models/x", answer("exact"));
  server.Handle("GET", "/throws", [](const HttpRequest&) -> HttpResponse {
    throw std::runtime_error("broken handler");
  });
  auto get = [&](const std::string& path) {
    return server.Dispatch(HttpRequest{"GET", path, "", "", ""});
  };
  EXPECT_EQ(get("/v2/models/x").body, "exact");
  EXPECT_EQ(get("/v2/models/y/infer").body, "long");
  EXPECT_EQ(get("/v2/health/live").body, "short");
  EXPECT_EQ(get("/v3").status, 404);
  HttpResponse thrown = get("/throws");
  EXPECT_EQ(thrown.status, 500);
  EXPECT_THAT(thrown.body, HasSubstr("broken handler"));
  // Starting and stopping at once, and twice, neither hangs nor crashes.
  auto port = server.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  EXPECT_GT(*port, 0);
  server.Stop();
  server.Stop();
}

TEST_F(UmbridgeTest, ConcurrentClientsGetTheirOwnAnswers) {
  auto model = Model("dipnet");
  constexpr int kClients = 6, kCalls = 10;
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < kCalls; ++i) {
        torch::Tensor m = Gaussian({kDims.d_m}, 1000 + c * kCalls + i);
        torch::Tensor vec = Gaussian({kDims.d_m}, 5000 + c * kCalls + i);
        json body = Request("dipnet", m);
        body["inWrt"] = 0;
        body["outWrt"] = 0;
        body["vec"] = ToJson(vec);
        Reply reply = Post("/ApplyJacobian", body);
        if (reply.status != 200 || RelativeError(FromJson(reply.body["output"]),
                                                 model->Jvp(m, vec, false)->values[0]) > 1e-12) {
          ++wrong;
        }
      }
    });
  }
  for (auto& client : clients) client.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(UmbridgeTest, TokenIsRequiredAsBearerOrUrlPassword) {
  Stop();
  Start("s3cret");
  const json body = Request("dipnet", Gaussian({kDims.d_m}, 10));
  Reply open = Post("/Evaluate", body);
  ExpectError(open, 401, "Unauthenticated", "Authorization");
  ExpectError(Send("GET", "/Info", ""), 401, "Unauthenticated", "Authorization");
  ExpectError(Send("POST", "/Evaluate", body.dump(), {{"Authorization", "Bearer wrong"}}), 401,
              "Unauthenticated", "not valid");
  EXPECT_EQ(Send("POST", "/Evaluate", body.dump(), {{"Authorization", "Bearer s3cret"}}).status,
            200);
  // What Python's requests sends for http://user:s3cret@host:port: Basic base64("user:s3cret").
  EXPECT_EQ(Send("GET", "/Info", "", {{"Authorization", "Basic dXNlcjpzM2NyZXQ="}}).status, 200);
  ExpectError(Send("GET", "/Info", "", {{"Authorization", "Basic dXNlcjp3cm9uZw=="}}), 401,
              "Unauthenticated", "not valid");  // user:wrong
}

}  // namespace
}  // namespace dino::frontend
