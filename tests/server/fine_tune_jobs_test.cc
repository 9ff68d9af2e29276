// FineTuneJobManager on a ModelManager, without gRPC: what an ended job keeps.
// (The jobs' training, gate and publish run end to end in fine_tune_e2e_test.py.)
#include "server/training/fine_tune_jobs.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "tests/common/scratch_dir.h"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using dino::testing::SmallDims;

void WriteVersion(const std::string& root, int64_t version) {
  dino::testing::WriteModel(dino::testing::SmallDipnet(SmallDims{}, torch::kFloat64, version),
                            dino::testing::SmallMetadata("dipnet", SmallDims{}.d_m), root, "m",
                            version);
}

// The soak (scripts/soak.py) found RSS growing by about one model per publish: every ended
// job held its base version's ServableHandle for as long as it was listed (up to
// finished_jobs_kept = 100 jobs), so unloaded versions stayed in memory.
TEST(FineTuneJobsTest, AnEndedJobDoesNotKeepItsUnloadedBaseVersionInMemory) {
  const std::string root = dino::testing::MakeTempDir("dino-fine-tune-jobs-");
  WriteVersion(root, 1);
  ModelManager::Options model_options;
  model_options.repository = root;
  ModelManager models(model_options);
  ASSERT_TRUE(models.SyncRepository().ok());
  std::weak_ptr<const SurrogateModel> base_model;
  {
    auto handle = models.Get("m", 1);
    ASSERT_TRUE(handle.ok()) << handle.status();
    base_model = handle->model;
  }
  FineTuneJobManager::Options job_options;
  job_options.repository = root;
  FineTuneJobManager jobs(models, job_options);
  FineTuneSpec spec;
  spec.model = "m";
  {
    auto job = jobs.Create(spec);
    ASSERT_TRUE(job.ok()) << job.status();
    (*job)->AbortUpload("the client went away");
  }
  ASSERT_EQ(jobs.List().size(), 1u);
  EXPECT_EQ(jobs.List()[0].state, JobState::kCancelled);
  EXPECT_EQ(jobs.List()[0].base_version, 1);

  // Version 2 replaces version 1 under the default policy (latest 1).
  WriteVersion(root, 2);
  ASSERT_TRUE(models.SyncRepository().ok());
  ASSERT_EQ(models.Get("m", 0)->version, 2);
  EXPECT_EQ(jobs.List().size(), 1u);  // The ended job is still listed,
  EXPECT_TRUE(base_model.expired());  // but version 1's model is gone.
  jobs.Shutdown();
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace dino::serving
