#include "client/tensor_codec.h"

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace dino::client {

absl::StatusOr<v1::DType> ToProtoDType(NpyDType dtype) {
  switch (dtype) {
    case NpyDType::kFloat32:
      return v1::FP32;
    case NpyDType::kFloat64:
      return v1::FP64;
    case NpyDType::kInt32:
    case NpyDType::kInt64:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", NpyDTypeName(dtype),
                   " cannot be sent; tensors are float32 (FP32) or float64 (FP64)"));
}

absl::StatusOr<NpyDType> FromProtoDType(v1::DType dtype) {
  switch (dtype) {
    case v1::FP32:
      return NpyDType::kFloat32;
    case v1::FP64:
      return NpyDType::kFloat64;
    case v1::DTYPE_UNSPECIFIED:
      return absl::InvalidArgumentError("dtype is DTYPE_UNSPECIFIED");
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype value ", static_cast<int>(dtype)));
}

absl::string_view ProtoDTypeName(v1::DType dtype) {
  switch (dtype) {
    case v1::FP32:
      return "fp32";
    case v1::FP64:
      return "fp64";
    default:
      return "unspecified";
  }
}

absl::Status EncodeTensor(const NpyArray& array, v1::Tensor* tensor, absl::string_view field) {
  absl::StatusOr<v1::DType> dtype = ToProtoDType(array.dtype);
  if (!dtype.ok())
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", dtype.status().message()));
  if (absl::Status s = array.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", s.message()));
  }
  tensor->Clear();
  tensor->mutable_shape()->Assign(array.shape.begin(), array.shape.end());
  tensor->set_dtype(*dtype);
  tensor->set_data(array.bytes.data(), array.bytes.size());
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> DecodeTensor(const v1::Tensor& tensor, absl::string_view field) {
  absl::StatusOr<NpyDType> dtype = FromProtoDType(tensor.dtype());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", dtype.status().message()));
  }
  std::vector<int64_t> shape(tensor.shape().begin(), tensor.shape().end());
  absl::StatusOr<int64_t> n = NumElementsOf(shape);
  if (!n.ok()) return absl::InvalidArgumentError(absl::StrCat(field, ": ", n.status().message()));
  const uint64_t elsize = NpyDTypeSize(*dtype);
  // The server's rule (server/frontend/tensor_codec.cc), so that both ends accept the same
  // tensors: every partial product of the extents must stay within 2^64 / 8 elements, even
  // when a later extent is 0 (fuzz/tensor_codec_fuzzer checks that they agree).
  uint64_t partial = 1;
  for (int64_t extent : shape) {
    if (extent != 0 &&
        partial > std::numeric_limits<uint64_t>::max() / 8 / static_cast<uint64_t>(extent)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": shape ", ShapeToString(shape), " is too large"));
    }
    partial *= static_cast<uint64_t>(extent);
  }
  const uint64_t count = static_cast<uint64_t>(*n);
  if (count > std::numeric_limits<uint64_t>::max() / elsize ||
      count * elsize != tensor.data().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": data holds ", tensor.data().size(), " bytes but shape ", ShapeToString(shape),
        " of ", ProtoDTypeName(tensor.dtype()), " needs ", count, " x ", elsize, " bytes"));
  }
  NpyArray array;
  array.shape = std::move(shape);
  array.dtype = *dtype;
  array.bytes.assign(tensor.data().begin(), tensor.data().end());
  return array;
}

}  // namespace dino::client
