// dino-bench: client-observed latency of single-sample Evaluate, Jvp, Vjp and ReducedJacobian
// calls against a running dino-serve server.
//
// Each method gets --warmup unmeasured calls, then --n measured calls spread over
// --concurrency client threads sharing one channel. Every call uses a fresh-looking random
// input (drawn from a pre-generated pool so that random number generation is not timed).
// Latency is measured around the client library call, so it includes request encoding and
// response decoding, which for one sample are negligible next to the RPC.
//
// Exit status: 0 when every call succeeded, 1 when any failed (the first error of each
// method is printed), 2 for usage errors or when the model cannot be resolved.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/bench/latency_stats.h"
#include "client/dino_client.h"
#include "models/io/npy.h"

namespace {

using dino::NpyArray;
using dino::NpyDType;
using dino::client::DinoClient;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
// Distinct random inputs cycled through by the calls.
constexpr size_t kInputPool = 64;

struct Flags {
  std::string server = "localhost:50051";
  std::string model;
  int64_t version = 0;
  int64_t n = 1000;
  int64_t warmup = 100;
  int concurrency = 1;
  std::string methods = "evaluate,jvp,vjp,reduced_jacobian";
  std::string dtype;
  double timeout_s = 10;
  bool wait = false;
  uint64_t seed = 1;
  std::string json;
};

// Random inputs with the model's dimensions and dtype.
struct Inputs {
  std::vector<NpyArray> m;          // [1, d_M]
  std::vector<NpyArray> direction;  // [1, d_M]
  std::vector<NpyArray> cotangent;  // [1, d_Q]
};

NpyArray RandomArray(std::vector<int64_t> shape, NpyDType dtype, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  NpyArray array = *NpyArray::Zeros(std::move(shape), dtype);
  if (dtype == NpyDType::kFloat32) {
    for (float& x : array.MutableView<float>()) x = static_cast<float>(normal(rng));
  } else {
    for (double& x : array.MutableView<double>()) x = normal(rng);
  }
  return array;
}

struct MethodResult {
  std::string method;
  std::string skipped;  // Why the method was not measured; empty when it was.
  dino::bench::LatencyStats stats;
  int64_t errors = 0;
  std::string first_error;
  double wall_s = 0;
  double throughput = 0;  // Successful calls per second of wall time.
};

using CallFn = std::function<absl::Status(size_t input_index)>;

MethodResult Measure(const std::string& method, const Flags& flags, const CallFn& call) {
  MethodResult result;
  result.method = method;
  for (int64_t i = 0; i < flags.warmup; ++i) {
    if (absl::Status s = call(static_cast<size_t>(i) % kInputPool); !s.ok()) {
      // A failing warm-up (unreachable server, bad model) would fail every measured call too.
      result.errors = 1;
      result.first_error = absl::StrCat("warm-up call failed: ", absl::StatusCodeToString(s.code()),
                                        ": ", s.message());
      return result;
    }
  }
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(flags.n));
  auto worker = [&]() {
    std::vector<double> local;
    int64_t errors = 0;
    std::string first_error;
    for (int64_t i = next.fetch_add(1); i < flags.n; i = next.fetch_add(1)) {
      const auto start = std::chrono::steady_clock::now();
      absl::Status s = call(static_cast<size_t>(i) % kInputPool);
      const auto end = std::chrono::steady_clock::now();
      if (s.ok()) {
        local.push_back(std::chrono::duration<double, std::micro>(end - start).count());
      } else {
        if (errors++ == 0) {
          first_error = absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    samples.insert(samples.end(), local.begin(), local.end());
    if (result.errors == 0 && errors > 0) result.first_error = first_error;
    result.errors += errors;
  };
  const auto wall_start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < flags.concurrency; ++t) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  result.wall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  result.stats = dino::bench::ComputeLatencyStats(&samples);
  if (result.wall_s > 0)
    result.throughput = static_cast<double>(result.stats.count) / result.wall_s;
  return result;
}

void PrintTable(const std::vector<MethodResult>& results, FILE* out) {
  std::fprintf(out, "%-16s %8s %7s %10s %10s %10s %10s %10s\n", "method", "calls", "errors",
               "p50_us", "p90_us", "p99_us", "mean_us", "calls/s");
  for (const MethodResult& r : results) {
    if (!r.skipped.empty()) {
      std::fprintf(out, "%-16s skipped: %s\n", r.method.c_str(), r.skipped.c_str());
      continue;
    }
    std::fprintf(out, "%-16s %8lld %7lld %10.1f %10.1f %10.1f %10.1f %10.1f\n", r.method.c_str(),
                 static_cast<long long>(r.stats.count), static_cast<long long>(r.errors),
                 r.stats.p50_us, r.stats.p90_us, r.stats.p99_us, r.stats.mean_us, r.throughput);
  }
  for (const MethodResult& r : results) {
    if (!r.first_error.empty()) {
      std::fprintf(out, "%s: first error: %s\n", r.method.c_str(), r.first_error.c_str());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "dino-bench: measures client-observed latency of single-sample Evaluate, Jvp (one "
      "direction), Vjp (one cotangent) and ReducedJacobian (B = 1, model bases) calls against "
      "a dino-serve server, with random inputs of the model's dimensions, and prints p50/p90/"
      "p99/mean latency in microseconds per method.\n\n"
      "Exit status: 0 all calls succeeded; 1 some call failed; 2 usage error or the model "
      "could not be resolved.",
      "dino-bench");
  Flags f;
  app.add_option("--server", f.server, "Server address")->capture_default_str();
  app.add_option("--model", f.model, "Model to benchmark; default: the first one listed");
  app.add_option("--version", f.version, "Model version; 0 = default")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-n,--n", f.n, "Measured calls per method (after warm-up)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--warmup", f.warmup, "Unmeasured warm-up calls per method")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--concurrency", f.concurrency,
                 "Client threads issuing calls concurrently (sharing one channel)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--methods", f.methods,
                 "Comma-separated subset of evaluate, jvp, vjp, reduced_jacobian")
      ->capture_default_str();
  app.add_option("--dtype", f.dtype, "Dtype of inputs and outputs; default: the model's own dtype")
      ->check(CLI::IsMember({"fp32", "fp64"}));
  app.add_option("--timeout", f.timeout_s, "Deadline of each call, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--wait", f.wait, "Wait up to --timeout for the server to become reachable");
  app.add_option("--seed", f.seed, "Seed of the random inputs")->capture_default_str();
  app.add_option("--json", f.json,
                 "Also write the results as JSON to this file ('-' = stdout, the table then "
                 "goes to stderr)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }

  std::vector<std::string> methods;
  for (absl::string_view m : absl::StrSplit(f.methods, ',', absl::SkipWhitespace())) {
    if (m != "evaluate" && m != "jvp" && m != "vjp" && m != "reduced_jacobian") {
      std::cerr << "dino-bench: --methods: unknown method '" << m
                << "' (choose from evaluate, jvp, vjp, reduced_jacobian)\n";
      return kExitUsage;
    }
    methods.emplace_back(m);
  }

  dino::client::ClientOptions options;
  options.target = f.server;
  options.timeout = absl::Seconds(f.timeout_s);
  options.wait_for_ready = f.wait;
  absl::StatusOr<DinoClient> client = DinoClient::Connect(options);
  if (!client.ok()) {
    std::cerr << "dino-bench: " << client.status().message() << "\n";
    return kExitUsage;
  }
  auto fail = [](absl::string_view rpc, const absl::Status& s) {
    std::cerr << "dino-bench: " << rpc << " failed: " << absl::StatusCodeToString(s.code()) << ": "
              << s.message() << "\n";
    return kExitUsage;
  };
  if (f.model.empty()) {
    absl::StatusOr<std::vector<dino::client::ModelSummary>> models = client->ListModels();
    if (!models.ok()) return fail("ListModels", models.status());
    if (models->empty()) {
      std::cerr << "dino-bench: the server has no models loaded\n";
      return kExitUsage;
    }
    f.model = models->front().name;
  }
  const dino::client::ModelRef ref{f.model, f.version};
  absl::StatusOr<dino::client::ModelInfo> info = client->GetModelInfo(ref);
  if (!info.ok()) return fail("GetModelInfo", info.status());

  const NpyDType dtype = f.dtype.empty()     ? info->dtype
                         : f.dtype == "fp32" ? NpyDType::kFloat32
                                             : NpyDType::kFloat64;
  dino::client::CallOptions call;
  call.output_dtype = dtype;
  std::mt19937_64 rng(f.seed);
  Inputs inputs;
  for (size_t i = 0; i < kInputPool; ++i) {
    inputs.m.push_back(RandomArray({1, info->input_dim}, dtype, rng));
    inputs.direction.push_back(RandomArray({1, info->input_dim}, dtype, rng));
    inputs.cotangent.push_back(RandomArray({1, info->output_dim}, dtype, rng));
  }

  FILE* table = f.json == "-" ? stderr : stdout;
  std::fprintf(table,
               "dino-bench: %s model %s v%lld (d_M=%lld, d_Q=%lld, %s), %lld calls per method "
               "after %lld warm-up, concurrency %d\n",
               f.server.c_str(), info->name.c_str(), static_cast<long long>(info->version),
               static_cast<long long>(info->input_dim), static_cast<long long>(info->output_dim),
               dtype == NpyDType::kFloat32 ? "fp32" : "fp64", static_cast<long long>(f.n),
               static_cast<long long>(f.warmup), f.concurrency);

  const DinoClient& c = *client;
  std::vector<MethodResult> results;
  for (const std::string& method : methods) {
    if (method == "evaluate") {
      results.push_back(Measure(
          "Evaluate", f, [&](size_t i) { return c.Evaluate(ref, inputs.m[i], call).status(); }));
    } else if (method == "jvp") {
      results.push_back(Measure("Jvp", f, [&](size_t i) {
        return c.Jvp(ref, inputs.m[i], inputs.direction[i], false, call).status();
      }));
    } else if (method == "vjp") {
      results.push_back(Measure("Vjp", f, [&](size_t i) {
        return c.Vjp(ref, inputs.m[i], inputs.cotangent[i], false, call).status();
      }));
    } else if (!info->has_reduced_bases) {
      MethodResult skipped;
      skipped.method = "ReducedJacobian";
      skipped.skipped = "the model has no reduced bases";
      results.push_back(skipped);
    } else {
      results.push_back(Measure("ReducedJacobian", f, [&](size_t i) {
        return c.ReducedJacobian(ref, inputs.m[i], call).status();
      }));
    }
  }
  PrintTable(results, table);

  if (!f.json.empty()) {
    nlohmann::json out = {{"server", f.server},
                          {"model", info->name},
                          {"version", info->version},
                          {"input_dim", info->input_dim},
                          {"output_dim", info->output_dim},
                          {"dtype", dtype == NpyDType::kFloat32 ? "fp32" : "fp64"},
                          {"n", f.n},
                          {"warmup", f.warmup},
                          {"concurrency", f.concurrency},
                          {"results", nlohmann::json::array()}};
    for (const MethodResult& r : results) {
      nlohmann::json row = {{"method", r.method}};
      if (!r.skipped.empty()) {
        row["skipped"] = r.skipped;
      } else {
        row.update({{"calls", r.stats.count},
                    {"errors", r.errors},
                    {"p50_us", r.stats.p50_us},
                    {"p90_us", r.stats.p90_us},
                    {"p99_us", r.stats.p99_us},
                    {"mean_us", r.stats.mean_us},
                    {"min_us", r.stats.min_us},
                    {"max_us", r.stats.max_us},
                    {"wall_s", r.wall_s},
                    {"throughput_per_s", r.throughput}});
        if (!r.first_error.empty()) row["first_error"] = r.first_error;
      }
      out["results"].push_back(row);
    }
    const std::string text = out.dump(2) + "\n";
    if (f.json == "-") {
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else {
      std::ofstream file(f.json);
      file << text;
      if (!file.good()) {
        std::cerr << "dino-bench: cannot write " << f.json << "\n";
        return kExitUsage;
      }
    }
  }
  for (const MethodResult& r : results) {
    if (r.errors > 0) return kExitFailure;
  }
  return kExitOk;
}
