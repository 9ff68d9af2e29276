// The process collector (server/metrics/process_metrics.h) against this test process itself,
// and the /metrics endpoint serving it together with a registry.
#include "server/metrics/process_metrics.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics/metrics_http_server.h"

namespace dino::metrics {
namespace {

using ::testing::HasSubstr;

ProcessSnapshot Read() {
  const auto snapshot = ReadProcessSnapshot();
  EXPECT_TRUE(snapshot.has_value()) << "/proc/self unreadable";
  return snapshot.value_or(ProcessSnapshot{});
}

TEST(ProcessMetricsTest, ValuesArePlausible) {
  const ProcessSnapshot snapshot = Read();
  EXPECT_GE(snapshot.threads, 1);
  EXPECT_GT(snapshot.resident_memory_bytes, 1 << 20);  // A gtest binary is more than 1 MiB.
  EXPECT_GE(snapshot.virtual_memory_bytes, snapshot.resident_memory_bytes);
  EXPECT_GE(snapshot.open_fds, 3);  // stdin, stdout, stderr.
  EXPECT_GE(snapshot.max_fds, snapshot.open_fds);
  EXPECT_GE(snapshot.cpu_seconds, 0);
  // Started within the last hour, and not in the future (one clock tick of slack).
  const double now = static_cast<double>(std::time(nullptr));
  EXPECT_LE(snapshot.start_time_seconds, now + 1);
  EXPECT_GT(snapshot.start_time_seconds, now - 3600);
}

TEST(ProcessMetricsTest, CpuTimeGrowsWithBusyWork) {
  const double before = Read().cpu_seconds;
  const auto start = std::chrono::steady_clock::now();
  // Spins until 50 ms of CPU time show (5 ticks at the usual 100 Hz). On a loaded machine
  // that takes longer in wall time, hence the generous deadline; a collector that does not
  // count user time never gets there.
  volatile double sink = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  double grown = 0;
  while (grown < 0.05 && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 1000000; ++i) sink = sink + std::sqrt(static_cast<double>(i));
    grown = Read().cpu_seconds - before;
  }
  EXPECT_GE(grown, 0.05);
  // Seconds, not clock ticks: one busy thread cannot use more CPU time than wall time.
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LE(grown, wall + 0.02);
}

TEST(ProcessMetricsTest, OpenFdsFollowOpenAndClose) {
  const double before = Read().open_fds;
  std::vector<int> fds;
  for (int i = 0; i < 5; ++i) {
    const int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
  }
  EXPECT_EQ(Read().open_fds, before + 5);
  for (const int fd : fds) ::close(fd);
  EXPECT_EQ(Read().open_fds, before);
}

TEST(ProcessMetricsTest, ThreadsFollowThreadCount) {
  const double before = Read().threads;
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  EXPECT_EQ(Read().threads, before + 1);
  stop = true;
  worker.join();
}

TEST(ProcessMetricsTest, ResidentMemoryGrowsWhenPagesAreTouched) {
  const double before = Read().resident_memory_bytes;
  constexpr size_t kBytes = 64 << 20;
  std::unique_ptr<char[]> block(new char[kBytes]);
  for (size_t i = 0; i < kBytes; i += 4096) block[i] = static_cast<char>(i);
  EXPECT_GE(Read().resident_memory_bytes - before, kBytes * 0.9);
  EXPECT_NE(block[kBytes - 4096], 1);  // Keeps the writes observable.
}

// mallinfo2 reports glibc's heap; a sanitizer's allocator serves malloc instead.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SKIP_UNLESS_GLIBC_MALLOC() GTEST_SKIP() << "malloc is the sanitizer's, not glibc's"
#else
#define SKIP_UNLESS_GLIBC_MALLOC() (void)0
#endif

TEST(ProcessMetricsTest, HeapInUseFollowsMallocAndFree) {
  SKIP_UNLESS_GLIBC_MALLOC();
  const double before = ReadHeapSnapshot().in_use_bytes;
  constexpr size_t kBytes = 8 << 20;
  void* block = std::malloc(kBytes);
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kBytes);
  asm volatile("" : : "r"(block) : "memory");  // Keeps the compiler from eliding the block.
  EXPECT_GE(ReadHeapSnapshot().in_use_bytes - before, kBytes);
  std::free(block);
  EXPECT_LT(ReadHeapSnapshot().in_use_bytes - before, kBytes / 2);
}

TEST(ProcessMetricsTest, FreedBlocksBetweenLiveOnesCountAsFreeNotInUse) {
  SKIP_UNLESS_GLIBC_MALLOC();
  // Fragmentation: every other small block freed, the live ones pin the pages. (glibc's
  // per-thread cache keeps a few freed blocks counted as in use: hence 0.9.)
  constexpr int kBlocks = 4096;
  constexpr size_t kBlockBytes = 1024;
  std::vector<void*> blocks(kBlocks);
  for (auto& block : blocks) {
    block = std::malloc(kBlockBytes);
    asm volatile("" : : "r"(block) : "memory");
  }
  const HeapSnapshot full = ReadHeapSnapshot();
  for (int i = 0; i < kBlocks; i += 2) std::free(blocks[i]);
  const HeapSnapshot holed = ReadHeapSnapshot();
  constexpr double kFreed = 0.9 * kBlocks / 2 * kBlockBytes;
  EXPECT_GE(full.in_use_bytes - holed.in_use_bytes, kFreed);
  EXPECT_GE(holed.free_bytes - full.free_bytes, kFreed);
  for (int i = 1; i < kBlocks; i += 2) std::free(blocks[i]);
}

TEST(ProcessMetricsTest, CollectExportsTheStandardSeries) {
  std::map<std::string, prometheus::MetricFamily> families;
  for (auto& family : ProcessMetrics().Collect()) families[family.name] = family;
  const ProcessSnapshot snapshot = Read();
  ASSERT_EQ(families.size(), 9u);
  ASSERT_TRUE(families.count("process_cpu_seconds_total"));
  EXPECT_EQ(families["process_cpu_seconds_total"].type, prometheus::MetricType::Counter);
  for (const char* gauge :
       {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
        "process_max_fds", "process_threads", "process_start_time_seconds",
        "dino_process_heap_in_use_bytes", "dino_process_heap_free_bytes"}) {
    ASSERT_TRUE(families.count(gauge)) << gauge;
    EXPECT_EQ(families[gauge].type, prometheus::MetricType::Gauge) << gauge;
    ASSERT_EQ(families[gauge].metric.size(), 1u) << gauge;
    EXPECT_TRUE(families[gauge].metric[0].label.empty()) << gauge;
  }
  EXPECT_EQ(families["process_max_fds"].metric[0].gauge.value, snapshot.max_fds);
  EXPECT_EQ(families["process_start_time_seconds"].metric[0].gauge.value,
            snapshot.start_time_seconds);
  EXPECT_GE(families["process_threads"].metric[0].gauge.value, 1);
}

// GET /metrics from the endpoint over a real socket.
std::string Scrape(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\n\r\n";
    ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    char buffer[4096];
    for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) response.append(buffer, n);
  }
  ::close(fd);
  return response;
}

TEST(ProcessMetricsTest, EndpointServesRegistryAndProcessSeriesTogether) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("dino_test_total")
      .Help("A test.")
      .Register(*registry)
      .Add({})
      .Increment(3);
  MetricsHttpServer endpoint({registry, std::make_shared<ProcessMetrics>()});
  const auto port = endpoint.Start("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string response = Scrape(*port);
  EXPECT_THAT(response, HasSubstr("200 OK"));
  EXPECT_THAT(response, HasSubstr("\ndino_test_total 3\n"));
  EXPECT_THAT(response, HasSubstr("# TYPE process_cpu_seconds_total counter\n"));
  EXPECT_THAT(response, HasSubstr("\nprocess_resident_memory_bytes "));
  EXPECT_THAT(response, HasSubstr("\nprocess_threads "));
  EXPECT_THAT(response, HasSubstr("\nprocess_open_fds "));
  endpoint.Stop();
}

}  // namespace
}  // namespace dino::metrics
