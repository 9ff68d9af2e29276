// POSIX file helpers shared by the .npy and .npz readers and writers (internal to dino_numpy).
// Plain file descriptors rather than iostreams: large reads and writes go straight between
// the kernel and the array's buffer, and errno is available for precise messages.
#ifndef DINO_MODELS_IO_FILE_UTIL_H_
#define DINO_MODELS_IO_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/io/npy.h"

namespace dino::io_internal {

// An open file descriptor that is closed on destruction.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ~ScopedFd();

  int get() const { return fd_; }
  // Closes the descriptor, reporting a failed close (which can mean lost written data).
  absl::Status Close(const std::string& path);

 private:
  int fd_ = -1;
};

// Opens `path` for reading; NotFound / PermissionDenied / ... naming the path.
absl::StatusOr<ScopedFd> OpenForRead(const std::string& path);
// Creates or truncates `path` for writing.
absl::StatusOr<ScopedFd> OpenForWrite(const std::string& path);
// The size of the open file.
absl::StatusOr<uint64_t> FileSize(int fd, const std::string& path);

// Reads exactly `n` bytes at `offset` (pread); DataLoss naming the path when the file ends
// first.
absl::Status ReadAt(int fd, uint64_t offset, char* dst, size_t n, const std::string& path);
// Writes all `n` bytes at the current position, retrying partial writes.
absl::Status WriteAll(int fd, const char* src, size_t n, const std::string& path);
// Writes all `n` bytes at `offset` (pwrite); used to patch zip headers after the data.
absl::Status WriteAt(int fd, uint64_t offset, const char* src, size_t n, const std::string& path);

// A sequential stream over bytes [offset, offset + length) of an open file.
class FileRangeInputStream : public NpyInputStream {
 public:
  FileRangeInputStream(int fd, uint64_t offset, uint64_t length, std::string path)
      : fd_(fd), offset_(offset), remaining_(length), length_(length), path_(std::move(path)) {}
  absl::StatusOr<size_t> Read(char* dst, size_t n) override;
  std::optional<uint64_t> size_hint() const override { return length_; }

 private:
  int fd_;
  uint64_t offset_;
  uint64_t remaining_;
  uint64_t length_;
  std::string path_;
};

}  // namespace dino::io_internal

#endif  // DINO_MODELS_IO_FILE_UTIL_H_
