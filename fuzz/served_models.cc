#include "fuzz/served_models.h"

#include <torch/script.h>

#include <fstream>
#include <future>
#include <utility>

#include "tests/common/test_models.h"

namespace dino::fuzz {

ServedModels& Served() {
  static ServedModels* served = [] {
    auto* s = new ServedModels;
    testing::SmallDims dims;
    dims.d_m = kInputDim;
    dims.d_q = kOutputDim;
    dims.r_m = kInputRank;
    dims.r_q = kOutputRank;
    const std::string& root = s->repository.path();
    const std::string dipnet = testing::SmallMetadata("dipnet", kInputDim);
    testing::WriteModel(testing::SmallDipnet(dims, torch::kFloat64, 1), dipnet, root, "dipnet", 1);
    testing::WriteModel(testing::SmallDipnet(dims, torch::kFloat64, 2), dipnet, root, "dipnet", 2);
    std::ofstream(s->repository / "dipnet/config.json")
        << R"({"version_policy": {"all": {}}, "labels": {"stable": 1}})";
    testing::WriteModel(testing::SmallGeneric(dims, torch::kFloat32, 3),
                        testing::SmallMetadata("generic", kInputDim), root, "generic", 1);
    serving::ModelManager::Options options;
    options.repository = root;
    // Small limits: the fuzzer explores the checks, not the machine's memory.
    options.limits.max_batch_size = 64;
    options.limits.max_jacobian_elements = 4096;
    s->manager = std::make_unique<serving::ModelManager>(options);
    auto report = s->manager->SyncRepository();
    Require(report.ok() && report->loaded.size() == 3, "the fuzz models did not load");
    serving::RequestScheduler::Options scheduler_options;
    scheduler_options.run_inline_when_idle = true;
    s->scheduler = std::make_unique<serving::RequestScheduler>(*s->manager, scheduler_options);
    return s;
  }();
  return *served;
}

absl::StatusOr<serving::Answer> SubmitAndWait(serving::Method method,
                                              const serving::ModelTarget& target,
                                              absl::StatusOr<serving::Query> query) {
  std::promise<absl::StatusOr<serving::Answer>> answered;
  Served().scheduler->Submit(
      method, target, std::move(query), serving::CallControl{},
      [&answered](const absl::Status& status, int64_t /*version*/, serving::Answer answer) {
        if (status.ok()) {
          answered.set_value(std::move(answer));
        } else {
          answered.set_value(status);
        }
      });
  return answered.get_future().get();
}

}  // namespace dino::fuzz

// Builds the served models before the first input: loading them (with each DIPNet's
// self-check through TorchScript, slow under ASan) took longer than libFuzzer's per-input
// timeout (10 s) on a loaded machine, and was reported as a timeout of the first input.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  dino::fuzz::Served();
  return 0;
}
