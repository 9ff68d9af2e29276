#include "models/pipeline/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dino::pipeline {
namespace {

namespace fs = std::filesystem;

absl::Status ErrnoError(int error, absl::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(error, absl::StrCat(what, " ", path));
}

absl::Status FromErrorCode(const std::error_code& ec, absl::string_view what,
                           const std::string& path) {
  return absl::ErrnoToStatus(ec.value(), absl::StrCat(what, " ", path, ": ", ec.message()));
}

std::string ParentDirectory(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

std::string TempPathFor(const std::string& path) {
  const fs::path p(path);
  return (p.parent_path() / absl::StrCat(".", p.filename().string(), ".tmp-", getpid())).string();
}

// fsync of a file or directory by path; a rename is durable only once its directory is synced.
absl::Status SyncPath(const std::string& path, bool directory) {
  const int fd = open(path.c_str(), O_RDONLY | (directory ? O_DIRECTORY : 0) | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open for fsync", path);
  const int rc = fsync(fd);
  const int error = errno;
  close(fd);
  if (rc != 0) return ErrnoError(error, "fsync failed for", path);
  return absl::OkStatus();
}

absl::Status RenameAndSync(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0) {
    const int error = errno;
    return ErrnoError(error, absl::StrCat("cannot rename ", from, " to"), to);
  }
  return SyncPath(ParentDirectory(to), /*directory=*/true);
}

std::string PatternToString(const ShapePattern& shape) {
  std::vector<std::string> parts;
  for (int64_t d : shape) parts.push_back(d < 0 ? "*" : std::to_string(d));
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

}  // namespace

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return (fs::path(dir) / name).string();
}

absl::Status MakeDirectories(const std::string& path) {
  std::error_code ec;
  if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  fs::create_directories(path, ec);
  if (ec) return FromErrorCode(ec, "cannot create directory", path);
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

absl::Status RemovePath(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) return FromErrorCode(ec, "cannot remove", path);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& path) {
  std::error_code ec;
  std::vector<std::string> names;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return FromErrorCode(ec, "cannot list directory", path);
  std::sort(names.begin(), names.end());
  return names;
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  std::string contents;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t got = read(fd, buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      close(fd);
      return ErrnoError(error, "cannot read", path);
    }
    if (got == 0) break;
    contents.append(buffer, static_cast<size_t>(got));
  }
  close(fd);
  return contents;
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::string temp = TempPathFor(path);
  const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, "cannot create", temp);
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = write(fd, contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      close(fd);
      unlink(temp.c_str());
      return ErrnoError(error, "cannot write", temp);
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    const int error = errno;
    unlink(temp.c_str());
    return ErrnoError(error, "cannot flush", temp);
  }
  absl::Status renamed = RenameAndSync(temp, path);
  if (!renamed.ok()) unlink(temp.c_str());
  return renamed;
}

absl::StatusOr<AtomicNpzWriter> AtomicNpzWriter::Create(const std::string& path,
                                                        const NpzWriteOptions& options) {
  AtomicNpzWriter writer;
  writer.path_ = path;
  writer.temp_path_ = TempPathFor(path);
  absl::StatusOr<NpzWriter> npz = NpzWriter::Create(writer.temp_path_, options);
  if (!npz.ok()) return npz.status();
  writer.writer_.emplace(*std::move(npz));
  return writer;
}

AtomicNpzWriter::AtomicNpzWriter(AtomicNpzWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      writer_(std::move(other.writer_)) {
  other.writer_.reset();
  other.temp_path_.clear();
}

AtomicNpzWriter& AtomicNpzWriter::operator=(AtomicNpzWriter&& other) noexcept {
  if (this != &other) {
    Discard();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    writer_ = std::move(other.writer_);
    other.writer_.reset();
    other.temp_path_.clear();
  }
  return *this;
}

AtomicNpzWriter::~AtomicNpzWriter() { Discard(); }

void AtomicNpzWriter::Discard() {
  if (!writer_) return;
  writer_.reset();  // Closes the descriptor without writing the central directory.
  if (!temp_path_.empty()) unlink(temp_path_.c_str());
}

absl::Status AtomicNpzWriter::Add(absl::string_view name, const NpyArray& array) {
  if (!writer_) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": Add after Commit"));
  }
  return writer_->Add(name, array);
}

absl::Status AtomicNpzWriter::Commit() {
  if (!writer_) {
    return absl::FailedPreconditionError(absl::StrCat(path_, ": committed twice"));
  }
  absl::Status status = writer_->Close();
  if (status.ok()) status = SyncPath(temp_path_, /*directory=*/false);
  if (status.ok()) status = RenameAndSync(temp_path_, path_);
  if (!status.ok()) {
    Discard();
    return status;
  }
  writer_.reset();
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadFloat64Array(const NpzReader& reader, absl::string_view name,
                                          const ShapePattern& expected) {
  absl::StatusOr<NpyArray> array = reader.Read(name);
  if (!array.ok()) return array.status();
  bool matches = array->rank() == static_cast<int>(expected.size());
  for (size_t d = 0; matches && d < expected.size(); ++d) {
    matches = expected[d] < 0 || expected[d] == array->shape[d];
  }
  if (!matches) {
    return absl::InvalidArgumentError(absl::StrCat(reader.path(), ": array '", name, "' has shape ",
                                                   ShapeToString(array->shape), ", expected ",
                                                   PatternToString(expected)));
  }
  if (array->dtype == NpyDType::kFloat64) return array;
  absl::StatusOr<NpyArray> converted = array->AsType(NpyDType::kFloat64);
  if (!converted.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": array '", name, "': ", converted.status().message()));
  }
  return converted;
}

NpyArray MatrixToArray(const Eigen::MatrixXd& matrix) {
  using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  NpyArray array;
  array.shape = {matrix.rows(), matrix.cols()};
  array.dtype = NpyDType::kFloat64;
  array.bytes.resize(static_cast<size_t>(matrix.size()) * sizeof(double));
  Eigen::Map<RowMajor>(reinterpret_cast<double*>(array.bytes.data()), matrix.rows(),
                       matrix.cols()) = matrix;
  return array;
}

NpyArray VectorToArray(const Eigen::VectorXd& vector) {
  NpyArray array;
  array.shape = {vector.size()};
  array.dtype = NpyDType::kFloat64;
  array.bytes.resize(static_cast<size_t>(vector.size()) * sizeof(double));
  std::memcpy(array.bytes.data(), vector.data(), array.bytes.size());
  return array;
}

}  // namespace dino::pipeline
