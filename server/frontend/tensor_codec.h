// Translation between the wire Tensor message and torch::Tensor. Part of the protocol
// layer: every error names the request field it is about.
#pragma once

#include <torch/script.h>

#include "absl/status/statusor.h"
#include "dino/v1/surrogate.pb.h"

namespace dino::frontend {

// A view of the message's bytes as a tensor, without copying when the bytes are suitably
// aligned; it is valid only while `message` lives and must not be written to.
// A field that is not set gives INVALID_ARGUMENT "<field> is required" when `required`,
// else an undefined tensor.
absl::StatusOr<torch::Tensor> DecodeTensor(const dino::v1::Tensor& message, bool present,
                                           const char* field, bool required = true);

// Writes `tensor` converted to `dtype` (DTYPE_UNSPECIFIED: the tensor's own dtype).
void EncodeTensor(const torch::Tensor& tensor, dino::v1::DType dtype, dino::v1::Tensor* out);

// The wire dtype of a torch dtype (FP32 or FP64).
dino::v1::DType WireDtype(torch::Dtype dtype);

// Checks a request's output_dtype field.
absl::Status CheckOutputDtype(dino::v1::DType dtype, const char* field = "output_dtype");

}  // namespace dino::frontend
