// Helpers for the client unit tests: private scratch directories and running NumPy scripts
// with the interpreter the build was configured with (DINO_PYTHON, /usr/bin/python3).
#ifndef DINO_TESTS_CLIENT_TEST_UTIL_H_
#define DINO_TESTS_CLIENT_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "models/io/npy.h"
#include "tests/common/scratch_dir.h"

#ifndef DINO_PYTHON
#define DINO_PYTHON "/usr/bin/python3"
#endif

namespace dino::testing {

inline std::string ReadFile(const std::string& path) { return FileContents(path); }

inline void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

// Runs `code` with NumPy imported as np, in `dir` (the script's working directory). Returns
// true on exit status 0; otherwise records a test failure with the script's output.
inline bool RunPython(const std::string& dir, const std::string& code) {
  const std::string script = dir + "/script.py";
  const std::string log = dir + "/script.log";
  WriteFile(script, "import os, sys\nimport numpy as np\nos.chdir(" + std::string("'") + dir +
                        "')\n" + code + "\n");
  const std::string command = std::string(DINO_PYTHON) + " '" + script + "' > '" + log + "' 2>&1";
  const int rc = std::system(command.c_str());
  if (rc != 0) {
    ADD_FAILURE() << "python failed (" << rc << "): " << command << "\n" << ReadFile(log);
    return false;
  }
  return true;
}

// Shared by the npy and npz tests.
// Elements 0.5·i - 1 (or i for integers) in the given dtype.
inline NpyArray Ramp(std::vector<int64_t> shape, NpyDType dtype) {
  NpyArray array = *NpyArray::Zeros(std::move(shape), dtype);
  const int64_t n = array.num_elements();
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case NpyDType::kFloat32:
        array.MutableView<float>()[i] = 0.5f * i - 1;
        break;
      case NpyDType::kFloat64:
        array.MutableView<double>()[i] = 0.5 * i - 1;
        break;
      case NpyDType::kInt32:
        array.MutableView<int32_t>()[i] = static_cast<int32_t>(i);
        break;
      case NpyDType::kInt64:
        array.MutableView<int64_t>()[i] = i;
        break;
    }
  }
  return array;
}

}  // namespace dino::testing

#endif  // DINO_TESTS_CLIENT_TEST_UTIL_H_
