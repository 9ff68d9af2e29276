#include "models/io/npy.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/io/file_util.h"

// Arrays are kept little-endian in memory and handed to typed code by reinterpret_cast; a
// big-endian host would need a byte swap on every access, which nothing here does.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "dino_numpy assumes a little-endian host");

namespace dino {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
// numpy aligns the data to 64 bytes so that files can be memory-mapped for any dtype.
constexpr size_t kArrayAlign = 64;
// Real headers are < 200 bytes; numpy itself refuses > 10000 by default. A generous cap keeps
// a corrupt length field from triggering a huge allocation.
constexpr uint32_t kMaxHeaderBytes = 1 << 20;

absl::Status Malformed(absl::string_view source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
}

// ---------------------------------------------------------------------------------------
// Header dictionary parsing: the Python literal numpy writes with repr(), restricted to what
// a header can contain (strings, True/False, tuples of ints, and lists for structured dtypes,
// which are recognised only to be rejected with a clear message).

class HeaderDictParser {
 public:
  HeaderDictParser(absl::string_view text, absl::string_view source)
      : text_(text), source_(source) {}

  absl::Status Parse(NpyHeader* header) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    std::string descr;
    SkipSpace();
    if (!Consume('{')) return Error("header does not start with '{'");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      std::string key;
      if (absl::Status s = ParseString(&key); !s.ok()) return s;
      SkipSpace();
      if (!Consume(':')) return Error(absl::StrCat("expected ':' after key '", key, "'"));
      SkipSpace();
      if (key == "descr") {
        if (Peek() == '[') {
          return Error(
              "structured (record) dtypes are not supported; expected one of <f4, "
              "<f8, <i4, <i8");
        }
        if (absl::Status s = ParseString(&descr); !s.ok()) return s;
        have_descr = true;
      } else if (key == "fortran_order") {
        if (absl::Status s = ParseBool(&header->fortran_order); !s.ok()) return s;
        have_fortran = true;
      } else if (key == "shape") {
        if (absl::Status s = ParseShape(&header->shape); !s.ok()) return s;
        have_shape = true;
      } else {
        // numpy's reader refuses unknown keys too; accepting them could hide a format we do
        // not understand (e.g. a future field that changes the data layout).
        return Error(absl::StrCat("unexpected key '", key, "' in header"));
      }
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Error(absl::StrCat("expected ',' or '}' after the value of '", key, "'"));
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the header dictionary");
    if (!have_descr || !have_fortran || !have_shape) {
      std::vector<std::string> missing;
      if (!have_descr) missing.push_back("descr");
      if (!have_fortran) missing.push_back("fortran_order");
      if (!have_shape) missing.push_back("shape");
      return Error(absl::StrCat("header lacks key(s) ", absl::StrJoin(missing, ", ")));
    }
    absl::StatusOr<NpyDType> dtype = NpyDTypeFromDescr(descr, &header->big_endian);
    if (!dtype.ok()) return Malformed(source_, dtype.status().message());
    header->dtype = *dtype;
    absl::StatusOr<int64_t> n = NumElementsOf(header->shape);
    if (!n.ok()) return Malformed(source_, n.status().message());
    header->num_elements = *n;
    return absl::OkStatus();
  }

 private:
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool Consume(char c) {
    if (Peek() != c || pos_ >= text_.size()) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  absl::Status Error(absl::string_view what) const {
    return Malformed(source_, absl::StrCat("malformed .npy header (", what, " at character ", pos_,
                                           "): ", text_));
  }

  absl::Status ParseString(std::string* out) {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return Error("expected a quoted string");
    ++pos_;
    const size_t end = text_.find(quote, pos_);
    if (end == absl::string_view::npos) return Error("unterminated string");
    out->assign(text_.data() + pos_, end - pos_);
    pos_ = end + 1;
    return absl::OkStatus();
  }

  absl::Status ParseBool(bool* out) {
    if (text_.substr(pos_, 4) == "True") {
      *out = true;
      pos_ += 4;
      return absl::OkStatus();
    }
    if (text_.substr(pos_, 5) == "False") {
      *out = false;
      pos_ += 5;
      return absl::OkStatus();
    }
    return Error("expected True or False for fortran_order");
  }

  absl::Status ParseShape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!Consume('(')) return Error("expected '(' to start the shape tuple");
    while (true) {
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      if (!std::isdigit(static_cast<unsigned char>(Peek()))) {
        return Error("expected a non-negative integer dimension");
      }
      int64_t value = 0;
      while (std::isdigit(static_cast<unsigned char>(Peek()))) {
        const int digit = text_[pos_++] - '0';
        if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) {
          return Error("dimension does not fit in int64");
        }
        value = value * 10 + digit;
      }
      // Python 2 era files write long integers as e.g. "3L".
      Consume('L');
      shape->push_back(value);
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume(')')) return absl::OkStatus();
      return Error("expected ',' or ')' in the shape tuple");
    }
  }

  absl::string_view text_;
  absl::string_view source_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------------------
// Layout fix-ups applied after reading raw data.

template <typename Word>
void ByteSwapWords(char* data, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    Word w;
    std::memcpy(&w, data + i * sizeof(Word), sizeof(Word));
    if constexpr (sizeof(Word) == 4) {
      w = __builtin_bswap32(w);
    } else {
      w = __builtin_bswap64(w);
    }
    std::memcpy(data + i * sizeof(Word), &w, sizeof(Word));
  }
}

void ByteSwapInPlace(char* data, size_t count, size_t element_size) {
  if (element_size == 4) {
    ByteSwapWords<uint32_t>(data, count);
  } else {
    ByteSwapWords<uint64_t>(data, count);
  }
}

// Converts Fortran-order data of `shape` to C order. Fortran data of shape (d0, ..., dn-1)
// is C data of the reversed shape, so the conversion reverses all axes:
// dst[i0, ..., in-1] = src[i0 + d0 * (i1 + d1 * (i2 + ...))].
template <typename Word>
void FortranToC(const char* src_bytes, char* dst_bytes, const std::vector<int64_t>& shape) {
  const Word* src = reinterpret_cast<const Word*>(src_bytes);
  Word* dst = reinterpret_cast<Word*>(dst_bytes);
  const size_t rank = shape.size();
  if (rank == 2) {
    // The common case (matrices): a cache-blocked transpose of the [d1, d0] source.
    const int64_t rows = shape[0], cols = shape[1];
    constexpr int64_t kBlock = 64;
    for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
      const int64_t r1 = std::min(rows, r0 + kBlock);
      for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
        const int64_t c1 = std::min(cols, c0 + kBlock);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = c0; c < c1; ++c) dst[r * cols + c] = src[c * rows + r];
        }
      }
    }
    return;
  }
  // General rank: walk the destination in C order with an odometer over all but the last
  // axis; along the last axis the source stride is d0 * ... * d(n-2).
  std::vector<int64_t> fstride(rank);
  int64_t stride = 1;
  for (size_t k = 0; k < rank; ++k) {
    fstride[k] = stride;
    stride *= shape[k];
  }
  const int64_t last = shape[rank - 1];
  const int64_t last_stride = fstride[rank - 1];
  std::vector<int64_t> index(rank - 1, 0);
  int64_t src_base = 0;
  Word* out = dst;
  while (true) {
    for (int64_t i = 0; i < last; ++i) *out++ = src[src_base + i * last_stride];
    // Advance the odometer over axes rank-2 .. 0.
    int64_t k = static_cast<int64_t>(rank) - 2;
    for (; k >= 0; --k) {
      if (++index[k] < shape[k]) {
        src_base += fstride[k];
        break;
      }
      src_base -= fstride[k] * (shape[k] - 1);
      index[k] = 0;
    }
    if (k < 0) return;
  }
}

// Reads until `n` bytes are in `dst` or the stream ends; returns the count read.
absl::StatusOr<size_t> ReadFully(NpyInputStream& in, char* dst, size_t n) {
  size_t total = 0;
  while (total < n) {
    absl::StatusOr<size_t> got = in.Read(dst + total, n - total);
    if (!got.ok()) return got.status();
    if (*got == 0) break;
    total += *got;
  }
  return total;
}

uint32_t LoadLE(const unsigned char* p, int bytes) {
  uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class StringInputStream : public NpyInputStream {
 public:
  explicit StringInputStream(absl::string_view bytes) : bytes_(bytes) {}
  absl::StatusOr<size_t> Read(char* dst, size_t n) override {
    const size_t take = std::min(n, bytes_.size() - pos_);
    // An empty array's buffer may be null, and memcpy's arguments must never be (UBSan).
    if (take > 0) std::memcpy(dst, bytes_.data() + pos_, take);
    pos_ += take;
    return take;
  }
  std::optional<uint64_t> size_hint() const override { return bytes_.size(); }

 private:
  absl::string_view bytes_;
  size_t pos_ = 0;
};

}  // namespace

namespace npy_internal {

void DTypeMismatch(NpyDType held, NpyDType wanted) {
  std::fprintf(stderr, "NpyArray::View: array holds %s, not %s\n",
               std::string(NpyDTypeName(held)).c_str(), std::string(NpyDTypeName(wanted)).c_str());
  std::abort();
}

}  // namespace npy_internal

size_t NpyDTypeSize(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
    case NpyDType::kInt32:
      return 4;
    case NpyDType::kFloat64:
    case NpyDType::kInt64:
      return 8;
  }
  return 8;
}

absl::string_view NpyDTypeDescr(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
      return "<f4";
    case NpyDType::kFloat64:
      return "<f8";
    case NpyDType::kInt32:
      return "<i4";
    case NpyDType::kInt64:
      return "<i8";
  }
  return "?";
}

absl::string_view NpyDTypeName(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
      return "float32";
    case NpyDType::kFloat64:
      return "float64";
    case NpyDType::kInt32:
      return "int32";
    case NpyDType::kInt64:
      return "int64";
  }
  return "unknown";
}

absl::StatusOr<NpyDType> NpyDTypeFromDescr(absl::string_view descr, bool* big_endian) {
  absl::string_view code = descr;
  bool big = false;
  if (!code.empty() && (code[0] == '<' || code[0] == '>' || code[0] == '=' || code[0] == '|')) {
    big = code[0] == '>';
    code.remove_prefix(1);
  }
  NpyDType dtype;
  if (code == "f4") {
    dtype = NpyDType::kFloat32;
  } else if (code == "f8") {
    dtype = NpyDType::kFloat64;
  } else if (code == "i4") {
    dtype = NpyDType::kInt32;
  } else if (code == "i8") {
    dtype = NpyDType::kInt64;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported dtype '", descr,
                     "' (supported: <f4, <f8, <i4, <i8 and their big-endian "
                     "forms)"));
  }
  if (big_endian != nullptr) *big_endian = big;
  return dtype;
}

absl::StatusOr<int64_t> NumElementsOf(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeToString(shape), " has a negative dimension"));
    }
    if (__builtin_mul_overflow(n, d, &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeToString(shape), " has too many elements"));
    }
  }
  return n;
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<NpyArray> NpyArray::Zeros(std::vector<int64_t> shape, NpyDType dtype) {
  absl::StatusOr<int64_t> n = NumElementsOf(shape);
  if (!n.ok()) return n.status();
  const size_t elsize = NpyDTypeSize(dtype);
  if (static_cast<uint64_t>(*n) > std::numeric_limits<size_t>::max() / elsize) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape ", ShapeToString(shape), " is too large to allocate"));
  }
  NpyArray array;
  array.shape = std::move(shape);
  array.dtype = dtype;
  array.bytes.assign(static_cast<size_t>(*n) * elsize, 0);
  return array;
}

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status NpyArray::Validate() const {
  absl::StatusOr<int64_t> n = NumElementsOf(shape);
  if (!n.ok()) return n.status();
  const uint64_t expected = static_cast<uint64_t>(*n) * element_size();
  if (static_cast<uint64_t>(*n) > std::numeric_limits<uint64_t>::max() / element_size() ||
      bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("array of shape ", ShapeToString(shape),
                                                   " and dtype ", NpyDTypeName(dtype), " needs ",
                                                   expected, " bytes but holds ", bytes.size()));
  }
  return absl::OkStatus();
}

namespace {

template <typename To, typename From>
void ConvertElements(const char* src, size_t count, To* dst) {
  const From* in = reinterpret_cast<const From*>(src);
  for (size_t i = 0; i < count; ++i) dst[i] = static_cast<To>(in[i]);
}

template <typename To>
void ConvertAll(const NpyArray& array, To* dst) {
  const size_t count = array.bytes.size() / array.element_size();
  switch (array.dtype) {
    case NpyDType::kFloat32:
      ConvertElements<To, float>(array.bytes.data(), count, dst);
      break;
    case NpyDType::kFloat64:
      ConvertElements<To, double>(array.bytes.data(), count, dst);
      break;
    case NpyDType::kInt32:
      ConvertElements<To, int32_t>(array.bytes.data(), count, dst);
      break;
    case NpyDType::kInt64:
      ConvertElements<To, int64_t>(array.bytes.data(), count, dst);
      break;
  }
}

}  // namespace

std::vector<double> NpyArray::ToDoubles() const {
  std::vector<double> out(bytes.size() / element_size());
  ConvertAll(*this, out.data());
  return out;
}

std::vector<float> NpyArray::ToFloats() const {
  std::vector<float> out(bytes.size() / element_size());
  ConvertAll(*this, out.data());
  return out;
}

absl::StatusOr<NpyArray> NpyArray::AsType(NpyDType target) const {
  if (target == dtype) return *this;
  const bool from_float = dtype == NpyDType::kFloat32 || dtype == NpyDType::kFloat64;
  const bool to_int = target == NpyDType::kInt32 || target == NpyDType::kInt64;
  if (from_float && to_int) {
    return absl::InvalidArgumentError(absl::StrCat("refusing to convert ", NpyDTypeName(dtype),
                                                   " to ", NpyDTypeName(target),
                                                   " (it would truncate)"));
  }
  if (dtype == NpyDType::kInt64 && target == NpyDType::kInt32) {
    const int64_t* values = reinterpret_cast<const int64_t*>(bytes.data());
    for (size_t i = 0; i < bytes.size() / sizeof(int64_t); ++i) {
      const int64_t v = values[i];
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat("value ", v, " does not fit in int32"));
      }
    }
  }
  NpyArray out;
  out.shape = shape;
  out.dtype = target;
  const size_t count = bytes.size() / element_size();
  out.bytes.resize(count * NpyDTypeSize(target));
  switch (target) {
    case NpyDType::kFloat32:
      ConvertAll(*this, reinterpret_cast<float*>(out.bytes.data()));
      break;
    case NpyDType::kFloat64:
      ConvertAll(*this, reinterpret_cast<double*>(out.bytes.data()));
      break;
    case NpyDType::kInt32:
      ConvertAll(*this, reinterpret_cast<int32_t*>(out.bytes.data()));
      break;
    case NpyDType::kInt64:
      ConvertAll(*this, reinterpret_cast<int64_t*>(out.bytes.data()));
      break;
  }
  return out;
}

bool operator==(const NpyArray& a, const NpyArray& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

absl::Status ParseNpyHeaderDict(absl::string_view dict, absl::string_view source,
                                NpyHeader* header) {
  return HeaderDictParser(dict, source).Parse(header);
}

absl::StatusOr<NpyArray> DecodeNpy(NpyInputStream& in, absl::string_view source) {
  // Preamble: magic (6), major (1), minor (1), header length (2 bytes LE in 1.0, 4 in 2.0+).
  unsigned char preamble[12];
  absl::StatusOr<size_t> got = ReadFully(in, reinterpret_cast<char*>(preamble), 8);
  if (!got.ok()) return got.status();
  if (*got < 8 || std::memcmp(preamble, kMagic, kMagicBytes) != 0) {
    return Malformed(source, "not a .npy file (missing the \\x93NUMPY magic string)");
  }
  NpyHeader header;
  header.major_version = preamble[6];
  header.minor_version = preamble[7];
  int length_bytes;
  if (header.major_version == 1) {
    length_bytes = 2;
  } else if (header.major_version == 2 || header.major_version == 3) {
    length_bytes = 4;
  } else {
    return Malformed(source,
                     absl::StrCat("unsupported .npy format version ", header.major_version, ".",
                                  header.minor_version, " (supported: 1.0, 2.0, 3.0)"));
  }
  got = ReadFully(in, reinterpret_cast<char*>(preamble + 8), length_bytes);
  if (!got.ok()) return got.status();
  if (*got < static_cast<size_t>(length_bytes)) return Malformed(source, "truncated .npy header");
  const uint32_t header_len = LoadLE(preamble + 8, length_bytes);
  if (header_len > kMaxHeaderBytes) {
    return Malformed(source, absl::StrCat(".npy header length ", header_len,
                                          " is implausibly large (corrupt file?)"));
  }
  std::string dict(header_len, '\0');
  got = ReadFully(in, dict.data(), header_len);
  if (!got.ok()) return got.status();
  if (*got < header_len) {
    return Malformed(source, absl::StrCat("truncated .npy header: expected ", header_len,
                                          " bytes, found ", *got));
  }
  // Version 1.0/2.0 headers are latin-1 and 3.0 headers UTF-8; every header this reader
  // accepts is plain ASCII, so both parse byte-wise.
  if (absl::Status s = ParseNpyHeaderDict(dict, source, &header); !s.ok()) return s;
  header.data_offset = 8 + length_bytes + header_len;

  const size_t elsize = NpyDTypeSize(header.dtype);
  const uint64_t n = static_cast<uint64_t>(header.num_elements);
  if (n > std::numeric_limits<size_t>::max() / elsize) {
    return Malformed(source,
                     absl::StrCat("shape ", ShapeToString(header.shape), " is too large to load"));
  }
  const size_t data_bytes = static_cast<size_t>(n) * elsize;
  const std::string layout = absl::StrCat("shape ", ShapeToString(header.shape), " of ",
                                          NpyDTypeName(header.dtype), " (", data_bytes, " bytes)");
  if (std::optional<uint64_t> total = in.size_hint(); total.has_value()) {
    const uint64_t available = *total >= header.data_offset ? *total - header.data_offset : 0;
    if (available < data_bytes) {
      return Malformed(source, absl::StrCat("truncated: the header declares ", layout, " but only ",
                                            available, " data bytes follow"));
    }
    if (available > data_bytes) {
      return Malformed(source, absl::StrCat("the header declares ", layout, " but ", available,
                                            " data bytes follow (", available - data_bytes,
                                            " unexpected trailing bytes)"));
    }
  }

  NpyArray array;
  array.shape = header.shape;
  array.dtype = header.dtype;
  // An empty array has nothing to transpose; walking its shape could take as long as its
  // extents are large (a 100-byte file may declare a (10^18, 0) array).
  const bool transpose =
      header.fortran_order && header.shape.size() >= 2 && header.num_elements > 0;
  // Fortran data is read into a scratch buffer and transposed into place.
  std::vector<char> scratch;
  std::vector<char>& target = transpose ? scratch : array.bytes;
  target.resize(data_bytes);
  got = ReadFully(in, target.data(), data_bytes);
  if (!got.ok()) return got.status();
  if (*got < data_bytes) {
    return Malformed(source, absl::StrCat("truncated: the header declares ", layout, " but only ",
                                          *got, " data bytes follow"));
  }
  char extra;
  got = ReadFully(in, &extra, 1);
  if (!got.ok()) return got.status();
  if (*got != 0) {
    return Malformed(source,
                     absl::StrCat("unexpected trailing bytes after the ", layout, " of data"));
  }
  if (header.big_endian) ByteSwapInPlace(target.data(), static_cast<size_t>(n), elsize);
  if (transpose) {
    array.bytes.resize(data_bytes);
    if (elsize == 4) {
      FortranToC<uint32_t>(scratch.data(), array.bytes.data(), array.shape);
    } else {
      FortranToC<uint64_t>(scratch.data(), array.bytes.data(), array.shape);
    }
  }
  return array;
}

absl::StatusOr<NpyArray> DecodeNpy(absl::string_view bytes, absl::string_view source) {
  StringInputStream in(bytes);
  return DecodeNpy(in, source);
}

std::string EncodeNpyHeader(const NpyArray& array) {
  std::string shape;
  if (array.shape.size() == 1) {
    shape = absl::StrCat("(", array.shape[0], ",)");
  } else {
    shape = absl::StrCat("(", absl::StrJoin(array.shape, ", "), ")");
  }
  // Same text and padding as numpy.lib.format (so files are byte-identical to numpy.save's).
  const std::string dict = absl::StrCat("{'descr': '", NpyDTypeDescr(array.dtype),
                                        "', 'fortran_order': False, 'shape': ", shape, ", }");
  const size_t dict_len = dict.size() + 1;  // + the terminating newline
  int version = 1;
  size_t prefix = kMagicBytes + 2 + 2;
  size_t pad = kArrayAlign - (prefix + dict_len) % kArrayAlign;
  if (dict_len + pad > 0xFFFF) {
    version = 2;
    prefix = kMagicBytes + 2 + 4;
    pad = kArrayAlign - (prefix + dict_len) % kArrayAlign;
  }
  const uint32_t header_len = static_cast<uint32_t>(dict_len + pad);
  std::string out(kMagic, kMagicBytes);
  out.push_back(static_cast<char>(version));
  out.push_back('\0');
  for (size_t i = 0; i < (version == 1 ? 2u : 4u); ++i) {
    out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xFF));
  }
  out += dict;
  out.append(pad, ' ');
  out.push_back('\n');
  return out;
}

std::string EncodeNpy(const NpyArray& array) {
  std::string out = EncodeNpyHeader(array);
  out.append(array.bytes.data(), array.bytes.size());
  return out;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<io_internal::ScopedFd> fd = io_internal::OpenForRead(path);
  if (!fd.ok()) return fd.status();
  absl::StatusOr<uint64_t> size = io_internal::FileSize(fd->get(), path);
  if (!size.ok()) return size.status();
  io_internal::FileRangeInputStream in(fd->get(), 0, *size, path);
  return DecodeNpy(in, path);
}

absl::Status WriteNpy(const std::string& path, const NpyArray& array) {
  if (absl::Status s = array.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path, ": ", s.message()));
  }
  absl::StatusOr<io_internal::ScopedFd> fd = io_internal::OpenForWrite(path);
  if (!fd.ok()) return fd.status();
  const std::string header = EncodeNpyHeader(array);
  absl::Status status = io_internal::WriteAll(fd->get(), header.data(), header.size(), path);
  if (status.ok()) {
    status = io_internal::WriteAll(fd->get(), array.bytes.data(), array.bytes.size(), path);
  }
  if (status.ok()) status = fd->Close(path);
  return status;
}

}  // namespace dino
