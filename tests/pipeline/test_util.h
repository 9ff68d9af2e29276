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

namespace dino::pipeline::test_util {

// A fresh directory under /tmp, removed with everything in it at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "dino_pipeline_test.XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed";
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string FileContents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

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
