// The standard Prometheus process series (the names every client library's process collector
// exports, so stock dashboards and alerts work unchanged), read from /proc/self when scraped:
//   process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
//   process_open_fds, process_max_fds, process_threads, process_start_time_seconds;
// and, as dino_process_heap_{in_use,free}_bytes, what malloc holds (ReadHeapSnapshot).
// prometheus-cpp has no process collector; reading at scrape time costs nothing between
// scrapes and never reports a stale value.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace dino::metrics {

// One reading of the process' resource use (Linux /proc).
struct ProcessSnapshot {
  double cpu_seconds = 0;  // User + system time of every thread.
  double resident_memory_bytes = 0;
  double virtual_memory_bytes = 0;
  double open_fds = 0;
  double max_fds = 0;  // The soft RLIMIT_NOFILE: what open() runs into.
  double threads = 0;
  double start_time_seconds = 0;  // Since the Unix epoch.
};

// Reads /proc/self/{stat,fd} and /proc/stat; nullopt where /proc is not mounted or
// unreadable (the collector then exports nothing rather than zeros that look like data).
std::optional<ProcessSnapshot> ReadProcessSnapshot();

// What malloc itself holds, summed over its arenas (glibc's mallinfo2). RSS alone cannot
// tell a leak from fragmentation: a leak grows `in_use_bytes`; freed memory that the heap
// keeps (between live blocks, so that a trim cannot return it) grows `free_bytes` instead.
struct HeapSnapshot {
  double in_use_bytes = 0;  // Handed out by malloc and not freed, mmapped blocks included.
  double free_bytes = 0;    // Free in the heaps' pages, the top chunks included.
};

// Walks every arena under its lock (microseconds for a few arenas): read at scrape time.
HeapSnapshot ReadHeapSnapshot();

class ProcessMetrics final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace dino::metrics
