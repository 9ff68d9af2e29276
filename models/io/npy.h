// Dense arrays and the NumPy .npy file format (versions 1.0, 2.0 and 3.0).
//
// NpyArray is the plain dense-array type shared by the data pipeline, the client library and
// the CLI: a shape, an element type and the raw little-endian row-major bytes. Keeping the
// payload as raw bytes (rather than a typed vector) lets it travel to and from .npy files, .npz
// members and the wire Tensor message with one memcpy and no per-element dispatch.
//
// Format reference: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#ifndef DINO_MODELS_IO_NPY_H_
#define DINO_MODELS_IO_NPY_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace dino {

// The element types dino-serve stores and exchanges. Values are always held little-endian in
// memory; big-endian files are byte-swapped when read.
enum class NpyDType {
  kFloat32,  // '<f4'
  kFloat64,  // '<f8'
  kInt32,    // '<i4'
  kInt64,    // '<i8'
};

// Bytes per element: 4 or 8.
size_t NpyDTypeSize(NpyDType dtype);
// The NumPy type string written to .npy headers, e.g. "<f8".
absl::string_view NpyDTypeDescr(NpyDType dtype);
// The NumPy type name, e.g. "float64"; used in messages.
absl::string_view NpyDTypeName(NpyDType dtype);
// Parses a NumPy type string such as "<f4", ">i8", "=f8" or "f8". The byte order ('<', '>',
// '=', '|' or none) is reported through `big_endian` (may be null). Anything other than
// 4/8-byte floats and signed integers is InvalidArgument, naming what was found.
absl::StatusOr<NpyDType> NpyDTypeFromDescr(absl::string_view descr, bool* big_endian = nullptr);

// NpyDTypeOf<T>::value is the NpyDType whose elements are T.
template <typename T>
struct NpyDTypeOf;
template <>
struct NpyDTypeOf<float> : std::integral_constant<NpyDType, NpyDType::kFloat32> {};
template <>
struct NpyDTypeOf<double> : std::integral_constant<NpyDType, NpyDType::kFloat64> {};
template <>
struct NpyDTypeOf<int32_t> : std::integral_constant<NpyDType, NpyDType::kInt32> {};
template <>
struct NpyDTypeOf<int64_t> : std::integral_constant<NpyDType, NpyDType::kInt64> {};

// prod(shape), or InvalidArgument for a negative dimension or an int64 overflow. A rank-0
// shape has one element.
absl::StatusOr<int64_t> NumElementsOf(absl::Span<const int64_t> shape);
// "[3, 4]"; used in messages.
std::string ShapeToString(absl::Span<const int64_t> shape);

// A dense, row-major (C order), little-endian array.
//
// Invariant (checked by Validate(), guaranteed by every reader and factory here):
// every dimension is >= 0 and bytes.size() == prod(shape) * NpyDTypeSize(dtype).
struct NpyArray {
  std::vector<int64_t> shape;
  NpyDType dtype = NpyDType::kFloat64;
  std::vector<char> bytes;

  // A zero-filled array; InvalidArgument for a negative dimension or a size overflow.
  static absl::StatusOr<NpyArray> Zeros(std::vector<int64_t> shape, NpyDType dtype);

  // An array holding a copy of `values`; InvalidArgument when values.size() != prod(shape).
  template <typename T>
  static absl::StatusOr<NpyArray> FromValues(std::vector<int64_t> shape,
                                             absl::Span<const T> values);

  int rank() const { return static_cast<int>(shape.size()); }
  // prod(shape) computed from the shape (1 for rank 0). Assumes the invariant.
  int64_t num_elements() const;
  size_t element_size() const { return NpyDTypeSize(dtype); }

  // OK when the invariant holds, else InvalidArgument describing the mismatch.
  absl::Status Validate() const;

  // A typed view of the elements. Requires dtype == NpyDTypeOf<T>::value: a mismatch is a
  // programming error (reading float32 data as doubles would return garbage), so it aborts
  // with a message naming both types. Check `dtype`, or use ToDoubles / AsType, first.
  template <typename T>
  absl::Span<const T> View() const;
  template <typename T>
  absl::Span<T> MutableView();

  // All elements converted to double / float (whatever the dtype), in row-major order.
  std::vector<double> ToDoubles() const;
  std::vector<float> ToFloats() const;

  // A copy converted to `target` (a plain copy when it is already `target`). Float-to-int
  // conversion is InvalidArgument (it would silently truncate); int64 to float is allowed and
  // rounds to nearest, as NumPy's astype does.
  absl::StatusOr<NpyArray> AsType(NpyDType target) const;
};

// Compares shape, dtype and bytes exactly.
bool operator==(const NpyArray& a, const NpyArray& b);
inline bool operator!=(const NpyArray& a, const NpyArray& b) { return !(a == b); }

// A pull-based byte stream. Readers call Read with large buffers (whole arrays or 1 MiB
// chunks), so the virtual dispatch costs nothing measurable.
class NpyInputStream {
 public:
  virtual ~NpyInputStream() = default;
  // Reads up to `n` bytes into `dst`; returns the number read, 0 only at the end of the stream.
  virtual absl::StatusOr<size_t> Read(char* dst, size_t n) = 0;
  // The total number of bytes the stream yields, when known in advance. DecodeNpy then rejects
  // a truncated or over-long stream before allocating the array, so a corrupt header cannot
  // make it allocate more than the stream holds.
  virtual std::optional<uint64_t> size_hint() const { return std::nullopt; }
};

// The parsed header of a .npy stream.
struct NpyHeader {
  int major_version = 1;
  int minor_version = 0;
  NpyDType dtype = NpyDType::kFloat64;
  bool big_endian = false;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t num_elements = 1;
  // Bytes from the start of the stream to the first data byte.
  size_t data_offset = 0;
};

// Parses the header dictionary text (e.g. "{'descr': '<f8', 'fortran_order': False,
// 'shape': (3, 4), }"), filling dtype, big_endian, fortran_order, shape and num_elements.
// `source` names the file (and member) in error messages.
absl::Status ParseNpyHeaderDict(absl::string_view dict, absl::string_view source,
                                NpyHeader* header);

// Reads a complete .npy stream: magic, header, data. Fortran-order data is transposed to C
// order and big-endian data byte-swapped, so the result always satisfies NpyArray's invariant.
// InvalidArgument (prefixed by `source`) for a malformed header, an unsupported dtype, a
// truncated stream or trailing bytes after the data.
absl::StatusOr<NpyArray> DecodeNpy(NpyInputStream& in, absl::string_view source);
absl::StatusOr<NpyArray> DecodeNpy(absl::string_view bytes, absl::string_view source);

// The magic string, version and header dictionary of `array` as written by numpy.save: version
// 1.0 (2.0 only when the dictionary does not fit 1.0's 16-bit length), C order, padded with
// spaces and a newline so the data starts at a multiple of 64 bytes. Requires the invariant.
std::string EncodeNpyHeader(const NpyArray& array);
// Header followed by the data bytes.
std::string EncodeNpy(const NpyArray& array);

// Reads a .npy file. NotFound when it does not exist, other errno-derived codes for I/O
// errors; the message names the path.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);
// Writes `array` as a .npy file (replacing an existing one). InvalidArgument when the array
// breaks the invariant; the message names the path.
absl::Status WriteNpy(const std::string& path, const NpyArray& array);

// ---------------------------------------------------------------------------------------
// Template definitions.

template <typename T>
absl::StatusOr<NpyArray> NpyArray::FromValues(std::vector<int64_t> shape,
                                              absl::Span<const T> values) {
  absl::StatusOr<int64_t> n = NumElementsOf(shape);
  if (!n.ok()) return n.status();
  if (static_cast<uint64_t>(*n) != values.size()) {
    return absl::InvalidArgumentError("shape " + ShapeToString(shape) + " holds " +
                                      std::to_string(*n) + " elements but " +
                                      std::to_string(values.size()) + " values were given");
  }
  NpyArray array;
  array.shape = std::move(shape);
  array.dtype = NpyDTypeOf<T>::value;
  const char* begin = reinterpret_cast<const char*>(values.data());
  array.bytes.assign(begin, begin + values.size() * sizeof(T));
  return array;
}

namespace npy_internal {
// Prints "NpyArray::View: array holds <held>, not <wanted>" and aborts.
[[noreturn]] void DTypeMismatch(NpyDType held, NpyDType wanted);
}  // namespace npy_internal

template <typename T>
absl::Span<const T> NpyArray::View() const {
  if (dtype != NpyDTypeOf<T>::value) npy_internal::DTypeMismatch(dtype, NpyDTypeOf<T>::value);
  // operator new aligns the vector's storage for any fundamental type, so this is aligned.
  return absl::Span<const T>(reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T));
}

template <typename T>
absl::Span<T> NpyArray::MutableView() {
  if (dtype != NpyDTypeOf<T>::value) npy_internal::DTypeMismatch(dtype, NpyDTypeOf<T>::value);
  return absl::Span<T>(reinterpret_cast<T*>(bytes.data()), bytes.size() / sizeof(T));
}

}  // namespace dino

#endif  // DINO_MODELS_IO_NPY_H_
