// The CUDA backend (libiaflow_cuda.so, loaded by the addon at run time; cuda_entry.h).
// prepare: the plan flattened (block_plan.h) and uploaded once; run: rows in chunks through
// pinned host buffers, each chunk one launch of runFlowKernel, whose blocks each carry tiles
// of rows through every layer of the flow (block_kernels.h: the same code the CPU suite runs
// under its block emulator). Errors from CUDA become exceptions (JavaScript errors in the
// addon); the device stays usable unless the error is one CUDA itself makes sticky.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../core/block_kernels.h"
#include "../core/train.h"
#include "cuda_entry.h"

namespace iaflow {
namespace {

constexpr int kThreadsPerBlock = 256;
// Rows per chunk: the device buffers hold one chunk, so any request streams in bounded memory.
constexpr int64_t kMaxChunkRows = 1 << 20;
constexpr int64_t kMaxChunkFloats = int64_t{1} << 24;  // 64 MiB per row-sized buffer

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(error));
}

struct DeviceSync {
  __device__ void operator()() const { __syncthreads(); }
};

// A block's tile workspace: in shared memory when it fits (dynamic shared memory, sized at the
// launch), else the block's slice of `scratch` in global memory (cached by L1 and L2). The
// kernels address both alike.
extern __shared__ float4 sharedWorkspace[];

template <int T>
__global__ void __launch_bounds__(kThreadsPerBlock)
    runFlowKernel(block::BlockPlan plan, block::ScratchLayout layout, block::RunArgs args, float* scratch,
                  int64_t tiles) {
  DeviceSync sync;
  const block::Threads t{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x)};
  float* base = scratch ? scratch + static_cast<int64_t>(blockIdx.x) * layout.total
                        : reinterpret_cast<float*>(sharedWorkspace);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t first = tile * T;
    const int64_t left = args.rows - first;
    const int rows = static_cast<int>(left < T ? left : T);
    block::runTile<T>(t, sync, plan, layout, args, base, first, rows);
  }
}

using FlowKernel = void (*)(block::BlockPlan, block::ScratchLayout, block::RunArgs, float*, int64_t);

// Rows per block's tile as env IAFLOW_CUDA_TILE_ROWS says (32, 64 or 128, for the benchmark's
// sweep), or 0: unset, the runner chooses.
int tileRowsFromEnv() {
  const char* value = std::getenv("IAFLOW_CUDA_TILE_ROWS");
  if (!value) return 0;
  const std::string v(value);
  return v == "32" ? 32 : v == "128" ? 128 : v == "64" ? 64 : 0;
}

// Whether the workspace goes to shared memory: when two blocks' workspaces fit in an SM's shared
// memory (so a block's barrier never leaves an SM idle), unless env IAFLOW_CUDA_WORKSPACE says
// 'global' or 'shared' (the latter whenever one block's fits): for the benchmark's sweep.
bool workspaceInShared(size_t bytes, int device) {
  int perBlock = 0, perSm = 0;
  if (cudaDeviceGetAttribute(&perBlock, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&perSm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device) != cudaSuccess)
    return false;
  const char* choice = std::getenv("IAFLOW_CUDA_WORKSPACE");
  if (choice && std::string(choice) == "global") return false;
  if (choice && std::string(choice) == "shared") return bytes <= static_cast<size_t>(perBlock);
  return bytes <= static_cast<size_t>(perBlock) && 2 * bytes <= static_cast<size_t>(perSm);
}

FlowKernel kernelFor(int tileRows) {
  return tileRows == 32 ? runFlowKernel<32> : tileRows == 128 ? runFlowKernel<128> : runFlowKernel<64>;
}

// Where a buffer lives: device memory, or page-locked host memory (copies then run at the bus's
// speed and asynchronously).
struct DeviceMemory {
  static cudaError_t allocate(void** data, size_t bytes) { return cudaMalloc(data, bytes); }
  static void release(void* data) { cudaFree(data); }
  static constexpr const char* kAllocator = "cudaMalloc";
};
struct PinnedMemory {
  static cudaError_t allocate(void** data, size_t bytes) { return cudaMallocHost(data, bytes); }
  static void release(void* data) { cudaFreeHost(data); }
  static constexpr const char* kAllocator = "cudaMallocHost";
};

// A buffer that grows on demand and is freed with its owner.
template <class Memory>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { release(); }
  void reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    release();
    check(Memory::allocate(&data_, bytes), Memory::kAllocator);
    bytes_ = bytes;
  }
  template <class T = float>
  T* as() const { return static_cast<T*>(data_); }

 private:
  void release() {
    if (data_) Memory::release(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = Buffer<DeviceMemory>;
using PinnedBuffer = Buffer<PinnedMemory>;

// One call's stream and buffers; kept in a pool so a call allocates nothing once warm.
struct Workspace {
  cudaStream_t stream = nullptr;
  DeviceBuffer input, context, points, logDet, logProb, scratch;
  PinnedBuffer hostInput, hostContext, hostPoints, hostLogDet, hostLogProb;
  ~Workspace() {
    if (stream) cudaStreamDestroy(stream);
  }
};

std::string probeDevice(int device) {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error == cudaErrorInsufficientDriver || error == cudaErrorNoDevice) {
    cudaGetLastError();
    return error == cudaErrorNoDevice ? "no CUDA device" : std::string("no usable CUDA driver (") + cudaGetErrorString(error) + ")";
  }
  if (error != cudaSuccess) {
    cudaGetLastError();
    return std::string("CUDA is not usable: ") + cudaGetErrorString(error);
  }
  if (count <= device) return "no CUDA device";
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) return "cannot read the CUDA device's properties";
  // The library carries sm_90 code and compute_80 PTX (CMakeLists.txt).
  if (prop.major < 8)
    return std::string("the CUDA device (") + prop.name + ", compute capability " + std::to_string(prop.major) + "." +
           std::to_string(prop.minor) + ") is older than this build supports (8.0)";
  return "";
}

// Why the device cannot run the kernels ("" when it can), probed once: 'auto' asks on every flow
// it builds, and neither the driver nor the device comes or goes while a process runs.
const std::string& deviceProblem(int device) {
  static const std::string problem = probeDevice(device);
  return problem;
}

class CudaRunner final : public Runner {
 public:
  CudaRunner(std::shared_ptr<const FlowPlan> plan, int device) : plan_(std::move(plan)), device_(device) {
    check(cudaSetDevice(device_), "cudaSetDevice");
    const block::PackedPlan packed = block::packPlan(*plan_);
    upload(layers_, packed.layers);
    upload(linears_, packed.linears);
    upload(floats_, packed.floats);
    upload(ints_, packed.ints);
    view_ = block::BlockPlan{packed.dim,
                             packed.contextDim,
                             static_cast<int>(packed.layers.size()),
                             packed.widest,
                             packed.depth,
                             packed.streamDepth,
                             layers_.as<block::LayerDesc>(),
                             linears_.as<block::LinearDesc>(),
                             floats_.as<float>(),
                             ints_.as<int>()};
    // The tile: 64 rows, or 32 when that keeps the workspace in shared memory and 64 would not
    // (a guess until the kernels have run on hardware; the environment overrides it).
    tileRows_ = tileRowsFromEnv();
    if (tileRows_ == 0) {
      const auto bytes = [&](int rows) { return static_cast<size_t>(block::scratchLayout(view_, rows).total) * sizeof(float); };
      tileRows_ = !workspaceInShared(bytes(64), device_) && workspaceInShared(bytes(32), device_) ? 32 : 64;
    }
    kernel_ = kernelFor(tileRows_);
    layout_ = block::scratchLayout(view_, tileRows_);
    const size_t workspaceBytes = static_cast<size_t>(layout_.total) * sizeof(float);
    if (workspaceInShared(workspaceBytes, device_)) {
      sharedBytes_ = workspaceBytes;
      check(cudaFuncSetAttribute(kernel_, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sharedBytes_)),
            "cudaFuncSetAttribute (shared memory)");
    }
    int perSm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernel_, kThreadsPerBlock, sharedBytes_),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device_), "cudaDeviceGetAttribute");
    maxBlocks_ = std::max(1, perSm) * std::max(1, sms);
  }

  const FlowPlan& plan() const override { return *plan_; }

  void run(const RunRequest& req) const override {
    if (req.rows <= 0) return;
    const int dim = plan_->dim, C = plan_->contextDim;
    if (C > 0 && (!req.context || (req.contextRows != 1 && req.contextRows != req.rows)))
      throw std::invalid_argument("this flow is conditional: a run needs one context row, or one per row");
    check(cudaSetDevice(device_), "cudaSetDevice");
    std::unique_ptr<Workspace> ws = takeWorkspace();
    const int64_t chunkRows = std::max<int64_t>(
        tileRows_, std::min<int64_t>({req.rows, kMaxChunkRows, kMaxChunkFloats / std::max(dim, C)}));
    const int64_t chunkTiles = (chunkRows + tileRows_ - 1) / tileRows_;
    const int blocks = static_cast<int>(std::min<int64_t>(maxBlocks_, chunkTiles));
    const size_t pointBytes = static_cast<size_t>(chunkRows) * dim * sizeof(float);
    const size_t rowBytes = static_cast<size_t>(chunkRows) * sizeof(float);
    if (sharedBytes_ == 0) ws->scratch.reserve(static_cast<size_t>(blocks) * layout_.total * sizeof(float));
    if (req.input) {
      ws->input.reserve(pointBytes);
      ws->hostInput.reserve(pointBytes);
    }
    if (req.outPoints) {
      ws->points.reserve(pointBytes);
      ws->hostPoints.reserve(pointBytes);
    }
    if (req.outLogDet) {
      ws->logDet.reserve(rowBytes);
      ws->hostLogDet.reserve(rowBytes);
    }
    if (req.outLogProb) {
      ws->logProb.reserve(rowBytes);
      ws->hostLogProb.reserve(rowBytes);
    }
    const bool broadcast = C > 0 && req.contextRows == 1;
    if (C > 0) {
      const size_t contextBytes = static_cast<size_t>(broadcast ? 1 : chunkRows) * C * sizeof(float);
      ws->context.reserve(contextBytes);
      ws->hostContext.reserve(contextBytes);
      if (broadcast) {
        std::memcpy(ws->hostContext.as(), req.context, C * sizeof(float));
        check(cudaMemcpyAsync(ws->context.as<float>(), ws->hostContext.as(), C * sizeof(float),
                              cudaMemcpyHostToDevice, ws->stream),
              "cudaMemcpyAsync (context)");
      }
    }
    for (int64_t first = 0; first < req.rows; first += chunkRows) {
      if (req.cancel && req.cancel->load(std::memory_order_relaxed)) {
        giveBack(std::move(ws));
        throw Cancelled();
      }
      const int64_t rows = std::min(chunkRows, req.rows - first);
      block::RunArgs args;
      args.toData = req.direction == Direction::ToData ? 1 : 0;
      args.seed = req.seed;
      args.streamFirstRow = req.firstRow + static_cast<uint64_t>(first);
      args.rows = rows;
      if (req.input) {
        const size_t bytes = static_cast<size_t>(rows) * dim * sizeof(float);
        std::memcpy(ws->hostInput.as(), req.input + first * dim, bytes);
        check(cudaMemcpyAsync(ws->input.as<float>(), ws->hostInput.as(), bytes, cudaMemcpyHostToDevice, ws->stream),
              "cudaMemcpyAsync (input)");
        args.input = ws->input.as<float>();
      }
      if (C > 0) {
        if (!broadcast) {
          const size_t bytes = static_cast<size_t>(rows) * C * sizeof(float);
          std::memcpy(ws->hostContext.as(), req.context + first * C, bytes);
          check(cudaMemcpyAsync(ws->context.as<float>(), ws->hostContext.as(), bytes, cudaMemcpyHostToDevice,
                                ws->stream),
                "cudaMemcpyAsync (context)");
        }
        args.context = ws->context.as<float>();
        args.contextRows = broadcast ? 1 : rows;
      }
      args.outPoints = req.outPoints ? ws->points.as<float>() : nullptr;
      args.outLogDet = req.outLogDet ? ws->logDet.as<float>() : nullptr;
      args.outLogProb = req.outLogProb ? ws->logProb.as<float>() : nullptr;
      const int64_t tiles = (rows + tileRows_ - 1) / tileRows_;
      const int grid = static_cast<int>(std::min<int64_t>(blocks, tiles));
      float* scratch = sharedBytes_ == 0 ? ws->scratch.as<float>() : nullptr;  // null: shared memory
      kernel_<<<grid, kThreadsPerBlock, sharedBytes_, ws->stream>>>(view_, layout_, args, scratch, tiles);
      check(cudaGetLastError(), "the flow kernel's launch");
      const size_t pointsBytes = static_cast<size_t>(rows) * dim * sizeof(float);
      const size_t rowsBytes = static_cast<size_t>(rows) * sizeof(float);
      if (req.outPoints)
        check(cudaMemcpyAsync(ws->hostPoints.as(), args.outPoints, pointsBytes, cudaMemcpyDeviceToHost, ws->stream),
              "cudaMemcpyAsync (points)");
      if (req.outLogDet)
        check(cudaMemcpyAsync(ws->hostLogDet.as(), args.outLogDet, rowsBytes, cudaMemcpyDeviceToHost, ws->stream),
              "cudaMemcpyAsync (log-det)");
      if (req.outLogProb)
        check(cudaMemcpyAsync(ws->hostLogProb.as(), args.outLogProb, rowsBytes, cudaMemcpyDeviceToHost, ws->stream),
              "cudaMemcpyAsync (log-density)");
      check(cudaStreamSynchronize(ws->stream), "the flow kernel");
      if (req.outPoints) std::memcpy(req.outPoints + first * dim, ws->hostPoints.as(), pointsBytes);
      if (req.outLogDet) std::memcpy(req.outLogDet + first, ws->hostLogDet.as(), rowsBytes);
      if (req.outLogProb) std::memcpy(req.outLogProb + first, ws->hostLogProb.as(), rowsBytes);
    }
    giveBack(std::move(ws));
  }

 private:
  template <class T>
  static void upload(DeviceBuffer& to, const std::vector<T>& from) {
    const size_t bytes = std::max<size_t>(sizeof(T), from.size() * sizeof(T));
    to.reserve(bytes);
    if (!from.empty()) check(cudaMemcpy(to.as<void>(), from.data(), from.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy (weights)");
  }

  std::unique_ptr<Workspace> takeWorkspace() const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        std::unique_ptr<Workspace> ws = std::move(free_.back());
        free_.pop_back();
        return ws;
      }
    }
    auto ws = std::make_unique<Workspace>();
    check(cudaStreamCreateWithFlags(&ws->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    return ws;
  }

  // A workspace whose call failed is dropped (its buffers may be in use by a failed launch).
  void giveBack(std::unique_ptr<Workspace> ws) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < 4) free_.push_back(std::move(ws));
  }

  std::shared_ptr<const FlowPlan> plan_;
  int device_;
  DeviceBuffer layers_, linears_, floats_, ints_;
  block::BlockPlan view_;
  block::ScratchLayout layout_;
  int tileRows_ = 64;
  FlowKernel kernel_ = nullptr;
  size_t sharedBytes_ = 0;  // dynamic shared memory per block; 0: the workspace is in global memory
  int maxBlocks_ = 1;
  mutable std::mutex mutex_;
  mutable std::vector<std::unique_ptr<Workspace>> free_;
};

class CudaBackend final : public Backend {
 public:
  BackendInfo info() const override {
    static const BackendInfo probed = [] {
      BackendInfo out;
      out.name = "cuda";
      out.whyNot = deviceProblem(kDevice);
      out.usable = out.whyNot.empty();
      cudaDeviceProp prop;
      if (out.usable && cudaGetDeviceProperties(&prop, kDevice) == cudaSuccess)
        out.detail = std::string(prop.name) + ", compute capability " + std::to_string(prop.major) + "." +
                     std::to_string(prop.minor) + ", " + std::to_string(prop.totalGlobalMem >> 20) +
                     " MiB; fp32 kernels, not yet verified on hardware";
      return out;
    }();
    return probed;
  }

  bool supports(const FlowPlan&, std::string*) const override { return true; }

  std::shared_ptr<const Runner> prepare(std::shared_ptr<const FlowPlan> plan) const override {
    const std::string problem = deviceProblem(kDevice);
    if (!problem.empty()) throw std::runtime_error("the cuda backend is not usable here: " + problem);
    return std::make_shared<CudaRunner>(std::move(plan), kDevice);
  }

  std::unique_ptr<Trainer> makeTrainer(const FlowSpec&, Direction, const FlowSpec*,
                                       const OptimizerOptions&) const override {
    return nullptr;  // training on CUDA is not built yet: the caller trains on the CPU
  }

 private:
  static constexpr int kDevice = 0;
};

}  // namespace
}  // namespace iaflow

extern "C" int iaflow_cuda_abi_version() { return iaflow::cudaAbiFingerprint(); }

extern "C" iaflow::Backend* iaflow_cuda_make_backend() {
  try {
    return new iaflow::CudaBackend();
  } catch (...) {
    return nullptr;
  }
}
