// .npz bytes (zip archives of .npy members: training data, bases, the client's inputs) read
// through NpzReader from a file, as every reader in the project does: the central directory,
// then every member (stored or deflated, CRC-checked, zip64).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "fuzz/require.h"
#include "models/io/npz.h"
#include "tests/common/scratch_dir.h"

namespace {

// One file per process, rewritten for every input.
const std::string& ArchivePath() {
  static const auto* dir = new dino::testing::ScopedTempDir("dino_fuzz_npz_");
  static const std::string path = *dir / "input.npz";
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = ArchivePath();
  std::FILE* file = std::fopen(path.c_str(), "wb");
  dino::fuzz::Require(file != nullptr, "cannot write the npz scratch file");
  if (size > 0) std::fwrite(data, 1, size, file);
  std::fclose(file);
  auto reader = dino::NpzReader::Open(path);
  if (!reader.ok()) return 0;
  for (const std::string& name : reader->names()) {
    dino::fuzz::Require(reader->contains(name), "NpzReader lists a name it does not contain");
    (void)reader->Read(name);
  }
  return 0;
}
