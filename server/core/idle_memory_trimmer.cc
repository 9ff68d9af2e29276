#include "server/core/idle_memory_trimmer.h"

#include <malloc.h>

#include <utility>

namespace dino::serving {

bool IdleMemoryTrimmer::TrimHeap() { return malloc_trim(0) != 0; }

IdleMemoryTrimmer::IdleMemoryTrimmer(ActivityProbe activity, Trim trim)
    : activity_(std::move(activity)), trim_(std::move(trim)) {}

IdleMemoryTrimmer::~IdleMemoryTrimmer() { Stop(); }

bool IdleMemoryTrimmer::Poll() {
  const uint64_t now = activity_();
  std::lock_guard<std::mutex> lock(mutex_);
  const bool quiet = seen_any_ && now == last_seen_;
  seen_any_ = true;
  last_seen_ = now;
  if (!quiet || (trimmed_any_ && now == last_trimmed_)) return false;
  trimmed_any_ = true;
  last_trimmed_ = now;
  ++trims_;
  trim_();  // Whether it released anything, this quiet spell has had its trim.
  return true;
}

void IdleMemoryTrimmer::Start(std::chrono::milliseconds period) {
  if (period.count() > 0) task_.Start(period, [this] { Poll(); });
}

void IdleMemoryTrimmer::Stop() { task_.Stop(); }

int64_t IdleMemoryTrimmer::trims() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return trims_;
}

}  // namespace dino::serving
