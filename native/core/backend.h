// The one interface every compute backend implements, ggml-style (docs/DESIGN.md,
// "Backend interface"): a backend says whether it can run on this machine and a
// given plan (and why not), prepares a plan once into a Runner (packing or
// uploading the weights) that then serves run requests, and creates trainers.
// A registry lists the backends; CUDA registers itself beside the CPU ones.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "plan.h"

namespace iaflow {

struct OptimizerOptions;
class Trainer;

enum class Direction : int {
  ToData = 0,    // latent z -> data x (sampling direction)
  ToLatent = 1,  // data x -> latent z (density direction)
};

// Set by the caller (an AbortSignal, a closing environment); polled by the backend
// before each tile of rows, so work stops within one tile.
using CancelFlag = std::atomic<bool>;

// Thrown by Runner::run when the request's cancel flag was raised.
class Cancelled : public std::runtime_error {
 public:
  Cancelled() : std::runtime_error("the operation was aborted") {}
};

struct RunRequest {
  Direction direction = Direction::ToData;
  // Input rows (rows * dim floats, row-major). When null, the input is standard
  // normal noise from the Philox stream: row r of this request is stream row
  // firstRow + r under `seed` (only meaningful with ToData), so a sample split
  // in pieces equals one call, bit for bit.
  const float* input = nullptr;
  uint64_t seed = 0;
  uint64_t firstRow = 0;
  int64_t rows = 0;
  float* outPoints = nullptr;   // rows * dim, or null
  float* outLogDet = nullptr;   // rows: log|det d(output)/d(input)|, or null
  float* outLogProb = nullptr;  // rows: log-density of the data-side point, or null
  // Conditional flows (FlowPlan::contextDim = C > 0): contextRows rows of C floats, row-major;
  // one row is every row's context (broadcast), else row r's context is row r.
  const float* context = nullptr;
  int64_t contextRows = 0;
  const CancelFlag* cancel = nullptr;  // optional
};

// A plan prepared for one backend. Thread-safe: concurrent runs are allowed.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual const FlowPlan& plan() const = 0;
  virtual void run(const RunRequest& request) const = 0;
};

struct BackendInfo {
  std::string name;
  bool usable = false;
  std::string whyNot;   // empty when usable
  std::string detail;   // e.g. the CPU's instruction set in use
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual BackendInfo info() const = 0;
  // Whether this backend runs `plan`; when not, `whyNot` says why.
  virtual bool supports(const FlowPlan& plan, std::string* whyNot) const = 0;
  virtual std::shared_ptr<const Runner> prepare(std::shared_ptr<const FlowPlan> plan) const = 0;
  // A trainer for `spec` along `pass` (see train.h), on this backend's kernels.
  virtual std::unique_ptr<Trainer> makeTrainer(const FlowSpec& spec, Direction pass, const FlowSpec* teacher,
                                               const OptimizerOptions& options) const = 0;
};

// ---- the registry ----

// Every registered backend, in order of preference (fastest first). The CPU
// backends are always there: "cpu" (the staircase kernels) and
// "cpu-reference" (the simple dense path: every weight multiplied, zeros
// included, and dim full network passes for the sequential direction, as
// other libraries do; the benchmark's baseline and the tests' second oracle).
std::vector<const Backend*> backends();
// The backend of that name, or null.
const Backend* findBackend(const std::string& name);
// The first usable backend that supports `plan` ("auto").
const Backend& preferredBackend(const FlowPlan& plan);
// Adds a backend (e.g. CUDA, once loaded); later lookups see it.
void registerBackend(std::unique_ptr<Backend> backend);

// Loads a backend library (the CUDA one, native/cuda/cuda_entry.h) from `path` with dlopen
// (RTLD_NOW | RTLD_LOCAL: its symbols stay its own), checks its ABI number, creates its backend
// and registers it in front. Returns "" when the backend is registered (loading the same library
// again is a no-op), else why not: the loader's error (missing file, not a library, unresolved
// symbols), a missing entry point, an ABI mismatch. Never throws. The library stays loaded for
// the life of the process (its runners may be in use until exit).
std::string loadBackendLibrary(const std::string& path);

// The CPU backends (cpu_backend.cc).
std::unique_ptr<Backend> makeCpuBackend(bool reference);
// The CUDA backend's kernels run on the CPU with emulated thread blocks (block_emulator.cc), for
// tests: "cuda-emulator" (5 threads a block) and "cuda-emulator-wide" (67); registered last
// (never preferred) when env IAFLOW_CUDA_EMULATOR=1 at the first use.
std::unique_ptr<Backend> makeCudaEmulatorBackend(bool wide);
// Registers both emulator backends, last, now (idempotent): the tests' hook for a process whose
// registry was made before IAFLOW_CUDA_EMULATOR was set.
void registerCudaEmulatorBackends();

// rows * dim standard normals from the Philox stream (the latent draws `sample` uses).
void fillStandardNormal(uint64_t seed, uint64_t firstRow, int64_t rows, int dim, float* out);

// The machine's fp32 rate with the best kernel the project has: a square
// size x size x size product (dense, no zero blocks), repeated on the pool for
// at least minSeconds. Returns GFLOP/s (2 flops per multiply-add). The
// benchmark reports it beside the external ceilings (an FMA probe, sgemm).
double measureMatmulGflops(int size, double minSeconds);

}  // namespace iaflow
