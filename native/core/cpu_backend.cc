// CPU backend: each task owns a tile of rows and carries it through every
// layer of the flow with its activations in cache. Both directions read the
// degree-sorted staircase weights of plan.h:
//  - parallel: every column block stops at the block's prefix, so zero tiles
//    are never touched;
//  - sequential: at step p only the hidden units of degree p are computed, then
//    output p, so each weight is used once per row (one pass, not dim passes).
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend.h"
#include "thread_pool.h"

namespace iaflow {
namespace {

constexpr int kTileRows = 32;
constexpr int kRowBlock = 4;

struct Scratch {
  std::vector<float> point;      // kTileRows * dim, original dimension order
  std::vector<float> sortedIn;   // kTileRows * dim, degree order
  std::vector<float> sortedOut;  // kTileRows * dim
  std::vector<std::vector<float>> hidden;
  std::vector<float> output;
  std::vector<float> logDet;
  std::vector<float> baseLogDensity;

  int dim = -1, depth = -1, widest = -1;

  // Sized for the plan at hand; a scratch may serve plans of different shapes.
  void ensure(const FlowPlan& plan) {
    if (dim == plan.dim && depth == plan.deepestHidden && widest == plan.widestHidden) return;
    dim = plan.dim;
    depth = plan.deepestHidden;
    widest = plan.widestHidden;
    const size_t cells = static_cast<size_t>(kTileRows) * dim;
    point.assign(cells, 0.0f);
    sortedIn.assign(cells, 0.0f);
    sortedOut.assign(cells, 0.0f);
    hidden.assign(depth, std::vector<float>(static_cast<size_t>(kTileRows) * widest));
    const int outStride = ((2 * dim + kColumnBlock - 1) / kColumnBlock) * kColumnBlock;
    output.assign(static_cast<size_t>(kTileRows) * outStride, 0.0f);
    logDet.assign(kTileRows, 0.0f);
    baseLogDensity.assign(kTileRows, 0.0f);
  }
};

// Y[r, j] = act(bias[j] + sum_{k < prefix} X[r, k] W[k, j]) for all units,
// one block of kColumnBlock columns at a time.
template <int kRows, bool kActivate, Activation A>
inline void linearRows(const StaircaseLinear& L, const float* X, int xStride, float* Y) {
  for (int jb = 0; jb < L.out; jb += kColumnBlock) {
    const int depth = L.prefix[std::min(jb + kColumnBlock, L.out) - 1];
    float acc[kRows][kColumnBlock];
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kColumnBlock; ++c) acc[r][c] = L.bias[jb + c];
    const float* w = L.weightKM.data() + jb;
    for (int kk = 0; kk < depth; ++kk) {
      const float* wk = w + static_cast<size_t>(kk) * L.outStride;
      for (int r = 0; r < kRows; ++r) {
        const float x = X[r * xStride + kk];
        for (int c = 0; c < kColumnBlock; ++c) acc[r][c] += x * wk[c];
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kColumnBlock; ++c)
        Y[r * L.outStride + jb + c] = kActivate ? activate<A>(acc[r][c]) : acc[r][c];
  }
}

template <bool kActivate, Activation A>
void linearForward(const StaircaseLinear& L, const float* X, int xStride, int rows, float* Y) {
  int r = 0;
  for (; r + kRowBlock <= rows; r += kRowBlock)
    linearRows<kRowBlock, kActivate, A>(L, X + r * xStride, xStride, Y + r * L.outStride);
  for (; r < rows; ++r) linearRows<1, kActivate, A>(L, X + r * xStride, xStride, Y + r * L.outStride);
}

// The reference path's product: every input times every weight, zeros included.
template <bool kActivate, Activation A>
void linearDense(const StaircaseLinear& L, const float* X, int xStride, int rows, float* Y) {
  for (int r = 0; r < rows; ++r) {
    float* y = Y + r * L.outStride;
    for (int j = 0; j < L.out; ++j) y[j] = L.bias[j];
    for (int kk = 0; kk < L.in; ++kk) {
      const float x = X[r * xStride + kk];
      const float* wk = L.weightKM.data() + static_cast<size_t>(kk) * L.outStride;
      for (int j = 0; j < L.out; ++j) y[j] += x * wk[j];
    }
    if (kActivate)
      for (int j = 0; j < L.out; ++j) y[j] = activate<A>(y[j]);
  }
}

// Raw conditioner outputs for the sorted inputs `x` (rows x dim) into s.output.
template <bool kReference, Activation A>
void conditioner(const MadePlan& m, Scratch& s, const float* x, int rows) {
  int xStride = m.dim;
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    if (kReference) linearDense<true, A>(m.hidden[l], x, xStride, rows, s.hidden[l].data());
    else linearForward<true, A>(m.hidden[l], x, xStride, rows, s.hidden[l].data());
    x = s.hidden[l].data();
    xStride = m.hidden[l].outStride;
  }
  if (kReference) linearDense<false, A>(m.output, x, xStride, rows, s.output.data());
  else linearForward<false, A>(m.output, x, xStride, rows, s.output.data());
}

// Units [lo, hi) of one layer, all reading the first `depth` inputs.
template <Activation A>
void linearUnits(const StaircaseLinear& L, const float* X, int xStride, int rows, float* Y, int lo, int hi,
                 int depth) {
  for (int r = 0; r < rows; ++r) {
    float* y = Y + r * L.outStride;
    const float* x = X + r * xStride;
    for (int j = lo; j < hi; ++j) y[j] = L.bias[j];
    for (int kk = 0; kk < depth; ++kk) {
      const float xk = x[kk];
      const float* wk = L.weightKM.data() + static_cast<size_t>(kk) * L.outStride;
      for (int j = lo; j < hi; ++j) y[j] += xk * wk[j];
    }
    for (int j = lo; j < hi; ++j) y[j] = activate<A>(y[j]);
  }
}

// v = u * scale(u) + shift(u) for the rows of the tile; logDet += sum log scale.
template <bool kReference, Activation A, ScaleKind S>
void madeParallel(const MadePlan& m, Scratch& s, int rows) {
  const int dim = m.dim;
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) s.sortedIn[r * dim + p] = s.point[r * dim + m.dimAtPosition[p]];
  conditioner<kReference, A>(m, s, s.sortedIn.data(), rows);
  const int os = m.output.outStride;
  for (int r = 0; r < rows; ++r) {
    float logDet = 0.0f;
    for (int p = 0; p < dim; ++p) {
      const Affine a = affineFromRaw<S>(s.output[r * os + 2 * p + 1], s.output[r * os + 2 * p]);
      s.point[r * dim + m.dimAtPosition[p]] = s.sortedIn[r * dim + p] * a.scale + a.shift;
      logDet += a.logScale;
    }
    s.logDet[r] += logDet;
  }
}

// The reference sequential direction: dim full passes from u = 0; after pass p
// the first p + 1 positions are exact, and the last pass's scales give the log-det.
template <Activation A, ScaleKind S>
void madeSequentialByPasses(const MadePlan& m, Scratch& s, int rows) {
  const int dim = m.dim;
  float* v = s.sortedIn.data();
  float* u = s.sortedOut.data();
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) {
      v[r * dim + p] = s.point[r * dim + m.dimAtPosition[p]];
      u[r * dim + p] = 0.0f;
    }
  const int os = m.output.outStride;
  for (int pass = 0; pass < dim; ++pass) {
    conditioner<true, A>(m, s, u, rows);
    const bool last = pass == dim - 1;
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) {
        const Affine a = affineFromRaw<S>(s.output[r * os + 2 * p + 1], s.output[r * os + 2 * p]);
        u[r * dim + p] = (v[r * dim + p] - a.shift) / a.scale;
        if (last) s.logDet[r] -= a.logScale;
      }
  }
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) s.point[r * dim + m.dimAtPosition[p]] = u[r * dim + p];
}

// Solves v = u * scale(u) + shift(u) for u, one degree at a time, computing
// each hidden unit exactly once; logDet -= sum log scale (d u / d v).
template <Activation A, ScaleKind S>
void madeSequential(const MadePlan& m, Scratch& s, int rows) {
  const int dim = m.dim;
  const size_t depth = m.hidden.size();
  float* v = s.sortedIn.data();
  float* u = s.sortedOut.data();
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) v[r * dim + p] = s.point[r * dim + m.dimAtPosition[p]];
  const StaircaseLinear& out = m.output;
  const float* lastHidden = s.hidden[depth - 1].data();
  const int lastStride = m.hidden[depth - 1].outStride;
  for (int p = 0; p < dim; ++p) {
    // Units of degree p read inputs of degree <= p, all known now.
    for (size_t l = 0; l < depth; ++l) {
      const int lo = p == 0 ? 0 : m.unitsUpToDegree[l][p - 1];
      const int hi = m.unitsUpToDegree[l][p];
      if (hi == lo) continue;
      const float* x = l == 0 ? u : s.hidden[l - 1].data();
      const int xStride = l == 0 ? dim : m.hidden[l - 1].outStride;
      const int inputDepth = l == 0 ? p : m.unitsUpToDegree[l - 1][p];
      linearUnits<A>(m.hidden[l], x, xStride, rows, s.hidden[l].data(), lo, hi, inputDepth);
    }
    const int outDepth = m.unitsUpToDegree[depth - 1][p];
    const int cShift = 2 * p, cScale = 2 * p + 1;
    for (int r = 0; r < rows; ++r) {
      float rawShift = out.bias[cShift], rawScale = out.bias[cScale];
      const float* h = lastHidden + r * lastStride;
      for (int kk = 0; kk < outDepth; ++kk) {
        const float* wk = out.weightKM.data() + static_cast<size_t>(kk) * out.outStride;
        rawShift += h[kk] * wk[cShift];
        rawScale += h[kk] * wk[cScale];
      }
      const Affine a = affineFromRaw<S>(rawScale, rawShift);
      u[r * dim + p] = (v[r * dim + p] - a.shift) / a.scale;
      s.logDet[r] -= a.logScale;
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) s.point[r * dim + m.dimAtPosition[p]] = u[r * dim + p];
}

template <Activation A, ScaleKind S>
void madeLayer(const MadePlan& m, Scratch& s, int rows, bool parallel, bool reference) {
  if (parallel) {
    if (reference) madeParallel<true, A, S>(m, s, rows);
    else madeParallel<false, A, S>(m, s, rows);
  } else {
    if (reference) madeSequentialByPasses<A, S>(m, s, rows);
    else madeSequential<A, S>(m, s, rows);
  }
}

template <Activation A>
void madeLayerForScale(const MadePlan& m, Scratch& s, int rows, bool parallel, bool reference) {
  switch (m.scale) {
    case ScaleKind::Softplus: return madeLayer<A, ScaleKind::Softplus>(m, s, rows, parallel, reference);
    case ScaleKind::Exp: return madeLayer<A, ScaleKind::Exp>(m, s, rows, parallel, reference);
    default: return madeLayer<A, ScaleKind::Gated>(m, s, rows, parallel, reference);
  }
}

void runMade(const MadePlan& m, Scratch& s, int rows, Direction direction, bool reference) {
  // The parallel pass runs when we travel the way the layer's parallel direction points.
  const bool parallel = (direction == Direction::ToData) == m.parallelTowardData;
  switch (m.activation) {
    case Activation::ReLU: return madeLayerForScale<Activation::ReLU>(m, s, rows, parallel, reference);
    case Activation::Tanh: return madeLayerForScale<Activation::Tanh>(m, s, rows, parallel, reference);
    default: return madeLayerForScale<Activation::ELU>(m, s, rows, parallel, reference);
  }
}

void runPermutation(const std::vector<int>& perm, Scratch& s, int rows, int dim, Direction direction) {
  float* tmp = s.sortedIn.data();
  std::copy_n(s.point.data(), static_cast<size_t>(rows) * dim, tmp);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < dim; ++i) {
      if (direction == Direction::ToData) s.point[r * dim + i] = tmp[r * dim + perm[i]];
      else s.point[r * dim + perm[i]] = tmp[r * dim + i];
    }
}

void fillNormalRows(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out) {
  float four[4];
  for (int r = 0; r < rows; ++r) {
    for (int block = 0; 4 * block < dim; ++block) {
      standardNormals4(seed, firstRow + r, static_cast<uint32_t>(block), four);
      for (int c = 0; c < 4 && 4 * block + c < dim; ++c) out[static_cast<size_t>(r) * dim + 4 * block + c] = four[c];
    }
  }
}

void runTile(const FlowPlan& plan, const RunRequest& req, Scratch& s, int64_t firstRow, int rows) {
  const int dim = plan.dim;
  s.ensure(plan);
  if (req.input) {
    std::copy_n(req.input + firstRow * dim, static_cast<size_t>(rows) * dim, s.point.data());
  } else {
    fillNormalRows(req.seed, req.firstRow + static_cast<uint64_t>(firstRow), rows, dim, s.point.data());
  }
  std::fill_n(s.logDet.data(), rows, 0.0f);
  const bool toData = req.direction == Direction::ToData;
  if (toData && req.outLogProb) {
    for (int r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (int i = 0; i < dim; ++i) sum += standardNormalLogDensity(s.point[r * dim + i]);
      s.baseLogDensity[r] = sum;
    }
  }
  const int count = static_cast<int>(plan.layers.size());
  for (int step = 0; step < count; ++step) {
    const LayerPlan& layer = plan.layers[toData ? step : count - 1 - step];
    if (layer.kind == LayerKind::Permutation) runPermutation(layer.permutation, s, rows, dim, req.direction);
    else runMade(layer.made, s, rows, req.direction, req.reference);
  }
  if (!toData && req.outLogProb) {
    for (int r = 0; r < rows; ++r) {
      float sum = 0.0f;
      for (int i = 0; i < dim; ++i) sum += standardNormalLogDensity(s.point[r * dim + i]);
      s.baseLogDensity[r] = sum;
    }
  }
  if (req.outPoints) std::copy_n(s.point.data(), static_cast<size_t>(rows) * dim, req.outPoints + firstRow * dim);
  if (req.outLogDet) std::copy_n(s.logDet.data(), rows, req.outLogDet + firstRow);
  if (req.outLogProb) {
    // sampling: log q(x) = log N(z) - log|det dx/dz|; scoring: log N(z) + log|det dz/dx|
    for (int r = 0; r < rows; ++r)
      req.outLogProb[firstRow + r] = toData ? s.baseLogDensity[r] - s.logDet[r] : s.baseLogDensity[r] + s.logDet[r];
  }
}

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void run(const FlowPlan& plan, const RunRequest& req) override {
    if (req.rows <= 0) return;
    const int64_t tiles = (req.rows + kTileRows - 1) / kTileRows;
    if (tiles == 1) {
      // Small batches skip the pool: no wake-up latency.
      thread_local Scratch local;
      runTile(plan, req, local, 0, static_cast<int>(req.rows));
      return;
    }
    std::shared_ptr<ThreadPool> pool = currentPool();
    std::vector<Scratch> scratch(pool->size());
    pool->parallelFor(tiles, [&](int64_t tile, int worker) {
      const int64_t first = tile * kTileRows;
      const int rows = static_cast<int>(std::min<int64_t>(kTileRows, req.rows - first));
      runTile(plan, req, scratch[worker], first, rows);
    });
  }
};

}  // namespace

std::unique_ptr<Backend> makeCpuBackend() { return std::make_unique<CpuBackend>(); }

void fillStandardNormal(uint64_t seed, uint64_t firstRow, int64_t rows, int dim, float* out) {
  const int64_t chunk = 1024;
  const int64_t chunks = (rows + chunk - 1) / chunk;
  currentPool()->parallelFor(chunks, [&](int64_t c, int) {
    const int64_t first = c * chunk;
    const int count = static_cast<int>(std::min<int64_t>(chunk, rows - first));
    fillNormalRows(seed, firstRow + first, count, dim, out + first * dim);
  });
}

}  // namespace iaflow
