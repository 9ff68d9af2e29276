// The model manager against a repository that changes under it: versions appear and vanish,
// defaults are pinned, versions are unloaded on request, and handles outlive unloading.
#include "server/core/model_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using dino::testing::SmallDims;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class ModelManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dino::testing::MakeTempDir("dino-manager-");
    Write("dipnet", 1, 1);
    ModelManager::Options options;
    options.repository = root_;
    manager_ = std::make_unique<ModelManager>(options);
  }
  void TearDown() override {
    manager_.reset();
    std::filesystem::remove_all(root_);
  }
  void Write(const std::string& name, int64_t version, uint64_t seed) {
    dino::testing::WriteModel(dino::testing::SmallDipnet(SmallDims{}, torch::kFloat64, seed),
                              dino::testing::SmallMetadata("dipnet", SmallDims{}.d_m), root_, name,
                              version);
  }
  int64_t DefaultVersion(const std::string& name) {
    auto handle = manager_->Get(name, 0);
    return handle.ok() ? handle->version : -1;
  }

  std::string root_;
  std::unique_ptr<ModelManager> manager_;
};

TEST_F(ModelManagerTest, PicksUpAddedAndRemovedVersions) {
  auto first = manager_->SyncRepository();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->loaded, ElementsAre("dipnet/1"));
  EXPECT_EQ(DefaultVersion("dipnet"), 1);

  auto unchanged = manager_->SyncRepository();
  EXPECT_FALSE(unchanged->changed());

  Write("dipnet", 2, 2);
  EXPECT_THAT(manager_->SyncRepository()->loaded, ElementsAre("dipnet/2"));
  EXPECT_EQ(DefaultVersion("dipnet"), 2);

  // A request holding version 1 keeps it while the version is removed.
  auto held = manager_->Get("dipnet", 1);
  ASSERT_TRUE(held.ok());
  std::filesystem::remove_all(root_ + "/dipnet/1");
  EXPECT_THAT(manager_->SyncRepository()->unloaded, ElementsAre("dipnet/1"));
  EXPECT_EQ(manager_->Get("dipnet", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(held->model->Evaluate(torch::zeros({1, SmallDims{}.d_m}, torch::kFloat64)).ok());
  EXPECT_EQ(manager_->loaded_versions(), 1u);
}

TEST_F(ModelManagerTest, PinnedDefaultAndUnloadOnRequest) {
  Write("dipnet", 2, 2);
  ASSERT_TRUE(manager_->SyncRepository().ok());
  EXPECT_EQ(DefaultVersion("dipnet"), 2);
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 1).ok());
  EXPECT_EQ(DefaultVersion("dipnet"), 1);
  EXPECT_EQ(manager_->List()[0].default_version, 1);
  EXPECT_EQ(manager_->SetDefaultVersion("dipnet", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->SetDefaultVersion("nope", 1).code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(manager_->Unload("dipnet", 1).ok());
  EXPECT_EQ(DefaultVersion("dipnet"), 2);  // The pin went with the version.
  EXPECT_FALSE(manager_->SyncRepository()->changed()) << "an unloaded version stays unloaded";
  EXPECT_EQ(manager_->Unload("dipnet", 1).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 0).ok());
}

TEST_F(ModelManagerTest, BrokenFileIsRetriedOnlyWhenItChanges) {
  std::filesystem::create_directories(root_ + "/dipnet/3");
  std::ofstream(root_ + "/dipnet/3/model.pt") << "half-copied";
  auto report = manager_->SyncRepository();
  ASSERT_EQ(report->failed.size(), 1u);
  EXPECT_THAT(report->failed[0], HasSubstr("dipnet/3"));
  EXPECT_TRUE(manager_->SyncRepository()->failed.empty()) << "not retried while unchanged";
  Write("dipnet", 3, 3);  // The copy completes.
  EXPECT_THAT(manager_->SyncRepository()->loaded, ElementsAre("dipnet/3"));
  EXPECT_EQ(DefaultVersion("dipnet"), 3);
}

TEST_F(ModelManagerTest, PollingFindsNewVersions) {
  ASSERT_TRUE(manager_->SyncRepository().ok());
  std::atomic<int> changes{0};
  manager_->StartPolling(0.05, [&](const LoadReport&) { ++changes; });
  Write("other", 1, 4);
  for (int i = 0; i < 200 && DefaultVersion("other") != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  manager_->StopPolling();
  EXPECT_EQ(DefaultVersion("other"), 1);
  EXPECT_GE(changes.load(), 1);
}

TEST(ModelRepositoryTest, MissingRepositoryIsNotFound) {
  ModelManager::Options options;
  options.repository = "/nonexistent/dino-repository";
  ModelManager manager(options);
  EXPECT_EQ(manager.SyncRepository().status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace dino::serving
