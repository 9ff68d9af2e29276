// A function run every period on a thread of its own, until stopped: the model repository's
// poll (ModelManager::StartPolling) and the idle memory trim (IdleMemoryTrimmer::Start).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace dino::serving {

class PeriodicTask {
 public:
  PeriodicTask() = default;
  ~PeriodicTask();  // Stop().
  PeriodicTask(const PeriodicTask&) = delete;
  PeriodicTask& operator=(const PeriodicTask&) = delete;

  // Runs `run` one period after this call and every period after that run ends. A running
  // task is stopped first.
  void Start(std::chrono::duration<double> period, std::function<void()> run);
  // Waits for a run in progress to end; no run starts after it. Idempotent.
  void Stop();

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace dino::serving
