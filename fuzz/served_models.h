// What the fuzz targets that reach the serving core share: a scratch model repository with
// small models, its ModelManager and RequestScheduler, built once per fuzzer process, and a
// blocking Submit. Tiny dimensions keep one fuzz input's computation at microseconds.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "fuzz/require.h"
#include "server/core/model_manager.h"
#include "server/core/request_scheduler.h"
#include "tests/common/scratch_dir.h"

namespace dino::fuzz {

// The models' dimensions; the seed corpora are written for them (fuzz/make_seeds.py).
inline constexpr int64_t kInputDim = 4;   // d_M
inline constexpr int64_t kOutputDim = 3;  // d_Q
inline constexpr int64_t kInputRank = 2;  // r_M
inline constexpr int64_t kOutputRank = 2;

// "dipnet": a reduced-basis model in float64, versions 1 and 2, label "stable" → 1.
// "generic": a dense float32 model without bases.
struct ServedModels {
  testing::ScopedTempDir repository{"dino_fuzz_"};
  std::unique_ptr<serving::ModelManager> manager;
  std::unique_ptr<serving::RequestScheduler> scheduler;
};

// Built on first use; lives until the process exits.
ServedModels& Served();

// Submits a query the way every frontend does and waits for the answer.
absl::StatusOr<serving::Answer> SubmitAndWait(serving::Method method,
                                              const serving::ModelTarget& target,
                                              absl::StatusOr<serving::Query> query);

}  // namespace dino::fuzz
