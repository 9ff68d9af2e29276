// Conversion between NpyArray and the wire Tensor message (dino.v1.Tensor).
//
// Both hold dense row-major little-endian bytes, so a conversion is one memcpy plus the checks
// the protocol requires: FP32/FP64 only, non-negative dimensions and
// len(data) == prod(shape) * sizeof(dtype).
#ifndef DINO_CLIENT_TENSOR_CODEC_H_
#define DINO_CLIENT_TENSOR_CODEC_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dino/v1/surrogate.pb.h"
#include "models/io/npy.h"

namespace dino::client {

// kFloat32 -> FP32, kFloat64 -> FP64; InvalidArgument for the integer dtypes, which the
// protocol does not carry.
absl::StatusOr<v1::DType> ToProtoDType(NpyDType dtype);
// FP32 -> kFloat32, FP64 -> kFloat64; InvalidArgument for DTYPE_UNSPECIFIED or an unknown
// value.
absl::StatusOr<NpyDType> FromProtoDType(v1::DType dtype);
// "fp32" / "fp64" / "unspecified"; the spelling the CLI uses.
absl::string_view ProtoDTypeName(v1::DType dtype);

// Fills `tensor` from `array`. InvalidArgument, prefixed by `field` (e.g. "m"), when the
// array is not FP32/FP64 or breaks NpyArray's size invariant.
absl::Status EncodeTensor(const NpyArray& array, v1::Tensor* tensor, absl::string_view field);

// The array held by `tensor`. InvalidArgument, prefixed by `field`, for an unspecified dtype,
// a negative dimension or a byte count other than prod(shape) * sizeof(dtype).
absl::StatusOr<NpyArray> DecodeTensor(const v1::Tensor& tensor, absl::string_view field);

}  // namespace dino::client

#endif  // DINO_CLIENT_TENSOR_CODEC_H_
