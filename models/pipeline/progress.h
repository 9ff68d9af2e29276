// Progress of a long run on stderr: a bar redrawn in place, with rate and ETA, when the stream
// is a terminal; otherwise (logs, CI, pipes) a plain line at a fixed interval, because carriage
// returns and ten redraws a second would fill a log file with noise.
#ifndef DINO_MODELS_PIPELINE_PROGRESS_H_
#define DINO_MODELS_PIPELINE_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dino::pipeline {

enum class ProgressStyle {
  kAuto,  // kBar on a terminal, kLines otherwise.
  kBar,
  kLines,
  kNone,
};

// "42s", "3m07s", "1h02m"; "?" for a negative or non-finite value.
std::string FormatDuration(double seconds);

// One progress line without a trailing newline, e.g.
//   "generate [##########----------]  512/1000  51.2%  14.3 samples/s  ETA 34s"
// (bar_width 0 leaves out the bar). A non-positive rate prints "-" for the rate and "?" for the
// ETA.
std::string FormatProgress(const std::string& label, int64_t done, int64_t total, double rate,
                           const std::string& unit, int bar_width);

class ProgressReporter {
 public:
  // `total` units of work, of which `initial` are already done (resumed); the rate counts only
  // the units done after construction.
  ProgressReporter(std::string label, std::string unit, int64_t total, int64_t initial,
                   ProgressStyle style, std::FILE* out = stderr,
                   std::chrono::duration<double> line_interval = std::chrono::seconds(10));
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // Reports `done` units in total; prints only when the style's interval has passed.
  void Update(int64_t done);
  // Prints the final state (and ends the bar's line). Idempotent.
  void Finish(int64_t done);

  ProgressStyle style() const { return style_; }

 private:
  void Print(int64_t done, bool final);

  std::string label_;
  std::string unit_;
  int64_t total_;
  int64_t initial_;
  ProgressStyle style_;
  std::FILE* out_;
  std::chrono::duration<double> interval_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  bool printed_ = false;
  bool finished_ = false;
  size_t last_width_ = 0;
};

}  // namespace dino::pipeline

#endif  // DINO_MODELS_PIPELINE_PROGRESS_H_
