#include "models/io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "absl/strings/str_cat.h"

namespace dino::io_internal {
namespace {

// Linux transfers at most 0x7ffff000 bytes per read/write call; staying below keeps every
// call's result meaningful on any POSIX system.
constexpr size_t kMaxIoChunk = size_t{1} << 30;

}  // namespace

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status ScopedFd::Close(const std::string& path) {
  if (fd_ < 0) return absl::OkStatus();
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot close ", path));
  return absl::OkStatus();
}

absl::StatusOr<ScopedFd> OpenForRead(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot open ", path));
  ScopedFd scoped(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path));
  if (S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is a directory, not a file"));
  }
  return scoped;
}

absl::StatusOr<ScopedFd> OpenForWrite(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create ", path));
  return ScopedFd(fd);
}

absl::StatusOr<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot stat ", path));
  return static_cast<uint64_t>(st.st_size);
}

absl::Status ReadAt(int fd, uint64_t offset, char* dst, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, std::min(n, kMaxIoChunk), static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot read ", path));
    }
    if (got == 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": unexpected end of file at byte offset ", offset));
    }
    dst += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const char* src, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t put = ::write(fd, src, std::min(n, kMaxIoChunk));
    if (put < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
    }
    src += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

absl::Status WriteAt(int fd, uint64_t offset, const char* src, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t put = ::pwrite(fd, src, std::min(n, kMaxIoChunk), static_cast<off_t>(offset));
    if (put < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
    }
    src += put;
    n -= static_cast<size_t>(put);
    offset += static_cast<uint64_t>(put);
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> FileRangeInputStream::Read(char* dst, size_t n) {
  const size_t want = static_cast<size_t>(std::min<uint64_t>(n, remaining_));
  if (want == 0) return size_t{0};
  absl::Status status = ReadAt(fd_, offset_, dst, want, path_);
  if (!status.ok()) return status;
  offset_ += want;
  remaining_ -= want;
  return want;
}

}  // namespace dino::io_internal
