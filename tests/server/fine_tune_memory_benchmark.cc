// What an ended fine-tune job leaves in memory (issue 12's soak): runs fine-tune jobs one
// after another on one ModelManager + FineTuneJobManager, each publishing a new version of a
// small DIPNet (d_M = 2000), and after each job prints the heap in use (mallinfo2), the
// resident set after malloc_trim, and the resident pages of thread-stack-sized anonymous
// mappings. The summary gives the growth per job from the second to the last quarter, before
// the job list's cap (FineTuneJobManager::Options::finished_jobs_kept, set to --jobs here)
// starts forgetting jobs. What it found: each listed ended job held 17 KB of heap (its copy
// of the base's metadata) and 128 KB of stack (its exited, unjoined thread), and the RSS after
// trimming grew about 150 KiB per job.
//
//   cmake --build build --target dino_fine_tune_memory_benchmark
//   build/bin/dino_fine_tune_memory_benchmark [jobs=80] [samples=512]
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "models/architectures/model_file.h"
#include "server/core/model_manager.h"
#include "server/training/fine_tune_jobs.h"
#include "tests/common/fine_tune_job_waits.h"
#include "tests/common/test_models.h"
#include "tests/common/thread_stacks.h"

namespace dino {
namespace {

struct Memory {
  double heap_in_use_mib = 0;  // malloc's bytes in use, all arenas, plus its mmapped blocks.
  double rss_mib = 0;          // After malloc_trim(0).
  double stacks_mib = 0;       // Resident pages of anonymous mappings of a thread stack's size.
};

Memory Measure() {
  malloc_trim(0);
  Memory memory;
  const struct mallinfo2 info = mallinfo2();
  memory.heap_in_use_mib = static_cast<double>(info.uordblks + info.hblkhd) / (1 << 20);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool stack_sized = false;
  while (std::getline(smaps, line)) {
    if (const std::optional<bool> header = testing::IsThreadStackSizedMapping(line)) {
      stack_sized = *header;  // The Rss: line that follows is this mapping's.
    } else if (line.rfind("Rss:", 0) == 0) {
      const double kib = std::atof(line.c_str() + 4);
      memory.rss_mib += kib / 1024;
      if (stack_sized) memory.stacks_mib += kib / 1024;
    }
  }
  return memory;
}

int Main(int argc, char** argv) {
  const int jobs = argc > 1 ? std::atoi(argv[1]) : 80;
  const int64_t samples = argc > 2 ? std::atoll(argv[2]) : 512;
  if (jobs < 8 || samples < 64) {
    std::fprintf(stderr, "usage: %s [jobs >= 8] [samples >= 64]\n", argv[0]);
    return 2;
  }
  torch::set_num_threads(1);
  const testing::SmallDims dims{2000, 50, 50, 20};
  const std::filesystem::path root =
      std::filesystem::temp_directory_path() / ("fine_tune_memory." + std::to_string(getpid()));
  testing::WriteModel(testing::SmallDipnet(dims, torch::kFloat64, 1),
                      testing::SmallMetadata("dipnet", dims.d_m), root.string(), "m", 1);
  torch::jit::Module reference = models::LoadModelFile((root / "m/1/model.pt").string()).module;

  serving::ModelManager::Options model_options;
  model_options.repository = root.string();
  serving::ModelManager models(model_options);
  models.SyncRepository().IgnoreError();
  serving::FineTuneJobManager::Options job_options;
  job_options.repository = root.string();
  job_options.training_nice = 0;
  job_options.finished_jobs_kept = jobs;
  serving::FineTuneJobManager manager(models, job_options);

  std::vector<Memory> after;
  for (int i = 0; i < jobs; ++i) {
    serving::FineTuneSpec spec;
    spec.model = "m";
    spec.trainer.loss.jacobian_loss = training::JacobianLoss::kNone;
    spec.trainer.loss.h1_weight = 0.0;
    spec.trainer.epochs = 2;
    spec.trainer.batch_size = 32;
    spec.max_regression = 1.0;  // Publish every job: the publish is part of what is measured.
    auto job = manager.Create(spec);
    if (!job.ok()) {
      std::fprintf(stderr, "job %d: %s\n", i, job.status().ToString().c_str());
      return 1;
    }
    torch::manual_seed(i);
    serving::SampleBatch batch;
    batch.data.m = torch::randn({samples, dims.d_m}, torch::kFloat64);
    batch.data.q = reference.forward({batch.data.m}).toTensor().detach();
    absl::Status status = (*job)->AddBatch(std::move(batch));
    if (status.ok()) status = (*job)->FinishUpload();
    if (!status.ok()) {
      std::fprintf(stderr, "job %d: %s\n", i, status.ToString().c_str());
      return 1;
    }
    const std::string id = (*job)->id();
    job->reset();  // The benchmark holds no reference to the job: only the manager lists it.
    auto ended = testing::WaitUntilEnded(manager, id, 60);
    if (!ended.ok() || ended->state != serving::JobState::kSucceeded) {
      std::fprintf(stderr, "job %d: %s\n", i,
                   ended.ok() ? ended->message.c_str() : ended.status().ToString().c_str());
      return 1;
    }
    after.push_back(Measure());
    std::printf("job %3d  heap in use %7.2f MiB  rss %7.1f MiB  stacks %6.2f MiB\n", i + 1,
                after.back().heap_in_use_mib, after.back().rss_mib, after.back().stacks_mib);
    std::fflush(stdout);
  }
  // Single readings scatter by ~10 MiB (a model version being swapped, a freed block not yet
  // trimmed), so the growth compares medians: of jobs N/4..N/2 and of the last quarter.
  const int quarter = jobs / 4;
  auto median = [&](int begin, int end, double Memory::*field) {
    std::vector<double> values;
    for (int i = begin; i < end; ++i) values.push_back(after[i].*field);
    std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
    return values[values.size() / 2];
  };
  const double jobs_apart =
      (jobs - quarter / 2.0) - 1.5 * quarter;  // Between the windows' centres.
  const double per_job_kib = 1024.0 / jobs_apart;
  auto growth = [&](double Memory::*field) {
    return (median(jobs - quarter, jobs, field) - median(quarter, 2 * quarter, field)) *
           per_job_kib;
  };
  std::printf(
      "growth per job (median of the last quarter against jobs %d..%d): heap in use %.1f KiB, "
      "rss %.1f KiB, stacks %.1f KiB\n",
      quarter + 1, 2 * quarter, growth(&Memory::heap_in_use_mib), growth(&Memory::rss_mib),
      growth(&Memory::stacks_mib));
  manager.Shutdown();
  std::filesystem::remove_all(root);
  return 0;
}

}  // namespace
}  // namespace dino

int main(int argc, char** argv) { return dino::Main(argc, argv); }
