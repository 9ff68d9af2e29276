// A fixed pool of worker threads with a FIFO queue: the place where a model's LibTorch work
// runs, off the transport's threads. One executor per model name keeps one busy model from
// starving the others, and is the unit a dynamic batcher will later replace.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dino::serving {

class Executor {
 public:
  Executor(std::string name, int threads);
  ~Executor();  // Shutdown(), then joins.
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues a task; false (and the task is dropped) once Shutdown() has been called.
  bool Submit(std::function<void()> task);
  // Stops accepting tasks, runs those already queued, joins the workers. Idempotent.
  void Shutdown();

  size_t queued() const;
  const std::string& name() const { return name_; }

 private:
  void Work();

  const std::string name_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace dino::serving
