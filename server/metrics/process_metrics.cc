#include "server/metrics/process_metrics.h"

#include <dirent.h>
#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

namespace dino::metrics {
namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The system boot time (seconds since the epoch): /proc/<pid>/stat gives the start time in
// clock ticks since boot.
std::optional<double> BootTimeSeconds() {
  const auto stat = ReadFile("/proc/stat");
  if (!stat) return std::nullopt;
  std::istringstream lines(*stat);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return std::nullopt;
}

// Entries of /proc/self/fd, less the descriptor that reading the directory opens itself.
std::optional<double> CountOpenFds() {
  DIR* directory = ::opendir("/proc/self/fd");
  if (directory == nullptr) return std::nullopt;
  double count = 0;
  while (const dirent* entry = ::readdir(directory)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(directory);
  return count - 1;
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return prometheus::MetricFamily{name, help, type, {metric}};
}

}  // namespace

std::optional<ProcessSnapshot> ReadProcessSnapshot() {
  const auto stat = ReadFile("/proc/self/stat");
  if (!stat) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so the fields are
  // counted from the last ')'. After it come field 3 (state) onwards; proc(5) numbers them
  // from 1: utime 14, stime 15, num_threads 20, starttime 22, vsize 23, rss 24.
  const size_t comm_end = stat->rfind(')');
  if (comm_end == std::string::npos) return std::nullopt;
  std::istringstream fields(stat->substr(comm_end + 1));
  std::vector<std::string> field(3);  // field[i]: proc(5)'s field i (1-based), from 3 on.
  for (std::string value; field.size() <= 24 && fields >> value;) field.push_back(value);
  if (field.size() <= 24) return std::nullopt;

  const double ticks_per_second = static_cast<double>(::sysconf(_SC_CLK_TCK));
  const double page_bytes = static_cast<double>(::sysconf(_SC_PAGESIZE));
  ProcessSnapshot snapshot;
  snapshot.cpu_seconds = (std::stod(field[14]) + std::stod(field[15])) / ticks_per_second;
  snapshot.threads = std::stod(field[20]);
  snapshot.virtual_memory_bytes = std::stod(field[23]);
  snapshot.resident_memory_bytes = std::stod(field[24]) * page_bytes;
  const auto boot = BootTimeSeconds();
  if (!boot) return std::nullopt;
  snapshot.start_time_seconds = *boot + std::stod(field[22]) / ticks_per_second;
  const auto fds = CountOpenFds();
  if (!fds) return std::nullopt;
  snapshot.open_fds = *fds;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return std::nullopt;
  snapshot.max_fds = static_cast<double>(limit.rlim_cur);
  return snapshot;
}

HeapSnapshot ReadHeapSnapshot() {
  const struct mallinfo2 info = ::mallinfo2();
  HeapSnapshot heap;
  heap.in_use_bytes = static_cast<double>(info.uordblks + info.hblkhd);
  heap.free_bytes = static_cast<double>(info.fordblks);
  return heap;
}

std::vector<prometheus::MetricFamily> ProcessMetrics::Collect() const {
  const auto snapshot = ReadProcessSnapshot();
  if (!snapshot) return {};
  const HeapSnapshot heap = ReadHeapSnapshot();
  using prometheus::MetricType;
  return {
      Family("dino_process_heap_in_use_bytes",
             "Bytes allocated by malloc and not yet freed (mallinfo2, all arenas).",
             MetricType::Gauge, heap.in_use_bytes),
      Family("dino_process_heap_free_bytes",
             "Free bytes malloc keeps in its heaps for reuse (mallinfo2, all arenas).",
             MetricType::Gauge, heap.free_bytes),
      Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
             MetricType::Counter, snapshot->cpu_seconds),
      Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
             snapshot->resident_memory_bytes),
      Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
             snapshot->virtual_memory_bytes),
      Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
             snapshot->open_fds),
      Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
             snapshot->max_fds),
      Family("process_threads", "Number of OS threads in the process.", MetricType::Gauge,
             snapshot->threads),
      Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
             MetricType::Gauge, snapshot->start_time_seconds),
  };
}

}  // namespace dino::metrics
