// The core's request path without a transport: admission against the queue limit, refusals
// that name the field, deadlines and cancellation before compute, dynamic batching of
// concurrent requests (same answers as unbatched), the queue delay, and shutdown.
#include "server/core/request_scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "models/architectures/architectures.h"
#include "models/architectures/compute_threads.h"
#include "server/core/idle_memory_trimmer.h"
#include "tests/common/scratch_dir.h"
#include "tests/common/test_models.h"

namespace dino::serving {
namespace {

using dino::testing::SmallDims;
using ::testing::HasSubstr;

constexpr SmallDims kDims{};

// Records what the scheduler reports; lets a test wait until a batch is computing.
class RecordingObserver final : public RequestObserver {
 public:
  void RequestFinished(const char*, const std::string&, absl::StatusCode, double) override {}
  void InFlightChanged(const std::string&, int64_t delta) override { in_flight_ += delta; }
  void QueueDepthChanged(const std::string&, int64_t delta) override { queued_ += delta; }
  void QueueWait(const std::string&, double) override {}
  void TrustScored(const std::string&, int64_t, int64_t) override {}
  void BatchStarted(const std::string&, int64_t requests, int64_t) override {
    std::lock_guard<std::mutex> lock(mutex_);
    batches_.push_back(requests);
    changed_.notify_all();
  }
  void WaitForBatches(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] { return batches_.size() >= count; });
  }
  std::vector<int64_t> batches() {
    std::lock_guard<std::mutex> lock(mutex_);
    return batches_;
  }
  int64_t queued() const { return queued_; }
  // The scheduler counts a request out of flight just after its done callback returns, so a
  // test that has its answer may look before the count does: waits (up to 10 s) for it.
  int64_t SettledInFlight() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (in_flight_ != 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return in_flight_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<int64_t> batches_;  // Requests per batch.
  std::atomic<int64_t> in_flight_{0}, queued_{0};
};

struct Outcome {
  absl::Status status;
  int64_t version = 0;
  Answer answer;
};

class SchedulerTest : public ::testing::Test {
 protected:
  // Serves `module` as model "m" version 1 with `batching`, one compute thread.
  void Serve(torch::jit::Module module, BatchingConfig batching, int executors = 1,
             bool run_inline_when_idle = false) {
    ModelManager::Options options;
    options.repository = scratch_.path();
    options.default_config.batching = batching;
    options.default_config.executors = executors;
    manager_ = std::make_unique<ModelManager>(options);
    dino::testing::WriteModel(module, dino::testing::SmallMetadata("test", kDims.d_m),
                              scratch_.path(), "m", 1);
    ASSERT_TRUE(manager_->SyncRepository().ok());
    auto servable = manager_->Get("m", 1);
    ASSERT_TRUE(servable.ok()) << servable.status();
    model_ = servable->model;
    RequestScheduler::Options scheduler_options;
    scheduler_options.observer = &observer_;
    scheduler_options.max_response_bytes = 1 << 20;
    scheduler_options.run_inline_when_idle = run_inline_when_idle;
    scheduler_ = std::make_unique<RequestScheduler>(*manager_, scheduler_options);
  }

  std::future<Outcome> Submit(Query query, CallControl control = {},
                              const std::string& name = "m") {
    auto promise = std::make_shared<std::promise<Outcome>>();
    std::future<Outcome> future = promise->get_future();
    const Method method = query.method;
    scheduler_->Submit(method, ModelTarget{name, 0, ""}, std::move(query), std::move(control),
                       [promise](const absl::Status& status, int64_t version, Answer answer) {
                         promise->set_value(Outcome{status, version, std::move(answer)});
                       });
    return future;
  }

  static Query EvaluateQuery(uint64_t seed, int64_t rows = 1) {
    torch::manual_seed(seed);
    Query query;
    query.m = torch::randn({rows, kDims.d_m}, torch::kFloat64);
    return query;
  }

  // Occupies the single compute thread with a slow request; returns its future.
  std::future<Outcome> Occupy() {
    Query slow = EvaluateQuery(999);
    auto future = Submit(slow);
    observer_.WaitForBatches(1);
    return future;
  }

  dino::testing::ScopedTempDir scratch_{"scheduler_test_"};
  RecordingObserver observer_;
  std::unique_ptr<ModelManager> manager_;
  std::shared_ptr<const SurrogateModel> model_;
  std::unique_ptr<RequestScheduler> scheduler_;
};

TEST_F(SchedulerTest, ConcurrentRequestsAreBatchedAndAnsweredAsAlone) {
  // A slow model: the requests that arrive while the first one computes form one batch.
  Serve(dino::testing::SlowModel(kDims.d_m, kDims.d_q, 5000), BatchingConfig{});
  std::vector<Query> queries;
  for (int i = 0; i < 11; ++i) queries.push_back(EvaluateQuery(100 + i, 1 + i % 3));
  queries[3].method = Method::kVjp;
  queries[3].cotangents = torch::randn({queries[3].m.size(0), kDims.d_q}, torch::kFloat64);
  queries[3].want_q = true;
  queries[5].method = Method::kReducedJacobian;
  queries[5].output_basis = dino::models::RandomOrthonormalColumns(kDims.d_q, 2, 1);
  queries[5].input_basis = dino::models::RandomOrthonormalColumns(kDims.d_m, 3, 2);
  std::vector<std::future<Outcome>> futures;
  futures.push_back(Occupy());
  for (const Query& query : queries) futures.push_back(Submit(query));
  for (size_t i = 0; i < futures.size(); ++i) {
    Outcome outcome = futures[i].get();
    ASSERT_TRUE(outcome.status.ok()) << i << ": " << outcome.status;
    EXPECT_EQ(outcome.version, 1);
    if (i == 0) continue;
    auto alone = model_->Run(queries[i - 1]);
    ASSERT_TRUE(alone.ok());
    EXPECT_TRUE(torch::allclose(outcome.answer.values, alone->values, 1e-12, 1e-12)) << i;
  }
  const std::vector<int64_t> batches = observer_.batches();
  int64_t requests = 0;
  for (int64_t b : batches) requests += b;
  EXPECT_EQ(requests, 12);
  EXPECT_EQ(batches, (std::vector<int64_t>{1, 11}));
  EXPECT_EQ(observer_.SettledInFlight(), 0);
  EXPECT_EQ(observer_.queued(), 0);
}

TEST_F(SchedulerTest, FullQueueIsRefusedNamingTheLimitAndAdmittedCallsAreAnswered) {
  BatchingConfig batching;
  batching.max_queue_size = 3;
  batching.max_batch_size = 1;  // One request per computation: the queue stays full.
  Serve(dino::testing::SlowModel(kDims.d_m, kDims.d_q, 20000), batching);
  auto busy = Occupy();
  std::vector<std::future<Outcome>> admitted;
  for (int i = 0; i < 3; ++i) admitted.push_back(Submit(EvaluateQuery(i)));
  Outcome refused = Submit(EvaluateQuery(9)).get();  // Answered at once, on this thread.
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status.message()), HasSubstr("batching.max_queue_size = 3"));
  EXPECT_TRUE(busy.get().status.ok());
  for (auto& future : admitted) EXPECT_TRUE(future.get().status.ok());
}

TEST_F(SchedulerTest, ExpiredAndCancelledCallsAreNotComputed) {
  Serve(dino::testing::SlowModel(kDims.d_m, kDims.d_q, 20000), BatchingConfig{});
  auto busy = Occupy();
  CallControl short_deadline;
  short_deadline.deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(1);
  auto expired = Submit(EvaluateQuery(1), short_deadline);
  CallControl cancelled;
  cancelled.is_cancelled = [] { return true; };
  auto gone = Submit(EvaluateQuery(2), cancelled);
  CallControl past;
  past.deadline = std::chrono::system_clock::now() - std::chrono::seconds(1);
  Outcome late = Submit(EvaluateQuery(3), past).get();
  EXPECT_EQ(late.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(busy.get().status.ok());
  Outcome expired_outcome = expired.get();
  EXPECT_EQ(expired_outcome.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(expired_outcome.status.message()), HasSubstr("before the call ran"));
  EXPECT_EQ(gone.get().status.code(), absl::StatusCode::kCancelled);
  // Neither was computed: only the busy request's batch ran.
  EXPECT_EQ(observer_.batches().size(), 1u);
}

TEST_F(SchedulerTest, BadRequestsAreRefusedAndTheOthersAnswered) {
  Serve(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3), BatchingConfig{});
  Query nan = EvaluateQuery(1, 2);
  nan.m[1][3] = std::nan("");
  Query wrong = EvaluateQuery(2);
  wrong.method = Method::kJvp;
  wrong.directions = torch::zeros({1, kDims.d_m + 1}, torch::kFloat64);
  auto good1 = Submit(EvaluateQuery(3));
  Outcome bad1 = Submit(nan).get();
  Outcome bad2 = Submit(wrong).get();
  auto good2 = Submit(EvaluateQuery(4, 3));
  Outcome unknown = Submit(EvaluateQuery(5), {}, "no_such_model").get();
  Outcome decode_error = [&] {
    auto promise = std::make_shared<std::promise<Outcome>>();
    auto future = promise->get_future();
    scheduler_->Submit(Method::kEvaluate, ModelTarget{"m", 0, ""},
                       absl::InvalidArgumentError("m.data has 3 bytes"), {},
                       [promise](const absl::Status& s, int64_t v, Answer a) {
                         promise->set_value(Outcome{s, v, std::move(a)});
                       });
    return future.get();
  }();
  EXPECT_THAT(std::string(bad1.status.message()), HasSubstr("m contains a non-finite value"));
  EXPECT_THAT(std::string(bad1.status.message()), HasSubstr("[1, 3]"));
  EXPECT_EQ(bad2.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad2.status.message()), HasSubstr("directions must have shape"));
  EXPECT_EQ(unknown.status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(decode_error.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(good1.get().status.ok());
  Outcome three = good2.get();
  ASSERT_TRUE(three.status.ok());
  EXPECT_EQ(three.answer.values.size(0), 3);
}

TEST_F(SchedulerTest, ResponsesOverTheLimitAreRefused) {
  Serve(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3), BatchingConfig{});
  Query jacobians = EvaluateQuery(1, 4000);  // 4000 · 6 · 8 · 8 bytes > 1 MiB.
  jacobians.method = Method::kReducedJacobian;
  Outcome outcome = Submit(jacobians).get();
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(outcome.status.message()), HasSubstr("above the server's limit"));
}

TEST_F(SchedulerTest, QueueDelayGathersAPreferredBatch) {
  BatchingConfig batching;
  batching.max_queue_delay_us = 5'000'000;  // Far longer than the test: the size ends it.
  batching.preferred_batch_size = 4;
  Serve(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3), batching);
  std::vector<std::future<Outcome>> futures;
  for (int i = 0; i < 4; ++i) {
    futures.push_back(Submit(EvaluateQuery(i)));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& future : futures) EXPECT_TRUE(future.get().status.ok());
  EXPECT_EQ(observer_.batches(), (std::vector<int64_t>{4}));
}

TEST_F(SchedulerTest, AnIdleModelAnswersOnTheCallersThreadABusyOneQueues) {
  Serve(dino::testing::SlowModel(kDims.d_m, kDims.d_q, 20000), BatchingConfig{}, /*executors=*/2,
        /*run_inline_when_idle=*/true);
  // Idle: computed on the submitting thread, answered before Submit returns.
  const std::thread::id caller = std::this_thread::get_id();
  std::thread::id answered_on;
  scheduler_->Submit(Method::kEvaluate, ModelTarget{"m", 0, ""}, EvaluateQuery(1), {},
                     [&](const absl::Status& status, int64_t, Answer) {
                       EXPECT_TRUE(status.ok()) << status;
                       answered_on = std::this_thread::get_id();
                     });
  EXPECT_EQ(answered_on, caller);
  // Busy (a slow request computing inline on another thread): queued for a compute thread,
  // although a second compute slot is free.
  std::thread occupant([&] { Submit(EvaluateQuery(2)).get(); });
  observer_.WaitForBatches(2);
  auto promise = std::make_shared<std::promise<std::thread::id>>();
  auto where = promise->get_future();
  scheduler_->Submit(Method::kEvaluate, ModelTarget{"m", 0, ""}, EvaluateQuery(3), {},
                     [promise](const absl::Status& status, int64_t, Answer) {
                       EXPECT_TRUE(status.ok()) << status;
                       promise->set_value(std::this_thread::get_id());
                     });
  EXPECT_NE(where.get(), caller);
  occupant.join();
  EXPECT_EQ(observer_.SettledInFlight(), 0);
}

TEST_F(SchedulerTest, ShutdownAnswersAdmittedCallsThenRefuses) {
  Serve(dino::testing::SlowModel(kDims.d_m, kDims.d_q, 20000), BatchingConfig{});
  auto busy = Occupy();
  std::vector<std::future<Outcome>> admitted;
  for (int i = 0; i < 3; ++i) admitted.push_back(Submit(EvaluateQuery(i)));
  scheduler_->Shutdown();
  EXPECT_TRUE(busy.get().status.ok());
  for (auto& future : admitted) EXPECT_TRUE(future.get().status.ok());
  EXPECT_EQ(Submit(EvaluateQuery(5)).get().status.code(), absl::StatusCode::kUnavailable);
}

// Every request received and every answer given moves the activity count, refusals included,
// so that the idle trimmer sees any use of the request path.
TEST_F(SchedulerTest, ActivityCountsRequestsAndAnswers) {
  Serve(dino::testing::SmallDipnet(kDims, torch::kFloat64, 3), BatchingConfig{});
  const uint64_t before = scheduler_->activity();
  ASSERT_TRUE(Submit(EvaluateQuery(1)).get().status.ok());
  const uint64_t after_answer = scheduler_->activity();
  EXPECT_EQ(after_answer - before, 2u);  // Received, answered.
  EXPECT_EQ(Submit(EvaluateQuery(2), {}, "no_such_model").get().status.code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(scheduler_->activity() - after_answer, 2u);
}

// ---- IdleMemoryTrimmer --------------------------------------------------------------------

TEST(IdleMemoryTrimmer, TrimsOnceAfterEachQuietSpellAndNeverWhileBusy) {
  uint64_t activity = 0;
  int trims = 0;
  IdleMemoryTrimmer trimmer([&] { return activity; }, [&] { return ++trims > 0; });
  EXPECT_FALSE(trimmer.Poll());   // The first look has nothing to compare with.
  for (int i = 0; i < 10; ++i) {  // Busy: something happens between every two looks.
    activity += 3;
    EXPECT_FALSE(trimmer.Poll()) << i;
  }
  EXPECT_EQ(trims, 0);
  EXPECT_TRUE(trimmer.Poll());   // Quiet since the last look: trim.
  EXPECT_FALSE(trimmer.Poll());  // Still quiet, nothing new to return.
  EXPECT_FALSE(trimmer.Poll());
  EXPECT_EQ(trims, 1);
  ++activity;  // A new burst...
  EXPECT_FALSE(trimmer.Poll());
  EXPECT_TRUE(trimmer.Poll());  // ...and its quiet spell.
  EXPECT_EQ(trims, 2);
  EXPECT_EQ(trimmer.trims(), 2);
}

TEST(IdleMemoryTrimmer, ItsThreadTrimsAQuietServerOnceAndStops) {
  std::atomic<int> trims{0};
  IdleMemoryTrimmer trimmer([] { return uint64_t{7}; }, [&] { return ++trims > 0; });
  trimmer.Start(std::chrono::milliseconds(5));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (trims == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // Ten more looks.
  trimmer.Stop();
  EXPECT_EQ(trims, 1);
  IdleMemoryTrimmer never([] { return uint64_t{0}; }, [] { return true; });
  never.Start(std::chrono::milliseconds(0));  // A period of zero starts nothing.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(never.trims(), 0);
}

// Resident memory of this process, from /proc/self/statm.
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// What the server's allocator policy keeps after a large request (TuneAllocatorForServing),
// the real trim returns.
TEST(IdleMemoryTrimmer, TheHeapTrimReturnsAFreedLargeBlock) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // The sanitizers replace malloc: glibc's mallopt/malloc_trim then govern nothing, and ASan
  // keeps freed blocks in its quarantine on purpose.
  GTEST_SKIP() << "glibc's heap policy is not in use under a sanitizer's allocator";
#endif
  dino::models::TuneAllocatorForServing();
  constexpr size_t kBytes = size_t{96} << 20;
  char* block = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kBytes);
  asm volatile("" : : "r"(block) : "memory");  // Keeps the compiler from eliding the block.
  const int64_t touched = ResidentBytes();
  std::free(block);
  EXPECT_GT(ResidentBytes(), touched - int64_t{32 << 20}) << "the freed block left the heap";
  EXPECT_TRUE(IdleMemoryTrimmer::TrimHeap());
  EXPECT_LT(ResidentBytes(), touched - int64_t{64 << 20});
}

}  // namespace
}  // namespace dino::serving
