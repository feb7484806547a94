// The "cuda-emulator" backend: the CUDA backend's kernels (block_kernels.h) run on the CPU,
// one emulated thread block at a time, its threads real threads meeting at a barrier where
// the GPU code calls __syncthreads(). It exists so that the kernels' logic is tested on
// machines without a GPU (test/cuda.test.ts); it is slow and registered only on request
// (env IAFLOW_CUDA_EMULATOR=1 before the first use of the addon).
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "backend.h"
#include "block_kernels.h"
#include "train.h"

namespace iaflow {
namespace {

// Threads per emulated block: odd, so no loop over rows or units divides evenly among them. The
// narrow block (32-row tiles) takes the kernels' widest unit groups everywhere; the wide one
// (64-row tiles), as wide as a CUDA block's lanes would make a small degree group, also takes
// the narrow groups of linearUnits.
constexpr int kNarrowBlock = 5, kNarrowTileRows = 32;
constexpr int kWideBlock = 67, kWideTileRows = 64;

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++waiting_ == count_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_;
  int waiting_ = 0;
  long generation_ = 0;
};

struct HostSync {
  Barrier* barrier;
  void operator()() const { barrier->wait(); }
};

class EmulatorRunner final : public Runner {
 public:
  EmulatorRunner(std::shared_ptr<const FlowPlan> plan, int threads, int tileRows)
      : plan_(std::move(plan)), packed_(block::packPlan(*plan_)), threads_(threads), tileRows_(tileRows) {}

  const FlowPlan& plan() const override { return *plan_; }

  void run(const RunRequest& req) const override {
    if (req.rows <= 0) return;
    if (plan_->contextDim > 0 && (!req.context || (req.contextRows != 1 && req.contextRows != req.rows)))
      throw std::invalid_argument("this flow is conditional: a run needs one context row, or one per row");
    block::RunArgs args;
    args.toData = req.direction == Direction::ToData ? 1 : 0;
    args.input = req.input;
    args.seed = req.seed;
    args.streamFirstRow = req.firstRow;
    args.rows = req.rows;
    args.outPoints = req.outPoints;
    args.outLogDet = req.outLogDet;
    args.outLogProb = req.outLogProb;
    args.context = req.context;
    args.contextRows = req.contextRows;
    if (tileRows_ == 32) runTiles<32>(req, args);
    else runTiles<64>(req, args);
  }

 private:
  template <int T>
  void runTiles(const RunRequest& req, const block::RunArgs& args) const {
    const block::BlockPlan P = packed_.view();
    const block::ScratchLayout layout = block::scratchLayout(P, T);
    std::vector<float> scratch(static_cast<size_t>(layout.total), 0.0f);
    const int64_t tiles = (req.rows + T - 1) / T;
    Barrier barrier(threads_);
    bool stop = false;  // written by thread 0 before a barrier, read by all after it
    auto thread = [&](int id) {
      HostSync sync{&barrier};
      const block::Threads t{id, threads_};
      for (int64_t tile = 0; tile < tiles; ++tile) {
        if (id == 0) stop = req.cancel && req.cancel->load(std::memory_order_relaxed);
        sync();
        if (stop) return;
        const int64_t first = tile * T;
        const int rows = static_cast<int>(std::min<int64_t>(T, req.rows - first));
        block::runTile<T>(t, sync, P, layout, args, scratch.data(), first, rows);
      }
    };
    std::vector<std::thread> threads;
    for (int id = 1; id < threads_; ++id) threads.emplace_back(thread, id);
    thread(0);
    for (std::thread& th : threads) th.join();
    if (stop) throw Cancelled();
  }

  std::shared_ptr<const FlowPlan> plan_;
  block::PackedPlan packed_;
  int threads_;
  int tileRows_;
};

class EmulatorBackend final : public Backend {
 public:
  explicit EmulatorBackend(bool wide) : wide_(wide) {}
  BackendInfo info() const override {
    BackendInfo out;
    out.name = wide_ ? "cuda-emulator-wide" : "cuda-emulator";
    out.usable = true;
    out.detail = "the CUDA kernels run on the CPU with emulated thread blocks of " +
                 std::to_string(wide_ ? kWideBlock : kNarrowBlock) + " threads and " +
                 std::to_string(wide_ ? kWideTileRows : kNarrowTileRows) + "-row tiles (for tests; slow)";
    return out;
  }
  bool supports(const FlowPlan&, std::string*) const override { return true; }
  std::shared_ptr<const Runner> prepare(std::shared_ptr<const FlowPlan> plan) const override {
    return std::make_shared<EmulatorRunner>(std::move(plan), wide_ ? kWideBlock : kNarrowBlock,
                                            wide_ ? kWideTileRows : kNarrowTileRows);
  }
  std::unique_ptr<Trainer> makeTrainer(const FlowSpec&, Direction, const FlowSpec*, const OptimizerOptions&) const override {
    return nullptr;  // as the CUDA backend: training runs on the CPU
  }

 private:
  bool wide_;
};

}  // namespace

std::unique_ptr<Backend> makeCudaEmulatorBackend(bool wide) { return std::make_unique<EmulatorBackend>(wide); }

}  // namespace iaflow
