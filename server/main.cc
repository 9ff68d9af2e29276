// dino-server: serves the models of a model repository over gRPC (services dino.v1.Surrogate,
// dino.v1.Prior, dino.v1.Training, dino.v1.ModelAdmin and KServe's Open Inference Protocol
// inference.GRPCInferenceService, plus grpc.health.v1 and server reflection), over HTTP/JSON
// (UM-Bridge protocol 1.0, --umbridge_port; OIP REST, --http_port) and Prometheus metrics.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "models/architectures/compute_threads.h"
#include "server/core/idle_memory_trimmer.h"
#include "server/core/log.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "server/frontend/auth.h"
#include "server/frontend/http_server.h"
#include "server/frontend/oip_rest.h"
#include "server/frontend/oip_service.h"
#include "server/frontend/prior_service.h"
#include "server/frontend/surrogate_service.h"
#include "server/frontend/tls.h"
#include "server/frontend/training_service.h"
#include "server/frontend/umbridge_service.h"
#include "server/metrics/metrics_http_server.h"
#include "server/metrics/process_metrics.h"
#include "server/metrics/server_metrics.h"
#include "server/training/fine_tune_jobs.h"

ABSL_FLAG(std::string, model_repository, "models/repository",
          "Folder holding <model>/<version>/model.pt and, per model, an optional "
          "<model>/config.json: the version policy (default: the latest version only), the "
          "pinned default version, version labels and batching (docs/model-contract.md).");
ABSL_FLAG(double, repository_poll_seconds, 2.0,
          "How often the model repository is scanned for added and removed versions and "
          "changed config.json files (the loaded versions follow each model's version "
          "policy); 0 loads it once at start-up.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int32_t, port, 50051, "gRPC port; 0 picks a free one (printed on stdout).");
ABSL_FLAG(int32_t, metrics_port, 9090,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 disables it.");
ABSL_FLAG(int32_t, health_port, -1,
          "Plaintext gRPC port serving only grpc.health.v1.Health (the same statuses as "
          "--port), for probes that cannot speak TLS or present a client certificate, such as "
          "Kubernetes' native gRPC probes; 0 picks a free one (printed on stdout), -1 (the "
          "default) disables it.");
ABSL_FLAG(int32_t, umbridge_port, -1,
          "Port of the UM-Bridge protocol 1.0 endpoint (HTTP/JSON: /Info, /Evaluate, "
          "/Gradient, /ApplyJacobian, /ApplyHessian, …) on --host; 0 picks a free one (printed "
          "on stdout), -1 (the default) disables it.");
ABSL_FLAG(int32_t, http_port, -1,
          "Port of KServe's Open Inference Protocol REST API (/v2/health/..., "
          "/v2/models/{name}[/versions/{v}][/infer]) on --host; 0 picks a free one (printed on "
          "stdout), -1 (the default) disables it. The OIP gRPC service is on --port.");
ABSL_FLAG(int32_t, max_concurrent_streams, 256,
          "Calls one gRPC connection may have open at once (HTTP/2 "
          "SETTINGS_MAX_CONCURRENT_STREAMS); a client's further calls wait on its side. Without "
          "a bound, an overloading client's calls pile up in front of the model queues "
          "(--max_queue_size), with their messages in the server's memory, faster than they "
          "are refused; 0: gRPC's default (no bound).");
ABSL_FLAG(int32_t, http_threads, 16,
          "Threads of the HTTP frontend: HTTP requests served at once (each waits on its thread "
          "for the model's answer; more connections wait in the listen backlog).");
ABSL_FLAG(int32_t, threads, 0,
          "Compute threads per model (a model's config.json \"executors\" overrides it); 0 "
          "means one per CPU core.");
ABSL_FLAG(int64_t, max_queue_size, 256,
          "Requests that may wait in a model's queue (config.json batching.max_queue_size "
          "overrides it); more are refused with RESOURCE_EXHAUSTED at once.");
ABSL_FLAG(int64_t, max_queue_delay_us, 0,
          "How long a request may wait for others to be batched with it (config.json "
          "batching.max_queue_delay_us); 0 batches only what is already queued.");
ABSL_FLAG(int64_t, preferred_batch_size, 0,
          "Rows at which a waiting batch starts before max_queue_delay_us (config.json "
          "batching.preferred_batch_size); 0: none.");
ABSL_FLAG(bool, inline_when_idle, true,
          "Compute a request on the gRPC thread that received it when its model is idle "
          "(nothing queued or computing) instead of handing it to a compute thread: batch-1 "
          "ReducedJacobian p50 0.86 -> 0.62 ms, Evaluate 0.52 -> 0.49 ms; 16 clients 15-20 % "
          "fewer requests/s, 64 clients unchanged (README, Performance).");
ABSL_FLAG(int64_t, max_batch_rows, 1024,
          "Most points (rows of m) stacked into one batched computation (config.json "
          "batching.max_batch_size).");
ABSL_FLAG(int32_t, torch_threads, 1,
          "LibTorch intra-op threads per computation: a large batch's projection and reduced "
          "Jacobians are split over them (each part one single-threaded BLAS call). 1 with "
          "--threads=0 (2 compute threads) was the fastest configuration measured on the "
          "2-core machine, whose two CPUs share their floating-point throughput (two "
          "single-threaded GEMMs at once ran at half speed each): one B = 1000 "
          "ReducedJacobian 127 ms with 1, 159 ms with 2 (README, Performance). More help on "
          "machines with idle physical cores.");
ABSL_FLAG(int32_t, blas_threads, 1,
          "OpenBLAS threads per matrix product. They multiply with the callers' threads "
          "(compute threads × intra-op threads); 1 keeps the cores from oversubscription.");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest request or response accepted.");
ABSL_FLAG(double, trim_memory_idle_seconds, 2.0,
          "Return the heap's free memory to the system once requests have stopped for this "
          "long (one to two periods): large freed blocks are kept for reuse under load, so "
          "without this the resident size stays at the highest load seen. 0 never trims.");
ABSL_FLAG(int64_t, max_batch_size, 4096, "Most rows in m, directions or cotangents.");
ABSL_FLAG(int64_t, max_jacobian_elements, 1 << 22,
          "Largest full Jacobian (d_Q·d_M elements) that the Jacobian method returns.");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding a bearer token; when set, Training and ModelAdmin RPCs need the "
          "metadata 'authorization: Bearer <token>' (UNAUTHENTICATED otherwise).");
ABSL_FLAG(bool, insecure_open_model_control, false,
          "DEVELOPMENT ONLY: without --admin_token_file, let anyone who can reach the port "
          "call the Training and ModelAdmin RPCs (fine-tune and publish models, change the "
          "default version, unload versions). Without either flag these RPCs are refused.");
ABSL_FLAG(bool, require_token_for_inference, false,
          "Require the --admin_token_file token on inference (Surrogate) RPCs as well.");
ABSL_FLAG(int32_t, max_training_jobs, 1,
          "Fine-tune jobs that may exist at once (receiving or training); more are refused "
          "with RESOURCE_EXHAUSTED. Each job trains on one thread, so this bounds the cores "
          "training takes from inference.");
ABSL_FLAG(int32_t, training_nice, 19,
          "Added to the nice value of training threads (0-19), so that inference gets the CPU "
          "first while a job trains.");
ABSL_FLAG(int64_t, max_samples_per_job, 100000, "Most samples one fine-tune job accepts.");
ABSL_FLAG(int64_t, max_bytes_per_job, 0,
          "Most bytes of samples one fine-tune job holds in memory; 0: sized to the machine, "
          "an eighth of its physical memory shared by --max_training_jobs jobs.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain (the server's certificate first) for TLS; with --tls_key, the "
          "gRPC port accepts only TLS and the HTTP ports (--umbridge_port, --http_port) only "
          "HTTPS. The metrics port stays plaintext HTTP.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of the --tls_cert certificate.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA certificate(s) for mutual TLS: with it, every gRPC and HTTPS client must "
          "present a certificate signed by one of these CAs. Such a certificate is an identity "
          "check: without --admin_token_file, it opens the Training and ModelAdmin RPCs to "
          "its holders.");
ABSL_FLAG(int32_t, tls_reload_seconds, 60,
          "How often --tls_cert, --tls_key and --tls_client_ca are re-read; changed files are "
          "used for new connections without a restart.");
ABSL_FLAG(double, drain_seconds, 0.0,
          "On SIGTERM/SIGINT, keep answering this long with health NOT_SERVING before "
          "refusing new calls, so that load balancers stop routing here first.");
ABSL_FLAG(double, shutdown_grace_seconds, 30.0,
          "On SIGTERM/SIGINT, how long in-flight calls may run before being cancelled.");

namespace {

using dino::serving::LogError;
using dino::serving::LogInfo;

constexpr char kServiceName[] = "dino.v1.Surrogate";
constexpr char kPriorServiceName[] = "dino.v1.Prior";

// Feeds the fine-tune jobs' events into the Prometheus metrics.
dino::serving::JobObserver TrainingMetricsObserver(dino::metrics::ServerMetrics* metrics) {
  using dino::serving::JobState;
  for (int state = 0; state < dino::serving::kJobStateCount; ++state) {
    metrics->DeclareJobState(dino::serving::JobStateName(static_cast<JobState>(state)));
  }
  dino::serving::JobObserver observer;
  observer.on_state = [metrics](std::optional<JobState> from, JobState to) {
    const std::string from_name = from ? dino::serving::JobStateName(*from) : "";
    metrics->JobStateChanged(from ? &from_name : nullptr, dino::serving::JobStateName(to));
  };
  observer.on_samples = [metrics](const std::string& model, int64_t samples, int64_t bytes) {
    metrics->AddSamplesReceived(model, samples, bytes);
  };
  observer.on_epoch = [metrics](const std::string&, double seconds) {
    metrics->ObserveEpoch(seconds);
  };
  observer.on_validation = [metrics](const std::string& model,
                                     const dino::training::Accuracies& accuracies) {
    metrics->SetValidationAccuracy(model, "l2", accuracies.l2);
    if (accuracies.h1) metrics->SetValidationAccuracy(model, "h1", *accuracies.h1);
    if (accuracies.reduced_h1) {
      metrics->SetValidationAccuracy(model, "reduced_h1", *accuracies.reduced_h1);
    }
  };
  return observer;
}

// The one observer of servable state: logs every transition and keeps dino_models_loaded
// equal to the versions the manager serves (what ListModels reports).
dino::serving::ServableObserver ServableMetricsObserver(dino::metrics::ServerMetrics* metrics) {
  return [metrics](const dino::serving::ServableEvent& event) {
    const std::string line = absl::StrCat("model ", event.name, "/", event.version, ": ",
                                          dino::serving::ServableStateName(event.state),
                                          event.message.empty() ? "" : " (", event.message,
                                          event.message.empty() ? "" : ")");
    if (event.state == dino::serving::ServableState::kLoadFailed) {
      LogError(line);
    } else {
      LogInfo(line);
    }
    metrics->SetModelsLoaded(event.loaded_versions);
  };
}

int Run() {
  // Signals are taken synchronously by this thread; every thread created afterwards
  // inherits the blocked mask, so SIGTERM cannot interrupt LibTorch or gRPC mid-call.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // OpenSSL writes HTTPS responses with write(2): a client that hangs up mid-answer must cost
  // that connection EPIPE, not the process SIGPIPE.
  signal(SIGPIPE, SIG_IGN);

  // TLS files are checked before anything listens: a typo fails the start, naming the flag.
  dino::frontend::TlsFiles tls_files{absl::GetFlag(FLAGS_tls_cert), absl::GetFlag(FLAGS_tls_key),
                                     absl::GetFlag(FLAGS_tls_client_ca),
                                     absl::GetFlag(FLAGS_tls_reload_seconds)};
  const bool tls = !tls_files.cert_path.empty() || !tls_files.key_path.empty();
  std::shared_ptr<dino::frontend::TlsIdentityReloader> https_identity;
  if (tls) {
    if (tls_files.cert_path.empty() || tls_files.key_path.empty()) {
      LogError(tls_files.cert_path.empty() ? "--tls_key needs --tls_cert"
                                           : "--tls_cert needs --tls_key");
      return 1;
    }
    if (tls_files.reload_seconds < 1) {
      LogError("--tls_reload_seconds must be at least 1, got ", tls_files.reload_seconds);
      return 1;
    }
    auto identity = dino::frontend::TlsIdentityReloader::Create(tls_files);
    if (!identity.ok()) {
      LogError(identity.status().message());
      return 1;
    }
    https_identity = *std::move(identity);
  } else if (!tls_files.client_ca_path.empty()) {
    LogError("--tls_client_ca needs --tls_cert and --tls_key");
    return 1;
  }
  const bool mutual_tls = tls && !tls_files.client_ca_path.empty();
  const char* http_scheme = tls ? "https" : "http";

  auto metrics = std::make_unique<dino::metrics::ServerMetrics>();
  dino::metrics::MetricsHttpServer metrics_endpoint(
      {metrics->registry(), std::make_shared<dino::metrics::ProcessMetrics>()});
  if (absl::GetFlag(FLAGS_metrics_port) >= 0) {
    auto port =
        metrics_endpoint.Start(absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port));
    if (!port.ok()) {
      LogError(port.status().message());
      return 1;
    }
    std::printf("dino-server: metrics on http://%s:%d/metrics\n", absl::GetFlag(FLAGS_host).c_str(),
                *port);
  }

  int executor_threads = absl::GetFlag(FLAGS_threads);
  if (executor_threads <= 0) {
    executor_threads = std::max(1u, std::thread::hardware_concurrency());
  }
  dino::models::ConfigureComputeThreads(absl::GetFlag(FLAGS_torch_threads),
                                        absl::GetFlag(FLAGS_blas_threads));
  if (const std::string core = dino::models::BlasCoreName(); !core.empty()) {
    LogInfo("OpenBLAS kernels: ", core);
  }

  dino::serving::ModelManager::Options options;
  options.repository = absl::GetFlag(FLAGS_model_repository);
  options.default_config.executors = executor_threads;
  options.default_config.batching.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  options.default_config.batching.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  options.default_config.batching.preferred_batch_size = absl::GetFlag(FLAGS_preferred_batch_size);
  options.default_config.batching.max_batch_size = absl::GetFlag(FLAGS_max_batch_rows);
  if (auto valid = dino::serving::ValidateModelConfig(
          options.default_config,
          "the defaults set by --max_batch_rows, --preferred_batch_size, --max_queue_delay_us, "
          "--max_queue_size and --threads");
      !valid.ok()) {
    LogError(valid.message());
    return 1;
  }
  options.limits.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  options.limits.max_jacobian_elements = absl::GetFlag(FLAGS_max_jacobian_elements);
  options.observer = ServableMetricsObserver(metrics.get());
  dino::serving::ModelManager manager(options);
  auto report = manager.SyncRepository();
  if (!report.ok()) {
    LogError(report.status().message());
    return 1;
  }
  LogInfo("model repository ", options.repository, ": ", report->loaded.size(),
          " version(s) loaded, ", report->failed.size(), " failed");
  if (const double poll = absl::GetFlag(FLAGS_repository_poll_seconds); poll > 0) {
    // The observer logs and counts every transition; nothing more to do per report.
    manager.StartPolling(poll, nullptr);
  }

  dino::frontend::BearerTokenAuth admin_auth;
  if (const std::string path = absl::GetFlag(FLAGS_admin_token_file); !path.empty()) {
    auto auth = dino::frontend::BearerTokenAuth::FromFile(path);
    if (!auth.ok()) {
      LogError(auth.status().message());
      return 1;
    }
    admin_auth = *std::move(auth);
  } else if (absl::GetFlag(FLAGS_require_token_for_inference)) {
    LogError("--require_token_for_inference needs --admin_token_file");
    return 1;
  } else if (mutual_tls) {
    // Every connection already proved a certificate from --tls_client_ca: that is the
    // identity check model control needs.
    LogInfo(
        "the Training and ModelAdmin RPCs are open to clients holding a certificate from "
        "--tls_client_ca (add --admin_token_file to require a token as well)");
  } else if (absl::GetFlag(FLAGS_insecure_open_model_control)) {
    LogError(
        "WARNING: --insecure_open_model_control: the Training and ModelAdmin RPCs are open to "
        "every client that can reach this server; any of them can publish a model that becomes "
        "the default. Use --admin_token_file outside development.");
  } else {
    // Secure by default (as Triton keeps model control off): no identity check configured,
    // no model control.
    admin_auth = dino::frontend::BearerTokenAuth::RefuseAll(
        "model control (the Training and ModelAdmin RPCs) is off: start dino-server with "
        "--admin_token_file=<file holding a bearer token> or with mutual TLS "
        "(--tls_client_ca) (or, for development only, --insecure_open_model_control)");
  }

  dino::serving::FineTuneJobManager::Options job_options;
  job_options.repository = options.repository;
  job_options.max_concurrent_jobs = absl::GetFlag(FLAGS_max_training_jobs);
  job_options.max_samples_per_job = absl::GetFlag(FLAGS_max_samples_per_job);
  job_options.max_bytes_per_job = absl::GetFlag(FLAGS_max_bytes_per_job);
  if (job_options.max_bytes_per_job <= 0) {
    const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
    job_options.max_bytes_per_job = std::max<int64_t>(
        int64_t{64} << 20, physical / 8 / std::max(1, job_options.max_concurrent_jobs));
  }
  job_options.training_nice = absl::GetFlag(FLAGS_training_nice);
  job_options.observer = TrainingMetricsObserver(metrics.get());
  dino::serving::FineTuneJobManager jobs(manager, job_options);

  const int64_t max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  dino::serving::RequestScheduler::Options scheduler_options;
  scheduler_options.default_executors = executor_threads;
  scheduler_options.max_response_bytes = max_message_bytes;
  scheduler_options.observer = metrics.get();
  scheduler_options.run_inline_when_idle = absl::GetFlag(FLAGS_inline_when_idle);
  dino::serving::RequestScheduler scheduler(manager, scheduler_options);
  dino::serving::IdleMemoryTrimmer memory_trimmer([&scheduler] { return scheduler.activity(); });
  memory_trimmer.Start(std::chrono::milliseconds(
      static_cast<int64_t>(absl::GetFlag(FLAGS_trim_memory_idle_seconds) * 1000)));
  dino::frontend::SurrogateService service(
      manager, scheduler, metrics.get(),
      absl::GetFlag(FLAGS_require_token_for_inference) ? &admin_auth : nullptr);
  dino::frontend::PriorService prior_service(
      scheduler, absl::GetFlag(FLAGS_require_token_for_inference) ? &admin_auth : nullptr);
  // KServe's Open Inference Protocol for Triton's and KServe's clients: the same scheduler,
  // limits, metrics and token as dino.v1.Surrogate.
  dino::frontend::OipService oip_service(
      manager, scheduler, metrics.get(),
      absl::GetFlag(FLAGS_require_token_for_inference) ? &admin_auth : nullptr);
  dino::frontend::TrainingService training_service(jobs, admin_auth);
  dino::frontend::ModelAdminService admin_service(manager, admin_auth);
  // UM-Bridge: the same scheduler, models, metrics and inference token as gRPC.
  dino::frontend::UmbridgeService umbridge(
      manager, scheduler, metrics.get(),
      absl::GetFlag(FLAGS_require_token_for_inference) ? &admin_auth : nullptr);
  dino::frontend::HttpServer::Options http_options;
  http_options.threads = absl::GetFlag(FLAGS_http_threads);
  http_options.max_body_bytes = max_message_bytes;
  http_options.tls = https_identity;
  dino::frontend::HttpServer http_server(http_options);
  if (const int umbridge_port = absl::GetFlag(FLAGS_umbridge_port); umbridge_port >= 0) {
    umbridge.Register(http_server);
    auto port = http_server.Start(absl::GetFlag(FLAGS_host), umbridge_port);
    if (!port.ok()) {
      LogError(port.status().message());
      return 1;
    }
    std::printf("dino-server: UM-Bridge on %s://%s:%d\n", http_scheme,
                absl::GetFlag(FLAGS_host).c_str(), *port);
  }
  // KServe's Open Inference Protocol over REST: the same mapping as its gRPC service.
  dino::frontend::OipRestHandler oip_rest(
      manager, scheduler, metrics.get(),
      absl::GetFlag(FLAGS_require_token_for_inference) ? &admin_auth : nullptr);
  dino::frontend::HttpServer oip_http_server(http_options);
  if (const int http_port = absl::GetFlag(FLAGS_http_port); http_port >= 0) {
    oip_rest.Register(oip_http_server);
    auto port = oip_http_server.Start(absl::GetFlag(FLAGS_host), http_port);
    if (!port.ok()) {
      LogError(port.status().message());
      return 1;
    }
    std::printf("dino-server: Open Inference Protocol REST on %s://%s:%d/v2\n", http_scheme,
                absl::GetFlag(FLAGS_host).c_str(), *port);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int selected_port = 0;
  const std::string address =
      absl::StrCat(absl::GetFlag(FLAGS_host), ":", absl::GetFlag(FLAGS_port));
  // With TLS the port speaks only TLS: a plaintext client fails its handshake.
  builder.AddListeningPort(
      address,
      tls ? dino::frontend::GrpcTlsServerCredentials(tls_files) : grpc::InsecureServerCredentials(),
      &selected_port);
  if (const int streams = absl::GetFlag(FLAGS_max_concurrent_streams); streams < 0) {
    LogError("--max_concurrent_streams must be >= 0, got ", streams);
    return 1;
  } else if (streams > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, streams);
  }
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  builder.RegisterService(&service);
  builder.RegisterService(&prior_service);
  builder.RegisterService(&oip_service);
  builder.RegisterService(&training_service);
  builder.RegisterService(&admin_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || selected_port == 0) {
    LogError("cannot listen on ", address);
    return 1;
  }
  // Health alone on a plaintext port: it tells whether the server serves, and nothing else.
  std::unique_ptr<grpc::Server> health_server;
  if (const int health_port = absl::GetFlag(FLAGS_health_port); health_port >= 0) {
    grpc::ServerBuilder health_builder;
    int selected_health_port = 0;
    const std::string health_address = absl::StrCat(absl::GetFlag(FLAGS_host), ":", health_port);
    health_builder.AddListeningPort(health_address, grpc::InsecureServerCredentials(),
                                    &selected_health_port);
    health_server = health_builder.BuildAndStart();
    if (!health_server || selected_health_port == 0) {
      LogError("cannot listen on ", health_address, " (--health_port)");
      return 1;
    }
    std::printf("dino-server: health on %s:%d\n", absl::GetFlag(FLAGS_host).c_str(),
                selected_health_port);
  }
  const auto set_serving = [&](bool serving) {
    for (grpc::Server* s : {server.get(), health_server.get()}) {
      if (s == nullptr) continue;
      grpc::HealthCheckServiceInterface* health = s->GetHealthCheckService();
      health->SetServingStatus(serving);
      health->SetServingStatus(kServiceName, serving);
      health->SetServingStatus(kPriorServiceName, serving);
    }
  };
  set_serving(true);
  std::printf("dino-server: listening on %s:%d\n", absl::GetFlag(FLAGS_host).c_str(),
              selected_port);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  LogInfo("received ", signal_number == SIGTERM ? "SIGTERM" : "SIGINT",
          "; draining in-flight calls");
  // Load balancers see NOT_SERVING first, then in-flight calls finish (or are cancelled
  // after the grace period) while new ones are refused.
  set_serving(false);
  oip_service.SetAccepting(false);
  oip_rest.SetAccepting(false);
  std::this_thread::sleep_for(std::chrono::duration<double>(absl::GetFlag(FLAGS_drain_seconds)));
  const auto grace = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::duration<double>(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  // Jobs not yet published are cancelled (a published version is complete on disk).
  jobs.Shutdown();
  // HTTP requests in progress finish (the scheduler still runs); new connections are refused.
  http_server.Stop();
  oip_http_server.Stop();
  server->Shutdown(std::chrono::system_clock::now() + grace);
  if (health_server) health_server->Shutdown();
  manager.StopPolling();
  scheduler.Shutdown();
  server->Wait();
  LogInfo("shut down cleanly");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  dino::models::UseNativeBlasKernels(argv);
  dino::models::TuneAllocatorForServing();
  absl::SetProgramUsageMessage(
      "Serves DINO surrogates and their derivatives over gRPC (and UM-Bridge).\n"
      "  dino-server --model_repository=models/repository --port=50051 [--umbridge_port=4242]");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil is built with absl::Mutex deadlock detection on (gRPC locks absl::Mutex
  // on every call): its lock-order graph took 3.7 % of the server's CPU at 64 concurrent
  // Evaluate clients (perf). A debugging aid, not a production check.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return Run();
}
