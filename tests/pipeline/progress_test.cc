// Progress formatting and the two output styles (terminal bar, periodic lines).
#include "models/pipeline/progress.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <limits>
#include <string>

#include "tests/common/file_contents.h"

namespace dino::pipeline {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

using ::dino::testing::Contents;

TEST(FormatDuration, UsesTheLargestSensibleUnits) {
  EXPECT_EQ(FormatDuration(0.4), "0s");
  EXPECT_EQ(FormatDuration(42.0), "42s");
  EXPECT_EQ(FormatDuration(187.0), "3m07s");
  EXPECT_EQ(FormatDuration(3720.0), "1h02m");
  EXPECT_EQ(FormatDuration(-1.0), "?");
  EXPECT_EQ(FormatDuration(std::numeric_limits<double>::infinity()), "?");
}

TEST(FormatProgress, ShowsCountPercentRateAndEta) {
  EXPECT_EQ(FormatProgress("generate", 512, 1000, 16.0, "samples", 10),
            "generate [#####-----]  512/1000 samples   51.2%  16 samples/s  ETA 31s");
  EXPECT_EQ(FormatProgress("generate", 3, 1000, 0.0, "samples", 0),
            "generate:    3/1000 samples    0.3%  - samples/s  ETA ?");
  EXPECT_THAT(FormatProgress("x", 10, 10, 2.5, "samples", 4), StartsWith("x [####]"));
}

TEST(ProgressReporter, LinesStylePrintsPlainLines) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  {
    ProgressReporter progress("generate", "samples", 10, 2, ProgressStyle::kLines, file,
                              std::chrono::seconds(0));
    progress.Update(5);
    progress.Update(7);
    progress.Finish(10);
    progress.Finish(10);  // Idempotent.
  }
  const std::string text = Contents(file);
  std::fclose(file);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_THAT(text, HasSubstr("generate:  5/10 samples"));
  EXPECT_THAT(text, HasSubstr("generate: 10/10 samples  100.0%"));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 3);
}

TEST(ProgressReporter, LinesStyleWaitsForTheInterval) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  ProgressReporter progress("generate", "samples", 10, 0, ProgressStyle::kLines, file,
                            std::chrono::hours(1));
  progress.Update(5);
  progress.Finish(10);
  const std::string text = Contents(file);
  std::fclose(file);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);  // The final line only.
}

TEST(ProgressReporter, BarStyleRedrawsInPlace) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  ProgressReporter progress("generate", "samples", 4, 0, ProgressStyle::kBar, file);
  progress.Update(1);
  progress.Finish(4);
  const std::string text = Contents(file);
  std::fclose(file);
  EXPECT_THAT(text, StartsWith("\rgenerate ["));
  EXPECT_THAT(text, HasSubstr("\rgenerate [##############################] 4/4 samples"));
  EXPECT_EQ(text.back(), '\n');
}

TEST(ProgressReporter, AutoIsLinesWhenNotATerminalAndNoneIsSilent) {
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  ProgressReporter automatic("x", "samples", 1, 0, ProgressStyle::kAuto, file);
  EXPECT_EQ(automatic.style(), ProgressStyle::kLines);
  ProgressReporter silent("x", "samples", 1, 0, ProgressStyle::kNone, file);
  silent.Update(1);
  silent.Finish(1);
  EXPECT_EQ(Contents(file), "");
  std::fclose(file);
}

}  // namespace
}  // namespace dino::pipeline
