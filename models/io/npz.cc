#include "models/io/npz.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dino {
namespace {

// Zip record signatures and sizes (APPNOTE.TXT 6.3.x, sections 4.3.7 - 4.3.16).
constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndOfCentralDirSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kLocalHeaderBytes = 30;
constexpr size_t kCentralHeaderBytes = 46;
constexpr size_t kEndOfCentralDirBytes = 22;
constexpr size_t kZip64EndBytes = 56;
constexpr size_t kZip64LocatorBytes = 20;
constexpr size_t kMaxCommentBytes = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kMethodDeflate = 8;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagUtf8 = 0x0800;
constexpr uint32_t kMax32 = 0xFFFFFFFF;
constexpr uint16_t kMax16 = 0xFFFF;
// Streaming granularity for inflate/deflate and CRC: large enough to amortise calls, small
// enough to keep the compressed-side buffer cheap.
constexpr size_t kChunk = size_t{1} << 20;
// Deflate's best case is 258 bytes per 2-bit code (~1032:1); 1100 leaves margin.
constexpr uint64_t kMaxDeflateRatio = 1100;
// zlib counts in uInt; feed it at most this much per call.
constexpr size_t kMaxZlibChunk = size_t{1} << 30;

uint16_t Load16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t Load32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t Load64(const unsigned char* p) {
  return static_cast<uint64_t>(Load32(p)) | (static_cast<uint64_t>(Load32(p + 4)) << 32);
}

// Little-endian record builder for the writer.
class Bytes {
 public:
  Bytes& U16(uint16_t v) { return Put(v, 2); }
  Bytes& U32(uint32_t v) { return Put(v, 4); }
  Bytes& U64(uint64_t v) { return Put(v, 8); }
  Bytes& Str(absl::string_view s) {
    data_.append(s.data(), s.size());
    return *this;
  }
  const std::string& str() const { return data_; }

 private:
  Bytes& Put(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) data_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    return *this;
  }
  std::string data_;
};

uint32_t Crc32Update(uint32_t crc, const char* data, size_t n) {
  while (n > 0) {
    const size_t take = std::min(n, kMaxZlibChunk);
    crc = static_cast<uint32_t>(
        ::crc32(crc, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(take)));
    data += take;
    n -= take;
  }
  return crc;
}

std::string HexCrc(uint32_t crc) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s = "0x00000000";
  for (int i = 0; i < 8; ++i) s[9 - i] = kDigits[(crc >> (4 * i)) & 0xF];
  return s;
}

// Wraps a stream and accumulates the CRC-32 of what passes through.
class CrcInputStream : public NpyInputStream {
 public:
  explicit CrcInputStream(NpyInputStream& in) : in_(in) {}
  absl::StatusOr<size_t> Read(char* dst, size_t n) override {
    absl::StatusOr<size_t> got = in_.Read(dst, n);
    if (got.ok()) crc_ = Crc32Update(crc_, dst, *got);
    return got;
  }
  std::optional<uint64_t> size_hint() const override { return in_.size_hint(); }
  uint32_t crc() const { return crc_; }

 private:
  NpyInputStream& in_;
  uint32_t crc_ = 0;
};

// Inflates a raw deflate stream held in a byte range of a file, writing straight into the
// caller's buffer; only the compressed side goes through a 1 MiB staging buffer.
class InflateInputStream : public NpyInputStream {
 public:
  InflateInputStream(int fd, uint64_t offset, uint64_t compressed_size, uint64_t uncompressed_size,
                     std::string source)
      : compressed_(fd, offset, compressed_size, source),
        uncompressed_size_(uncompressed_size),
        source_(std::move(source)) {}
  ~InflateInputStream() override {
    if (initialized_) inflateEnd(&z_);
  }

  absl::StatusOr<size_t> Read(char* dst, size_t n) override {
    if (!initialized_) {
      std::memset(&z_, 0, sizeof(z_));
      // Negative window bits: a raw deflate stream, as zip stores it (no zlib header).
      if (inflateInit2(&z_, -MAX_WBITS) != Z_OK) {
        return absl::InternalError(absl::StrCat(source_, ": cannot initialise zlib inflate"));
      }
      initialized_ = true;
      buffer_.resize(kChunk);
    }
    size_t produced = 0;
    while (produced < n && !finished_) {
      if (z_.avail_in == 0) {
        absl::StatusOr<size_t> got = compressed_.Read(buffer_.data(), buffer_.size());
        if (!got.ok()) return got.status();
        if (*got == 0) {
          return absl::DataLossError(
              absl::StrCat(source_,
                           ": the compressed data ends before the deflate stream does (truncated "
                           "or corrupt archive)"));
        }
        z_.next_in = reinterpret_cast<Bytef*>(buffer_.data());
        z_.avail_in = static_cast<uInt>(*got);
      }
      const size_t want = std::min(n - produced, kMaxZlibChunk);
      z_.next_out = reinterpret_cast<Bytef*>(dst + produced);
      z_.avail_out = static_cast<uInt>(want);
      const int rc = inflate(&z_, Z_NO_FLUSH);
      produced += want - z_.avail_out;
      if (rc == Z_STREAM_END) {
        finished_ = true;
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return absl::DataLossError(absl::StrCat(source_, ": corrupt deflate data (zlib: ",
                                                z_.msg != nullptr ? z_.msg : zError(rc), ")"));
      }
    }
    if (finished_ && z_.total_out != uncompressed_size_) {
      return absl::DataLossError(absl::StrCat(source_, ": inflated to ", z_.total_out,
                                              " bytes but the zip directory says ",
                                              uncompressed_size_));
    }
    return produced;
  }
  std::optional<uint64_t> size_hint() const override { return uncompressed_size_; }

 private:
  io_internal::FileRangeInputStream compressed_;
  uint64_t uncompressed_size_;
  std::string source_;
  std::vector<char> buffer_;
  z_stream z_;
  bool initialized_ = false;
  bool finished_ = false;
};

std::string ArrayName(const std::string& file_name) {
  if (file_name.size() > 4 && absl::EndsWith(file_name, ".npy")) {
    return file_name.substr(0, file_name.size() - 4);
  }
  return file_name;
}

bool IsAscii(absl::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 128; });
}

// 1980-01-01 00:00:00, the earliest DOS date: a fixed timestamp keeps archives reproducible.
constexpr uint16_t kDosTime = 0;
constexpr uint16_t kDosDate = (1 << 5) | 1;
// "Version made by": upper byte 3 = Unix (so external attributes are Unix modes).
constexpr uint16_t kMadeByUnix = 3 << 8;
// Regular file, mode 0644, in the upper 16 bits of the external attributes.
constexpr uint32_t kExternalAttributes = (0100644u) << 16;

}  // namespace

// ---------------------------------------------------------------------------------------
// Reader

absl::StatusOr<NpzReader> NpzReader::Open(const std::string& path) {
  absl::StatusOr<io_internal::ScopedFd> fd = io_internal::OpenForRead(path);
  if (!fd.ok()) return fd.status();
  NpzReader reader;
  reader.path_ = path;
  reader.fd_ = std::move(*fd);
  absl::StatusOr<uint64_t> size = io_internal::FileSize(reader.fd_.get(), path);
  if (!size.ok()) return size.status();
  reader.file_size_ = *size;
  if (absl::Status s = reader.ReadCentralDirectory(); !s.ok()) return s;
  return reader;
}

absl::Status NpzReader::ReadCentralDirectory() {
  auto malformed = [this](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", what));
  };
  if (file_size_ < kEndOfCentralDirBytes) {
    return malformed(absl::StrCat("not a zip/.npz archive (", file_size_, " bytes is too small)"));
  }
  // The end-of-central-directory record is the last 22 bytes plus an optional comment of up
  // to 65535 bytes: scan backwards through that tail for its signature.
  const uint64_t tail_size =
      std::min<uint64_t>(file_size_, kEndOfCentralDirBytes + kMaxCommentBytes);
  const uint64_t tail_offset = file_size_ - tail_size;
  std::vector<unsigned char> tail(tail_size);
  if (absl::Status s = io_internal::ReadAt(fd_.get(), tail_offset,
                                           reinterpret_cast<char*>(tail.data()), tail_size, path_);
      !s.ok()) {
    return s;
  }
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail_size - kEndOfCentralDirBytes); i >= 0; --i) {
    if (Load32(&tail[i]) == kEndOfCentralDirSig &&
        static_cast<uint64_t>(i) + kEndOfCentralDirBytes + Load16(&tail[i + 20]) <= tail_size) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return malformed("not a zip/.npz archive (no end-of-central-directory record)");
  const unsigned char* e = &tail[eocd];
  if (Load16(e + 4) != 0 || Load16(e + 6) != 0) {
    return malformed("multi-volume zip archives are not supported");
  }
  uint64_t entries = Load16(e + 10);
  uint64_t cd_size = Load32(e + 12);
  uint64_t cd_offset = Load32(e + 16);

  // A zip64 end-of-central-directory locator, when present, sits right before the record and
  // points to the zip64 record holding the 64-bit count, size and offset.
  const uint64_t eocd_offset = tail_offset + static_cast<uint64_t>(eocd);
  if (eocd_offset >= kZip64LocatorBytes) {
    unsigned char locator[kZip64LocatorBytes];
    if (absl::Status s =
            io_internal::ReadAt(fd_.get(), eocd_offset - kZip64LocatorBytes,
                                reinterpret_cast<char*>(locator), sizeof(locator), path_);
        !s.ok()) {
      return s;
    }
    if (Load32(locator) == kZip64LocatorSig) {
      const uint64_t record_offset = Load64(locator + 8);
      if (record_offset > file_size_ || file_size_ - record_offset < kZip64EndBytes) {
        return malformed("zip64 end-of-central-directory locator points outside the file");
      }
      unsigned char record[kZip64EndBytes];
      if (absl::Status s = io_internal::ReadAt(
              fd_.get(), record_offset, reinterpret_cast<char*>(record), sizeof(record), path_);
          !s.ok()) {
        return s;
      }
      if (Load32(record) != kZip64EndSig) {
        return malformed("zip64 end-of-central-directory record has a bad signature");
      }
      if (Load32(record + 16) != 0 || Load32(record + 20) != 0) {
        return malformed("multi-volume zip archives are not supported");
      }
      entries = Load64(record + 32);
      cd_size = Load64(record + 40);
      cd_offset = Load64(record + 48);
    }
  }
  if (cd_offset > file_size_ || cd_size > file_size_ - cd_offset) {
    return malformed(absl::StrCat("central directory (offset ", cd_offset, ", ", cd_size,
                                  " bytes) lies outside the ", file_size_, "-byte file"));
  }
  if (entries > cd_size / kCentralHeaderBytes) {
    return malformed(
        absl::StrCat("central directory of ", cd_size, " bytes cannot hold ", entries, " entries"));
  }

  std::vector<unsigned char> cd(cd_size);
  if (absl::Status s = io_internal::ReadAt(fd_.get(), cd_offset, reinterpret_cast<char*>(cd.data()),
                                           cd_size, path_);
      !s.ok()) {
    return s;
  }
  members_.clear();
  members_.reserve(entries);
  size_t pos = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    if (cd_size - pos < kCentralHeaderBytes || Load32(&cd[pos]) != kCentralHeaderSig) {
      return malformed(absl::StrCat("central directory entry ", i, " is corrupt"));
    }
    const unsigned char* h = &cd[pos];
    const size_t name_len = Load16(h + 28), extra_len = Load16(h + 30),
                 comment_len = Load16(h + 32);
    if (cd_size - pos - kCentralHeaderBytes < name_len + extra_len + comment_len) {
      return malformed(absl::StrCat("central directory entry ", i, " overruns the directory"));
    }
    Member m;
    m.flags = Load16(h + 8);
    m.method = Load16(h + 10);
    m.crc32 = Load32(h + 16);
    m.compressed_size = Load32(h + 20);
    m.uncompressed_size = Load32(h + 24);
    m.local_header_offset = Load32(h + 42);
    m.file_name.assign(reinterpret_cast<const char*>(h + kCentralHeaderBytes), name_len);
    // Zip64 extended information: 64-bit values for exactly those 32-bit fields that hold
    // 0xFFFFFFFF, in the order uncompressed size, compressed size, local header offset.
    const unsigned char* extra = h + kCentralHeaderBytes + name_len;
    size_t x = 0;
    while (x + 4 <= extra_len) {
      const uint16_t id = Load16(extra + x), size = Load16(extra + x + 2);
      if (x + 4 + size > extra_len) break;
      if (id == kZip64ExtraId) {
        const unsigned char* field = extra + x + 4;
        size_t left = size;
        auto take = [&](uint64_t* value) -> bool {
          if (*value != kMax32) return true;
          if (left < 8) return false;
          *value = Load64(field);
          field += 8;
          left -= 8;
          return true;
        };
        if (!take(&m.uncompressed_size) || !take(&m.compressed_size) ||
            !take(&m.local_header_offset)) {
          return malformed(absl::StrCat("member ", m.file_name, " has a short zip64 extra field"));
        }
      }
      x += 4 + size;
    }
    pos += kCentralHeaderBytes + name_len + extra_len + comment_len;
    // Later duplicates win, as in Python's zipfile.
    index_[ArrayName(m.file_name)] = members_.size();
    members_.push_back(std::move(m));
  }
  return absl::OkStatus();
}

std::vector<std::string> NpzReader::names() const {
  std::vector<std::string> out;
  out.reserve(members_.size());
  for (const Member& m : members_) out.push_back(ArrayName(m.file_name));
  return out;
}

bool NpzReader::contains(absl::string_view name) const { return index_.find(name) != index_.end(); }

absl::StatusOr<NpyArray> NpzReader::Read(absl::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, " has no array '", name,
                                            "' (it holds: ", absl::StrJoin(names(), ", "), ")"));
  }
  const Member& m = members_[it->second];
  const std::string source = absl::StrCat(path_, "[", m.file_name, "]");
  auto malformed = [&source](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  };
  if (!absl::EndsWith(m.file_name, ".npy")) {
    return malformed("member is not a .npy file");
  }
  if ((m.flags & kFlagEncrypted) != 0) return malformed("encrypted members are not supported");
  if (m.method != kMethodStored && m.method != kMethodDeflate) {
    return malformed(absl::StrCat("unsupported compression method ", m.method,
                                  " (supported: 0 stored, 8 deflate)"));
  }
  if (m.method == kMethodStored && m.compressed_size != m.uncompressed_size) {
    return malformed(absl::StrCat("stored member has compressed size ", m.compressed_size,
                                  " but uncompressed size ", m.uncompressed_size));
  }
  // Deflate cannot expand data more than ~1032-fold; a larger claimed ratio is a corrupt (or
  // hostile) directory entry, refused before DecodeNpy allocates the claimed size.
  if (m.method == kMethodDeflate &&
      m.uncompressed_size / kMaxDeflateRatio > m.compressed_size + 1) {
    return absl::DataLossError(absl::StrCat(source, ": claims ", m.uncompressed_size,
                                            " bytes inflated from only ", m.compressed_size,
                                            " (impossible for deflate; corrupt archive)"));
  }
  // The local header repeats the name and may carry a different extra field; only its
  // lengths matter here, to find where the member's data starts.
  if (m.local_header_offset > file_size_ ||
      file_size_ - m.local_header_offset < kLocalHeaderBytes) {
    return malformed("local header lies outside the file");
  }
  unsigned char local[kLocalHeaderBytes];
  if (absl::Status s = io_internal::ReadAt(fd_.get(), m.local_header_offset,
                                           reinterpret_cast<char*>(local), sizeof(local), path_);
      !s.ok()) {
    return s;
  }
  if (Load32(local) != kLocalHeaderSig) return malformed("local header has a bad signature");
  const uint64_t data_offset =
      m.local_header_offset + kLocalHeaderBytes + Load16(local + 26) + Load16(local + 28);
  if (data_offset > file_size_ || m.compressed_size > file_size_ - data_offset) {
    return absl::DataLossError(absl::StrCat(
        source, ": member data (", m.compressed_size, " bytes at offset ", data_offset,
        ") extends past the end of the ", file_size_, "-byte file (truncated archive?)"));
  }

  absl::StatusOr<NpyArray> array;
  uint32_t crc = 0;
  if (m.method == kMethodStored) {
    io_internal::FileRangeInputStream raw(fd_.get(), data_offset, m.compressed_size, path_);
    CrcInputStream in(raw);
    array = DecodeNpy(in, source);
    crc = in.crc();
  } else {
    InflateInputStream raw(fd_.get(), data_offset, m.compressed_size, m.uncompressed_size, source);
    CrcInputStream in(raw);
    array = DecodeNpy(in, source);
    crc = in.crc();
  }
  if (!array.ok()) return array.status();
  if (crc != m.crc32) {
    return absl::DataLossError(absl::StrCat(source, ": CRC-32 mismatch (computed ", HexCrc(crc),
                                            ", archive says ", HexCrc(m.crc32),
                                            "); the archive is corrupt"));
  }
  return array;
}

absl::StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path) {
  absl::StatusOr<NpzReader> reader = NpzReader::Open(path);
  if (!reader.ok()) return reader.status();
  std::map<std::string, NpyArray> out;
  for (const std::string& name : reader->names()) {
    absl::StatusOr<NpyArray> array = reader->Read(name);
    if (!array.ok()) return array.status();
    out[name] = *std::move(array);
  }
  return out;
}

absl::StatusOr<NpyArray> ReadNpzArray(const std::string& path, absl::string_view name) {
  absl::StatusOr<NpzReader> reader = NpzReader::Open(path);
  if (!reader.ok()) return reader.status();
  return reader->Read(name);
}

// ---------------------------------------------------------------------------------------
// Writer

absl::StatusOr<NpzWriter> NpzWriter::Create(const std::string& path,
                                            const NpzWriteOptions& options) {
  if (options.compress && (options.compression_level < -1 || options.compression_level > 9)) {
    return absl::InvalidArgumentError(absl::StrCat("compression level ", options.compression_level,
                                                   " is not in -1..9 (writing ", path, ")"));
  }
  absl::StatusOr<io_internal::ScopedFd> fd = io_internal::OpenForWrite(path);
  if (!fd.ok()) return fd.status();
  NpzWriter writer;
  writer.path_ = path;
  writer.options_ = options;
  writer.fd_ = std::move(*fd);
  return writer;
}

absl::Status NpzWriter::Add(absl::string_view name, const NpyArray& array) {
  if (closed_) return absl::FailedPreconditionError(absl::StrCat(path_, ": Add after Close"));
  if (name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": array names must not be empty"));
  }
  std::string file_name = absl::StrCat(name, ".npy");
  if (file_name.size() > kMax16) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": array name is too long"));
  }
  if (names_.count(file_name) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": array '", name, "' was already added"));
  }
  if (absl::Status s = array.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path_, "[", file_name, "]: ", s.message()));
  }

  const std::string header = EncodeNpyHeader(array);
  Entry entry;
  entry.file_name = std::move(file_name);
  entry.local_header_offset = offset_;
  entry.method = options_.compress ? kMethodDeflate : kMethodStored;
  entry.uncompressed_size = header.size() + array.bytes.size();
  entry.crc32 = Crc32Update(Crc32Update(0, header.data(), header.size()), array.bytes.data(),
                            array.bytes.size());
  // Worst-case compressed size bounds whether the local header needs zip64 fields; the
  // local header is written before the compressed size is known.
  const uint64_t max_compressed =
      options_.compress ? deflateBound(nullptr, entry.uncompressed_size) : entry.uncompressed_size;
  const bool local_zip64 =
      options_.force_zip64 || entry.uncompressed_size >= kMax32 || max_compressed >= kMax32;

  auto local_header = [&](uint64_t compressed_size) {
    Bytes b;
    b.U32(kLocalHeaderSig)
        .U16(local_zip64 ? 45 : 20)
        .U16(IsAscii(entry.file_name) ? 0 : kFlagUtf8)
        .U16(entry.method)
        .U16(kDosTime)
        .U16(kDosDate)
        .U32(entry.crc32)
        .U32(local_zip64 ? kMax32 : static_cast<uint32_t>(compressed_size))
        .U32(local_zip64 ? kMax32 : static_cast<uint32_t>(entry.uncompressed_size))
        .U16(static_cast<uint16_t>(entry.file_name.size()))
        .U16(local_zip64 ? 20 : 0)
        .Str(entry.file_name);
    if (local_zip64) {
      b.U16(kZip64ExtraId).U16(16).U64(entry.uncompressed_size).U64(compressed_size);
    }
    return b.str();
  };

  const int fd = fd_.get();
  std::string local = local_header(options_.compress ? 0 : entry.uncompressed_size);
  if (absl::Status s = io_internal::WriteAll(fd, local.data(), local.size(), path_); !s.ok()) {
    return s;
  }
  if (!options_.compress) {
    entry.compressed_size = entry.uncompressed_size;
    if (absl::Status s = io_internal::WriteAll(fd, header.data(), header.size(), path_); !s.ok()) {
      return s;
    }
    if (absl::Status s = io_internal::WriteAll(fd, array.bytes.data(), array.bytes.size(), path_);
        !s.ok()) {
      return s;
    }
  } else {
    z_stream z;
    std::memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, options_.compression_level, Z_DEFLATED, -MAX_WBITS, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
      return absl::InternalError(absl::StrCat(path_, ": cannot initialise zlib deflate"));
    }
    std::vector<char> out(kChunk);
    absl::Status status;
    // Feeds `data` to deflate and writes the output; `finish` flushes the stream's end.
    auto pump = [&](const char* data, size_t n, bool finish) -> absl::Status {
      while (true) {
        const size_t take = std::min(n, kMaxZlibChunk);
        z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data));
        z.avail_in = static_cast<uInt>(take);
        const bool last = finish && take == n;
        int rc;
        do {
          z.next_out = reinterpret_cast<Bytef*>(out.data());
          z.avail_out = static_cast<uInt>(out.size());
          rc = deflate(&z, last ? Z_FINISH : Z_NO_FLUSH);
          if (rc == Z_STREAM_ERROR) {
            return absl::InternalError(absl::StrCat(path_, ": zlib deflate failed"));
          }
          const size_t have = out.size() - z.avail_out;
          if (absl::Status s = io_internal::WriteAll(fd, out.data(), have, path_); !s.ok()) {
            return s;
          }
        } while (z.avail_out == 0 || (last && rc != Z_STREAM_END));
        data += take;
        n -= take;
        if (n == 0) return absl::OkStatus();
      }
    };
    status = pump(header.data(), header.size(), false);
    if (status.ok()) status = pump(array.bytes.data(), array.bytes.size(), true);
    entry.compressed_size = z.total_out;
    deflateEnd(&z);
    if (!status.ok()) return status;
    // Patch the local header now that the compressed size is known.
    local = local_header(entry.compressed_size);
    if (absl::Status s =
            io_internal::WriteAt(fd, entry.local_header_offset, local.data(), local.size(), path_);
        !s.ok()) {
      return s;
    }
  }
  offset_ += local.size() + entry.compressed_size;
  names_.insert(entry.file_name);
  entries_.push_back(std::move(entry));
  return absl::OkStatus();
}

absl::Status NpzWriter::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  const uint64_t cd_offset = offset_;
  Bytes cd;
  for (const Entry& e : entries_) {
    const bool zip64 = options_.force_zip64 || e.compressed_size >= kMax32 ||
                       e.uncompressed_size >= kMax32 || e.local_header_offset >= kMax32;
    // With zip64 all three 32-bit fields are 0xFFFFFFFF and the extra field holds them all,
    // which keeps the extra field's layout fixed.
    cd.U32(kCentralHeaderSig)
        .U16(kMadeByUnix | (zip64 ? 45 : 20))
        .U16(zip64 ? 45 : 20)
        .U16(IsAscii(e.file_name) ? 0 : kFlagUtf8)
        .U16(e.method)
        .U16(kDosTime)
        .U16(kDosDate)
        .U32(e.crc32)
        .U32(zip64 ? kMax32 : static_cast<uint32_t>(e.compressed_size))
        .U32(zip64 ? kMax32 : static_cast<uint32_t>(e.uncompressed_size))
        .U16(static_cast<uint16_t>(e.file_name.size()))
        .U16(zip64 ? 28 : 0)
        .U16(0)  // comment length
        .U16(0)  // disk number start
        .U16(0)  // internal attributes
        .U32(kExternalAttributes)
        .U32(zip64 ? kMax32 : static_cast<uint32_t>(e.local_header_offset))
        .Str(e.file_name);
    if (zip64) {
      cd.U16(kZip64ExtraId)
          .U16(24)
          .U64(e.uncompressed_size)
          .U64(e.compressed_size)
          .U64(e.local_header_offset);
    }
  }
  const uint64_t cd_size = cd.str().size();
  const uint64_t count = entries_.size();
  const bool zip64_end =
      options_.force_zip64 || count >= kMax16 || cd_size >= kMax32 || cd_offset >= kMax32;
  Bytes end;
  if (zip64_end) {
    const uint64_t record_offset = cd_offset + cd_size;
    end.U32(kZip64EndSig)
        .U64(kZip64EndBytes - 12)  // size of the rest of the record
        .U16(kMadeByUnix | 45)
        .U16(45)
        .U32(0)  // this disk
        .U32(0)  // disk with the central directory
        .U64(count)
        .U64(count)
        .U64(cd_size)
        .U64(cd_offset);
    end.U32(kZip64LocatorSig).U32(0).U64(record_offset).U32(1);
  }
  end.U32(kEndOfCentralDirSig)
      .U16(0)
      .U16(0)
      .U16(zip64_end ? kMax16 : static_cast<uint16_t>(count))
      .U16(zip64_end ? kMax16 : static_cast<uint16_t>(count))
      .U32(zip64_end ? kMax32 : static_cast<uint32_t>(cd_size))
      .U32(zip64_end ? kMax32 : static_cast<uint32_t>(cd_offset))
      .U16(0);
  const int fd = fd_.get();
  if (absl::Status s = io_internal::WriteAll(fd, cd.str().data(), cd.str().size(), path_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = io_internal::WriteAll(fd, end.str().data(), end.str().size(), path_);
      !s.ok()) {
    return s;
  }
  return fd_.Close(path_);
}

absl::Status WriteNpz(const std::string& path, const std::map<std::string, NpyArray>& arrays,
                      const NpzWriteOptions& options) {
  absl::StatusOr<NpzWriter> writer = NpzWriter::Create(path, options);
  if (!writer.ok()) return writer.status();
  for (const auto& [name, array] : arrays) {
    if (absl::Status s = writer->Add(name, array); !s.ok()) return s;
  }
  return writer->Close();
}

}  // namespace dino
