// The model manager against a repository that changes under it: versions appear and vanish,
// each model's config.json decides which versions stay loaded (version policies, pins,
// labels, unloads), the config survives restarts and broken edits, loads never block
// requests or admin calls, and the observer sees every transition. Also config.json parsing.
#include "server/core/model_manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <numeric>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/model_config.h"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using dino::testing::SmallDims;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// What an observer saw: "name/version state" lines and the count each event carried.
class RecordingObserver {
 public:
  ServableObserver Callback() {
    return [this](const ServableEvent& event) {
      std::lock_guard<std::mutex> lock(mutex_);
      lines_.push_back(
          absl::StrCat(event.name, "/", event.version, " ", ServableStateName(event.state)));
      counts_.push_back(event.loaded_versions);
    };
  }
  std::vector<std::string> TakeLines() {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(lines_, {});
  }
  bool Saw(const std::string& line) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::find(lines_.begin(), lines_.end(), line) != lines_.end();
  }
  size_t LastCount() {
    std::lock_guard<std::mutex> lock(mutex_);
    return counts_.empty() ? 0 : counts_.back();
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
  std::vector<size_t> counts_;
};

class ModelManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dino::testing::MakeTempDir("dino-manager-");
    Write("dipnet", 1, 1);
    manager_ = NewManager();
  }
  void TearDown() override {
    manager_.reset();
    std::filesystem::remove_all(root_);
  }
  std::unique_ptr<ModelManager> NewManager() {
    ModelManager::Options options;
    options.repository = root_;
    options.observer = observer_.Callback();
    return std::make_unique<ModelManager>(options);
  }
  void Write(const std::string& name, int64_t version, uint64_t seed) {
    dino::testing::WriteModel(dino::testing::SmallDipnet(SmallDims{}, torch::kFloat64, seed),
                              dino::testing::SmallMetadata("dipnet", SmallDims{}.d_m), root_, name,
                              version);
  }
  // As an operator or another replica would: straight into the file.
  void WriteConfig(const std::string& name, const std::string& text) {
    std::filesystem::create_directories(root_ + "/" + name);
    std::ofstream(ModelConfigPath(root_, name)) << text;
  }
  ModelConfig ConfigOnDisk(const std::string& name) {
    auto config = ReadModelConfig(ModelConfigPath(root_, name));
    EXPECT_TRUE(config.ok()) << config.status();
    return config.ok() ? *config : ModelConfig();
  }
  void Sync() {
    auto report = manager_->SyncRepository();
    ASSERT_TRUE(report.ok()) << report.status();
  }
  std::vector<int64_t> Loaded(const std::string& name) {
    for (const ModelListing& listing : manager_->List()) {
      if (listing.name == name) return listing.versions;
    }
    return {};
  }
  int64_t DefaultVersion(const std::string& name) {
    auto handle = manager_->Get(name, 0);
    return handle.ok() ? handle->version : -1;
  }
  size_t ListedVersions() {
    size_t count = 0;
    for (const ModelListing& listing : manager_->List()) count += listing.versions.size();
    return count;
  }

  std::string root_;
  RecordingObserver observer_;
  std::unique_ptr<ModelManager> manager_;
};

// ---- The default policy: the latest version --------------------------------------------------

TEST_F(ModelManagerTest, LatestOneSwapsToEachNewVersionAndHandlesOutliveIt) {
  auto first = manager_->SyncRepository();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->loaded, ElementsAre("dipnet/1"));
  EXPECT_EQ(DefaultVersion("dipnet"), 1);
  EXPECT_FALSE(manager_->SyncRepository()->changed());

  auto held = manager_->Get("dipnet", 1);  // A request running on version 1.
  ASSERT_TRUE(held.ok());
  Write("dipnet", 2, 2);
  auto second = manager_->SyncRepository();
  EXPECT_THAT(second->loaded, ElementsAre("dipnet/2"));
  EXPECT_THAT(second->unloaded, ElementsAre("dipnet/1"));
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2));
  EXPECT_EQ(manager_->Get("dipnet", 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(held->model->Evaluate(torch::zeros({1, SmallDims{}.d_m}, torch::kFloat64)).ok());

  // The newest file goes away: the one before it is the latest again.
  std::filesystem::remove_all(root_ + "/dipnet/2");
  auto third = manager_->SyncRepository();
  EXPECT_THAT(third->loaded, ElementsAre("dipnet/1"));
  EXPECT_THAT(third->unloaded, ElementsAre("dipnet/2"));
  EXPECT_EQ(manager_->loaded_versions(), 1u);
}

TEST_F(ModelManagerTest, LatestTwoAllAndSpecificPolicies) {
  for (int v = 2; v <= 4; ++v) Write("dipnet", v, v);
  WriteConfig("dipnet", R"({"version_policy": {"latest": 2}})");
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3, 4));
  EXPECT_EQ(DefaultVersion("dipnet"), 4);

  WriteConfig("dipnet", R"({"version_policy": {"all": {}}})");
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2, 3, 4));

  WriteConfig("dipnet", R"({"version_policy": {"specific": [1, 3, 9]}})");
  auto report = manager_->SyncRepository();
  EXPECT_THAT(report->unloaded, UnorderedElementsAre("dipnet/2", "dipnet/4"));
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 3));
  EXPECT_EQ(DefaultVersion("dipnet"), 3);
  Write("dipnet", 5, 5);  // Not listed: never loaded.
  EXPECT_FALSE(manager_->SyncRepository()->changed());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 3));
  EXPECT_EQ(manager_->GetVersionStatus("dipnet", 5).state, VersionStatus::State::kNotKept);
  EXPECT_THAT(manager_->GetVersionStatus("dipnet", 5).message, HasSubstr("specific [1, 3, 9]"));
}

TEST_F(ModelManagerTest, BrokenNewestVersionLeavesTheOneBeforeServing) {
  Sync();
  std::filesystem::create_directories(root_ + "/dipnet/3");
  std::ofstream(root_ + "/dipnet/3/model.pt") << "half-copied";
  auto report = manager_->SyncRepository();
  ASSERT_EQ(report->failed.size(), 1u);
  EXPECT_THAT(report->failed[0], HasSubstr("dipnet/3"));
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1)) << "latest 1 skips the version that fails";
  EXPECT_EQ(manager_->GetVersionStatus("dipnet", 3).state, VersionStatus::State::kLoadFailed);
  EXPECT_TRUE(manager_->SyncRepository()->failed.empty()) << "not retried while unchanged";
  Write("dipnet", 3, 3);  // The copy completes.
  EXPECT_THAT(manager_->SyncRepository()->loaded, ElementsAre("dipnet/3"));
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3));
}

// ---- Pins and labels -------------------------------------------------------------------------

TEST_F(ModelManagerTest, PinAndLabelKeepOldVersionsLoadedAndArePersisted) {
  Write("dipnet", 2, 2);
  Write("dipnet", 3, 3);
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3));

  // Pinning a version the policy had not kept loads it before the call returns.
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 1).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 3));
  EXPECT_EQ(DefaultVersion("dipnet"), 1);
  EXPECT_EQ(manager_->List()[0].default_version, 1);
  EXPECT_EQ(ConfigOnDisk("dipnet").default_version, 1);

  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 2).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2, 3));
  auto stable = manager_->Get("dipnet", 0, "stable");
  ASSERT_TRUE(stable.ok()) << stable.status();
  EXPECT_EQ(stable->version, 2);
  EXPECT_EQ(ConfigOnDisk("dipnet").labels, (std::map<std::string, int64_t>{{"stable", 2}}));
  EXPECT_FALSE(manager_->SyncRepository()->changed()) << "a sync keeps pins and labels";

  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 0).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2, 3));
  EXPECT_EQ(DefaultVersion("dipnet"), 3);
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 0).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3));
  EXPECT_EQ(ConfigOnDisk("dipnet"), ModelConfig());

  EXPECT_EQ(manager_->SetDefaultVersion("dipnet", 9).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->SetDefaultVersion("nope", 1).code(), absl::StatusCode::kNotFound);
}

TEST_F(ModelManagerTest, TwentyPublishesLeaveExactlyTheKeptVersionsLoaded) {
  Write("dipnet", 2, 2);
  Sync();
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 1).ok());
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "canary", 2).ok());
  for (int64_t v = 3; v <= 22; ++v) {
    Write("dipnet", v, v);
    Sync();
    ASSERT_THAT(Loaded("dipnet"), ElementsAre(1, 2, v)) << "after publishing " << v;
    EXPECT_EQ(DefaultVersion("dipnet"), 1) << "a publish never moves the pin";
    EXPECT_EQ(manager_->loaded_versions(), 3u);
    EXPECT_EQ(observer_.LastCount(), 3u);
  }
  auto newest = manager_->Get("dipnet", 22);
  ASSERT_TRUE(newest.ok()) << "the newest version serves by its number";
}

TEST_F(ModelManagerTest, PinsLabelsAndUnloadsSurviveARestart) {
  for (int v = 2; v <= 4; ++v) Write("dipnet", v, v);
  Sync();
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 2).ok());
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 1).ok());
  ASSERT_TRUE(manager_->Unload("dipnet", 4).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2, 3));

  manager_ = NewManager();  // A restart on the same repository.
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2, 3));
  EXPECT_EQ(DefaultVersion("dipnet"), 2);
  auto stable = manager_->Get("dipnet", 0, "stable");
  ASSERT_TRUE(stable.ok()) << stable.status();
  EXPECT_EQ(stable->version, 1);
}

TEST_F(ModelManagerTest, ConfigEditedOnDiskIsPickedUpBySync) {
  Write("dipnet", 2, 2);
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2));
  WriteConfig("dipnet", R"({"default_version": 1, "labels": {"canary": 2}})");
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2));
  EXPECT_EQ(DefaultVersion("dipnet"), 1);
  EXPECT_EQ(manager_->Get("dipnet", 0, "canary")->version, 2);
}

TEST_F(ModelManagerTest, LabelResolutionErrors) {
  Write("dipnet", 2, 2);
  Sync();
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 2).ok());
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "canary", 1).ok());

  auto both = manager_->Get("dipnet", 2, "stable");
  EXPECT_EQ(both.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(both.status().message(), "model.label and model.version are exclusive");

  auto unknown = manager_->Get("dipnet", 0, "beta");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("no label 'beta' (labels: canary, stable)"));

  auto bad_name = manager_->SetVersionLabel("dipnet", "1st", 2);
  EXPECT_EQ(bad_name.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_name.message(), HasSubstr("'1st' is not a valid label"));
  auto missing_version = manager_->SetVersionLabel("dipnet", "beta", 7);
  EXPECT_EQ(missing_version.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing_version.message(), HasSubstr("has no version 7 in the repository"));
  auto remove_unknown = manager_->SetVersionLabel("dipnet", "beta", 0);
  EXPECT_EQ(remove_unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(remove_unknown.message(), HasSubstr("no label 'beta'"));

  // A version whose file does not load can be neither pinned nor labelled.
  std::filesystem::create_directories(root_ + "/dipnet/3");
  std::ofstream(root_ + "/dipnet/3/model.pt") << "not a model";
  auto broken = manager_->SetVersionLabel("dipnet", "beta", 3);
  EXPECT_EQ(broken.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(broken.message(), HasSubstr("dipnet/3 does not load"));
  EXPECT_EQ(manager_->SetDefaultVersion("dipnet", 3).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ConfigOnDisk("dipnet").labels.count("beta"), 0u) << "nothing half-written";
}

TEST_F(ModelManagerTest, UnloadRefusesPinsAndLabelsAndRollsBackUnderLatestOne) {
  for (int v = 2; v <= 3; ++v) Write("dipnet", v, v);
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3));
  // Unloading the newest of "latest 1" loads the one before it first.
  ASSERT_TRUE(manager_->Unload("dipnet", 3).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2));
  EXPECT_EQ(ConfigOnDisk("dipnet").unloaded_versions, std::set<int64_t>{3});
  EXPECT_FALSE(manager_->SyncRepository()->changed()) << "an unloaded version stays unloaded";
  EXPECT_EQ(manager_->Unload("dipnet", 3).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetVersionStatus("dipnet", 3).state, VersionStatus::State::kNotKept);

  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 2).ok());
  auto pinned = manager_->Unload("dipnet", 2);
  EXPECT_EQ(pinned.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(pinned.message(), HasSubstr("pinned default version"));
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "old", 1).ok());
  auto labelled = manager_->Unload("dipnet", 1);
  EXPECT_EQ(labelled.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(labelled.message(), HasSubstr("label(s) old"));

  // Pinning an unloaded version brings it back.
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 3).ok());
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 3));
  EXPECT_THAT(ConfigOnDisk("dipnet").unloaded_versions, IsEmpty());
}

TEST_F(ModelManagerTest, AVersionNumberPublishedAgainIsNotExcludedByAnOldUnload) {
  for (int v = 2; v <= 3; ++v) Write("dipnet", v, v);
  Sync();
  ASSERT_TRUE(manager_->Unload("dipnet", 3).ok());
  std::filesystem::remove_all(root_ + "/dipnet/3");  // The bad version is deleted...
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 2).ok());  // ...the file rewritten...
  EXPECT_THAT(ConfigOnDisk("dipnet").unloaded_versions, IsEmpty());
  Write("dipnet", 3, 33);  // ...and the number published again.
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2, 3));
}

// ---- A broken config.json --------------------------------------------------------------------

TEST_F(ModelManagerTest, BrokenConfigKeepsTheLastGoodOneAndNamesTheField) {
  for (int v = 2; v <= 3; ++v) Write("dipnet", v, v);
  WriteConfig("dipnet", R"({"version_policy": {"latest": 2}})");
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2, 3));

  WriteConfig("dipnet", R"({"version_policy": {"latest": 1}, "batching": {"max_queue_size": 0}})");
  auto report = manager_->SyncRepository();
  ASSERT_EQ(report->config_errors.size(), 1u);
  EXPECT_EQ(report->config_errors[0],
            ModelConfigPath(root_, "dipnet") + ": batching.max_queue_size must be >= 1, got 0");
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2, 3)) << "the last good config stays in force";
  EXPECT_THAT(manager_->List()[0].config_error, HasSubstr("batching.max_queue_size"));
  EXPECT_THAT(manager_->SyncRepository()->config_errors, IsEmpty()) << "reported once";
  auto refused = manager_->SetDefaultVersion("dipnet", 2);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("batching.max_queue_size"));
  // A version loaded for a refused pin is released again, and the observer hears of it.
  observer_.TakeLines();
  EXPECT_EQ(manager_->SetDefaultVersion("dipnet", 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/1 loading", "dipnet/1 unloaded"));
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(2, 3));

  // At start-up there is no last good config: the defaults apply, and it is reported.
  manager_ = NewManager();
  report = manager_->SyncRepository();
  ASSERT_EQ(report->config_errors.size(), 1u);
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(3));

  WriteConfig("dipnet", R"({"version_policy": {"all": {}}})");  // Fixed.
  Sync();
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2, 3));
  EXPECT_EQ(manager_->List()[0].config_error, "");
}

// ---- Concurrency: loads block no one but their caller ----------------------------------------

TEST_F(ModelManagerTest, GetAndAdminCallsDoNotWaitForALoadInProgress) {
  Sync();
  // Version 2 takes seconds to load: its probe evaluation spins.
  dino::testing::WriteModel(dino::testing::SlowModel(SmallDims{}.d_m, 4, 600000),
                            dino::testing::SmallMetadata("slow", SmallDims{}.d_m), root_, "dipnet",
                            2);
  auto sync = std::async(std::launch::async, [this] { return manager_->SyncRepository(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!observer_.Saw("dipnet/2 loading") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(observer_.Saw("dipnet/2 loading"));

  auto handle = manager_->Get("dipnet", 0);
  ASSERT_TRUE(handle.ok());
  EXPECT_EQ(handle->version, 1);
  EXPECT_FALSE(observer_.Saw("dipnet/2 available")) << "Get returned while the load ran";
  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 1).ok());
  EXPECT_FALSE(observer_.Saw("dipnet/2 available")) << "the pin did not wait for the load";
  ASSERT_TRUE(manager_->SetVersionLabel("dipnet", "stable", 1).ok());
  EXPECT_FALSE(observer_.Saw("dipnet/2 available")) << "the label did not wait for the load";
  EXPECT_EQ(ListedVersions(), 1u);

  auto report = sync.get();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(report->loaded, ElementsAre("dipnet/2"));
  // The pin set during the load holds; version 2 is the newest and serves by number.
  EXPECT_THAT(Loaded("dipnet"), ElementsAre(1, 2));
  EXPECT_EQ(DefaultVersion("dipnet"), 1);
}

// ---- The observer ----------------------------------------------------------------------------

TEST_F(ModelManagerTest, ObserverSeesEveryTransitionAndTheCountList) {
  Sync();
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/1 loading", "dipnet/1 available"));
  EXPECT_EQ(observer_.LastCount(), 1u);

  auto held = manager_->Get("dipnet", 1);
  Write("dipnet", 2, 2);
  Sync();
  // Loaded before the old version goes; its memory is released once no request holds it.
  EXPECT_THAT(observer_.TakeLines(),
              ElementsAre("dipnet/2 loading", "dipnet/2 available", "dipnet/1 unloading"));
  EXPECT_EQ(observer_.LastCount(), ListedVersions());
  held = absl::NotFoundError("released");
  Sync();
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/1 unloaded"));

  std::filesystem::create_directories(root_ + "/dipnet/3");
  std::ofstream(root_ + "/dipnet/3/model.pt") << "broken";
  Sync();
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/3 loading", "dipnet/3 load failed"));

  ASSERT_TRUE(manager_->SetDefaultVersion("dipnet", 1).ok());
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/1 loading", "dipnet/1 available"));
  EXPECT_EQ(observer_.LastCount(), 2u);
  EXPECT_EQ(observer_.LastCount(), ListedVersions());
  ASSERT_TRUE(manager_->Unload("dipnet", 2).ok());
  EXPECT_THAT(observer_.TakeLines(), ElementsAre("dipnet/2 unloading", "dipnet/2 unloaded"));
  EXPECT_EQ(observer_.LastCount(), 1u);
  EXPECT_EQ(observer_.LastCount(), ListedVersions());
}

TEST_F(ModelManagerTest, PollingFindsNewVersionsAndConfigChanges) {
  Sync();
  std::atomic<int> changes{0};
  manager_->StartPolling(0.05, [&](const LoadReport&) { ++changes; });
  Write("other", 1, 4);
  WriteConfig("dipnet", R"({"labels": {"stable": 1}})");
  for (int i = 0;
       i < 200 && (DefaultVersion("other") != 1 || !manager_->Get("dipnet", 0, "stable").ok());
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  manager_->StopPolling();
  EXPECT_EQ(DefaultVersion("other"), 1);
  EXPECT_TRUE(manager_->Get("dipnet", 0, "stable").ok());
  EXPECT_GE(changes.load(), 1);
}

TEST(ModelRepositoryTest, MissingRepositoryIsNotFound) {
  ModelManager::Options options;
  options.repository = "/nonexistent/dino-repository";
  ModelManager manager(options);
  EXPECT_EQ(manager.SyncRepository().status().code(), absl::StatusCode::kNotFound);
}

// ---- config.json -----------------------------------------------------------------------------

TEST(ModelConfigTest, RoundTripsThroughTheFile) {
  dino::testing::ScopedTempDir dir;
  const std::string path = dir / "config.json";
  auto missing = ReadModelConfig(path);
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_EQ(*missing, ModelConfig()) << "a missing file means the defaults";

  ModelConfig config;
  config.version_policy.kind = VersionPolicy::Kind::kSpecific;
  config.version_policy.specific = {2, 5};
  config.default_version = 5;
  config.labels = {{"stable", 2}, {"canary", 7}};
  config.batching.max_batch_size = 64;
  config.batching.preferred_batch_size = 16;
  config.batching.max_queue_delay_us = 500;
  config.batching.max_queue_size = 8;
  config.executors = 3;
  config.unloaded_versions = {4};
  config.explicit_knobs = {"batching.max_batch_size", "batching.preferred_batch_size",
                           "batching.max_queue_delay_us", "batching.max_queue_size", "executors"};
  ASSERT_TRUE(WriteModelConfig(path, config).ok());
  auto read = ReadModelConfig(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, config);
  // Only the file itself is left: the temporary was renamed over it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);

  config.batching.max_queue_size = 0;
  auto refused = WriteModelConfig(path, config);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadModelConfig(path)->batching.max_queue_size, 8) << "the file is unchanged";
}

TEST(ModelConfigTest, KnobsTheFileDoesNotSetFollowTheServerDefaults) {
  ModelConfig defaults;  // As the server's flags set them.
  defaults.batching.max_queue_size = 64;
  defaults.executors = 3;
  auto config = ParseModelConfig(
      R"({"default_version": 2, "batching": {"max_queue_delay_us": 500}})", "c.json", defaults);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->batching.max_queue_size, 64);
  EXPECT_EQ(config->executors, 3);
  EXPECT_EQ(config->batching.max_queue_delay_us, 500);
  // An admin write keeps what the file set, and only that.
  const std::string text = SerializeModelConfig(*config);
  EXPECT_THAT(text, ::testing::HasSubstr("max_queue_delay_us"));
  EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr("max_queue_size")));
  EXPECT_THAT(text, ::testing::Not(::testing::HasSubstr("executors")));
  ModelConfig other;
  other.batching.max_queue_size = 16;
  auto reread = ParseModelConfig(text, "c.json", other);
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_EQ(reread->batching.max_queue_size, 16);
  EXPECT_EQ(reread->default_version, 2);
}

TEST(ModelConfigTest, EveryErrorNamesTheFileAndTheField) {
  const std::string path = "/repo/m/config.json";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[1]", "must hold a JSON object"},
      {"{", "not valid JSON"},
      {R"({"version_polcy": {"latest": 1}})", "unknown field 'version_polcy'"},
      {R"({"batching": {"max_queue": 3}})", "unknown field 'batching.max_queue'"},
      {R"({"version_policy": {"latest": 0}})", "version_policy.latest must be >= 1, got 0"},
      {R"({"version_policy": {"latest": 1, "all": {}}})", "version_policy must be an object"},
      {R"({"version_policy": {"newest": 1}})", "unknown field 'version_policy.newest'"},
      {R"({"version_policy": {"specific": []}})", "version_policy.specific must list"},
      {R"({"version_policy": {"specific": [2, 2]}})", "lists version 2 twice"},
      {R"({"version_policy": {"specific": [0]}})", "version_policy.specific[0] must be >= 1"},
      {R"({"default_version": 1.5})", "default_version must be an integer, got 1.5"},
      {R"({"default_version": -1})", "default_version must be >= 0, got -1"},
      {R"({"labels": {"stable": "3"}})", "labels.stable must be an integer"},
      {R"({"labels": {"1st": 3}})", "labels.1st is not a valid label"},
      {R"({"labels": {"stable": 3}, "unloaded_versions": [3]})",
       "labels.stable names version 3, which unloaded_versions"},
      {R"({"default_version": 4, "unloaded_versions": [4]})", "default_version is 4, which"},
      {R"({"batching": {"max_batch_size": 0}})", "batching.max_batch_size must be >= 1, got 0"},
      {R"({"batching": {"max_batch_size": 8, "preferred_batch_size": 9}})",
       "batching.preferred_batch_size must be in [0, batching.max_batch_size = 8], got 9"},
      {R"({"batching": {"max_queue_delay_us": -1}})", "batching.max_queue_delay_us must be >= 0"},
      {R"({"batching": {"max_queue_size": 0}})", "batching.max_queue_size must be >= 1, got 0"},
      {R"({"executors": -2})", "executors must be >= 0, got -2"},
      {R"({"unloaded_versions": 3})", "unloaded_versions must be an array"},
  };
  for (const auto& [text, expected] : cases) {
    auto config = ParseModelConfig(text, path);
    ASSERT_FALSE(config.ok()) << text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(config.status().message(), HasSubstr(path + ": ")) << text;
    EXPECT_THAT(config.status().message(), HasSubstr(expected)) << text;
  }
  auto all = ParseModelConfig(R"({"version_policy": {"all": {}}, "executors": 2})", path);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->version_policy.kind, VersionPolicy::Kind::kAll);
  EXPECT_EQ(all->executors, 2);
}

}  // namespace
}  // namespace dino::serving
