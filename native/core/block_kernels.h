// The CUDA backend's kernels, written once for a thread block: a block carries a tile of
// T rows (a template parameter: 32, 64 or 128) through every layer of the flow (the CPU backend's tile walk, with the
// block's threads sharing each step), its workspace in one per-block buffer.
//  - parallel direction: each product over 4 units x 4 rows stops at the 4 units' prefix,
//    so the zero tiles of the staircase are never read;
//  - sequential direction: at step p only the hidden units of degree p, then output p
//    (one pass over the weights, as on the CPU).
// The same code runs on the GPU (native/cuda/cuda_backend.cu, Sync = __syncthreads) and on
// the CPU under an emulator of thread blocks (block_emulator.cc: threads and a barrier),
// so the CPU test suite checks the kernels' logic (indexing, layout, the math) without a
// GPU. A function here may only share data between threads across a sync() that every
// thread of the block reaches (all loop bounds depend on the plan and the tile only).
#pragma once

#include <cstdint>
#include <cstdlib>

#include "block_plan.h"

#if defined(__CUDACC__)
#define IAF_BLOCK __device__ __forceinline__
#else
#define IAF_BLOCK inline
#endif

namespace iaflow {
namespace block {

struct Threads {
  int id;
  int count;
};

constexpr int kNoActivation = -1;

IAF_BLOCK float activateCode(int activation, float x) {
  return activation == kNoActivation ? x : activate(static_cast<Activation>(activation), x);
}

// Four consecutive floats from a 16-byte aligned address.
IAF_BLOCK void load4(const float* p, float out[4]) {
#if defined(__CUDACC__)
  const float4 v = *reinterpret_cast<const float4*>(p);
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
#else
  // The GPU's float4 load faults on a misaligned address: the emulator stops there too, so the CPU
  // suite checks the layout's alignment (block_plan.h pads every array and buffer for it).
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) std::abort();
  for (int i = 0; i < 4; ++i) out[i] = p[i];
#endif
}

// For units j in [lo, hi) of L and every row r of the tile (feature-major buffers):
// s = bias[j] + sum_{k < prefix[j]} W[k][j] xT[k][r] (+ residualT[j][r]); preActT[j][r] = s;
// yT[j][r] = act(s). Each thread takes W units (from a W-aligned start, so the weight loads are
// aligned; units outside [lo, hi) are computed and dropped) by 4 rows, and reads k up to the
// prefix of the highest of its units: the masked zeros above it are never read.
template <int T, int W>
IAF_BLOCK void linearUnitsOfWidth(Threads t, const BlockPlan& P, const LinearDesc& L, const float* xT, float* yT,
                                  int lo, int hi, int activation, const float* residualT, float* preActT) {
  const float* weights = P.floats + L.weight;
  const float* bias = P.floats + L.bias;
  const int* prefix = P.ints + L.prefix;
  const int stride = L.outStride;
  const int firstUnit = lo - lo % W;
  const int unitGroups = (hi - firstUnit + W - 1) / W;
  constexpr int rowGroups = T / 4;
  const int items = unitGroups * rowGroups;
  // Neighbouring threads share a unit group (one weight load serves them) and read
  // neighbouring rows (the activation loads coalesce).
  for (int item = t.id; item < items; item += t.count) {
    const int row0 = (item % rowGroups) * 4;
    const int unit0 = firstUnit + (item / rowGroups) * W;
    const int lastUnit = unit0 + W - 1 < hi - 1 ? unit0 + W - 1 : hi - 1;
    const int kEnd = prefix[lastUnit];
    float acc[W][4];
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (int k = 0; k < kEnd; ++k) {
      float w[4], x[4];
      const float* wk = weights + static_cast<int64_t>(k) * stride + unit0;
      if (W == 4) load4(wk, w);
      else
        for (int i = 0; i < W; ++i) w[i] = wk[i];
      load4(xT + k * T + row0, x);
      for (int i = 0; i < W; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(w[i], x[j], acc[i][j]);
    }
    for (int i = 0; i < W; ++i) {
      const int unit = unit0 + i;
      if (unit < lo || unit >= hi) continue;
      for (int j = 0; j < 4; ++j) {
        const int at = unit * T + row0 + j;
        float s = bias[unit] + acc[i][j];
        if (residualT) s += residualT[at];
        if (preActT) preActT[at] = s;
        yT[at] = activateCode(activation, s);
      }
    }
  }
}

// linearUnitsOfWidth with the widest unit group that still gives every thread of the block work:
// 4 units in the parallel direction, fewer for the sequential direction's small degree groups.
template <int T>
IAF_BLOCK void linearUnits(Threads t, const BlockPlan& P, const LinearDesc& L, const float* xT, float* yT, int lo,
                           int hi, int activation, const float* residualT, float* preActT) {
  if (hi <= lo) return;
  constexpr int rowGroups = T / 4;
  const int span = hi - (lo & ~3);
  if ((span + 3) / 4 * rowGroups >= t.count)
    linearUnitsOfWidth<T, 4>(t, P, L, xT, yT, lo, hi, activation, residualT, preActT);
  else if ((hi - (lo & ~1) + 1) / 2 * rowGroups >= t.count)
    linearUnitsOfWidth<T, 2>(t, P, L, xT, yT, lo, hi, activation, residualT, preActT);
  else
    linearUnitsOfWidth<T, 1>(t, P, L, xT, yT, lo, hi, activation, residualT, preActT);
}

// Raw shift and raw scale (output columns 2p and 2p + 1 of H, without the bias) of 4 rows from
// row0, over the inputs [k0, k1) of hT.
template <int T>
IAF_BLOCK void headSums(const BlockPlan& P, const LinearDesc& H, const float* hT, int p, int row0, int k0, int k1,
                        float shift[4], float rawScale[4]) {
  const float* W = P.floats + H.weight;
  const int stride = H.outStride;
  for (int j = 0; j < 4; ++j) {
    shift[j] = 0.0f;
    rawScale[j] = 0.0f;
  }
  for (int k = k0; k < k1; ++k) {
    const float wShift = W[static_cast<int64_t>(k) * stride + 2 * p];
    const float wScale = W[static_cast<int64_t>(k) * stride + 2 * p + 1];
    float x[4];
    load4(hT + k * T + row0, x);
    for (int j = 0; j < 4; ++j) {
      shift[j] = fmaf(wShift, x[j], shift[j]);
      rawScale[j] = fmaf(wScale, x[j], rawScale[j]);
    }
  }
}

// The affine step of position p, row `at` (p * T + r), from the raw head sums.
IAF_BLOCK void affineStep(const BlockPlan& P, const LinearDesc& H, int p, int at, float shift, float rawScale,
                          const float* inT, float* outT, float* logScaleT, int scaleKind, bool inverse, float* condT,
                          float clampInv) {
  const float* bias = P.floats + H.bias;
  const Affine a = affineFromRaw(static_cast<ScaleKind>(scaleKind), bias[2 * p + 1] + rawScale, bias[2 * p] + shift);
  if (!inverse) {
    outT[at] = inT[at] * a.scale + a.shift;
    logScaleT[at] = a.logScale;
  } else {
    float logDet = 0.0f;
    const float u = solveAffine(inT[at], a, logDet);
    outT[at] = u;
    logScaleT[at] = logDet;
    if (clampInv != 0.0f) condT[at] = softClamp(u, clampInv);
  }
}

// The affine head for positions [p0, p1): raw shift and raw scale are output columns 2p and
// 2p + 1 of H on hT. Forward: outT[p] = inT[p] * scale + shift, logScaleT[p] = log scale.
// Inverse (solve): outT[p] = (inT[p] - shift) / scale (flow_math.h's solveAffine), logScaleT[p] =
// minus its log scale (0 for a solution outside float32); with clampInv != 0, condT[p] =
// softClamp(outT[p]) for the conditioner's next steps. Each thread: one position, 4 rows; but
// one position (the sequential direction's step) with threads to spare is split over up to
// kHeadSlices slices of its inputs, whose partial sums (in `partial`) are then added in slice
// order: the step's long dot products run on many threads instead of T / 4. Ends with a sync.
template <int T, class Sync>
IAF_BLOCK void affineHead(Threads t, Sync& sync, const BlockPlan& P, const LinearDesc& H, const float* hT,
                          const float* inT, float* outT, float* logScaleT, int p0, int p1, int scaleKind, bool inverse,
                          float* condT, float clampInv, float* partial) {
  const int* prefix = P.ints + H.prefix;
  constexpr int rowGroups = T / 4;
  const int items = (p1 - p0) * rowGroups;
  const int slices = p1 - p0 == 1 ? (t.count / items < kHeadSlices ? t.count / items : kHeadSlices) : 1;
  if (slices <= 1) {
    for (int item = t.id; item < items; item += t.count) {
      const int row0 = (item % rowGroups) * 4;
      const int p = p0 + item / rowGroups;
      const int kEnd = prefix[2 * p] > prefix[2 * p + 1] ? prefix[2 * p] : prefix[2 * p + 1];
      float shift[4], rawScale[4];
      headSums<T>(P, H, hT, p, row0, 0, kEnd, shift, rawScale);
      for (int j = 0; j < 4; ++j)
        affineStep(P, H, p, p * T + row0 + j, shift[j], rawScale[j], inT, outT, logScaleT, scaleKind, inverse, condT,
                   clampInv);
    }
    sync();
    return;
  }
  const int p = p0;
  const int kEnd = prefix[2 * p] > prefix[2 * p + 1] ? prefix[2 * p] : prefix[2 * p + 1];
  // partial[(slice * 2 + 0 or 1) * T + r]: the slice's shift and raw scale sums of row r.
  for (int item = t.id; item < slices * rowGroups; item += t.count) {
    const int slice = item / rowGroups, row0 = (item % rowGroups) * 4;
    float shift[4], rawScale[4];
    headSums<T>(P, H, hT, p, row0, kEnd * slice / slices, kEnd * (slice + 1) / slices, shift, rawScale);
    for (int j = 0; j < 4; ++j) {
      partial[(slice * 2) * T + row0 + j] = shift[j];
      partial[(slice * 2 + 1) * T + row0 + j] = rawScale[j];
    }
  }
  sync();
  for (int r = t.id; r < T; r += t.count) {
    float shift = 0.0f, rawScale = 0.0f;
    for (int slice = 0; slice < slices; ++slice) {
      shift += partial[(slice * 2) * T + r];
      rawScale += partial[(slice * 2 + 1) * T + r];
    }
    affineStep(P, H, p, p * T + r, shift, rawScale, inT, outT, logScaleT, scaleKind, inverse, condT, clampInv);
  }
  sync();
}

// The buffers of one block's tile workspace.
struct Tile {
  float* point;
  float* sortedIn;
  float* sortedOut;
  float* condIn;
  float* logScale;
  float* contextIn;
  float* contextTerm;
  float* hidden;
  float* stream;
  float* logDet;
  float* baseLogDensity;
  float* headPartial;
  int widest;
  int tileRows;

  IAF_BLOCK float* hiddenAt(int l) const { return hidden + static_cast<int64_t>(l) * widest * tileRows; }
  IAF_BLOCK float* streamAt(int l) const { return stream + static_cast<int64_t>(l) * widest * tileRows; }
};

IAF_BLOCK Tile tileIn(float* base, const ScratchLayout& s, int widest, int tileRows) {
  return Tile{base + s.point,     base + s.sortedIn,    base + s.sortedOut, base + s.condIn,
              base + s.logScale,  base + s.contextIn,   base + s.contextTerm, base + s.hidden,
              base + s.stream,    base + s.logDet,      base + s.baseLogDensity, base + s.headPartial, widest, tileRows};
}

// Hidden layer l of MADE d: chained act(W x + b), hidden layer 0 plus the context term, and in a
// residual MADE the pre-activation stream of layers 0, 2, 4, ... (each block's second layer adds
// the stream two layers back). firstInput is what the conditioner reads.
template <int T>
IAF_BLOCK void hiddenUnits(Threads t, const BlockPlan& P, const LayerDesc& d, const Tile& s, int l,
                           const float* firstInput, int lo, int hi) {
  const float* input = l == 0 ? firstInput : s.hiddenAt(l - 1);
  const float* residual = nullptr;
  float* preAct = nullptr;
  if (l == 0 && d.contextForm != static_cast<int>(ContextForm::None)) residual = s.contextTerm;
  if (d.residual && l % 2 == 0) {
    preAct = s.streamAt(l);
    if (l > 0) residual = s.streamAt(l - 2);
  }
  linearUnits<T>(t, P, P.linears[d.firstHidden + l], input, s.hiddenAt(l), lo, hi, d.activation, residual, preAct);
}

IAF_BLOCK const float* headInput(const LayerDesc& d, const Tile& s) {
  return d.residual ? s.streamAt(d.hiddenCount - 1) : s.hiddenAt(d.hiddenCount - 1);
}

// Sorted feature-major copy of the tile's points, and the context term g(Wc c + bc).
template <int T, class Sync>
IAF_BLOCK void madeStart(Threads t, Sync& sync, const BlockPlan& P, const LayerDesc& d, const Tile& s) {
  const int dim = P.dim;
  const int* dimAtPosition = P.ints + d.dimAtPosition;
  for (int item = t.id; item < dim * T; item += t.count) {
    const int p = item / T, r = item % T;
    s.sortedIn[item] = s.point[r * dim + dimAtPosition[p]];
  }
  if (d.contextForm != static_cast<int>(ContextForm::None)) {
    const LinearDesc& C = P.linears[d.context];
    const int g = d.contextForm == static_cast<int>(ContextForm::Activated) ? d.activation : kNoActivation;
    linearUnits<T>(t, P, C, s.contextIn, s.contextTerm, 0, C.out, g, nullptr, nullptr);
  }
  sync();
}

// Back to row-major original order, and each row's log-det (positions summed in order).
template <int T, class Sync>
IAF_BLOCK void madeFinish(Threads t, Sync& sync, const BlockPlan& P, const LayerDesc& d, const Tile& s,
                          const float* resultT) {
  const int dim = P.dim;
  const int* dimAtPosition = P.ints + d.dimAtPosition;
  for (int item = t.id; item < dim * T; item += t.count) {
    const int p = item / T, r = item % T;
    s.point[r * dim + dimAtPosition[p]] = resultT[item];
  }
  for (int r = t.id; r < T; r += t.count) {
    float sum = 0.0f;
    for (int p = 0; p < dim; ++p) sum += s.logScale[p * T + r];
    s.logDet[r] += sum;
  }
  sync();
}

// v = u * scale(u) + shift(u) for every position at once.
template <int T, class Sync>
IAF_BLOCK void madeParallel(Threads t, Sync& sync, const BlockPlan& P, const LayerDesc& d, const Tile& s) {
  madeStart<T>(t, sync, P, d, s);
  const float* cond = s.sortedIn;
  if (d.softClampInv != 0.0f) {
    for (int item = t.id; item < P.dim * T; item += t.count) s.condIn[item] = softClamp(s.sortedIn[item], d.softClampInv);
    cond = s.condIn;
    sync();
  }
  for (int l = 0; l < d.hiddenCount; ++l) {
    hiddenUnits<T>(t, P, d, s, l, cond, 0, P.linears[d.firstHidden + l].out);
    sync();
  }
  affineHead<T>(t, sync, P, P.linears[d.output], headInput(d, s), s.sortedIn, s.sortedOut, s.logScale, 0, P.dim,
                d.scale, false, nullptr, 0.0f, s.headPartial);
  madeFinish<T>(t, sync, P, d, s, s.sortedOut);
}

// Solves v = u * scale(u) + shift(u) for u one position at a time; each hidden unit is
// computed once, at the step of its degree.
template <int T, class Sync>
IAF_BLOCK void madeSequential(Threads t, Sync& sync, const BlockPlan& P, const LayerDesc& d, const Tile& s) {
  madeStart<T>(t, sync, P, d, s);
  const int dim = P.dim;
  float* u = s.sortedOut;
  const bool clamp = d.softClampInv != 0.0f;
  const float* cond = clamp ? s.condIn : u;
  const int* upTo = P.ints + d.unitsUpToDegree;  // [l][degree], dim + 1 per layer
  for (int p = 0; p < dim; ++p) {
    for (int l = 0; l < d.hiddenCount; ++l) {
      const int lo = p == 0 ? 0 : upTo[l * (dim + 1) + p - 1];
      const int hi = upTo[l * (dim + 1) + p];
      if (hi == lo) continue;  // the same for every thread of the block
      hiddenUnits<T>(t, P, d, s, l, cond, lo, hi);
      sync();
    }
    affineHead<T>(t, sync, P, P.linears[d.output], headInput(d, s), s.sortedIn, u, s.logScale, p, p + 1, d.scale,
                  true, s.condIn, clamp ? d.softClampInv : 0.0f, s.headPartial);
  }
  madeFinish<T>(t, sync, P, d, s, u);
}

template <int T, class Sync>
IAF_BLOCK void baseLogDensity(Threads t, Sync& sync, const BlockPlan& P, const Tile& s) {
  for (int r = t.id; r < T; r += t.count) {
    float sum = 0.0f;
    for (int i = 0; i < P.dim; ++i) sum += standardNormalLogDensity(s.point[r * P.dim + i]);
    s.baseLogDensity[r] = sum;
  }
  sync();
}

// Rows [first, first + rows) of the chunk (rows <= T) through every layer of the flow;
// a short tile's missing rows ride along as zeros. `base` is the block's workspace, laid out
// as `layout` (scratchLayout(P), computed once on the host).
template <int T, class Sync>
IAF_BLOCK void runTile(Threads t, Sync& sync, const BlockPlan& P, const ScratchLayout& layout, const RunArgs& a,
                       float* base, int64_t first, int rows) {
  const int dim = P.dim, C = P.contextDim;
  const Tile s = tileIn(base, layout, P.widest, T);
  if (a.input) {
    for (int i = t.id; i < T * dim; i += t.count) s.point[i] = i < rows * dim ? a.input[first * dim + i] : 0.0f;
  } else {
    // The Philox stream of flow_math.h: dimensions 4b .. 4b + 3 of a row are one block.
    const int blocks = (dim + 3) / 4;
    for (int item = t.id; item < T * blocks; item += t.count) {
      const int r = item / blocks, b = item % blocks;
      float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (r < rows) standardNormals4(a.seed, a.streamFirstRow + static_cast<uint64_t>(first + r), b, z);
      for (int i = 0; i < 4 && 4 * b + i < dim; ++i) s.point[r * dim + 4 * b + i] = z[i];
    }
  }
  for (int item = t.id; item < C * T; item += t.count) {
    const int k = item / T, r = item % T;
    const int64_t row = a.contextRows == 1 ? 0 : first + r;
    s.contextIn[item] = r < rows ? a.context[row * C + k] : 0.0f;
  }
  for (int r = t.id; r < T; r += t.count) s.logDet[r] = 0.0f;
  sync();
  const bool toData = a.toData != 0;
  if (toData && a.outLogProb) baseLogDensity<T>(t, sync, P, s);
  for (int step = 0; step < P.layerCount; ++step) {
    const LayerDesc& d = P.layers[toData ? step : P.layerCount - 1 - step];
    if (d.kind == static_cast<int>(LayerKind::Permutation)) {
      const int* perm = P.ints + d.permutation;
      for (int i = t.id; i < T * dim; i += t.count) s.sortedIn[i] = s.point[i];
      sync();
      for (int i = t.id; i < T * dim; i += t.count) {
        const int r = i / dim, k = i % dim;
        // toward the data b[k] = a[perm[k]]; toward the latent a[perm[k]] = b[k]
        if (toData) s.point[i] = s.sortedIn[r * dim + perm[k]];
        else s.point[r * dim + perm[k]] = s.sortedIn[i];
      }
      sync();
    } else if (d.kind == static_cast<int>(LayerKind::Affine)) {
      const float* loc = P.floats + d.affineLoc;
      const float* scale = P.floats + d.affineScale;
      for (int i = t.id; i < T * dim; i += t.count) {
        const int k = i % dim;
        s.point[i] = toData ? loc[k] + scale[k] * s.point[i] : (s.point[i] - loc[k]) / scale[k];
      }
      for (int r = t.id; r < T; r += t.count) s.logDet[r] += toData ? d.logAbsScaleSum : -d.logAbsScaleSum;
      sync();
    } else if ((d.parallelTowardData != 0) == toData) {
      madeParallel<T>(t, sync, P, d, s);
    } else {
      madeSequential<T>(t, sync, P, d, s);
    }
  }
  if (!toData && a.outLogProb) baseLogDensity<T>(t, sync, P, s);
  if (a.outPoints)
    for (int i = t.id; i < rows * dim; i += t.count) a.outPoints[first * dim + i] = s.point[i];
  for (int r = t.id; r < rows; r += t.count) {
    if (a.outLogDet) a.outLogDet[first + r] = s.logDet[r];
    if (a.outLogProb) {
      // sampling: log q(x) = log N(z) - log|det dx/dz|; scoring: log N(z) + log|det dz/dx|
      float logProb = toData ? s.baseLogDensity[r] - s.logDet[r] : s.baseLogDensity[r] + s.logDet[r];
      if (toData)
        for (int i = 0; i < dim; ++i)
          if (!(fabsf(s.point[r * dim + i]) <= kFloatMax)) logProb = NAN;  // a solve that left float32
      a.outLogProb[first + r] = logProb;
    }
  }
  sync();  // the workspace is reused by the block's next tile
}

}  // namespace block
}  // namespace iaflow
