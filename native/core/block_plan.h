// A FlowPlan flattened for thread blocks (block_kernels.h): plain structs of sizes and
// offsets into four arrays, so the same bytes serve the CUDA backend (uploaded once at
// prepare) and the CPU emulator of its kernels (read in place). Header-only: the CUDA
// library is built apart from the core and compiles its own copy.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "plan.h"

namespace iaflow {
namespace block {

// Rows per tile (a thread block carries a tile of rows through every layer of the flow): the
// kernels are templates on it, instantiated for 32, 64 and 128; a multiple of 4 (threads work
// on 4 rows at a time).

// One staircase layer: offsets into BlockPlan::floats (weight [in][outStride], bias) and ints (prefix).
struct LinearDesc {
  int in = 0, out = 0, outStride = 0;
  int64_t weight = 0, bias = 0, prefix = 0;
};

struct LayerDesc {
  int kind = 0;  // LayerKind
  // MADE layers
  int residual = 0, parallelTowardData = 0, activation = 0, scale = 0, contextForm = 0;
  float softClampInv = 0.0f;
  int hiddenCount = 0;
  int firstHidden = 0;        // index of hidden layer 0 in BlockPlan::linears
  int context = -1;           // index in linears, or -1
  int output = -1;            // index in linears
  int64_t dimAtPosition = 0;  // ints: dim entries
  int64_t unitsUpToDegree = 0;  // ints: hiddenCount x (dim + 1)
  // permutation layers
  int64_t permutation = 0;  // ints: dim entries
  // affine layers
  int64_t affineLoc = 0, affineScale = 0;  // floats: dim entries each
  float logAbsScaleSum = 0.0f;
};

// The flattened plan as the kernels read it: pointers into one backend's memory (device or host).
struct BlockPlan {
  // streamDepth: hidden layers whose pre-activation stream a residual MADE keeps (0 without one).
  int dim = 0, contextDim = 0, layerCount = 0, widest = 0, depth = 0, streamDepth = 0;
  const LayerDesc* layers = nullptr;
  const LinearDesc* linears = nullptr;
  const float* floats = nullptr;
  const int* ints = nullptr;
};

// The four arrays, on the host.
struct PackedPlan {
  int dim = 0, contextDim = 0, widest = 0, depth = 0, streamDepth = 0;
  std::vector<LayerDesc> layers;
  std::vector<LinearDesc> linears;
  std::vector<float> floats;
  std::vector<int> ints;

  BlockPlan view() const {
    return BlockPlan{dim,           contextDim,     static_cast<int>(layers.size()), widest, depth, streamDepth,
                     layers.data(), linears.data(), floats.data(),                   ints.data()};
  }
};

// The most slices the sequential direction's head step splits its inputs into (block_kernels.h).
constexpr int kHeadSlices = 16;

// Where each buffer of a block's tile workspace starts, in floats (every buffer holds
// tileRows values per feature, feature-major: buffer[k * tileRows + r]).
struct ScratchLayout {
  int64_t point = 0;        // rows x dim, row-major (original dimension order), like the request
  int64_t sortedIn = 0;     // dim x T
  int64_t sortedOut = 0;    // dim x T
  int64_t condIn = 0;       // dim x T: what the conditioner reads (soft clamp)
  int64_t logScale = 0;     // dim x T: per position, before the per-row sum (a fixed order)
  int64_t contextIn = 0;    // C x T
  int64_t contextTerm = 0;  // widest x T
  int64_t hidden = 0;       // depth x widest x T
  int64_t stream = 0;       // streamDepth x widest x T (residual MADEs)
  int64_t logDet = 0;       // T
  int64_t baseLogDensity = 0;  // T
  int64_t headPartial = 0;     // kHeadSlices x 2 x T: the head's partial sums (block_kernels.h)
  int64_t total = 0;        // floats per block
};

inline ScratchLayout scratchLayout(int tileRows, int dim, int contextDim, int widest, int depth, int streamDepth) {
  const int64_t T = tileRows;
  ScratchLayout s;
  int64_t at = 0;
  auto take = [&](int64_t floats) {
    const int64_t start = at;
    at += (floats + 31) / 32 * 32;  // 128-byte aligned buffers
    return start;
  };
  s.point = take(T * dim);
  s.sortedIn = take(T * dim);
  s.sortedOut = take(T * dim);
  s.condIn = take(T * dim);
  s.logScale = take(T * dim);
  s.contextIn = take(T * contextDim);
  s.contextTerm = take(T * (contextDim > 0 ? widest : 0));
  s.hidden = take(T * widest * depth);
  s.stream = take(T * widest * streamDepth);
  s.logDet = take(T);
  s.baseLogDensity = take(T);
  s.headPartial = take(kHeadSlices * 2 * T);
  s.total = at;
  return s;
}

inline ScratchLayout scratchLayout(const BlockPlan& p, int tileRows) {
  return scratchLayout(tileRows, p.dim, p.contextDim, p.widest, p.depth, p.streamDepth);
}

namespace detail {

inline int64_t appendFloats(std::vector<float>& to, const std::vector<float>& from) {
  const int64_t at = static_cast<int64_t>(to.size());
  to.insert(to.end(), from.begin(), from.end());
  // Keep every array 16-byte aligned (4 floats), for vector loads.
  while (to.size() % 4 != 0) to.push_back(0.0f);
  return at;
}

inline int64_t appendInts(std::vector<int>& to, const std::vector<int>& from) {
  const int64_t at = static_cast<int64_t>(to.size());
  to.insert(to.end(), from.begin(), from.end());
  return at;
}

inline int appendLinear(PackedPlan& out, const StaircaseLinear& L) {
  // The kernels read 4 consecutive units from a 4-aligned start: the stride must keep rows aligned.
  if (L.outStride % 4 != 0 || static_cast<int64_t>(L.weightKM.size()) != static_cast<int64_t>(L.in) * L.outStride)
    throw std::invalid_argument("block plan: a staircase layer's stride is not a multiple of 4");
  LinearDesc d;
  d.in = L.in;
  d.out = L.out;
  d.outStride = L.outStride;
  d.weight = appendFloats(out.floats, L.weightKM);
  d.bias = appendFloats(out.floats, L.bias);
  d.prefix = appendInts(out.ints, L.prefix);
  out.linears.push_back(d);
  return static_cast<int>(out.linears.size()) - 1;
}

}  // namespace detail

inline PackedPlan packPlan(const FlowPlan& plan) {
  PackedPlan out;
  out.dim = plan.dim;
  out.contextDim = plan.contextDim;
  out.widest = plan.widestHidden;
  out.depth = plan.deepestHidden;
  for (const LayerPlan& layer : plan.layers) {
    LayerDesc d;
    d.kind = static_cast<int>(layer.kind);
    if (layer.kind == LayerKind::Permutation) {
      d.permutation = detail::appendInts(out.ints, layer.permutation);
    } else if (layer.kind == LayerKind::Affine) {
      d.affineLoc = detail::appendFloats(out.floats, layer.affine.loc);
      d.affineScale = detail::appendFloats(out.floats, layer.affine.scale);
      d.logAbsScaleSum = layer.affine.logAbsScaleSum;
    } else {
      const MadePlan& m = layer.made;
      d.residual = m.residual ? 1 : 0;
      if (m.residual) out.streamDepth = out.depth;
      d.parallelTowardData = m.parallelTowardData ? 1 : 0;
      d.activation = static_cast<int>(m.activation);
      d.scale = static_cast<int>(m.scale);
      d.contextForm = static_cast<int>(m.contextForm);
      d.softClampInv = m.softClampInv;
      d.hiddenCount = static_cast<int>(m.hidden.size());
      d.firstHidden = static_cast<int>(out.linears.size());
      for (const StaircaseLinear& h : m.hidden) detail::appendLinear(out, h);
      d.output = detail::appendLinear(out, m.output);
      if (m.contextForm != ContextForm::None) d.context = detail::appendLinear(out, m.context);
      d.dimAtPosition = detail::appendInts(out.ints, m.dimAtPosition);
      d.unitsUpToDegree = static_cast<int64_t>(out.ints.size());
      for (const std::vector<int>& upTo : m.unitsUpToDegree) detail::appendInts(out.ints, upTo);
    }
    out.layers.push_back(d);
  }
  return out;
}

// One run of a chunk of rows, as the kernels read it (pointers in the backend's memory).
struct RunArgs {
  int toData = 1;               // Direction::ToData
  const float* input = nullptr;  // rows x dim, or null: normals of (seed, streamFirstRow + r)
  uint64_t seed = 0;
  uint64_t streamFirstRow = 0;
  int64_t rows = 0;
  float* outPoints = nullptr;
  float* outLogDet = nullptr;
  float* outLogProb = nullptr;
  const float* context = nullptr;  // contextRows x C
  int64_t contextRows = 0;         // 1: broadcast
};

}  // namespace block
}  // namespace iaflow
