// The training core's layout (see train.cc), shared by train.cc and the training
// kernels that train_kernels.h compiles once per instruction set (kernels_<isa>.cc).
// Every function here is inline and is compiled for the build's baseline instruction
// set: the per-ISA files include this header before they select their target.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "backend.h"
#include "flow_math.h"
#include "plan.h"

namespace iaflow {
namespace training {

// Columns per block of the staircase products: plan.h's column block, which every
// instruction set's vector width divides (16 floats: one AVX-512 vector, two AVX2 ones).
constexpr int kBlock = kColumnBlock;
constexpr int kTile = 32;  // rows one task carries through the whole flow

// A masked linear layer of the plan (its shape and staircase: the plan's StaircaseLinear) with
// where training keeps its parameters. The weights live in the flat parameters, not in the plan:
// Net keeps the plan's structure only (buildNet moves the weights out).
struct TLinear {
  const StaircaseLinear* stairs = nullptr;
  int inStride = 0;     // the transposed copy's row stride: in rounded up to kBlock
  size_t w = 0, b = 0;  // offsets in the flat parameters: W [in][outStride], bias [outStride]
  size_t wt = 0;        // offset in the transposed copy: [out][inStride]
  std::vector<int> blockDepth;   // per column block: the inputs the block reads
  std::vector<int> firstReader;  // per input block: the first unit reading any input of it
  int in() const { return stairs->in; }
  int out() const { return stairs->out; }
  int outStride() const { return stairs->outStride; }
  const std::vector<int>& prefix() const { return stairs->prefix; }  // unit j reads inputs [0, prefix[j])
};

// A MADE layer of the plan (degrees, sources, activation, scale form, soft clamp, context form,
// residual: the plan's MadePlan) with training's parameter offsets and the per-row layout of what
// the backward pass needs.
struct TMade {
  const MadePlan* plan = nullptr;
  std::vector<TLinear> hidden;
  TLinear output;
  TLinear context;  // conditional MADE: the context term t = g(Wc c + bc) (plan.h's ContextForm), [C][outStride of hidden 0]
  // Per-row offsets (in floats) within a tile's cache. cacheCond: what the conditioner read
  // (cacheInput itself without a soft clamp); cacheContext: t per row (stride hidden 0's outStride).
  size_t cacheInput = 0, cacheOutput = 0, cacheCond = 0, cacheContext = 0;
  std::vector<size_t> cacheHidden;  // act(...) of each hidden layer
  // Residual MADE (see LayerSpec::residual): the pre-activation stream h of hidden layers
  // 0, 2, 4, ... (h_0 = W_0 u + b_0, h_l = W_l act(a_{l-1}) + b_l + h_{l-2}); the heads read h.
  std::vector<size_t> cacheStream;  // per hidden layer; used at even l only
};

// An elementwise affine layer, b = loc + sign * exp(logScale) * a. A trainable one keeps loc and
// logScale in the flat parameters (offsets loc, logScale), so its scale never crosses zero; a
// fixed one keeps them here, out of the optimizer's reach (weight decay included).
struct TAffine {
  bool trainable = false;
  size_t loc = 0, logScale = 0;                 // trainable: offsets in the flat parameters
  std::vector<float> fixedLoc, fixedLogScale;   // fixed: the values
  std::vector<float> fixedScale;                // fixed: the scale as given (exported exactly)
  std::vector<float> sign;                      // +1 or -1 per dimension
  size_t cacheInput = 0;                        // per-row offset of the layer's input (along the pass)
  const float* locOf(const float* params) const { return trainable ? params + loc : fixedLoc.data(); }
  const float* logScaleOf(const float* params) const { return trainable ? params + logScale : fixedLogScale.data(); }
};

struct TLayer {
  LayerKind kind = LayerKind::IAF;
  TMade made;
  std::vector<int> permutation;
  TAffine affine;
};

struct Net {
  std::shared_ptr<const FlowPlan> plan;  // structure only: its weights were moved into params
  int dim = 0, dimStride = 0;
  int contextDim = 0, contextStride = 0;  // conditional flows: a tile's context rows have stride contextStride
  Direction pass = Direction::ToLatent;
  bool reference = false;
  std::vector<TLayer> layers;
  size_t cachePerRow = 0;
  int maxHiddenStride = 0, maxOutStride = 0;
  std::vector<float> params, transposed;
  std::vector<const TLinear*> linears;

  void refreshTransposed(size_t first, size_t count) {
    for (size_t i = first; i < first + count; ++i) {
      const TLinear& L = *linears[i];
      const float* W = params.data() + L.w;
      float* T = transposed.data() + L.wt;
      const std::vector<int>& prefix = L.prefix();
      for (int j = 0; j < L.out(); ++j)
        for (int k = 0; k < prefix[j]; ++k) T[static_cast<size_t>(j) * L.inStride + k] = W[static_cast<size_t>(k) * L.outStride() + j];
    }
  }
};

// Per-worker buffers for one tile of rows.
struct Workspace {
  std::vector<float> points, gpoints, latent, tmp, logDet, cache, gOut, gA, gB, gC, gU, gCond;
  std::vector<float> context;  // conditional flows: the tile's context rows (kTile x contextStride), set by the caller
  std::vector<float> rowGrad;  // a tile's gradients along a sequential step, laid out as the cache
  // The affine cores (flow_math.h's AffineCore) of one position's rows, one array per field, and
  // their raw scales gathered: kTile floats each.
  std::vector<float> coreRaw, coreScale, coreLogScale, coreSigmoid;
  const Net* sizedFor = nullptr;

  void ensure(const Net& net) {
    if (sizedFor == &net) return;
    sizedFor = &net;
    const size_t cells = static_cast<size_t>(kTile) * net.dim;
    points.assign(cells, 0.0f);
    gpoints.assign(cells, 0.0f);
    latent.assign(cells, 0.0f);
    tmp.assign(cells, 0.0f);
    logDet.assign(kTile, 0.0f);
    cache.assign(static_cast<size_t>(kTile) * net.cachePerRow, 0.0f);
    rowGrad.assign(static_cast<size_t>(kTile) * net.cachePerRow, 0.0f);
    gOut.assign(static_cast<size_t>(kTile) * std::max(net.maxOutStride, kBlock), 0.0f);
    gA.assign(static_cast<size_t>(kTile) * std::max(net.maxHiddenStride, kBlock), 0.0f);
    gB.assign(gA.size(), 0.0f);
    gC.assign(gA.size(), 0.0f);
    gU.assign(static_cast<size_t>(kTile) * net.dimStride, 0.0f);
    gCond.assign(gU.size(), 0.0f);
    context.assign(static_cast<size_t>(kTile) * net.contextStride, 0.0f);
    for (std::vector<float>* core : {&coreRaw, &coreScale, &coreLogScale, &coreSigmoid}) core->assign(kTile, 0.0f);
  }
};

}  // namespace training
}  // namespace iaflow
