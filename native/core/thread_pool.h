// The core's own worker threads. One parallelFor runs at a time (others wait
// their turn), so concurrent async calls from Node each get the whole machine
// in turn instead of oversubscribing it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace iaflow {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls task(index, worker) for every index in [0, count), worker in [0, size()).
  // The calling thread works too. Blocks until all are done; rethrows the first
  // exception a task threw.
  void parallelFor(int64_t count, const std::function<void(int64_t, int)>& task);

 private:
  void workerLoop(int worker);
  void drain(int worker);

  std::vector<std::thread> workers_;
  std::mutex dispatchMutex_;  // one parallelFor at a time
  std::mutex stateMutex_;
  std::condition_variable wake_;
  std::condition_variable finished_;
  const std::function<void(int64_t, int)>* task_ = nullptr;
  int64_t count_ = 0;
  int64_t next_ = 0;
  uint64_t generation_ = 0;
  int busyWorkers_ = 0;
  bool stopping_ = false;
  std::exception_ptr firstError_;
};

int defaultThreadCount();

// The process-wide pool. setThreads replaces it; calls already running keep
// the pool they started on.
std::shared_ptr<ThreadPool> currentPool();
void setThreadCount(int threads);

}  // namespace iaflow
