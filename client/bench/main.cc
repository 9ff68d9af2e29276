// dino-bench: a load generator for a running dino-serve server.
//
// For each method (Evaluate, Jvp, Vjp, ReducedJacobian, Jacobian) it measures one point per
// entry of --concurrency (closed loop: that many clients, each sending its next request when
// the previous one is answered) or of --rate (open loop: requests per second at fixed or
// Poisson arrival times, whatever the server does; latency counts from the scheduled send
// time, so a server that falls behind shows its queueing delay instead of being sent less).
// Each point sends --warmup unmeasured requests, then -n measured ones (or all it sends in
// --duration seconds), and reports p50/p90/p99/max latency of the successes, requests/s and
// samples/s (rows of m per second), and failures by status code with their own latency
// percentiles (a refusal, RESOURCE_EXHAUSTED, is not a fast success).
//
// The client must cost little CPU because it usually shares the machine with the server:
// requests are random inputs of the model's dimensions serialized once into a pool and sent
// as raw bytes on gRPC's asynchronous API (load_runner.h), responses are not even parsed
// unless --check asks for it. --check compares every successful response with reference
// values computed one row at a time, serially, before the point: a batching server that
// mixed up rows between callers or returned a wrong shape fails the check.
//
// Exit status: 0 when every measured call succeeded (or failed only with a code listed in
// --expected_codes) and every checked response matched; 1 otherwise (the first error of
// each point is printed); 2 for usage errors or when the model cannot be resolved.
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/bench/latency_stats.h"
#include "client/bench/load_plan.h"
#include "client/bench/load_runner.h"
#include "client/dino_client.h"
#include "client/tensor_codec.h"
#include "models/io/npy.h"

namespace {

using dino::NpyArray;
using dino::NpyDType;
using dino::bench::LatencyStats;
using dino::bench::LoadResult;
using dino::client::DinoClient;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
// Distinct requests cycled through by the calls, at most, and the bytes they may take: a
// pool of 64 batch-1000 requests would be 2 GiB.
constexpr int64_t kMaxPool = 64;
constexpr int64_t kPoolBytes = int64_t{128} << 20;
// Clients per channel (one TCP connection each) when --channels is 0: well below the
// HTTP/2 stream limit a server usually sets (100).
constexpr int64_t kClientsPerChannel = 32;

struct Flags {
  std::string server = "localhost:50051";
  std::string model;
  int64_t version = 0;
  int64_t n = 1000;
  double duration_s = 0;
  int64_t warmup = 100;
  std::string concurrency = "1";
  std::string rate;
  std::string arrivals = "fixed";
  std::string methods = "evaluate,jvp,vjp,reduced_jacobian";
  int64_t batch = 1;
  int64_t k = 1;
  std::string dtype;
  double timeout_s = 10;
  double refusal_backoff_ms = 0;
  double refusal_backoff_max_ms = 1000;
  bool wait = false;
  uint64_t seed = 1;
  int channels = 0;
  int threads = 1;
  int64_t pool = 0;
  bool check = false;
  int64_t check_rows = 4;
  double check_rtol = 0;
  std::string expected_codes;
  std::string json;
  std::string csv;
  dino::client::TlsClientFlags tls;
};

enum class Method { kEvaluate, kJvp, kVjp, kReducedJacobian, kJacobian };

struct MethodSpec {
  Method method;
  const char* flag_name;     // In --methods.
  const char* display_name;  // In tables, JSON and CSV.
  const char* rpc_path;      // Full gRPC method path.
};

constexpr MethodSpec kMethods[] = {
    {Method::kEvaluate, "evaluate", "Evaluate", "/dino.v1.Surrogate/Evaluate"},
    {Method::kJvp, "jvp", "Jvp", "/dino.v1.Surrogate/Jvp"},
    {Method::kVjp, "vjp", "Vjp", "/dino.v1.Surrogate/Vjp"},
    {Method::kReducedJacobian, "reduced_jacobian", "ReducedJacobian",
     "/dino.v1.Surrogate/ReducedJacobian"},
    {Method::kJacobian, "jacobian", "Jacobian", "/dino.v1.Surrogate/Jacobian"},
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

// Rows [first, first + count) of `array` (split along its first axis), reshaped to `shape`.
NpyArray Rows(const NpyArray& array, int64_t first, int64_t count, std::vector<int64_t> shape) {
  const size_t row_bytes = array.bytes.size() / static_cast<size_t>(array.shape[0]);
  NpyArray out;
  out.shape = std::move(shape);
  out.dtype = array.dtype;
  out.bytes.assign(array.bytes.begin() + static_cast<std::ptrdiff_t>(first * row_bytes),
                   array.bytes.begin() + static_cast<std::ptrdiff_t>((first + count) * row_bytes));
  return out;
}

// What one request of a method looks like for the model, --batch and --k.
struct RequestShape {
  Method method;
  int64_t batch, k, d_m, d_q, r_m, r_q;
  NpyDType dtype;

  // The second input (directions of Jvp, cotangents of Vjp): one point takes [k, width];
  // B ≥ 2 points take [B, width] (k = 1) or [B, k, width], the proto's per-point forms.
  std::vector<int64_t> SecondShape(int64_t points) const {
    const int64_t width = method == Method::kJvp ? d_m : d_q;
    if (points == 1) return {k, width};
    if (k == 1) return {points, width};
    return {points, k, width};
  }
  bool HasSecond() const { return method == Method::kJvp || method == Method::kVjp; }
  // The shape of the response's main tensor for `points` points.
  std::vector<int64_t> ResultShape(int64_t points) const {
    switch (method) {
      case Method::kEvaluate:
        return {points, d_q};
      case Method::kJvp:
      case Method::kVjp: {
        std::vector<int64_t> shape = SecondShape(points);
        shape.back() = method == Method::kJvp ? d_q : d_m;
        return shape;
      }
      case Method::kReducedJacobian:
        return {points, r_q, r_m};
      case Method::kJacobian:
        return {d_q, d_m};
    }
    return {};
  }
  int64_t RequestBytes() const {
    int64_t elements = batch * d_m;
    if (HasSecond()) elements += batch * k * (method == Method::kJvp ? d_m : d_q);
    return elements * static_cast<int64_t>(dino::NpyDTypeSize(dtype));
  }
};

// The inputs of one pooled request.
struct RequestInputs {
  NpyArray m;       // [B, d_M]
  NpyArray second;  // Directions or cotangents, when the method has them.
};

void SetRef(const dino::client::ModelRef& ref, dino::v1::ModelRef* out) {
  out->set_name(ref.name);
  out->set_version(ref.version);
}

// Serializes the request of `method` for `inputs`; the inputs are valid by construction.
grpc::ByteBuffer Serialize(const google::protobuf::Message& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(message, &buffer,
                                                                             &own_buffer);
  return buffer;
}

// One unmeasured call (the probe before the load, a reference row). A server already under
// load (another generator's) refuses with RESOURCE_EXHAUSTED and asks for a retry with
// backoff: this retries, backing off from 10 ms to 1 s, for up to `timeout_s` in all, rather
// than give up the run.
absl::StatusOr<grpc::ByteBuffer> CallRetryingRefusals(const std::shared_ptr<grpc::Channel>& channel,
                                                      const std::string& rpc,
                                                      const grpc::ByteBuffer& request,
                                                      double timeout_s) {
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                           std::chrono::duration<double>(timeout_s));
  absl::StatusOr<grpc::ByteBuffer> response =
      dino::bench::CallOnce(channel, rpc, request, timeout_s);
  for (auto backoff = std::chrono::milliseconds(10);
       !response.ok() && response.status().code() == absl::StatusCode::kResourceExhausted &&
       std::chrono::steady_clock::now() + backoff < give_up;
       backoff = std::min(2 * backoff, std::chrono::milliseconds(1000))) {
    std::this_thread::sleep_for(backoff);
    response = dino::bench::CallOnce(channel, rpc, request, timeout_s);
  }
  return response;
}

grpc::ByteBuffer BuildRequest(const RequestShape& shape, const dino::client::ModelRef& ref,
                              const RequestInputs& inputs, dino::v1::DType output_dtype) {
  auto encode = [](const NpyArray& array, dino::v1::Tensor* tensor, const char* field) {
    absl::Status s = dino::client::EncodeTensor(array, tensor, field);
    if (!s.ok()) {
      std::cerr << "dino-bench: internal error: " << s << "\n";
      std::abort();
    }
  };
  switch (shape.method) {
    case Method::kEvaluate: {
      dino::v1::EvaluateRequest r;
      SetRef(ref, r.mutable_model());
      encode(inputs.m, r.mutable_m(), "m");
      r.set_output_dtype(output_dtype);
      return Serialize(r);
    }
    case Method::kJvp: {
      dino::v1::JvpRequest r;
      SetRef(ref, r.mutable_model());
      encode(inputs.m, r.mutable_m(), "m");
      encode(inputs.second, r.mutable_directions(), "directions");
      r.set_output_dtype(output_dtype);
      return Serialize(r);
    }
    case Method::kVjp: {
      dino::v1::VjpRequest r;
      SetRef(ref, r.mutable_model());
      encode(inputs.m, r.mutable_m(), "m");
      encode(inputs.second, r.mutable_cotangents(), "cotangents");
      r.set_output_dtype(output_dtype);
      return Serialize(r);
    }
    case Method::kReducedJacobian: {
      dino::v1::ReducedJacobianRequest r;
      SetRef(ref, r.mutable_model());
      encode(inputs.m, r.mutable_m(), "m");
      r.set_output_dtype(output_dtype);
      return Serialize(r);
    }
    case Method::kJacobian: {
      dino::v1::JacobianRequest r;
      SetRef(ref, r.mutable_model());
      encode(inputs.m, r.mutable_m(), "m");
      r.set_output_dtype(output_dtype);
      return Serialize(r);
    }
  }
  return {};
}

// The main result tensor of a serialized response of `method` (q, jvp, vjp,
// reduced_jacobian or jacobian), copied out of the message.
absl::StatusOr<dino::v1::Tensor> ResultTensor(Method method, const grpc::ByteBuffer& response) {
  grpc::ByteBuffer bytes(response);  // Deserialization consumes its buffer; this is a ref.
  auto parse = [&](google::protobuf::Message* message) {
    return grpc::GenericDeserialize<grpc::ProtoBufferReader, google::protobuf::Message>(&bytes,
                                                                                        message);
  };
  grpc::Status status;
  dino::v1::Tensor tensor;
  switch (method) {
    case Method::kEvaluate: {
      dino::v1::EvaluateResponse r;
      status = parse(&r);
      tensor = std::move(*r.mutable_q());
      break;
    }
    case Method::kJvp: {
      dino::v1::JvpResponse r;
      status = parse(&r);
      tensor = std::move(*r.mutable_jvp());
      break;
    }
    case Method::kVjp: {
      dino::v1::VjpResponse r;
      status = parse(&r);
      tensor = std::move(*r.mutable_vjp());
      break;
    }
    case Method::kReducedJacobian: {
      dino::v1::ReducedJacobianResponse r;
      status = parse(&r);
      tensor = std::move(*r.mutable_reduced_jacobian());
      break;
    }
    case Method::kJacobian: {
      dino::v1::JacobianResponse r;
      status = parse(&r);
      tensor = std::move(*r.mutable_jacobian());
      break;
    }
  }
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("unparsable response: ", status.error_message()));
  }
  return tensor;
}

// Reference values of some rows of each pooled request, and the check of a response
// against them.
class ResponseChecker {
 public:
  ResponseChecker(const RequestShape& shape, double rtol) : shape_(shape), rtol_(rtol) {}

  // Computes the reference rows of pool request `inputs` with one single-point call each,
  // serially, before any load. Up to `max_rows` rows, evenly spread, first and last included.
  absl::Status AddReference(const std::shared_ptr<grpc::Channel>& channel, const std::string& rpc,
                            const dino::client::ModelRef& ref, dino::v1::DType output_dtype,
                            const RequestInputs& inputs, int64_t max_rows, double timeout_s) {
    const int64_t points = shape_.batch;
    // One point (a single-point Jvp with k directions, a Jacobian) is compared whole.
    const int64_t rows = std::min(points, std::max<int64_t>(1, max_rows));
    Reference reference;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t row = rows == 1 ? 0 : i * (points - 1) / (rows - 1);
      RequestInputs single;
      single.m = Rows(inputs.m, row, 1, {1, shape_.d_m});
      if (shape_.HasSecond()) {
        single.second =
            points == 1 ? inputs.second : Rows(inputs.second, row, 1, shape_.SecondShape(1));
      }
      absl::StatusOr<grpc::ByteBuffer> response = CallRetryingRefusals(
          channel, rpc, BuildRequest(shape_, ref, single, output_dtype), timeout_s);
      if (!response.ok()) {
        return absl::Status(
            response.status().code(),
            absl::StrCat("reference call for row ", row, " failed: ", response.status().message()));
      }
      absl::StatusOr<dino::v1::Tensor> tensor = ResultTensor(shape_.method, *response);
      if (!tensor.ok()) return tensor.status();
      absl::StatusOr<NpyArray> array = dino::client::DecodeTensor(*tensor, "reference");
      if (!array.ok()) return array.status();
      reference.rows.push_back(row);
      reference.values.push_back(array->ToDoubles());
    }
    references_.push_back(std::move(reference));
    return absl::OkStatus();
  }

  // The response's main result as doubles, after checking that it parses and has the
  // expected shape and dtype and finite values. Used on the warm-up probe even without --check.
  absl::StatusOr<std::vector<double>> Decode(const grpc::ByteBuffer& response) const {
    absl::StatusOr<dino::v1::Tensor> tensor = ResultTensor(shape_.method, response);
    if (!tensor.ok()) return tensor.status();
    absl::StatusOr<NpyArray> array = dino::client::DecodeTensor(*tensor, "result");
    if (!array.ok()) return absl::InternalError(array.status().message());
    const std::vector<int64_t> expected = shape_.ResultShape(shape_.batch);
    if (array->shape != expected) {
      return absl::InternalError(absl::StrCat("result has shape ",
                                              dino::ShapeToString(array->shape), ", expected ",
                                              dino::ShapeToString(expected)));
    }
    if (array->dtype != shape_.dtype) return absl::InternalError("result has the wrong dtype");
    std::vector<double> values = array->ToDoubles();
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return absl::InternalError(absl::StrCat("result element ", i, " is not finite"));
      }
    }
    return values;
  }

  absl::Status Check(size_t pool_index, const grpc::ByteBuffer& response) const {
    absl::StatusOr<std::vector<double>> decoded = Decode(response);
    if (!decoded.ok()) return decoded.status();
    const std::vector<double>& values = *decoded;
    const Reference& reference = references_[pool_index];
    for (size_t r = 0; r < reference.rows.size(); ++r) {
      const std::vector<double>& want = reference.values[r];
      const size_t offset = static_cast<size_t>(reference.rows[r]) * want.size();
      if (offset + want.size() > values.size()) {
        return absl::InternalError("result is shorter than its reference rows");
      }
      for (size_t j = 0; j < want.size(); ++j) {
        const double got = values[offset + j];
        if (std::abs(got - want[j]) > rtol_ * (1 + std::abs(want[j]))) {
          return absl::InternalError(absl::StrCat("row ", reference.rows[r], " element ", j, " is ",
                                                  got, ", the single-point call gave ", want[j]));
        }
      }
    }
    return absl::OkStatus();
  }

 private:
  struct Reference {
    std::vector<int64_t> rows;
    std::vector<std::vector<double>> values;  // Flattened main result of each row's call.
  };
  RequestShape shape_;
  double rtol_;
  std::vector<Reference> references_;  // One per pool request.
};

// One measured point (or a method that could not be measured).
struct PointResult {
  explicit PointResult(const MethodSpec* method) : spec(method) {}
  const MethodSpec* spec;
  int64_t concurrency = 0;  // Closed loop.
  double rate = 0;          // Open loop.
  std::string skipped;      // Why the method was not measured.
  std::string failure;      // Why no point could run (failed warm-up / reference call).
  LoadResult load;
  int64_t unexpected_errors = 0;

  int64_t calls() const { return load.latency.successes.count; }
  double requests_per_s() const { return load.wall_s > 0 ? calls() / load.wall_s : 0; }
};

nlohmann::json StatsJson(const LatencyStats& s) {
  return {{"count", s.count},   {"p50_us", s.p50_us},   {"p90_us", s.p90_us},
          {"p99_us", s.p99_us}, {"mean_us", s.mean_us}, {"max_us", s.max_us}};
}

nlohmann::json RowJson(const PointResult& r, const Flags& f, bool open_loop) {
  nlohmann::json row = {{"method", r.spec->display_name}, {"batch", f.batch}, {"k", f.k}};
  if (open_loop) {
    row["mode"] = "open";
    row["rate"] = r.rate;
    row["arrivals"] = f.arrivals;
  } else {
    row["mode"] = "closed";
    row["concurrency"] = r.concurrency;
  }
  if (!r.skipped.empty()) {
    row["skipped"] = r.skipped;
    return row;
  }
  if (!r.failure.empty()) {
    row.update({{"calls", 0}, {"errors", 1}, {"first_error", r.failure}});
    return row;
  }
  const LatencyStats& s = r.load.latency.successes;
  nlohmann::json by_code = nlohmann::json::object();
  nlohmann::json error_latency = nlohmann::json::object();
  for (const auto& [code, stats] : r.load.latency.failures) {
    by_code[code] = stats.count;
    error_latency[code] = StatsJson(stats);
  }
  row.update({{"requests", r.load.sent},
              {"calls", s.count},
              {"errors", r.load.latency.failure_count},
              {"unexpected_errors", r.unexpected_errors},
              {"errors_by_code", by_code},
              {"p50_us", s.p50_us},
              {"p90_us", s.p90_us},
              {"p99_us", s.p99_us},
              {"mean_us", s.mean_us},
              {"min_us", s.min_us},
              {"max_us", s.max_us},
              {"error_latency_us", error_latency},
              {"wall_s", r.load.wall_s},
              {"throughput_per_s", r.requests_per_s()},
              {"requests_per_s", r.requests_per_s()},
              {"samples_per_s", r.requests_per_s() * static_cast<double>(f.batch)},
              {"warmup", f.warmup},
              {"warmup_failures", r.load.warmup_failures},
              {"client_cpu_s", r.load.client_cpu_s},
              {"client_cpu_share_of_one_core",
               r.load.point_s > 0 ? r.load.client_cpu_s / r.load.point_s : 0}});
  if (open_loop) {
    row["send_lag_us"] = StatsJson(r.load.send_lag);
    row["max_in_flight"] = r.load.max_in_flight;
  }
  if (f.check) {
    row["check"] = {{"checked", r.load.checked},
                    {"failures", r.load.check_failures},
                    {"first_failure", r.load.first_check_failure}};
  }
  if (!r.load.first_error.empty()) row["first_error"] = r.load.first_error;
  return row;
}

std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

std::string CsvText(const std::vector<PointResult>& results, const Flags& f, bool open_loop) {
  std::string out =
      "method,mode,concurrency,rate,arrivals,batch,k,requests,calls,errors,unexpected_errors,"
      "errors_by_code,p50_us,p90_us,p99_us,mean_us,max_us,requests_per_s,samples_per_s,"
      "refused_p50_us,refused_p99_us,refused_max_us,checked,check_failures,wall_s,"
      "send_lag_p99_us,client_cpu_s,skipped_or_failed\n";
  for (const PointResult& r : results) {
    const LatencyStats& s = r.load.latency.successes;
    std::vector<std::string> codes;
    for (const auto& [code, stats] : r.load.latency.failures) {
      codes.push_back(absl::StrCat(code, "=", stats.count));
    }
    LatencyStats refused;
    if (auto it = r.load.latency.failures.find("RESOURCE_EXHAUSTED");
        it != r.load.latency.failures.end()) {
      refused = it->second;
    }
    absl::StrAppend(
        &out, r.spec->display_name, ",", open_loop ? "open" : "closed", ",",
        open_loop ? "" : absl::StrCat(r.concurrency), ",", open_loop ? absl::StrCat(r.rate) : "",
        ",", open_loop ? f.arrivals : "", ",", f.batch, ",", f.k, ",", r.load.sent, ",", s.count,
        ",", r.load.latency.failure_count, ",", r.unexpected_errors, ",",
        CsvField(absl::StrJoin(codes, ";")), ",", s.p50_us, ",", s.p90_us, ",", s.p99_us, ",",
        s.mean_us, ",", s.max_us, ",", r.requests_per_s(), ",",
        r.requests_per_s() * static_cast<double>(f.batch), ",", refused.p50_us, ",", refused.p99_us,
        ",", refused.max_us, ",", r.load.checked, ",", r.load.check_failures, ",", r.load.wall_s,
        ",", open_loop ? absl::StrCat(r.load.send_lag.p99_us) : "", ",", r.load.client_cpu_s, ",",
        CsvField(r.skipped.empty() ? r.failure : r.skipped), "\n");
  }
  return out;
}

void PrintTable(const std::vector<PointResult>& results, const Flags& f, bool open_loop,
                FILE* out) {
  std::fprintf(out, "%-16s %9s %6s %8s %8s %7s %9s %9s %9s %9s %10s %11s\n", "method",
               open_loop ? "rate/s" : "clients", "batch", "requests", "ok", "errors", "p50_us",
               "p90_us", "p99_us", "max_us", "requests/s", "samples/s");
  for (const PointResult& r : results) {
    if (!r.skipped.empty()) {
      std::fprintf(out, "%-16s skipped: %s\n", r.spec->display_name, r.skipped.c_str());
      continue;
    }
    if (!r.failure.empty()) {
      std::fprintf(out, "%-16s failed: %s\n", r.spec->display_name, r.failure.c_str());
      continue;
    }
    const LatencyStats& s = r.load.latency.successes;
    const std::string point = open_loop ? absl::StrCat(r.rate) : absl::StrCat(r.concurrency);
    std::fprintf(out, "%-16s %9s %6lld %8lld %8lld %7lld %9.1f %9.1f %9.1f %9.1f %10.1f %11.1f\n",
                 r.spec->display_name, point.c_str(), static_cast<long long>(f.batch),
                 static_cast<long long>(r.load.sent), static_cast<long long>(s.count),
                 static_cast<long long>(r.load.latency.failure_count), s.p50_us, s.p90_us, s.p99_us,
                 s.max_us, r.requests_per_s(), r.requests_per_s() * static_cast<double>(f.batch));
    for (const auto& [code, stats] : r.load.latency.failures) {
      std::fprintf(out, "%-16s   %s: %lld calls, p50 %.1f us, p99 %.1f us, max %.1f us\n", "",
                   code.c_str(), static_cast<long long>(stats.count), stats.p50_us, stats.p99_us,
                   stats.max_us);
    }
    if (r.load.point_s > 0) {
      std::fprintf(out, "%-16s   client CPU %.2f s in %.2f s (%.0f %% of one core)\n", "",
                   r.load.client_cpu_s, r.load.point_s, 100 * r.load.client_cpu_s / r.load.point_s);
    }
    if (open_loop && r.load.send_lag.count > 0) {
      std::fprintf(out, "%-16s   send lag behind schedule: p99 %.1f us, max %.1f us\n", "",
                   r.load.send_lag.p99_us, r.load.send_lag.max_us);
    }
    if (f.check) {
      std::fprintf(out, "%-16s   checked %lld responses, %lld wrong%s%s\n", "",
                   static_cast<long long>(r.load.checked),
                   static_cast<long long>(r.load.check_failures),
                   r.load.check_failures > 0 ? ": " : "", r.load.first_check_failure.c_str());
    }
  }
  for (const PointResult& r : results) {
    if (!r.load.first_error.empty()) {
      std::fprintf(out, "%s: first error: %s\n", r.spec->display_name, r.load.first_error.c_str());
    }
  }
}

absl::Status WriteText(const std::string& path, const std::string& text, const char* flag) {
  std::ofstream file(path);
  file << text;
  if (!file.good()) return absl::UnavailableError(absl::StrCat(flag, ": cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "dino-bench: load generator for a dino-serve server. For each method it measures one "
      "point per --concurrency value (closed loop) or --rate value (open loop, latency from "
      "the scheduled send time) with random inputs of the model's dimensions, and prints "
      "p50/p90/p99/max latency of successes, requests/s, samples/s and failures by status "
      "code (with their own latency).\n\n"
      "Exit status: 0 all measured calls succeeded (or failed with an --expected_codes code) "
      "and every checked response matched; 1 otherwise; 2 usage error or the model could not "
      "be resolved.",
      "dino-bench");
  Flags f;
  app.add_option("--server", f.server, "Server address")->capture_default_str();
  app.add_flag("--tls", f.tls.tls,
               "Connect with TLS (a server run with --tls_cert), checking its certificate "
               "against --tls_ca or the system's roots; implied by the other --tls_* flags");
  app.add_option("--tls_ca", f.tls.files.ca_path,
                 "PEM file of the CA(s) that signed the server's certificate (default: the "
                 "system's roots)");
  app.add_option("--tls_cert", f.tls.files.cert_path,
                 "PEM client certificate for mutual TLS (a server run with --tls_client_ca); "
                 "needs --tls_key");
  app.add_option("--tls_key", f.tls.files.key_path, "PEM private key of --tls_cert");
  app.add_option("--tls_server_name", f.tls.server_name,
                 "Name checked against the server's certificate instead of --server's host");
  app.add_option("--model", f.model, "Model to benchmark; default: the first one listed");
  app.add_option("--version", f.version, "Model version; 0 = default")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-n,--n", f.n, "Measured requests per point (after warm-up)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--duration", f.duration_s, "Seconds of measured requests per point instead of -n")
      ->check(CLI::PositiveNumber);
  app.add_option("--warmup", f.warmup, "Unmeasured warm-up requests per point")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI::Option* concurrency =
      app.add_option("--concurrency", f.concurrency,
                     "Closed loop: comma-separated client counts, one point each (e.g. "
                     "1,8,64); each client sends its next request when the last is answered")
          ->capture_default_str();
  CLI::Option* rate =
      app.add_option("--rate", f.rate,
                     "Open loop instead: comma-separated request rates per second, one point each; "
                     "requests leave at scheduled times whatever the server does")
          ->excludes(concurrency);
  app.add_option("--arrivals", f.arrivals, "Open-loop arrival times: fixed or poisson")
      ->check(CLI::IsMember({"fixed", "poisson"}))
      ->capture_default_str();
  app.add_option("--methods", f.methods,
                 "Comma-separated subset of evaluate, jvp, vjp, reduced_jacobian, jacobian")
      ->capture_default_str();
  app.add_option("--batch", f.batch,
                 "Points per request: m is [B, d_M]; Jvp/Vjp with B >= 2 send one direction "
                 "(cotangent) per point, [B, d_M] ([B, d_Q]), or [B, k, ...] with --k")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--k", f.k, "Directions (Jvp) or cotangents (Vjp) per point")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dtype", f.dtype, "Dtype of inputs and outputs; default: the model's own dtype")
      ->check(CLI::IsMember({"fp32", "fp64"}));
  app.add_option("--timeout", f.timeout_s, "Deadline of each call, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--refusal_backoff_ms", f.refusal_backoff_ms,
                 "Closed loop: a client refused with RESOURCE_EXHAUSTED waits a random time up to "
                 "this, doubling with each refusal in a row (up to --refusal_backoff_max_ms), "
                 "before its next request, as gRPC's retry policy does; 0 = at once")
      ->check(CLI::NonNegativeNumber)
      ->excludes(rate)
      ->capture_default_str();
  app.add_option("--refusal_backoff_max_ms", f.refusal_backoff_max_ms,
                 "Largest backoff after refusals in a row")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--wait", f.wait, "Wait up to --timeout for the server to become reachable");
  app.add_option("--seed", f.seed, "Seed of the random inputs and Poisson arrivals")
      ->capture_default_str();
  app.add_option("--channels", f.channels,
                 "gRPC channels, each its own TCP connection; 0 = one per 32 clients of the "
                 "largest --concurrency (4 for --rate), at most 16")
      ->check(CLI::Range(0, 256))
      ->capture_default_str();
  app.add_option("--threads", f.threads,
                 "Client threads, each driving its share of the calls from one completion "
                 "queue")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--pool", f.pool,
                 "Distinct pre-serialized requests cycled through; 0 = up to 64 within 128 MiB")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--check", f.check,
               "Check every successful response: shape, dtype, finite values, and --check_rows "
               "rows of each request against single-point calls made before the load");
  app.add_option("--check_rows", f.check_rows, "Rows per request compared with --check")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--check_rtol", f.check_rtol,
                 "Tolerance of --check, |got - want| <= rtol (1 + |want|); 0 = 1e-9 for fp64, "
                 "1e-4 for fp32")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--expected_codes", f.expected_codes,
                 "Comma-separated status codes that do not make the exit status 1, e.g. "
                 "RESOURCE_EXHAUSTED for an overload test");
  app.add_option("--json", f.json,
                 "Also write the results as JSON to this file ('-' = stdout, the table then "
                 "goes to stderr)");
  app.add_option("--csv", f.csv, "Also write one CSV row per point to this file ('-' = stdout)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  auto usage = [](const absl::Status& s) {
    std::cerr << "dino-bench: " << s.message() << "\n";
    return kExitUsage;
  };

  std::vector<const MethodSpec*> methods;
  for (absl::string_view name : absl::StrSplit(f.methods, ',', absl::SkipWhitespace())) {
    const MethodSpec* found = nullptr;
    for (const MethodSpec& spec : kMethods) {
      if (name == spec.flag_name) found = &spec;
    }
    if (found == nullptr) {
      std::cerr << "dino-bench: --methods: unknown method '" << name
                << "' (choose from evaluate, jvp, vjp, reduced_jacobian, jacobian)\n";
      return kExitUsage;
    }
    methods.push_back(found);
  }
  const bool open_loop = !f.rate.empty();
  std::vector<int64_t> concurrencies;
  std::vector<double> rates;
  if (open_loop) {
    absl::StatusOr<std::vector<double>> parsed =
        dino::bench::ParsePositiveDoubleList(f.rate, "--rate");
    if (!parsed.ok()) return usage(parsed.status());
    rates = *parsed;
  } else {
    absl::StatusOr<std::vector<int64_t>> parsed =
        dino::bench::ParsePositiveIntList(f.concurrency, "--concurrency", 100000);
    if (!parsed.ok()) return usage(parsed.status());
    concurrencies = *parsed;
  }
  const dino::bench::Arrivals arrivals = *dino::bench::ParseArrivals(f.arrivals);
  std::set<std::string> expected_codes;
  for (absl::string_view code : absl::StrSplit(f.expected_codes, ',', absl::SkipWhitespace())) {
    bool known = false;
    for (int c = 1; c <= 16; ++c) known = known || dino::bench::StatusCodeName(c) == code;
    if (!known) {
      std::cerr << "dino-bench: --expected_codes: unknown status code '" << code
                << "' (e.g. RESOURCE_EXHAUSTED)\n";
      return kExitUsage;
    }
    expected_codes.emplace(code);
  }

  dino::client::ClientOptions options;
  options.target = f.server;
  options.timeout = absl::Seconds(f.timeout_s);
  options.wait_for_ready = f.wait;
  if (absl::Status status = dino::client::ApplyTlsFlags(f.tls, &options); !status.ok()) {
    return usage(status);
  }
  absl::StatusOr<DinoClient> client = DinoClient::Connect(options);
  if (!client.ok()) return usage(client.status());
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
  const dino::v1::DType output_dtype =
      dtype == NpyDType::kFloat32 ? dino::v1::FP32 : dino::v1::FP64;
  if (f.check_rtol == 0) f.check_rtol = dtype == NpyDType::kFloat32 ? 1e-4 : 1e-9;
  for (const MethodSpec* spec : methods) {
    if (spec->method == Method::kJacobian && (f.batch != 1 || f.k != 1)) {
      std::cerr << "dino-bench: --methods jacobian takes one point per request: --batch and --k "
                   "must be 1\n";
      return kExitUsage;
    }
  }
  int64_t max_concurrency = 1;
  for (int64_t c : concurrencies) max_concurrency = std::max(max_concurrency, c);
  const int channel_count =
      f.channels > 0 ? f.channels
      : open_loop    ? 4
                     : static_cast<int>(std::min<int64_t>(
                        16, (max_concurrency + kClientsPerChannel - 1) / kClientsPerChannel));
  absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> channels =
      dino::bench::ConnectChannels(f.server, channel_count, f.timeout_s, options.credentials,
                                   options.tls_server_name);
  if (!channels.ok()) return usage(channels.status());

  FILE* table = f.json == "-" || f.csv == "-" ? stderr : stdout;
  std::fprintf(table,
               "dino-bench: %s model %s v%lld (d_M=%lld, d_Q=%lld, %s), batch %lld, %s per "
               "point after %lld warm-up, %s loop, %d channel(s), %d thread(s)\n",
               f.server.c_str(), info->name.c_str(), static_cast<long long>(info->version),
               static_cast<long long>(info->input_dim), static_cast<long long>(info->output_dim),
               dtype == NpyDType::kFloat32 ? "fp32" : "fp64", static_cast<long long>(f.batch),
               f.duration_s > 0 ? absl::StrCat(f.duration_s, " s").c_str()
                                : absl::StrCat(f.n, " requests").c_str(),
               static_cast<long long>(f.warmup), open_loop ? "open" : "closed", channel_count,
               f.threads);

  std::vector<PointResult> results;
  const size_t points = open_loop ? rates.size() : concurrencies.size();
  for (const MethodSpec* spec : methods) {
    if (spec->method == Method::kReducedJacobian && !info->has_reduced_bases) {
      PointResult skipped(spec);
      skipped.skipped = "the model has no reduced bases";
      results.push_back(skipped);
      continue;
    }
    const RequestShape shape{
        spec->method,     f.batch,           f.k,  info->input_dim, info->output_dim,
        info->input_rank, info->output_rank, dtype};
    const int64_t pool_size =
        f.pool > 0 ? f.pool
                   : std::clamp<int64_t>(kPoolBytes / std::max<int64_t>(1, shape.RequestBytes()), 1,
                                         kMaxPool);
    std::mt19937_64 rng(f.seed);
    std::vector<grpc::ByteBuffer> pool;
    ResponseChecker checker(shape, f.check_rtol);
    std::string failure;
    for (int64_t i = 0; i < pool_size && failure.empty(); ++i) {
      RequestInputs inputs;
      inputs.m = RandomArray({f.batch, info->input_dim}, dtype, rng);
      if (shape.HasSecond()) inputs.second = RandomArray(shape.SecondShape(f.batch), dtype, rng);
      pool.push_back(BuildRequest(shape, ref, inputs, output_dtype));
      if (i == 0) {
        // One call before any load: a failure here (unreachable server, bad model) would fail
        // every measured call too.
        absl::StatusOr<grpc::ByteBuffer> probe =
            CallRetryingRefusals((*channels)[0], spec->rpc_path, pool.back(), f.timeout_s);
        absl::Status probe_status = probe.status();
        if (probe.ok()) probe_status = checker.Decode(*probe).status();
        if (!probe_status.ok()) {
          failure =
              absl::StrCat("warm-up call failed: ", absl::StatusCodeToString(probe_status.code()),
                           ": ", probe_status.message());
        }
      }
      if (f.check && failure.empty()) {
        if (absl::Status s = checker.AddReference((*channels)[0], spec->rpc_path, ref, output_dtype,
                                                  inputs, f.check_rows, f.timeout_s);
            !s.ok()) {
          failure = absl::StrCat(absl::StatusCodeToString(s.code()), ": ", s.message());
        }
      }
    }
    if (!failure.empty()) {
      PointResult failed(spec);
      failed.concurrency = open_loop ? 0 : concurrencies.front();
      failed.rate = open_loop ? rates.front() : 0;
      failed.failure = failure;
      results.push_back(failed);
      continue;
    }
    dino::bench::ResponseCheck check;
    if (f.check) {
      check = [&checker](size_t index, const grpc::ByteBuffer& response) {
        return checker.Check(index, response);
      };
    }
    for (size_t p = 0; p < points; ++p) {
      dino::bench::LoadPoint point;
      point.method = spec->rpc_path;
      point.concurrency = open_loop ? 0 : concurrencies[p];
      point.rate = open_loop ? rates[p] : 0;
      point.arrivals = arrivals;
      point.n = f.duration_s > 0 ? 0 : f.n;
      point.duration_s = f.duration_s;
      point.warmup = f.warmup;
      point.timeout_s = f.timeout_s;
      point.threads = f.threads;
      point.seed = f.seed;
      point.refusal_backoff_ms = f.refusal_backoff_ms;
      point.refusal_backoff_max_ms = f.refusal_backoff_max_ms;
      PointResult result(spec);
      result.concurrency = point.concurrency;
      result.rate = point.rate;
      result.load = dino::bench::RunLoadPoint(point, *channels, pool, check);
      for (const auto& [code, stats] : result.load.latency.failures) {
        if (expected_codes.count(code) == 0) result.unexpected_errors += stats.count;
      }
      results.push_back(std::move(result));
    }
  }
  PrintTable(results, f, open_loop, table);

  if (!f.json.empty()) {
    nlohmann::json out = {{"server", f.server},
                          {"model", info->name},
                          {"version", info->version},
                          {"input_dim", info->input_dim},
                          {"output_dim", info->output_dim},
                          {"input_rank", info->input_rank},
                          {"output_rank", info->output_rank},
                          {"dtype", dtype == NpyDType::kFloat32 ? "fp32" : "fp64"},
                          {"mode", open_loop ? "open" : "closed"},
                          {"batch", f.batch},
                          {"k", f.k},
                          {"n", f.duration_s > 0 ? 0 : f.n},
                          {"duration_s", f.duration_s},
                          {"warmup", f.warmup},
                          {"channels", channel_count},
                          {"threads", f.threads},
                          {"check", f.check},
                          {"results", nlohmann::json::array()}};
    if (open_loop) {
      out["rate"] = rates;
      out["arrivals"] = f.arrivals;
    } else {
      out["concurrency"] = concurrencies;
      out["refusal_backoff_ms"] = f.refusal_backoff_ms;
      out["refusal_backoff_max_ms"] = f.refusal_backoff_max_ms;
    }
    for (const PointResult& r : results) out["results"].push_back(RowJson(r, f, open_loop));
    const std::string text = out.dump(2) + "\n";
    if (f.json == "-") {
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else if (absl::Status s = WriteText(f.json, text, "--json"); !s.ok()) {
      return usage(s);
    }
  }
  if (!f.csv.empty()) {
    const std::string text = CsvText(results, f, open_loop);
    if (f.csv == "-") {
      std::fwrite(text.data(), 1, text.size(), stdout);
    } else if (absl::Status s = WriteText(f.csv, text, "--csv"); !s.ok()) {
      return usage(s);
    }
  }
  for (const PointResult& r : results) {
    if (!r.failure.empty() || r.unexpected_errors > 0 || r.load.check_failures > 0) {
      return kExitFailure;
    }
  }
  return kExitOk;
}
