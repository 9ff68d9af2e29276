// NumPy .npz archives: zip files whose members are .npy files named "<key>.npy".
//
// Reading handles what numpy.savez (stored members) and numpy.savez_compressed (deflate)
// write, including their zip64 extra fields, and zip64 end records of archives over 4 GiB or
// 65535 members; members are decoded straight from the file (stored) or from zlib's inflate
// output (deflate) into the array's buffer, with their CRC-32 verified. Encrypted members and
// compression methods other than stored/deflate are rejected with a message saying so.
#ifndef DINO_MODELS_IO_NPZ_H_
#define DINO_MODELS_IO_NPZ_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "models/io/file_util.h"
#include "models/io/npy.h"

namespace dino {

// Random access to the arrays of one .npz file. The central directory is read by Open; each
// Read decodes one member. Read is const and uses pread, so one reader may serve several
// threads at once.
class NpzReader {
 public:
  // Opens `path` and reads its zip central directory. NotFound when the file does not exist;
  // InvalidArgument (naming the path) when it is not a zip archive or is multi-volume.
  static absl::StatusOr<NpzReader> Open(const std::string& path);

  NpzReader(NpzReader&&) = default;
  NpzReader& operator=(NpzReader&&) = default;

  const std::string& path() const { return path_; }
  // The array names (member names with ".npy" removed), in archive order.
  std::vector<std::string> names() const;
  bool contains(absl::string_view name) const;

  // Decodes the array `name` (without ".npy"). NotFound listing the available names when
  // there is no such member; InvalidArgument / DataLoss (naming "<path>[<member>]") for an
  // unsupported or corrupt member.
  absl::StatusOr<NpyArray> Read(absl::string_view name) const;

 private:
  struct Member {
    std::string file_name;  // As stored in the archive, e.g. "m_data.npy".
    uint16_t flags = 0;
    uint16_t method = 0;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t uncompressed_size = 0;
    uint64_t local_header_offset = 0;
  };

  NpzReader() = default;
  absl::Status ReadCentralDirectory();

  std::string path_;
  io_internal::ScopedFd fd_;
  uint64_t file_size_ = 0;
  std::vector<Member> members_;
  std::map<std::string, size_t, std::less<>> index_;  // Array name -> members_ index.
};

// Reads every array of `path` (keyed by name without ".npy").
absl::StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path);
// Reads the one array `name` of `path`.
absl::StatusOr<NpyArray> ReadNpzArray(const std::string& path, absl::string_view name);

struct NpzWriteOptions {
  // Deflate the members (as numpy.savez_compressed) instead of storing them (numpy.savez).
  bool compress = false;
  // zlib level 0-9, or -1 for zlib's default (6). Only used when compress is true.
  int compression_level = -1;
  // Write zip64 extra fields and end records even when no size or offset needs them (as
  // numpy does for every member). Without it zip64 is used only where a value is >= 4 GiB.
  bool force_zip64 = false;
};

// Writes a .npz archive member by member, streaming each array's bytes (no copy of the
// array is made; deflated data goes to the file in 1 MiB pieces).
class NpzWriter {
 public:
  // Creates or truncates `path`.
  static absl::StatusOr<NpzWriter> Create(const std::string& path,
                                          const NpzWriteOptions& options = {});

  NpzWriter(NpzWriter&&) = default;
  NpzWriter& operator=(NpzWriter&&) = default;
  // Without a successful Close the file lacks its central directory and is not a valid zip.
  ~NpzWriter() = default;

  // Appends `array` as member "<name>.npy". InvalidArgument for an empty or duplicate name,
  // an array that breaks NpyArray's invariant, or a call after Close.
  absl::Status Add(absl::string_view name, const NpyArray& array);
  // Writes the central directory and closes the file.
  absl::Status Close();

 private:
  struct Entry {
    std::string file_name;
    uint32_t crc32 = 0;
    uint64_t compressed_size = 0;
    uint64_t uncompressed_size = 0;
    uint64_t local_header_offset = 0;
    uint16_t method = 0;
  };

  NpzWriter() = default;

  std::string path_;
  NpzWriteOptions options_;
  io_internal::ScopedFd fd_;
  uint64_t offset_ = 0;
  std::vector<Entry> entries_;
  std::set<std::string> names_;  // entries_' file names, to refuse duplicates.
  bool closed_ = false;
};

// Writes all `arrays` (in key order) to `path`.
absl::Status WriteNpz(const std::string& path, const std::map<std::string, NpyArray>& arrays,
                      const NpzWriteOptions& options = {});

}  // namespace dino

#endif  // DINO_MODELS_IO_NPZ_H_
