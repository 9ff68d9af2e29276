// Minimal structured logging to stderr: one line per event, UTC timestamp and level first,
// safe to call from any thread. (Debian 12's Abseil predates absl/log.)
#pragma once

#include <string_view>

#include "absl/strings/str_cat.h"

namespace dino::serving {

enum class LogLevel { kInfo, kWarning, kError };

void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void LogInfo(const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrCat(args...));
}
template <typename... Args>
void LogWarning(const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrCat(args...));
}
template <typename... Args>
void LogError(const Args&... args) {
  LogLine(LogLevel::kError, absl::StrCat(args...));
}

}  // namespace dino::serving
