#include "thread_pool.h"

#include <algorithm>

namespace iaflow {

ThreadPool::ThreadPool(int threads) {
  const int extra = std::max(threads, 1) - 1;
  for (int w = 1; w <= extra; ++w) workers_.emplace_back([this, w] { workerLoop(w); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(stateMutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_) t.join();
}

// Claims indices one at a time until none are left. Index claims happen under
// the state mutex: tasks are coarse (a tile of rows), so the lock is cheap.
void ThreadPool::drain(int worker) {
  for (;;) {
    int64_t index;
    {
      std::lock_guard<std::mutex> lock(stateMutex_);
      if (next_ >= count_) return;
      index = next_++;
    }
    try {
      (*task_)(index, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(stateMutex_);
      if (!firstError_) firstError_ = std::current_exception();
      next_ = count_;  // stop handing out work
    }
  }
}

void ThreadPool::workerLoop(int worker) {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(stateMutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    drain(worker);
    {
      std::lock_guard<std::mutex> lock(stateMutex_);
      if (--busyWorkers_ == 0) finished_.notify_all();
    }
  }
}

void ThreadPool::parallelFor(int64_t count, const std::function<void(int64_t, int)>& task) {
  if (count <= 0) return;
  if (count == 1 || workers_.empty()) {
    for (int64_t i = 0; i < count; ++i) task(i, 0);
    return;
  }
  std::lock_guard<std::mutex> dispatch(dispatchMutex_);
  {
    std::lock_guard<std::mutex> lock(stateMutex_);
    task_ = &task;
    count_ = count;
    next_ = 0;
    firstError_ = nullptr;
    busyWorkers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  drain(0);
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(stateMutex_);
    finished_.wait(lock, [&] { return busyWorkers_ == 0; });
    task_ = nullptr;
    error = firstError_;
    firstError_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

int defaultThreadCount() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

namespace {
std::mutex poolMutex;
std::shared_ptr<ThreadPool> pool;
}  // namespace

std::shared_ptr<ThreadPool> currentPool() {
  std::lock_guard<std::mutex> lock(poolMutex);
  if (!pool) pool = std::make_shared<ThreadPool>(defaultThreadCount());
  return pool;
}

void setThreadCount(int threads) {
  auto replacement = std::make_shared<ThreadPool>(threads);
  std::lock_guard<std::mutex> lock(poolMutex);
  pool = std::move(replacement);
}

}  // namespace iaflow
