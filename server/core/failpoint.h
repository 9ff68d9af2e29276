// Crash-test hooks. A failpoint is a named moment in the server's life (for example just
// before a published model file is renamed into place). When the environment variable
// DINO_FAILPOINT names it, the process announces it on stderr ("failpoint <name> reached")
// and stops there for good, so that a test can kill -9 it at exactly that moment and check
// what a restart finds. Without the variable a failpoint costs one cached comparison.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

namespace dino::serving {

inline void Failpoint(const char* name) {
  static const std::string armed = [] {
    const char* value = std::getenv("DINO_FAILPOINT");
    return std::string(value ? value : "");
  }();
  if (armed.empty() || armed != name) return;
  std::fprintf(stderr, "failpoint %s reached\n", name);
  std::fflush(stderr);
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace dino::serving
