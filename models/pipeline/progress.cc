#include "models/pipeline/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_format.h"

namespace dino::pipeline {
namespace {

// Redraws of the bar per second at most: smooth to the eye, negligible cost.
constexpr std::chrono::milliseconds kBarInterval(100);
constexpr int kBarWidth = 30;

}  // namespace

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0.0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatProgress(const std::string& label, int64_t done, int64_t total, double rate,
                           const std::string& unit, int bar_width) {
  const double fraction =
      total > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0)
                : 1.0;
  std::string line = label;
  if (bar_width > 0) {
    const int filled = static_cast<int>(fraction * bar_width);
    line += " [" + std::string(filled, '#') + std::string(bar_width - filled, '-') + "]";
  } else {
    line += ":";
  }
  const int digits = static_cast<int>(std::to_string(total).size());
  line += absl::StrFormat(" %*d/%d %s  %5.1f%%", digits, done, total, unit, 100.0 * fraction);
  if (rate > 0.0 && std::isfinite(rate)) {
    const double eta = static_cast<double>(std::max<int64_t>(0, total - done)) / rate;
    line += absl::StrFormat("  %.3g %s/s  ETA %s", rate, unit, FormatDuration(eta));
  } else {
    line += absl::StrFormat("  - %s/s  ETA ?", unit);
  }
  return line;
}

ProgressReporter::ProgressReporter(std::string label, std::string unit, int64_t total,
                                   int64_t initial, ProgressStyle style, std::FILE* out,
                                   std::chrono::duration<double> line_interval)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      initial_(initial),
      style_(style),
      out_(out),
      interval_(line_interval),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {
  if (style_ == ProgressStyle::kAuto) {
    style_ = out_ != nullptr && isatty(fileno(out_)) ? ProgressStyle::kBar : ProgressStyle::kLines;
  }
  if (out_ == nullptr) style_ = ProgressStyle::kNone;
}

void ProgressReporter::Update(int64_t done) {
  if (style_ == ProgressStyle::kNone || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  const std::chrono::duration<double> wait =
      style_ == ProgressStyle::kBar ? std::chrono::duration<double>(kBarInterval) : interval_;
  if (printed_ && now - last_print_ < wait) return;
  // Lines mode waits one interval before its first line: short runs print only the final one.
  if (!printed_ && style_ == ProgressStyle::kLines && now - start_ < wait) return;
  Print(done, /*final=*/false);
}

void ProgressReporter::Finish(int64_t done) {
  if (style_ == ProgressStyle::kNone || finished_) return;
  Print(done, /*final=*/true);
  finished_ = true;
}

void ProgressReporter::Print(int64_t done, bool final) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0.0 ? static_cast<double>(done - initial_) / elapsed : 0.0;
  if (style_ == ProgressStyle::kBar) {
    std::string line = FormatProgress(label_, done, total_, rate, unit_, kBarWidth);
    const size_t width = line.size();
    // Blank out what is left of a longer previous line.
    if (width < last_width_) line += std::string(last_width_ - width, ' ');
    last_width_ = width;
    std::fprintf(out_, "\r%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", FormatProgress(label_, done, total_, rate, unit_, 0).c_str());
  }
  std::fflush(out_);
  printed_ = true;
  last_print_ = now;
}

}  // namespace dino::pipeline
