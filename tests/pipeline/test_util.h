// Helpers shared by the pipeline tests: scratch directories, small data sets, file contents.
#ifndef DINO_TESTS_PIPELINE_TEST_UTIL_H_
#define DINO_TESTS_PIPELINE_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "models/io/npz.h"
#include "models/pipeline/generate.h"
#include "tests/common/scratch_dir.h"

namespace dino::pipeline::test_util {

// A scratch folder removed at the end of the test; file contents (tests/common).
class ScratchDir : public ::dino::testing::ScopedTempDir {
 public:
  ScratchDir() : ScopedTempDir("dino_pipeline_test.") {}
};
using ::dino::testing::FileContents;

// Poisson on an 8 × 8 mesh (d_M = 81, d_Q = 50): milliseconds per sample.
inline GenerateOptions SmallOptions(const std::string& out_dir, int64_t samples) {
  GenerateOptions options;
  options.problem = Problem::kPoisson;
  options.samples = samples;
  options.out_dir = out_dir;
  options.seed = 17;
  options.mesh = 8;
  options.jacobian = JacobianOutput::kFull;
  options.rank = 6;
  options.threads = 2;
  options.chunk_size = 4;
  options.progress = ProgressStyle::kNone;
  return options;
}

inline NpyArray ReadArray(const std::string& path, const std::string& name) {
  absl::StatusOr<NpyArray> array = ReadNpzArray(path, name);
  EXPECT_TRUE(array.ok()) << array.status();
  return array.ok() ? *std::move(array) : NpyArray();
}

}  // namespace dino::pipeline::test_util

#endif  // DINO_TESTS_PIPELINE_TEST_UTIL_H_
