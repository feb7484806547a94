// CPU backend: each task owns a tile of rows and carries it through every
// layer of the flow with its activations in cache. Both directions read the
// degree-sorted staircase weights of plan.h through the kernels of kernels.h:
//  - parallel: each block of units stops at the block's prefix, so zero tiles
//    are never touched;
//  - sequential: at step p only the hidden units of degree p are computed, then
//    output p, so each weight is used once per row (one pass, not dim passes).
// The reference path (the "cpu-reference" backend) is deliberately simple and
// shares nothing with the kernels: row-major scalar loops, dense products, dim passes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "backend.h"
#include "kernels.h"
#include "thread_pool.h"
#include "train.h"

namespace iaflow {
namespace {

struct Scratch {
  std::vector<float> point;      // tileRows * dim, original dimension order, row-major
  std::vector<float> sortedIn;   // dim * tileRows (kernels: feature-major; reference: row-major)
  std::vector<float> sortedOut;  // dim * tileRows
  std::vector<float> condIn;     // dim * tileRows: what the conditioner reads, with a soft clamp (MadePlan::softClampInv)
  // The tile's context rows (kernels: feature-major; reference and one-row paths: row-major). The
  // tile kernels' buffer has room for dim more features after the context: with the context
  // folded into hidden layer 0 (MadePlan::contextFirst), the conditioner's input goes there.
  std::vector<float> contextIn;
  std::vector<float> rowContextInput;  // one row's [c; u] for contextFirst (the one-row path)
  std::vector<float> contextTerm; // widest * tileRows: g(Wc c + bc) of the MADE at hand, added to hidden layer 0
  // A broadcast context's term of the MADE at hand, computed once per call (null: compute per row).
  // Linear form: t = b0 + bc + Wc c (hidden layer 0's bias for the call); Activated: g(Wc c + bc).
  const std::vector<float>* broadcastTerm = nullptr;
  std::vector<std::vector<float>> hidden;  // per hidden layer: widest * tileRows (after the activation)
  std::vector<std::vector<float>> stream;  // residual MADEs: the pre-activation stream h of layers 0, 2, 4, ...
  std::vector<float> output;     // the heads' raw sums: tileRows * (2 dim, padded)
  std::vector<float> logDet;
  std::vector<float> baseLogDensity;
  int tileRows = -1, dim = -1, depth = -1, widest = -1, contextDim = -1;

  // Sized for the plan at hand; a scratch may serve plans of different shapes.
  void ensure(const FlowPlan& plan, int rowsPerTile) {
    if (tileRows == rowsPerTile && dim == plan.dim && depth == plan.deepestHidden && widest == plan.widestHidden &&
        contextDim == plan.contextDim)
      return;
    tileRows = rowsPerTile;
    dim = plan.dim;
    contextDim = plan.contextDim;
    contextIn.assign(contextDim > 0 ? static_cast<size_t>(tileRows) * (contextDim + plan.dim) : 0, 0.0f);
    rowContextInput.assign(contextDim > 0 ? static_cast<size_t>(contextDim + plan.dim) : 0, 0.0f);
    contextTerm.assign(contextDim > 0 ? static_cast<size_t>(tileRows) * plan.widestHidden : 0, 0.0f);
    depth = plan.deepestHidden;
    widest = plan.widestHidden;
    const size_t cells = static_cast<size_t>(tileRows) * dim;
    point.assign(cells, 0.0f);
    sortedIn.assign(cells, 0.0f);
    sortedOut.assign(cells, 0.0f);
    condIn.assign(cells, 0.0f);
    hidden.assign(depth, std::vector<float>(static_cast<size_t>(tileRows) * widest, 0.0f));
    stream.assign(depth, std::vector<float>(static_cast<size_t>(tileRows) * widest, 0.0f));
    const int outStride = ((2 * dim + kColumnBlock - 1) / kColumnBlock) * kColumnBlock;
    output.assign(static_cast<size_t>(tileRows) * outStride, 0.0f);
    logDet.assign(tileRows, 0.0f);
    baseLogDensity.assign(tileRows, 0.0f);
  }
};

LinearView view(const StaircaseLinear& L) {
  return LinearView{L.weightKM.data(), L.bias.data(), L.prefix.data(), L.in, L.out, L.outStride, L.rowStripes.data(),
                    L.rowStripeOffset.data()};
}

int kernelActivation(Activation a) {
  switch (a) {
    case Activation::ReLU: return kActReLU;
    case Activation::Tanh: return kActTanh;
    default: return kActELU;
  }
}

// How hidden layer l reads and writes the scratch buffers. A plain MADE chains
// act(W x + b); a residual one keeps the stream h (pre-activation) beside
// act(h): layer 0 starts it, each block's second layer adds to it.
struct HiddenStep {
  const float* input;
  float* output;
  const float* residual;
  float* preAct;
};

// Hidden layer 0 of a conditional MADE adds the context term (as a residual input).
HiddenStep wire(const MadePlan& m, Scratch& s, size_t l, const float* firstInput) {
  HiddenStep step{l == 0 ? firstInput : s.hidden[l - 1].data(), s.hidden[l].data(), nullptr, nullptr};
  if (l == 0 && m.contextForm != ContextForm::None) step.residual = s.contextTerm.data();
  if (m.residual && l % 2 == 0) {
    step.preAct = s.stream[l].data();
    if (l > 0) step.residual = s.stream[l - 2].data();
  }
  return step;
}

// The heads read act(h) of the last layer, or the stream h itself in a residual MADE.
const float* headInput(const MadePlan& m, Scratch& s) {
  const size_t last = m.hidden.size() - 1;
  return m.residual ? s.stream[last].data() : s.hidden[last].data();
}

// One step of the sequential direction: in every hidden layer, the units of degree p,
// which read inputs of degree <= p only (all known once u's first p positions are).
// `linear` is the tiled kernel or the one-row kernel: both have this signature.
using LinearKernel = void (*)(const LinearView&, const float*, float*, int, int, int, const float*, float*);

bool contextFolded(const MadePlan& m) { return m.contextForm == ContextForm::Linear; }

// Units [lo, hi), degree group p of a hidden layer, read from the plan's packed group
// (StaircaseLinear::groupWeights): the kernels read weightKM[k * outStride + j] for j in [lo, hi),
// so the view starts lo floats before the group and its stride is the group's width. For the
// tiled kernels only (the one-row path may read lanes past hi within outStride).
LinearView groupView(const StaircaseLinear& L, int p, int lo, int hi) {
  LinearView v = view(L);
  v.weightKM = L.groupWeights.data() + (L.groupOffset[p] - lo);
  v.outStride = hi - lo;
  v.rowStripes = nullptr;
  v.rowStripeOffset = nullptr;
  return v;
}

// Whole stripe q of a layer (units [32q, 32q + 32)) read from the plan's packed stripes
// (StaircaseLinear::rowStripes), for the tiled kernels: a view as groupView's.
LinearView stripeView(const StaircaseLinear& L, int q) {
  LinearView v = view(L);
  v.weightKM = L.rowStripes.data() + (L.rowStripeOffset[q] - static_cast<int64_t>(q) * kRowStripe);
  v.outStride = kRowStripe;
  return v;
}

// Where the tiled kernels read a layer's weights: the staircase itself (the one-row kernels,
// which pick their own copy), a degree group's packed copy (the sequential direction: group p)
// or the packed stripes (the parallel direction: whole stripes, then the staircase for the rest).
enum class Packing { None, DegreeGroup, Stripes };

// Units [lo, hi) of hidden layer l. `cond` is what the conditioner reads; with the context folded
// (Linear form), layer 0 reads [c; cond] from `contextAndCond` through contextFirst, or, with one
// context for the call, cond alone through hidden layer 0 with the call's bias t. `group`: the
// degree group [lo, hi) is, with Packing::DegreeGroup.
void hiddenUnits(LinearKernel linear, const MadePlan& m, Scratch& s, size_t l, const float* cond,
                 const float* contextAndCond, int lo, int hi, Packing packing = Packing::None, int group = -1) {
  const int act = kernelActivation(m.activation);
  const HiddenStep w = wire(m, s, l, cond);
  const float* bias = nullptr;  // replaces the layer's bias when set
  const StaircaseLinear* layer = &m.hidden[l];
  const float* input = w.input;
  const float* residual = w.residual;
  if (l == 0 && contextFolded(m)) {
    residual = nullptr;
    if (s.broadcastTerm) {
      bias = s.broadcastTerm->data();
      input = cond;
    } else {
      layer = &m.contextFirst;
      input = contextAndCond;
    }
  }
  auto run = [&](LinearView v, int a, int b) {
    if (bias) v.bias = bias;
    linear(v, input, w.output, a, b, act, residual, w.preAct);
  };
  if (packing == Packing::DegreeGroup) return run(groupView(*layer, group, lo, hi), lo, hi);
  int j = lo;
  if (packing == Packing::Stripes)
    for (; j % kRowStripe == 0 && j + kRowStripe <= hi; j += kRowStripe) run(stripeView(*layer, j / kRowStripe), j, j + kRowStripe);
  if (j < hi) run(view(*layer), j, hi);
}

// tiled: the tile kernels, which read the packed degree groups.
void unitsOfDegree(LinearKernel linear, const MadePlan& m, Scratch& s, const float* cond, const float* contextAndCond,
                   int p, bool tiled) {
  for (size_t l = 0; l < m.hidden.size(); ++l) {
    const int lo = p == 0 ? 0 : m.unitsUpToDegree[l][p - 1];
    const int hi = m.unitsUpToDegree[l][p];
    if (hi == lo) continue;
    hiddenUnits(linear, m, s, l, cond, contextAndCond, lo, hi, tiled ? Packing::DegreeGroup : Packing::None, p);
  }
}

// What the conditioner reads of `count` inputs: the inputs themselves, or their soft clamp in `out`.
const float* conditionerInput(const MadePlan& m, const float* in, float* out, size_t count) {
  if (m.softClampInv == 0.0f) return in;
  for (size_t k = 0; k < count; ++k) out[k] = softClamp(in[k], m.softClampInv);
  return out;
}

// The context term g(Wc c + bc) of a conditional MADE for the tile's (or the one row's) context,
// into s.contextTerm: g is the MADE's activation (Activated) or none (Linear).
// With one context for the whole call (s.broadcastTerm), the term computed once is spread over
// the tile's rows (tile: feature-major) or copied (one row): the same bits as computing it per
// row, since the one-row and the tile kernels round alike.
void contextTerm(LinearKernel linear, const MadePlan& m, Scratch& s, const float* contextIn, bool tile) {
  if (m.contextForm != ContextForm::Activated) return;  // none, or folded into hidden layer 0
  if (s.broadcastTerm) {
    const float* term = s.broadcastTerm->data();
    const int T = s.tileRows;
    if (tile)
      for (int j = 0; j < m.context.out; ++j) std::fill_n(s.contextTerm.data() + static_cast<size_t>(j) * T, T, term[j]);
    else
      std::copy_n(term, m.context.out, s.contextTerm.data());
    return;
  }
  const int g = m.contextForm == ContextForm::Activated ? kernelActivation(m.activation) : kActNone;
  linear(view(m.context), contextIn, s.contextTerm.data(), 0, m.context.out, g, nullptr, nullptr);
}

// Each MADE layer's term g(Wc c + bc) of one context row (indexed by layer; empty for others).
std::vector<std::vector<float>> broadcastTerms(const KernelTable& K, const FlowPlan& plan, const float* context) {
  std::vector<std::vector<float>> out(plan.layers.size());
  for (size_t k = 0; k < plan.layers.size(); ++k) {
    const LayerPlan& layer = plan.layers[k];
    if ((layer.kind != LayerKind::IAF && layer.kind != LayerKind::MAF) || layer.made.contextForm == ContextForm::None) continue;
    const MadePlan& m = layer.made;
    out[k].assign(m.context.outStride, 0.0f);
    if (contextFolded(m))
      K.linearRow(view(m.contextOnly), context, out[k].data(), 0, m.context.out, kActNone, nullptr, nullptr);
    else
      K.linearRow(view(m.context), context, out[k].data(), 0, m.context.out, kernelActivation(m.activation), nullptr, nullptr);
  }
  return out;
}

// ---- fast path: kernels on feature-major tiles ----

void gatherSorted(const MadePlan& m, const Scratch& s, float* outT) {
  const int T = s.tileRows, dim = m.dim;
  for (int p = 0; p < dim; ++p) {
    const int i = m.dimAtPosition[p];
    for (int r = 0; r < T; ++r) outT[p * T + r] = s.point[r * dim + i];
  }
}

void scatterSorted(const MadePlan& m, Scratch& s, const float* inT) {
  const int T = s.tileRows, dim = m.dim;
  for (int p = 0; p < dim; ++p) {
    const int i = m.dimAtPosition[p];
    for (int r = 0; r < T; ++r) s.point[r * dim + i] = inT[p * T + r];
  }
}

// v = u * scale(u) + shift(u); logDet += sum log scale.
void madeParallel(const KernelTable& K, const MadePlan& m, Scratch& s) {
  gatherSorted(m, s, s.sortedIn.data());
  contextTerm(K.linear, m, s, s.contextIn.data(), true);
  const size_t cells = static_cast<size_t>(m.dim) * s.tileRows;
  const float* cond = conditionerInput(m, s.sortedIn.data(), s.condIn.data(), cells);
  float* contextAndCond = s.contextIn.data();
  if (contextFolded(m) && !s.broadcastTerm)
    std::copy_n(cond, cells, contextAndCond + static_cast<size_t>(s.contextDim) * s.tileRows);
  for (size_t l = 0; l < m.hidden.size(); ++l)
    hiddenUnits(K.linear, m, s, l, cond, contextAndCond, 0, m.hidden[l].out, Packing::Stripes);
  K.affine(view(m.output), headInput(m, s), s.sortedIn.data(), s.sortedOut.data(), s.logDet.data(), 0, m.dim,
           static_cast<int>(m.scale));
  scatterSorted(m, s, s.sortedOut.data());
}

// The first head input position p reads that position p - 1 did not: the units step p computed
// in the last hidden layer (the head reads units [0, prefix[2p + 1]), its prefixes rising with p).
int headStart(const MadePlan& m, int p) { return p == 0 ? 0 : m.output.prefix[2 * p - 1]; }

// The sequential heads' pushes (KernelTable::headPush), in blocks of positions. Pushing each
// step's few new units into every column still to come would load and store all those sums for a
// handful of multiply-adds (D=512: one unit per step, 2 memory operations per multiply-add). So a
// block's steps push only into the block's own columns, and at the next block's start the units
// the block computed go to every later column at once: at least kHeadPushUnits per sum loaded.
// Every column still takes its inputs in index order, so the bits do not depend on the blocks.
constexpr int kHeadPushUnits = 16;

struct HeadPusher {
  const MadePlan& m;
  int blockEnd = 0;  // positions [.., blockEnd) are the current block
  int pushedFar = 0; // units [0, pushedFar) are in every column from 2 * blockEnd on

  // Before step p: where its pushes stop (column 2 * blockEnd), after starting a new block if p
  // begins one. push(k0, k1, c0, c1) runs the kernel.
  template <typename Push>
  int columnsEnd(int p, const Push& push) {
    if (p == blockEnd) {
      const int start = headStart(m, p);
      push(pushedFar, start, 2 * p, m.output.out);
      pushedFar = start;
      blockEnd = p + 1;
      while (blockEnd < m.dim && m.output.prefix[2 * blockEnd - 1] - start < kHeadPushUnits) ++blockEnd;
    }
    return 2 * blockEnd;
  }
};

// Solves v = u * scale(u) + shift(u) for u one degree at a time, computing each
// hidden unit exactly once; logDet -= sum log scale.
void madeSequential(const KernelTable& K, const MadePlan& m, Scratch& s) {
  gatherSorted(m, s, s.sortedIn.data());
  contextTerm(K.linear, m, s, s.contextIn.data(), true);  // once per row, before the degrees
  const int T = s.tileRows;
  const bool clamp = m.softClampInv != 0.0f;
  // With the context folded, what the conditioner reads is written right after the context rows.
  float* const afterContext = s.contextIn.data() + static_cast<size_t>(s.contextDim) * T;
  const bool folded = contextFolded(m) && !s.broadcastTerm;
  float* u = folded && !clamp ? afterContext : s.sortedOut.data();
  float* cond = !clamp ? u : folded ? afterContext : s.condIn.data();
  // The heads' raw sums, feature-major, from the bias: each step pushes in the units it computed.
  float* const rawT = s.output.data();
  for (int c = 0; c < m.output.out; ++c) std::fill_n(rawT + static_cast<size_t>(c) * T, T, m.output.bias[c]);
  const LinearView head = view(m.output);
  const float* h = headInput(m, s);
  HeadPusher pusher{m};
  const auto push = [&](int k0, int k1, int c0, int c1) { K.headPush(head, h, rawT, k0, k1, c0, c1); };
  for (int p = 0; p < m.dim; ++p) {
    const int c1 = pusher.columnsEnd(p, push);
    unitsOfDegree(K.linear, m, s, cond, s.contextIn.data(), p, true);
    push(headStart(m, p), m.output.prefix[2 * p + 1], 2 * p, c1);
    K.solve(rawT, s.sortedIn.data(), u, s.logDet.data(), p, static_cast<int>(m.scale));
    if (clamp) conditionerInput(m, u + static_cast<size_t>(p) * T, cond + static_cast<size_t>(p) * T, T);
  }
  scatterSorted(m, s, u);
}

// ---- small batches: one row at a time, row-major, vectorised across units ----
// A tile holds tileRows rows whatever the batch, so a batch of one would pay for
// a whole tile; up to kRowPathRows rows each row runs alone instead. The sequential direction's
// one-row walk costs about half a tile (CFG-A: 100 us a row, 225 us a 24-row tile), so where a call
// runs any MADE sequentially only a single row takes the row path.
constexpr int kRowPathRows = 8;

bool runsRowByRow(const FlowPlan& plan, Direction direction, int rows) {
  if (rows == 1) return true;
  if (rows > kRowPathRows) return false;
  const bool toData = direction == Direction::ToData;
  for (const LayerPlan& layer : plan.layers)
    if ((layer.kind == LayerKind::IAF || layer.kind == LayerKind::MAF) && toData != layer.made.parallelTowardData) return false;
  return true;
}

// The one-row paths read row r's context from s.contextIn, row-major (C per row).
void madeParallelRow(const KernelTable& K, const MadePlan& m, Scratch& s, int r) {
  float* point = s.point.data() + static_cast<size_t>(r) * m.dim;
  contextTerm(K.linearRow, m, s, s.contextIn.data() + static_cast<size_t>(r) * s.contextDim, false);
  float* u = s.sortedIn.data();
  for (int p = 0; p < m.dim; ++p) u[p] = point[m.dimAtPosition[p]];
  const float* cond = conditionerInput(m, u, s.condIn.data(), m.dim);
  float* contextAndCond = s.rowContextInput.data();
  if (contextFolded(m) && !s.broadcastTerm) {
    std::copy_n(s.contextIn.data() + static_cast<size_t>(r) * s.contextDim, s.contextDim, contextAndCond);
    std::copy_n(cond, m.dim, contextAndCond + s.contextDim);
  }
  for (size_t l = 0; l < m.hidden.size(); ++l)
    hiddenUnits(K.linearRow, m, s, l, cond, contextAndCond, 0, m.hidden[l].out);
  float* raw = s.output.data();
  K.linearRow(view(m.output), headInput(m, s), raw, 0, 2 * m.dim, kActNone, nullptr, nullptr);
  float* v = s.sortedOut.data();
  K.affineRow(raw, u, v, &s.logDet[r], 0, m.dim, static_cast<int>(m.scale), false);
  for (int p = 0; p < m.dim; ++p) point[m.dimAtPosition[p]] = v[p];
}

void madeSequentialRow(const KernelTable& K, const MadePlan& m, Scratch& s, int r) {
  float* point = s.point.data() + static_cast<size_t>(r) * m.dim;
  contextTerm(K.linearRow, m, s, s.contextIn.data() + static_cast<size_t>(r) * s.contextDim, false);
  float* v = s.sortedIn.data();
  for (int p = 0; p < m.dim; ++p) v[p] = point[m.dimAtPosition[p]];
  const bool clamp = m.softClampInv != 0.0f;
  // With the context folded, what the conditioner reads is written right after the row's context.
  const bool folded = contextFolded(m) && !s.broadcastTerm;
  float* const contextAndCond = s.rowContextInput.data();
  float* const afterContext = contextAndCond + s.contextDim;
  if (folded) std::copy_n(s.contextIn.data() + static_cast<size_t>(r) * s.contextDim, s.contextDim, contextAndCond);
  float* u = folded && !clamp ? afterContext : s.sortedOut.data();
  float* cond = !clamp ? u : folded ? afterContext : s.condIn.data();
  float* raw = s.output.data();
  std::copy_n(m.output.bias.data(), m.output.outStride, raw);
  const LinearView head = view(m.output);
  const float* h = headInput(m, s);
  HeadPusher pusher{m};
  const auto push = [&](int k0, int k1, int c0, int c1) { K.headPushRow(head, h, raw, k0, k1, c0, c1); };
  for (int p = 0; p < m.dim; ++p) {
    const int c1 = pusher.columnsEnd(p, push);
    unitsOfDegree(K.linearRow, m, s, cond, contextAndCond, p, false);
    push(headStart(m, p), m.output.prefix[2 * p + 1], 2 * p, c1);
    K.affineRow(raw, v, u, &s.logDet[r], p, p + 1, static_cast<int>(m.scale), true);
    if (cond != u) cond[p] = softClamp(u[p], m.softClampInv);
  }
  for (int p = 0; p < m.dim; ++p) point[m.dimAtPosition[p]] = u[p];
}

// ---- reference path: row-major scalar loops ----

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

// Raw conditioner outputs for the sorted rows `x` (rows x dim) into s.output, densely.
// Adds g(Wc c + bc) of the rows' contexts (s.contextIn, row-major) to y (rows x outStride of hidden layer 0).
template <Activation A>
void addReferenceContext(const MadePlan& m, Scratch& s, int rows, float* y) {
  if (m.contextForm == ContextForm::None) return;
  float* term = s.contextTerm.data();
  if (m.contextForm == ContextForm::Activated) linearDense<true, A>(m.context, s.contextIn.data(), s.contextDim, rows, term);
  else linearDense<false, A>(m.context, s.contextIn.data(), s.contextDim, rows, term);
  const int stride = m.hidden[0].outStride;
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < m.hidden[0].out; ++j) y[r * stride + j] += term[r * stride + j];
}

template <Activation A>
void referenceConditioner(const MadePlan& m, Scratch& s, const float* x, int rows) {
  int xStride = m.dim;
  if (!m.residual) {
    for (size_t l = 0; l < m.hidden.size(); ++l) {
      float* y = s.hidden[l].data();
      if (l == 0 && m.contextForm != ContextForm::None) {
        linearDense<false, A>(m.hidden[0], x, xStride, rows, y);
        addReferenceContext<A>(m, s, rows, y);
        const int stride = m.hidden[0].outStride;
        for (int r = 0; r < rows; ++r)
          for (int j = 0; j < m.hidden[0].out; ++j) y[r * stride + j] = activate<A>(y[r * stride + j]);
      } else {
        linearDense<true, A>(m.hidden[l], x, xStride, rows, y);
      }
      x = y;
      xStride = m.hidden[l].outStride;
    }
    linearDense<false, A>(m.output, x, xStride, rows, s.output.data());
    return;
  }
  // Residual: h = W0 x (+ the context term); per block h += W2 act(W1 act(h)); heads read h.
  const int stride = m.hidden[0].outStride;
  const int width = m.hidden[0].out;
  float* h = s.stream[0].data();
  float* a = s.hidden[0].data();
  float* t = s.hidden[1].data();
  linearDense<false, A>(m.hidden[0], x, xStride, rows, h);
  addReferenceContext<A>(m, s, rows, h);
  for (size_t l = 1; l + 1 < m.hidden.size(); l += 2) {
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < width; ++j) a[r * stride + j] = activate<A>(h[r * stride + j]);
    linearDense<true, A>(m.hidden[l], a, stride, rows, t);
    linearDense<false, A>(m.hidden[l + 1], t, stride, rows, a);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < width; ++j) h[r * stride + j] += a[r * stride + j];
  }
  linearDense<false, A>(m.output, h, stride, rows, s.output.data());
}

template <Activation A, ScaleKind S>
void referenceParallel(const MadePlan& m, Scratch& s, int rows) {
  const int dim = m.dim;
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) s.sortedIn[r * dim + p] = s.point[r * dim + m.dimAtPosition[p]];
  referenceConditioner<A>(m, s, conditionerInput(m, s.sortedIn.data(), s.condIn.data(), static_cast<size_t>(rows) * dim), rows);
  const int os = m.output.outStride;
  for (int r = 0; r < rows; ++r) {
    for (int p = 0; p < dim; ++p) {
      const Affine a = affineFromRaw<S>(s.output[r * os + 2 * p + 1], s.output[r * os + 2 * p]);
      s.point[r * dim + m.dimAtPosition[p]] = s.sortedIn[r * dim + p] * a.scale + a.shift;
      s.logDet[r] += a.logScale;
    }
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
    referenceConditioner<A>(m, s, conditionerInput(m, u, s.condIn.data(), static_cast<size_t>(rows) * dim), rows);
    const bool last = pass == dim - 1;
    for (int r = 0; r < rows; ++r)
      for (int p = 0; p < dim; ++p) {
        const Affine a = affineFromRaw<S>(s.output[r * os + 2 * p + 1], s.output[r * os + 2 * p]);
        float passLogDet = 0.0f;  // only the last pass's scales count
        u[r * dim + p] = solveAffine(v[r * dim + p], a, last ? s.logDet[r] : passLogDet);
      }
  }
  for (int r = 0; r < rows; ++r)
    for (int p = 0; p < dim; ++p) s.point[r * dim + m.dimAtPosition[p]] = u[r * dim + p];
}

template <Activation A, ScaleKind S>
void referenceLayer(const MadePlan& m, Scratch& s, int rows, bool parallel) {
  if (parallel) referenceParallel<A, S>(m, s, rows);
  else madeSequentialByPasses<A, S>(m, s, rows);
}

template <Activation A>
void referenceLayerForScale(const MadePlan& m, Scratch& s, int rows, bool parallel) {
  switch (m.scale) {
    case ScaleKind::Softplus: return referenceLayer<A, ScaleKind::Softplus>(m, s, rows, parallel);
    case ScaleKind::Exp: return referenceLayer<A, ScaleKind::Exp>(m, s, rows, parallel);
    default: return referenceLayer<A, ScaleKind::Gated>(m, s, rows, parallel);
  }
}

void runReferenceMade(const MadePlan& m, Scratch& s, int rows, bool parallel) {
  switch (m.activation) {
    case Activation::ReLU: return referenceLayerForScale<Activation::ReLU>(m, s, rows, parallel);
    case Activation::Tanh: return referenceLayerForScale<Activation::Tanh>(m, s, rows, parallel);
    default: return referenceLayerForScale<Activation::ELU>(m, s, rows, parallel);
  }
}

// ---- the tile driver ----

void runPermutation(const std::vector<int>& perm, Scratch& s, int rows, int dim, Direction direction) {
  float* tmp = s.sortedIn.data();
  std::copy_n(s.point.data(), static_cast<size_t>(rows) * dim, tmp);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < dim; ++i) {
      if (direction == Direction::ToData) s.point[r * dim + i] = tmp[r * dim + perm[i]];
      else s.point[r * dim + perm[i]] = tmp[r * dim + i];
    }
}

// b = loc + scale * a toward the data, a = (b - loc) / scale toward the latent; the log-det of
// that direction's output by its input.
void runAffine(const AffinePlan& affine, Scratch& s, int rows, int dim, Direction direction) {
  const float* loc = affine.loc.data();
  const float* scale = affine.scale.data();
  const bool toData = direction == Direction::ToData;
  for (int r = 0; r < rows; ++r) {
    float* v = s.point.data() + static_cast<size_t>(r) * dim;
    if (toData)
      for (int i = 0; i < dim; ++i) v[i] = loc[i] + scale[i] * v[i];
    else
      for (int i = 0; i < dim; ++i) v[i] = (v[i] - loc[i]) / scale[i];
    s.logDet[r] += toData ? affine.logAbsScaleSum : -affine.logAbsScaleSum;
  }
}

// The vector kernels draw the same values as flow_math.h's standardNormals4 on every instruction set.
void fillNormalRows(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out) {
  activeKernels().normals(seed, firstRow, rows, dim, out);
}

void sumBaseLogDensity(Scratch& s, int rows, int dim) {
  for (int r = 0; r < rows; ++r) {
    float sum = 0.0f;
    for (int i = 0; i < dim; ++i) sum += standardNormalLogDensity(s.point[r * dim + i]);
    s.baseLogDensity[r] = sum;
  }
}

// The context rows of request rows [firstRow, firstRow + rows) into s.contextIn: row-major (the
// reference and one-row paths) or feature-major (the tile kernels); the rest of a tile is zeros.
void gatherContext(const RunRequest& req, Scratch& s, int64_t firstRow, int rows, bool rowMajor) {
  const int C = s.contextDim, T = s.tileRows;
  std::fill(s.contextIn.begin(), s.contextIn.end(), 0.0f);
  for (int r = 0; r < rows; ++r) {
    const float* c = req.context + (req.contextRows == 1 ? 0 : (firstRow + r)) * C;
    for (int k = 0; k < C; ++k) {
      if (rowMajor) s.contextIn[static_cast<size_t>(r) * C + k] = c[k];
      else s.contextIn[static_cast<size_t>(k) * T + r] = c[k];
    }
  }
}

void runTile(const KernelTable& K, bool reference, const FlowPlan& plan, const RunRequest& req, Scratch& s,
             int64_t firstRow, int rows, const std::vector<std::vector<float>>* broadcast) {
  const int dim = plan.dim;
  s.ensure(plan, K.tileRows);
  if (req.input) {
    std::copy_n(req.input + firstRow * dim, static_cast<size_t>(rows) * dim, s.point.data());
  } else {
    fillNormalRows(req.seed, req.firstRow + static_cast<uint64_t>(firstRow), rows, dim, s.point.data());
  }
  // Rows past the end of a short tile ride along as zeros (finite, then ignored).
  std::fill(s.point.begin() + static_cast<size_t>(rows) * dim, s.point.end(), 0.0f);
  const bool rowByRow = !reference && runsRowByRow(plan, req.direction, rows);
  if (plan.contextDim > 0) gatherContext(req, s, firstRow, rows, reference || rowByRow);
  std::fill(s.logDet.begin(), s.logDet.end(), 0.0f);
  const bool toData = req.direction == Direction::ToData;
  if (toData && req.outLogProb) sumBaseLogDensity(s, rows, dim);
  const int count = static_cast<int>(plan.layers.size());
  for (int step = 0; step < count; ++step) {
    const LayerPlan& layer = plan.layers[toData ? step : count - 1 - step];
    if (layer.kind == LayerKind::Permutation) {
      runPermutation(layer.permutation, s, rows, dim, req.direction);
      continue;
    }
    if (layer.kind == LayerKind::Affine) {
      runAffine(layer.affine, s, rows, dim, req.direction);
      continue;
    }
    // The parallel pass runs when we travel the way the layer's parallel direction points.
    const bool parallel = toData == layer.made.parallelTowardData;
    s.broadcastTerm = broadcast ? &(*broadcast)[toData ? step : count - 1 - step] : nullptr;
    if (reference) {
      runReferenceMade(layer.made, s, rows, parallel);
    } else if (rowByRow) {
      for (int r = 0; r < rows; ++r) {
        if (parallel) madeParallelRow(K, layer.made, s, r);
        else madeSequentialRow(K, layer.made, s, r);
      }
    } else if (parallel) madeParallel(K, layer.made, s);
    else madeSequential(K, layer.made, s);
  }
  if (!toData && req.outLogProb) sumBaseLogDensity(s, rows, dim);
  if (req.outPoints) std::copy_n(s.point.data(), static_cast<size_t>(rows) * dim, req.outPoints + firstRow * dim);
  if (req.outLogDet) std::copy_n(s.logDet.data(), rows, req.outLogDet + firstRow);
  if (req.outLogProb) {
    // sampling: log q(x) = log N(z) - log|det dx/dz|; scoring: log N(z) + log|det dz/dx|
    for (int r = 0; r < rows; ++r) {
      req.outLogProb[firstRow + r] = toData ? s.baseLogDensity[r] - s.logDet[r] : s.baseLogDensity[r] + s.logDet[r];
      // A sample whose sequential solve left float32 (solveAffine) has no log-density to give.
      if (toData)
        for (int i = 0; i < dim; ++i)
          if (!std::isfinite(s.point[r * dim + i])) req.outLogProb[firstRow + r] = NAN;
    }
  }
}

// Each thread's tile workspace, kept across calls: a call allocates nothing once a thread has
// run a flow of the same shape (the pool's threads live as long as the pool).
Scratch& threadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

bool cancelled(const RunRequest& req) { return req.cancel && req.cancel->load(std::memory_order_relaxed); }

class CpuRunner final : public Runner {
 public:
  CpuRunner(std::shared_ptr<const FlowPlan> plan, bool reference) : plan_(std::move(plan)), reference_(reference) {}

  const FlowPlan& plan() const override { return *plan_; }

  void run(const RunRequest& req) const override {
    if (req.rows <= 0) return;
    if (plan_->contextDim > 0 && (!req.context || (req.contextRows != 1 && req.contextRows != req.rows)))
      throw std::invalid_argument("this flow is conditional: a run needs one context row, or one per row");
    if (cancelled(req)) throw Cancelled();
    const KernelTable& K = activeKernels();
    const int tileRows = K.tileRows;
    const int64_t tiles = (req.rows + tileRows - 1) / tileRows;
    // One context for every row: each MADE's context term once per call, not once per row.
    std::vector<std::vector<float>> terms;
    if (!reference_ && plan_->contextDim > 0 && req.contextRows == 1) terms = broadcastTerms(K, *plan_, req.context);
    const std::vector<std::vector<float>>* broadcast = terms.empty() ? nullptr : &terms;
    if (tiles == 1) {
      // Small batches skip the pool: no wake-up latency.
      runTile(K, reference_, *plan_, req, threadScratch(), 0, static_cast<int>(req.rows), broadcast);
      return;
    }
    std::shared_ptr<ThreadPool> pool = currentPool();
    pool->parallelFor(tiles, [&](int64_t tile, int) {
      if (cancelled(req)) return;  // the remaining tiles are skipped
      const int64_t first = tile * tileRows;
      const int rows = static_cast<int>(std::min<int64_t>(tileRows, req.rows - first));
      runTile(K, reference_, *plan_, req, threadScratch(), first, rows, broadcast);
    });
    if (cancelled(req)) throw Cancelled();
  }

 private:
  std::shared_ptr<const FlowPlan> plan_;
  bool reference_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(bool reference) : reference_(reference) {}

  BackendInfo info() const override {
    BackendInfo out;
    out.name = reference_ ? "cpu-reference" : "cpu";
    out.usable = true;
    out.detail = reference_ ? "dense scalar loops, dim passes for the sequential direction" : activeKernels().isa;
    return out;
  }

  bool supports(const FlowPlan&, std::string*) const override { return true; }

  std::shared_ptr<const Runner> prepare(std::shared_ptr<const FlowPlan> plan) const override {
    // The plan already holds the staircase layout the CPU kernels read: nothing to pack.
    return std::make_shared<CpuRunner>(std::move(plan), reference_);
  }

  std::unique_ptr<Trainer> makeTrainer(const FlowSpec& spec, Direction pass, const FlowSpec* teacher,
                                       const OptimizerOptions& options) const override {
    return std::make_unique<Trainer>(spec, pass, teacher, options, reference_);
  }

 private:
  bool reference_;
};

}  // namespace

std::unique_ptr<Backend> makeCpuBackend(bool reference) { return std::make_unique<CpuBackend>(reference); }

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

namespace iaflow {

double measureMatmulGflops(int size, double minSeconds) {
  const KernelTable& K = activeKernels();
  const int T = K.tileRows;
  const int tiles = (size + T - 1) / T;
  StaircaseLinear dense;
  dense.in = size;
  dense.out = size;
  dense.outStride = size;
  dense.weightKM.assign(static_cast<size_t>(size) * size, 0.001f);
  dense.bias.assign(size, 0.0f);
  dense.prefix.assign(size, size);
  const LinearView L = view(dense);
  std::vector<float> x(static_cast<size_t>(tiles) * size * T, 0.5f);
  std::shared_ptr<ThreadPool> pool = currentPool();
  std::vector<std::vector<float>> y(pool->size(), std::vector<float>(static_cast<size_t>(size) * T));
  auto once = [&] {
    pool->parallelFor(tiles, [&](int64_t tile, int worker) {
      K.linear(L, x.data() + static_cast<size_t>(tile) * size * T, y[worker].data(), 0, size, kActNone, nullptr, nullptr);
    });
  };
  once();  // warm caches and threads
  int64_t repeats = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  do {
    once();
    ++repeats;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < minSeconds);
  const double flops = 2.0 * static_cast<double>(tiles) * T * size * size * repeats;
  return flops / elapsed / 1e9;
}

}  // namespace iaflow
