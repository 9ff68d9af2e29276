// A minimal HTTP/1.0 endpoint that serves GET /metrics in the Prometheus text format.
//
// Why not prometheus-cpp's Exposer: it runs CivetWeb, whose threads are created with a
// ~100 KiB stack, and in a process that has LibTorch (and OpenBLAS, glog) loaded the static
// thread-local storage alone exceeds that, so pthread_create fails ("Cannot create threads").
// Scrapes are rare and tiny, so one thread answering one connection at a time suffices.
#pragma once

#include <prometheus/collectable.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace dino::metrics {

class MetricsHttpServer {
 public:
  // Every scrape serializes what each collectable collects (a prometheus::Registry, the
  // process collector, ...), in this order.
  explicit MetricsHttpServer(std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~MetricsHttpServer();  // Stop().
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Listens on host:port (port 0: a free one) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  void Serve();
  void Answer(int connection);

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  int listen_fd_ = -1;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace dino::metrics
