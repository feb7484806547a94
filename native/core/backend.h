// The one interface every compute backend implements (CPU here; CUDA behind
// the same calls). A request runs the whole chain of layers in one call.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "plan.h"

namespace iaflow {

enum class Direction : int {
  ToData = 0,    // latent z -> data x (sampling direction)
  ToLatent = 1,  // data x -> latent z (density direction)
};

struct RunRequest {
  Direction direction = Direction::ToData;
  // Input rows (rows * dim floats, row-major). When null, the input is standard
  // normal noise from the Philox stream: row r of this request is stream row
  // firstRow + r under `seed` (only meaningful with ToData).
  const float* input = nullptr;
  uint64_t seed = 0;
  uint64_t firstRow = 0;
  int64_t rows = 0;
  float* outPoints = nullptr;   // rows * dim, or null
  float* outLogDet = nullptr;   // rows: log|det d(output)/d(input)|, or null
  float* outLogProb = nullptr;  // rows: log-density of the data-side point, or null
  // The simple path, kept as the benchmark's baseline and the tests' second
  // oracle: dense masked products (no zero blocks skipped) and dim full network
  // passes for the sequential direction, as other libraries do.
  bool reference = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual void run(const FlowPlan& plan, const RunRequest& request) = 0;
};

std::unique_ptr<Backend> makeCpuBackend();

// rows * dim standard normals from the Philox stream (the latent draws `sample` uses).
void fillStandardNormal(uint64_t seed, uint64_t firstRow, int64_t rows, int dim, float* out);

}  // namespace iaflow

namespace iaflow {

// The machine's measured fp32 ceiling with the best kernel the project has: a
// square size x size x size product (dense, no zero blocks), repeated on the
// pool for at least minSeconds. Returns GFLOP/s (2 flops per multiply-add).
double measureMatmulGflops(int size, double minSeconds);

}  // namespace iaflow
