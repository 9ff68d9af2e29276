// Scratch folders and file contents for the tests (header-only: used by torch-free and
// LibTorch tests alike). mkdtemp's "XXXXXX" suffix is what makes each folder unique, so tests
// may run in parallel.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dino::testing {

// A fresh empty folder under $TMPDIR (or the system temporary folder) named <prefix>XXXXXX.
// Throws std::runtime_error when it cannot be created.
inline std::string MakeTempDir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::runtime_error("mkdtemp failed for " + pattern);
  }
  return pattern;
}

// A MakeTempDir folder removed with everything in it when the object goes out of scope.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix = "dino_test_") : path_(MakeTempDir(prefix)) {}
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ~ScopedTempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The bytes of the file at `path` (empty when it cannot be read).
inline std::string FileContents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace dino::testing
