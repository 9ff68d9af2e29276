// Small models for the tests, built with the project's architectures, and a scratch model
// repository on disk. Tests make their own data; nothing here is shipped.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <string>

#include "tests/common/scratch_dir.h"

namespace dino::testing {

struct SmallDims {
  int64_t d_m = 40;
  int64_t d_q = 12;
  int64_t r_m = 8;
  int64_t r_q = 6;
};

// A DIPNet with random orthonormal bases, a non-zero output shift and random weights scaled
// up so that the network is visibly nonlinear (finite differences then test something).
torch::jit::Module SmallDipnet(const SmallDims& dims, torch::Dtype dtype, uint64_t seed);
// A generic dense network with two softplus hidden layers.
torch::jit::Module SmallGeneric(const SmallDims& dims, torch::Dtype dtype, uint64_t seed);
// A generic model whose forward spins `iterations` times over its input: a slow call for
// deadline, cancellation and shutdown tests.
torch::jit::Module SlowModel(int64_t d_m, int64_t d_q, int64_t iterations);

// Metadata a model file carries (architecture, dims, untrained provenance).
std::string SmallMetadata(const std::string& architecture, int64_t d_m);

// Writes `module` as <root>/<name>/<version>/model.pt with the given metadata JSON.
void WriteModel(const torch::jit::Module& module, const std::string& metadata_json,
                const std::string& root, const std::string& name, int64_t version);

}  // namespace dino::testing
