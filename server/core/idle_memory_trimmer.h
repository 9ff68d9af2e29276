// Returns the heap's free memory to the system after a burst of requests.
//
// dino-server keeps large freed blocks in the heap (models::TuneAllocatorForServing) so that
// back-to-back large requests do not page-fault through fresh memory; the price is a resident
// size that stays at the highest load the server has seen (the soak measured +17.9 % after a
// 10-minute run, docs/benchmarks/soak.md). This trims the heap once the server has been quiet
// for a while: the first request of the next burst pays the page faults, a steady load pays
// nothing, and the resident size between bursts is what the server holds.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>

#include "server/core/periodic_task.h"

namespace dino::serving {

class IdleMemoryTrimmer {
 public:
  // A count that changes whenever the server does something (RequestScheduler::activity()).
  using ActivityProbe = std::function<uint64_t()>;
  // Returns free memory to the system; true if it released any (glibc: malloc_trim(0)).
  using Trim = std::function<bool()>;
  static bool TrimHeap();

  IdleMemoryTrimmer(ActivityProbe activity, Trim trim = TrimHeap);
  ~IdleMemoryTrimmer();  // Stop().
  IdleMemoryTrimmer(const IdleMemoryTrimmer&) = delete;
  IdleMemoryTrimmer& operator=(const IdleMemoryTrimmer&) = delete;

  // One look: trims when the activity count is what the previous look saw (nothing happened
  // in between) and has changed since the last trim (there is something new to return).
  // Returns whether it trimmed. Start() calls it every `period`; tests call it directly.
  bool Poll();

  // Polls every `period` on a thread of its own until Stop(), so the server trims after one to
  // two periods of quiet. A period of zero starts nothing.
  void Start(std::chrono::milliseconds period);
  void Stop();

  int64_t trims() const;

 private:
  const ActivityProbe activity_;
  const Trim trim_;
  mutable std::mutex mutex_;
  bool seen_any_ = false;
  uint64_t last_seen_ = 0;
  bool trimmed_any_ = false;
  uint64_t last_trimmed_ = 0;
  int64_t trims_ = 0;
  PeriodicTask task_;  // Last: stopped before the state it reads goes.
};

}  // namespace dino::serving
