#include "server/core/periodic_task.h"

#include <utility>

namespace dino::serving {

PeriodicTask::~PeriodicTask() { Stop(); }

void PeriodicTask::Start(std::chrono::duration<double> period, std::function<void()> run) {
  Stop();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = false;
  }
  thread_ = std::thread([this, period, run = std::move(run)] {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, period, [this] { return stopping_; })) {
      lock.unlock();
      run();
      lock.lock();
    }
  });
}

void PeriodicTask::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace dino::serving
