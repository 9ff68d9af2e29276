// Training data and bases from a data directory (the layout `dino-train generate` and
// hIPPYflow write: mq_data.npz, Jsvd_data.npz, J_data.npz, bases.npz) as the in-memory
// tensors the trainer and the metrics take.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "models/pipeline/compute_bases.h"
#include "models/training/dataset.h"

namespace dino::pipeline {

struct DataSelection {
  std::string dir;
  int64_t first = 0;   // First sample used.
  int64_t count = -1;  // Samples used from `first`; -1: all the rest.
  JacobianFiles jacobian = JacobianFiles::kAuto;
  torch::Dtype dtype = torch::kFloat64;
};

// Reads the selected samples. Errors name the file, the array and what is wrong.
absl::StatusOr<training::Dataset> LoadDataset(const DataSelection& selection);

// Writes `data` as a data directory that LoadDataset reads back: mq_data.npz and, by the
// Jacobian form, J_data.npz or Jsvd_data.npz (each file atomically; the directory is
// created). The reduced form has no file in this layout: INVALID_ARGUMENT.
absl::Status SaveDataset(const training::Dataset& data, const std::string& dir);

struct BasesFile {
  torch::Tensor input_basis;   // [d_M, r_M]
  torch::Tensor output_basis;  // [d_Q, r_Q]
  torch::Tensor output_shift;  // [d_Q]
};

// Reads input_basis, output_basis and output_shift from a bases.npz, keeping the leading
// `input_rank` / `output_rank` columns (0: all).
absl::StatusOr<BasesFile> LoadBases(const std::string& path, int64_t input_rank,
                                    int64_t output_rank);

}  // namespace dino::pipeline
