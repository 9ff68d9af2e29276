// Recognises thread stacks in /proc/self/maps or /proc/self/smaps: what the fine-tune tests and
// dino_fine_tune_memory_benchmark count to see whether ended job threads were joined.
#pragma once

#include <pthread.h>

#include <cstddef>
#include <cstdio>
#include <optional>
#include <string>

namespace dino::testing {

// For a mapping's header line (`begin-end perms offset dev inode [path]`): whether it is an
// anonymous mapping of the size of a default thread stack (within 64 KiB: glibc maps the guard
// page with it or apart). One exists per live thread, per exited thread not yet joined, and
// per stack glibc caches for reuse after a join. std::nullopt for any other line (smaps'
// per-mapping fields).
inline std::optional<bool> IsThreadStackSizedMapping(const std::string& line) {
  unsigned long begin = 0, end = 0;
  char path[2] = {0};
  int consumed = 0;
  if (std::sscanf(line.c_str(), "%lx-%lx %*s %*s %*s %*s%n %1s", &begin, &end, &consumed, path) <
          2 ||
      consumed == 0) {
    return std::nullopt;
  }
  static const size_t stack_size = [] {
    pthread_attr_t attr;
    size_t size = 0;
    if (pthread_getattr_default_np(&attr) == 0) {
      pthread_attr_getstacksize(&attr, &size);
      pthread_attr_destroy(&attr);
    }
    return size;
  }();
  const size_t size = end - begin;
  constexpr size_t kSlack = 64 << 10;
  return path[0] == 0 && stack_size > 0 && size + kSlack >= stack_size &&
         size <= stack_size + kSlack;
}

}  // namespace dino::testing
