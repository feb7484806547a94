// The training core (see train.h). Layout: the parameters of every masked
// linear layer are kept as in plan.h, K-major [in][outStride] with the masks
// folded in, plus a transposed copy [out][inStride] for the input-gradient
// product. All three products of a layer walk the staircase:
//  - forward  Y = X W + b: column block jb reads only its first blockDepth inputs;
//  - input gradient GX = GY W^T: input block kb reads only the units that see it;
//  - weight gradient GW += X^T GY: only the rows k < blockDepth of each column block
//    (the few masked entries inside a block are zeroed afterwards),
// so the all-zero tiles are never loaded or multiplied. Those products and the
// passes built on them (train_kernels.h) are compiled once per instruction set in
// kernels_<isa>.cc, next to the inference kernels, and run through the table of the
// instruction set inference runs (kernels.h); this file holds no ISA-specific code.
#include "train.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include "flow_math.h"
#include "kernels.h"
#include "thread_pool.h"
#include "train_layout.h"

namespace iaflow {
namespace {

using namespace training;  // the layout (train_layout.h)

constexpr int kMaxSlots = 16;    // gradient accumulators per batch (fixed: results independent of threads)
constexpr int kSlotRows = 128;   // rows per slot at least, so a step wakes the pool once for real work
constexpr size_t kSerialUpdate = size_t(1) << 20;  // below this many floats (params x slots) reduce and update inline
constexpr size_t kSlotBudget = size_t(32) << 20;  // floats all gradient slots together may take
constexpr size_t kChunk = size_t(1) << 14;        // floats per reduction / update task
constexpr float kScoreClip = 10.0f;  // distillation: teacher scores above 10x the tile's median norm are scaled down
constexpr uint64_t kForwardStream = 0x6A09E667F3BCC909ull;  // distillation's teacher samples: latent seed ^ this

int roundUp(int value, int block) { return (value + block - 1) / block * block; }

// The training view of one of the plan's layers: its weights and bias move to the end of the
// flat parameters (the plan keeps the staircase; its packed read-only copies are dropped), and
// the transposed copy gets its place.
TLinear makeLinear(StaircaseLinear& s, std::vector<float>& params, size_t& transposedSize, bool reference) {
  TLinear L;
  L.stairs = &s;
  L.inStride = roundUp(std::max(s.in, 1), kBlock);
  L.w = params.size();
  params.insert(params.end(), s.weightKM.begin(), s.weightKM.end());
  L.b = params.size();
  params.insert(params.end(), s.bias.begin(), s.bias.end());
  for (std::vector<float>* weights : {&s.weightKM, &s.bias, &s.rowStripes, &s.groupWeights}) std::vector<float>().swap(*weights);
  for (std::vector<int64_t>* offsets : {&s.rowStripeOffset, &s.groupOffset}) std::vector<int64_t>().swap(*offsets);
  L.wt = transposedSize;
  transposedSize += static_cast<size_t>(s.out) * L.inStride;
  for (int jb = 0; jb < s.out; jb += kBlock) L.blockDepth.push_back(reference ? s.in : s.prefix[std::min(jb + kBlock, s.out) - 1]);
  for (int kb = 0; kb < s.in; kb += kBlock) {
    int j = 0;
    if (!reference)
      while (j < s.out && s.prefix[j] <= kb) ++j;
    L.firstReader.push_back(j);
  }
  return L;
}

void buildNet(Net& net, const FlowSpec& spec, Direction pass, bool reference) {
  // A copy of the plan the net can own and strip: makeLinear moves its weights into net.params.
  std::shared_ptr<FlowPlan> plan = std::make_shared<FlowPlan>(*buildPlan(spec));
  net.plan = plan;
  net.dim = plan->dim;
  net.contextDim = plan->contextDim;
  net.contextStride = plan->contextDim > 0 ? roundUp(plan->contextDim, kBlock) : 0;
  net.dimStride = roundUp(net.dim, kBlock);
  net.pass = pass;
  net.reference = reference;
  size_t transposedSize = 0;
  for (size_t k = 0; k < plan->layers.size(); ++k) {
    LayerPlan& lp = plan->layers[k];
    TLayer layer;
    layer.kind = lp.kind;
    if (lp.kind == LayerKind::Permutation) {
      layer.permutation = lp.permutation;
      net.layers.push_back(std::move(layer));
      continue;
    }
    if (lp.kind == LayerKind::Affine) {
      TAffine& a = layer.affine;
      a.trainable = lp.affine.trainable;
      std::vector<float> logScale(net.dim);
      a.sign.resize(net.dim);
      for (int i = 0; i < net.dim; ++i) {
        logScale[i] = std::log(std::fabs(lp.affine.scale[i]));
        a.sign[i] = lp.affine.scale[i] < 0.0f ? -1.0f : 1.0f;
      }
      if (a.trainable) {
        a.loc = net.params.size();
        net.params.insert(net.params.end(), lp.affine.loc.begin(), lp.affine.loc.end());
        a.logScale = net.params.size();
        net.params.insert(net.params.end(), logScale.begin(), logScale.end());
      } else {
        a.fixedLoc = lp.affine.loc;
        a.fixedLogScale = logScale;
        a.fixedScale = lp.affine.scale;
      }
      a.cacheInput = net.cachePerRow;
      net.cachePerRow += net.dimStride;
      net.layers.push_back(std::move(layer));
      continue;
    }
    TMade& m = layer.made;
    m.plan = &lp.made;
    lp.made.contextFirst = StaircaseLinear();  // inference's folded copies of the context term: not trained
    lp.made.contextOnly = StaircaseLinear();
    m.cacheInput = net.cachePerRow;
    net.cachePerRow += net.dimStride;
    m.cacheCond = m.cacheInput;
    if (lp.made.softClampInv != 0.0f) {
      m.cacheCond = net.cachePerRow;
      net.cachePerRow += net.dimStride;
    }
    if (lp.made.contextForm != ContextForm::None) {
      m.context = makeLinear(lp.made.context, net.params, transposedSize, reference);
      m.cacheContext = net.cachePerRow;
      net.cachePerRow += lp.made.hidden[0].outStride;
    }
    for (size_t l = 0; l < lp.made.hidden.size(); ++l) {
      StaircaseLinear& s = lp.made.hidden[l];
      m.hidden.push_back(makeLinear(s, net.params, transposedSize, reference));
      m.cacheHidden.push_back(net.cachePerRow);
      net.cachePerRow += s.outStride;
      m.cacheStream.push_back(net.cachePerRow);
      if (lp.made.residual && l % 2 == 0) net.cachePerRow += s.outStride;
      net.maxHiddenStride = std::max(net.maxHiddenStride, s.outStride);
    }
    m.output = makeLinear(lp.made.output, net.params, transposedSize, reference);
    m.cacheOutput = net.cachePerRow;
    net.cachePerRow += m.output.outStride();
    net.maxOutStride = std::max(net.maxOutStride, m.output.outStride());
    net.layers.push_back(std::move(layer));
  }
  for (TLayer& layer : net.layers) {
    if (layer.kind != LayerKind::IAF && layer.kind != LayerKind::MAF) continue;
    if (layer.made.plan->contextForm != ContextForm::None) net.linears.push_back(&layer.made.context);
    for (const TLinear& L : layer.made.hidden) net.linears.push_back(&L);
    net.linears.push_back(&layer.made.output);
  }
  net.transposed.assign(transposedSize, 0.0f);
  net.refreshTransposed(0, net.linears.size());
}

// Zeroes the gradient of the weights the mask removes (the products above touch
// some of them: whole blocks, or everything on the reference path).
void maskGradient(const TLinear& L, float* GW) {
  for (int j = 0; j < L.out(); ++j) {
    const int end = L.blockDepth.empty() ? 0 : L.blockDepth[j / kBlock];
    for (int k = L.prefix()[j]; k < end; ++k) GW[static_cast<size_t>(k) * L.outStride() + j] = 0.0f;
  }
}

// Along `pass` (by default the net's own): each MADE layer runs its parallel or its
// sequential direction, whichever goes that way. The kernels are those of the
// instruction set inference runs (kernels.h: selectKernels switches both).
void netForward(const Net& net, Workspace& ws, int rows, Direction pass) {
  activeTrainKernels().netForward(net, ws, rows, pass);
}
void netForward(const Net& net, Workspace& ws, int rows) { netForward(net, ws, rows, net.pass); }

void netBackward(const Net& net, Workspace& ws, int rows, float gld, float* G, bool wantInput, Direction pass) {
  activeTrainKernels().netBackward(net, ws, rows, gld, G, wantInput, pass);
}
void netBackward(const Net& net, Workspace& ws, int rows, float gld, float* G, bool wantInput) {
  netBackward(net, ws, rows, gld, G, wantInput, net.pass);
}

// sum_i log N(v_i; 0, 1) of one row.
float baseLogDensity(const float* v, int dim) {
  float sum = 0.0f;
  for (int i = 0; i < dim; ++i) sum += standardNormalLogDensity(v[i]);
  return sum;
}

void fillNormalRows(uint64_t seed, uint64_t firstRow, int rows, int dim, float* out) {
  float four[4];
  for (int r = 0; r < rows; ++r)
    for (int block = 0; 4 * block < dim; ++block) {
      standardNormals4(seed, firstRow + r, static_cast<uint32_t>(block), four);
      for (int c = 0; c < 4 && 4 * block + c < dim; ++c) out[static_cast<size_t>(r) * dim + 4 * block + c] = four[c];
    }
}

// Scales down the rows of g (count x dim) whose norm exceeds `factor` times the median row norm
// to that bound; returns how many. For the teacher's score d log p / dx in distillation: a rare
// student sample far outside the teacher's support (where a MAF's density can be e^-1e13)
// otherwise gets a gradient that dominates the whole step and swamps Adam's statistics. The
// direction is kept, so such samples are still pulled back, with bounded force.
int clipOutlierRows(float* g, int count, int dim, float factor) {
  float norms[kTile], sorted[kTile];
  for (int r = 0; r < count; ++r) {
    double sq = 0.0;
    for (int i = 0; i < dim; ++i) sq += static_cast<double>(g[r * dim + i]) * g[r * dim + i];
    norms[r] = sorted[r] = static_cast<float>(std::sqrt(sq));
  }
  std::nth_element(sorted, sorted + count / 2, sorted + count);
  const float bound = factor * sorted[count / 2];
  if (!(bound > 0.0f)) return 0;
  int clipped = 0;
  for (int r = 0; r < count; ++r) {
    if (!(norms[r] > bound)) continue;  // NaN norms are left for the non-finite check
    const float shrink = bound / norms[r];
    for (int i = 0; i < dim; ++i) g[r * dim + i] *= shrink;
    ++clipped;
  }
  return clipped;
}

struct AdamConstants {
  float gradientFactor, beta1, beta2, decay, stepSize, invSqrtBias2, eps;
};

// One Adam step over n parameters (decoupled weight decay). The arrays are distinct, and said so,
// so that the loop runs on whole vectors (the build's -fno-math-errno lets sqrt vectorize).
void adamUpdate(const float* __restrict g, float* __restrict w, float* __restrict firstMoment, float* __restrict secondMoment,
                size_t n, const AdamConstants& k) {
  for (size_t i = 0; i < n; ++i) {
    const float gi = g[i] * k.gradientFactor;
    const float m = k.beta1 * firstMoment[i] + (1.0f - k.beta1) * gi;
    const float v = k.beta2 * secondMoment[i] + (1.0f - k.beta2) * gi * gi;
    firstMoment[i] = m;
    secondMoment[i] = v;
    w[i] = w[i] * k.decay - k.stepSize * m / (std::sqrt(v) * k.invSqrtBias2 + k.eps);
  }
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Writes `flat` (parameters, or with `paramsOfGradient` the gradient at those parameters) to the
// dense views. An affine layer's gradient by scale is the one by log|scale| over scale; a fixed
// layer's is zero.
void exportFlat(const Net& net, const float* flat, const std::vector<DenseMadeView>& views,
                const float* paramsOfGradient = nullptr) {
  if (views.size() != net.layers.size()) throw std::invalid_argument("export needs one view per layer");
  for (size_t k = 0; k < net.layers.size(); ++k) {
    const TLayer& layer = net.layers[k];
    const DenseMadeView& v = views[k];
    if (layer.kind == LayerKind::Affine) {
      const TAffine& a = layer.affine;
      if (!v.loc || !v.scale) throw std::invalid_argument("export view of an affine layer needs loc and scale");
      if (paramsOfGradient) {
        const float* logScale = a.logScaleOf(paramsOfGradient);
        for (int i = 0; i < net.dim; ++i) {
          v.loc[i] = a.trainable ? flat[a.loc + i] : 0.0f;
          v.scale[i] = a.trainable ? flat[a.logScale + i] / (a.sign[i] * std::exp(logScale[i])) : 0.0f;
        }
        continue;
      }
      const float* loc = a.locOf(flat);
      const float* logScale = a.logScaleOf(flat);
      for (int i = 0; i < net.dim; ++i) {
        v.loc[i] = loc[i];
        v.scale[i] = a.trainable ? a.sign[i] * std::exp(logScale[i]) : a.fixedScale[i];
      }
      continue;
    }
    if (layer.kind == LayerKind::Permutation) continue;
    const TMade& m = layer.made;
    if (v.hiddenWeight.size() != m.hidden.size() || v.hiddenBias.size() != m.hidden.size())
      throw std::invalid_argument("export view has the wrong number of hidden layers");
    for (size_t l = 0; l < m.hidden.size(); ++l) {
      const TLinear& L = m.hidden[l];
      const std::vector<int>& inSource = l == 0 ? m.plan->dimAtPosition : m.plan->unitSource[l - 1];
      for (int j = 0; j < L.out(); ++j) {
        const int row = m.plan->unitSource[l][j];
        v.hiddenBias[l][row] = flat[L.b + j];
        for (int kk = 0; kk < L.prefix()[j]; ++kk)
          v.hiddenWeight[l][static_cast<size_t>(row) * L.in() + inSource[kk]] = flat[L.w + static_cast<size_t>(kk) * L.outStride() + j];
      }
    }
    if (m.plan->contextForm != ContextForm::None) {
      if (!v.contextWeight || !v.contextBias) throw std::invalid_argument("export view of a conditional MADE needs its context tensors");
      const TLinear& Cx = m.context;
      for (int j = 0; j < Cx.out(); ++j) {
        const int row = m.plan->unitSource[0][j];
        v.contextBias[row] = flat[Cx.b + j];
        for (int kk = 0; kk < Cx.in(); ++kk) v.contextWeight[static_cast<size_t>(row) * Cx.in() + kk] = flat[Cx.w + static_cast<size_t>(kk) * Cx.outStride() + j];
      }
    }
    const TLinear& O = m.output;
    const std::vector<int>& lastSource = m.plan->unitSource.back();
    for (int p = 0; p < net.dim; ++p) {
      const int i = m.plan->dimAtPosition[p];
      for (int which = 0; which < 2; ++which) {
        const int c = 2 * p + which;
        float* W = which == 0 ? v.shiftWeight : v.scaleWeight;
        float* B = which == 0 ? v.shiftBias : v.scaleBias;
        B[i] = flat[O.b + c];
        for (int kk = 0; kk < O.prefix()[c]; ++kk)
          W[static_cast<size_t>(i) * O.in() + lastSource[kk]] = flat[O.w + static_cast<size_t>(kk) * O.outStride() + c];
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------

struct Trainer::Impl {
  const CancelFlag* cancel = nullptr;
  bool cancelled() const { return cancel && cancel->load(std::memory_order_relaxed); }
  Net net;
  std::unique_ptr<Net> teacher;
  OptimizerOptions options;
  std::vector<std::vector<float>> slots;  // gradient accumulators; slots[0] ends as the batch gradient
  std::vector<float> adamM, adamV, best;
  int64_t adamSteps = 0;
  std::vector<float> shadow;  // options.ema > 0: the running average of the parameters
  int64_t emaSteps = 0;       // steps averaged into `shadow`
  std::vector<Workspace> workspaces, teacherWorkspaces;
  std::vector<float> train, valid;
  int64_t trainRows = 0, validRows = 0;
  // Conditional flows: each data row's context (row-major, net.contextDim each); reverse KL's batch contexts.
  std::vector<float> trainContext, validContext, batchContext;
  int64_t batchContextRows = 0;

  // Puts the contexts of rows [first, first + count) into ws.context (index maps them to source
  // rows when given; a one-row source is every row's), padded to the net's context stride.
  void loadContext(Workspace& ws, const float* source, int64_t sourceRows, const int64_t* index, int64_t first, int count) const {
    loadContextFor(net, ws, source, sourceRows, index, first, count);
  }
  static void loadContextFor(const Net& net, Workspace& ws, const float* source, int64_t sourceRows, const int64_t* index,
                             int64_t first, int count) {
    const int C = net.contextDim, cs = net.contextStride;
    if (C == 0) return;
    if (!source) throw std::invalid_argument("this flow is conditional: training needs a context for every row");
    for (int r = 0; r < count; ++r) {
      const int64_t row = sourceRows == 1 ? 0 : (index ? index[first + r] : first + r);
      std::copy_n(source + row * C, C, ws.context.data() + static_cast<size_t>(r) * cs);
    }
  }
  std::vector<int64_t> order;
  int64_t orderEpoch = -1;
  uint64_t orderSeed = 0;
  std::vector<float> latent, logq;  // reverse KL: the batch's z and log q(x)
  int64_t batch = 0;
  bool stickingTheLanding = false;

  // Reverse KL's backward for the tile in ws, after netForward along z -> x: ws.gpoints holds
  // -scale * d(target log-density)/dx on entry. Adds the parameter gradient of the batch mean
  // (see setStickingTheLanding) to G.
  void reverseTileBackward(Workspace& ws, int count, float scale, float* G) {
    if (!stickingTheLanding) {
      netBackward(net, ws, count, -scale, G, false);
      return;
    }
    const int dim = net.dim;
    std::vector<float> targetPart(ws.gpoints.begin(), ws.gpoints.begin() + static_cast<size_t>(count) * dim);
    // d log q(x)/dx: log q(x) = log N(z) + log|det dz/dx|, backward along x -> z from dL/dz = -z.
    for (int i = 0; i < count * dim; ++i) ws.gpoints[i] = -ws.latent[i];
    netBackward(net, ws, count, 1.0f, nullptr, true, Direction::ToLatent);
    for (int i = 0; i < count * dim; ++i) ws.gpoints[i] = ws.gpoints[i] * scale + targetPart[i];
    netBackward(net, ws, count, 0.0f, G, false);
  }

  // Whether the averaged weights stand for the model (ema on, and at least one step applied).
  bool averaging() const { return options.ema > 0.0 && shadow.size() == net.params.size(); }

  // Exchanges the raw and the averaged weights (and rebuilds the transposed copy), so the
  // forward pass runs on the other set; twice restores everything.
  void swapShadow() {
    net.params.swap(shadow);
    net.refreshTransposed(0, net.linears.size());
  }

  std::shared_ptr<ThreadPool> pool() {
    std::shared_ptr<ThreadPool> p = currentPool();
    const size_t n = static_cast<size_t>(p->size());
    if (workspaces.size() < n) workspaces.resize(n);
    if (teacher && teacherWorkspaces.size() < n) teacherWorkspaces.resize(n);
    for (Workspace& w : workspaces) w.ensure(net);
    if (teacher)
      for (Workspace& w : teacherWorkspaces) w.ensure(*teacher);
    return p;
  }

  int slotCount(int64_t rows) const {
    const int64_t tiles = (rows + kSlotRows - 1) / kSlotRows;
    const int64_t byMemory = std::max<int64_t>(1, static_cast<int64_t>(kSlotBudget / std::max<size_t>(net.params.size(), 1)));
    return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({tiles, kMaxSlots, byMemory})));
  }

  // Runs `tile` over rows [0, rows) split into slots; each slot's gradient goes to
  // slots[s] (masked). Returns the sum of the tiles' losses, added in slot order.
  using TileFn = std::function<double(int64_t first, int count, int worker, int /*slot*/, float* G)>;
  double accumulate(ThreadPool& p, int64_t rows, int S, bool withGradient, const TileFn& tile) {
    if (withGradient) {
      if (slots.size() < static_cast<size_t>(S)) slots.resize(S);
      for (int s = 0; s < S; ++s) slots[s].resize(net.params.size());
    }
    std::vector<double> loss(S, 0.0);
    p.parallelFor(S, [&](int64_t s, int worker) {
      float* G = nullptr;
      if (withGradient) {
        std::fill(slots[s].begin(), slots[s].end(), 0.0f);
        G = slots[s].data();
      }
      const int64_t begin = rows * s / S, end = rows * (s + 1) / S;
      double sum = 0.0;
      for (int64_t first = begin; first < end; first += kTile)
        sum += tile(first, static_cast<int>(std::min<int64_t>(kTile, end - first)), worker, static_cast<int>(s), G);
      if (G)
        for (const TLinear* L : net.linears) maskGradient(*L, G + L->w);
      loss[s] = sum;
    });
    double total = 0.0;
    for (double v : loss) total += v;
    return total;
  }

  // Runs task(0..count-1): on the pool when `work` (floats touched) is large, else
  // inline (waking the pool would cost more than the work). The same partial sums
  // either way, so the result does not depend on which.
  static void forChunks(ThreadPool& p, size_t count, size_t work, const std::function<void(int64_t)>& task) {
    if (work < kSerialUpdate) {
      for (size_t c = 0; c < count; ++c) task(static_cast<int64_t>(c));
      return;
    }
    p.parallelFor(static_cast<int64_t>(count), [&](int64_t c, int) { task(c); });
  }

  // Sums the slots into slots[0]; returns the gradient's L2 norm.
  double reduce(ThreadPool& p, int S) {
    const size_t n = net.params.size();
    const size_t chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> squares(chunks, 0.0);
    forChunks(p, chunks, n * S, [&](int64_t c) {
      const size_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      float* __restrict g0 = slots[0].data();
      // Slot by slot over the chunk (each element still sums slot 0, 1, 2, ... in order): whole
      // vectors of one slot at a time, where an inner loop over the slots per element did not vectorise.
      for (int s = 1; s < S; ++s) {
        const float* __restrict gs = slots[s].data();
        for (size_t i = begin; i < end; ++i) g0[i] += gs[i];
      }
      double sq = 0.0;
      for (size_t i = begin; i < end; ++i) sq += static_cast<double>(g0[i]) * g0[i];
      squares[c] = sq;
    });
    double total = 0.0;
    for (double v : squares) total += v;
    return std::sqrt(total);
  }

  // Applies (or skips) one optimizer step with the gradient in slots[0].
  bool finishStep(ThreadPool& p, double lossSum, int64_t rows, int S, StepStats& stats) {
    if (!std::isfinite(lossSum)) {
      stats.skipped += 1;
      return false;
    }
    const double norm = reduce(p, S);
    stats.lastGradNorm = norm;
    if (!std::isfinite(norm)) {
      stats.skipped += 1;
      return false;
    }
    const double clip = options.clipGradNorm;
    const float factor = clip > 0.0 && norm > clip ? static_cast<float>(clip / (norm + 1e-6)) : 1.0f;
    adamSteps += 1;
    const double b1 = options.beta1, b2 = options.beta2;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(adamSteps));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(adamSteps));
    const float stepSize = static_cast<float>(options.learningRate / bc1);
    const float invSqrtBc2 = static_cast<float>(1.0 / std::sqrt(bc2));
    const float decay = static_cast<float>(1.0 - options.learningRate * options.weightDecay);
    const float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2), eps = static_cast<float>(options.eps);
    const size_t n = net.params.size();
    if (adamM.size() != n) {
      adamM.assign(n, 0.0f);
      adamV.assign(n, 0.0f);
    }
    const bool ema = options.ema > 0.0;
    if (ema && shadow.size() != n) {
      shadow = net.params;  // the average starts from the weights before its first step
      emaSteps = 0;
    }
    float keep = 0.0f;
    if (ema) {
      emaSteps += 1;
      const double t = static_cast<double>(emaSteps);
      keep = static_cast<float>(std::min(options.ema, t / (9.0 + t)));  // warm-up: early weights fade fast
    }
    const size_t chunks = (n + kChunk - 1) / kChunk;
    forChunks(p, chunks, n, [&](int64_t c) {
      const size_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      float* w = net.params.data();
      adamUpdate(slots[0].data() + begin, w + begin, adamM.data() + begin, adamV.data() + begin, end - begin,
                 {factor, fb1, fb2, decay, stepSize, invSqrtBc2, eps});
      if (ema) {
        float* s = shadow.data();
        for (size_t i = begin; i < end; ++i) s[i] = keep * s[i] + (1.0f - keep) * w[i];
      }
    });
    forChunks(p, net.linears.size(), n, [&](int64_t i) { net.refreshTransposed(static_cast<size_t>(i), 1); });
    stats.lossSum += lossSum;
    stats.rows += rows;
    stats.steps += 1;
    return true;
  }

  // Negative log-likelihood of the tile in workspace `ws` (points hold x, rows
  // `count`); with G, adds the gradient of sum(nll) * scale.
  double likelihoodTile(Workspace& ws, int count, float* G, float scale) {
    const int dim = net.dim;
    netForward(net, ws, count);
    double sum = 0.0;
    for (int r = 0; r < count; ++r) {
      const float* z = ws.points.data() + r * dim;
      sum += static_cast<double>(-baseLogDensity(z, dim) - ws.logDet[r]);
      for (int i = 0; i < dim; ++i) ws.gpoints[r * dim + i] = z[i] * scale;
    }
    if (G) netBackward(net, ws, count, -scale, G, false);
    return sum;
  }

  void ensureOrder(uint64_t seed, int64_t epoch) {
    if (orderEpoch == epoch && orderSeed == seed && static_cast<int64_t>(order.size()) == trainRows) return;
    order.resize(trainRows);
    for (int64_t i = 0; i < trainRows; ++i) order[i] = i;
    uint64_t state = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(epoch + 1));
    for (int64_t i = trainRows - 1; i > 0; --i) {
      const int64_t j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
      std::swap(order[i], order[j]);
    }
    orderEpoch = epoch;
    orderSeed = seed;
  }

  // log p(x) and d log p / dx of `model` for the tile in ws.points (count rows); the
  // gradient is left in ws.gpoints.
  static void logProbGradTile(const Net& model, Workspace& ws, int count, float* logProb) {
    const int dim = model.dim;
    netForward(model, ws, count);
    for (int r = 0; r < count; ++r) {
      const float* z = ws.points.data() + r * dim;
      logProb[r] = baseLogDensity(z, dim) + ws.logDet[r];
      for (int i = 0; i < dim; ++i) ws.gpoints[r * dim + i] = -z[i];
    }
    netBackward(model, ws, count, 1.0f, nullptr, true);
  }
};

Trainer::Trainer(const FlowSpec& spec, Direction pass, const FlowSpec* teacher, const OptimizerOptions& options,
                 bool reference)
    : impl_(std::make_unique<Impl>()) {
  buildNet(impl_->net, spec, pass, reference);
  if (impl_->net.linears.empty()) throw std::invalid_argument("the trained flow has no MADE layer: nothing to train");
  if (teacher) {
    impl_->teacher = std::make_unique<Net>();
    buildNet(*impl_->teacher, *teacher, Direction::ToLatent, reference);
    if (impl_->teacher->dim != impl_->net.dim) throw std::invalid_argument("the teacher's dim differs from the student's");
    if (pass != Direction::ToData) throw std::invalid_argument("a teacher needs a student trained along z -> x");
  }
  setOptions(options);
}

Trainer::~Trainer() = default;

int Trainer::dim() const { return impl_->net.dim; }
size_t Trainer::numParameters() const { return impl_->net.params.size(); }
void Trainer::setOptions(const OptimizerOptions& options) {
  if (!(options.ema >= 0.0 && options.ema < 1.0)) throw std::invalid_argument("ema must be in [0, 1)");
  impl_->options = options;
}
void Trainer::setStickingTheLanding(bool on) { impl_->stickingTheLanding = on; }

void Trainer::setCancel(const CancelFlag* flag) { impl_->cancel = flag; }

void Trainer::setData(const float* train, int64_t trainRows, const float* valid, int64_t validRows,
                      const float* trainContext, const float* validContext) {
  const int dim = impl_->net.dim;
  const int C = impl_->net.contextDim;
  if (C > 0 && (!trainContext || (valid && validRows > 0 && !validContext)))
    throw std::invalid_argument("this flow is conditional: every training and validation row needs its context");
  impl_->train.assign(train, train + trainRows * dim);
  impl_->trainRows = trainRows;
  if (valid && validRows > 0) impl_->valid.assign(valid, valid + validRows * dim);
  else impl_->valid.clear();
  impl_->validRows = valid ? validRows : 0;
  if (C > 0) {
    impl_->trainContext.assign(trainContext, trainContext + trainRows * C);
    if (impl_->validRows > 0) impl_->validContext.assign(validContext, validContext + validRows * C);
  }
  impl_->orderEpoch = -1;
}

void Trainer::fitBatches(uint64_t seed, int64_t epoch, int64_t firstBatch, int64_t batches, int64_t batchSize,
                         StepStats& stats) {
  Impl& I = *impl_;
  if (I.net.pass != Direction::ToLatent) throw std::logic_error("fitBatches needs a flow trained along x -> z");
  if (batchSize < 1) throw std::invalid_argument("batch size must be positive");
  std::shared_ptr<ThreadPool> p = I.pool();
  I.ensureOrder(seed, epoch);
  const int dim = I.net.dim;
  for (int64_t b = firstBatch; b < firstBatch + batches && !I.cancelled(); ++b) {
    const int64_t start = b * batchSize;
    const int64_t rows = std::min(batchSize, I.trainRows - start);
    if (rows <= 0) break;
    const int S = I.slotCount(rows);
    const float scale = 1.0f / static_cast<float>(rows);
    const double loss = I.accumulate(*p, rows, S, true, [&](int64_t first, int count, int worker, int /*slot*/, float* G) {
      Workspace& ws = I.workspaces[worker];
      for (int r = 0; r < count; ++r)
        std::copy_n(I.train.data() + I.order[start + first + r] * dim, dim, ws.points.data() + r * dim);
      I.loadContext(ws, I.trainContext.data(), I.trainRows, I.order.data() + start, first, count);
      return I.likelihoodTile(ws, count, G, scale);
    });
    I.finishStep(*p, loss, rows, S, stats);
  }
}

double Trainer::validationLoss() {
  Impl& I = *impl_;
  if (I.validRows <= 0) return std::numeric_limits<double>::quiet_NaN();
  std::shared_ptr<ThreadPool> p = I.pool();
  const int dim = I.net.dim;
  const int64_t tiles = (I.validRows + kTile - 1) / kTile;
  std::vector<double> sums(tiles, 0.0);
  // With averaging, measure the averaged weights: swapped in, and back out even on a throw.
  struct Swap {
    Impl* impl;
    explicit Swap(Impl* i) : impl(i) {
      if (impl) impl->swapShadow();
    }
    ~Swap() {
      if (impl) impl->swapShadow();
    }
  } swap(I.averaging() ? &I : nullptr);
  p->parallelFor(tiles, [&](int64_t t, int worker) {
    Workspace& ws = I.workspaces[worker];
    const int64_t first = t * kTile;
    const int count = static_cast<int>(std::min<int64_t>(kTile, I.validRows - first));
    std::copy_n(I.valid.data() + first * dim, static_cast<size_t>(count) * dim, ws.points.data());
    I.loadContext(ws, I.validContext.data(), I.validRows, nullptr, first, count);
    sums[t] = I.likelihoodTile(ws, count, nullptr, 0.0f);
  });
  double total = 0.0;
  for (double v : sums) total += v;
  return total / static_cast<double>(I.validRows);
}

double Trainer::likelihoodGradient(const float* x, int64_t rows, const float* context) {
  Impl& I = *impl_;
  if (I.net.pass != Direction::ToLatent) throw std::logic_error("likelihoodGradient needs a flow trained along x -> z");
  std::shared_ptr<ThreadPool> p = I.pool();
  const int dim = I.net.dim;
  const int S = I.slotCount(rows);
  const float scale = 1.0f / static_cast<float>(rows);
  const double loss = I.accumulate(*p, rows, S, true, [&](int64_t first, int count, int worker, int /*slot*/, float* G) {
    Workspace& ws = I.workspaces[worker];
    std::copy_n(x + first * dim, static_cast<size_t>(count) * dim, ws.points.data());
    I.loadContext(ws, context, rows, nullptr, first, count);
    return I.likelihoodTile(ws, count, G, scale);
  });
  I.reduce(*p, S);
  return loss / static_cast<double>(rows);
}

void Trainer::logProbGradient(const float* x, int64_t rows, float* logProb, float* grad) {
  Impl& I = *impl_;
  const Net& model = I.teacher ? *I.teacher : I.net;
  if (model.pass != Direction::ToLatent) throw std::logic_error("logProbGradient needs a flow evaluated along x -> z");
  if (model.contextDim > 0) throw std::invalid_argument("logProbGradient takes no context: not for a conditional flow");
  std::shared_ptr<ThreadPool> p = I.pool();
  std::vector<Workspace>& spaces = I.teacher ? I.teacherWorkspaces : I.workspaces;
  const int dim = model.dim;
  const int64_t tiles = (rows + kTile - 1) / kTile;
  p->parallelFor(tiles, [&](int64_t t, int worker) {
    Workspace& ws = spaces[worker];
    const int64_t first = t * kTile;
    const int count = static_cast<int>(std::min<int64_t>(kTile, rows - first));
    std::copy_n(x + first * dim, static_cast<size_t>(count) * dim, ws.points.data());
    Impl::logProbGradTile(model, ws, count, logProb + first);
    std::copy_n(ws.gpoints.data(), static_cast<size_t>(count) * dim, grad + first * dim);
  });
}

void Trainer::reverseForward(uint64_t seed, int64_t step, int64_t batchRows, const float* z, float* x, float* logq,
                             const float* context, int64_t contextRows) {
  Impl& I = *impl_;
  if (I.net.pass != Direction::ToData) throw std::logic_error("reverseForward needs a flow trained along z -> x");
  std::shared_ptr<ThreadPool> p = I.pool();
  const int dim = I.net.dim;
  const int C = I.net.contextDim;
  if (C > 0) {
    if (!context || (contextRows != 1 && contextRows != batchRows))
      throw std::invalid_argument("this flow is conditional: each step needs one context row, or one per row");
    I.batchContext.assign(context, context + contextRows * C);
    I.batchContextRows = contextRows;
  }
  I.batch = batchRows;
  I.latent.resize(static_cast<size_t>(batchRows) * dim);
  I.logq.resize(batchRows);
  if (z) std::copy_n(z, static_cast<size_t>(batchRows) * dim, I.latent.data());
  const int64_t tiles = (batchRows + kTile - 1) / kTile;
  p->parallelFor(tiles, [&](int64_t t, int worker) {
    Workspace& ws = I.workspaces[worker];
    const int64_t first = t * kTile;
    const int count = static_cast<int>(std::min<int64_t>(kTile, batchRows - first));
    float* zt = I.latent.data() + first * dim;
    if (!z) fillNormalRows(seed, static_cast<uint64_t>(step) * batchRows + first, count, dim, zt);
    std::copy_n(zt, static_cast<size_t>(count) * dim, ws.points.data());
    I.loadContext(ws, I.batchContext.data(), I.batchContextRows, nullptr, first, count);
    netForward(I.net, ws, count);
    std::copy_n(ws.points.data(), static_cast<size_t>(count) * dim, x + first * dim);
    for (int r = 0; r < count; ++r) {
      const float value = baseLogDensity(zt + r * dim, dim) - ws.logDet[r];
      I.logq[first + r] = value;
      logq[first + r] = value;
    }
  });
}

void Trainer::reverseBackward(const float* targetLogDensity, const float* targetGrad, bool update, StepStats& stats,
                              double* stepLoss) {
  Impl& I = *impl_;
  if (I.batch <= 0) throw std::logic_error("reverseBackward needs a reverseForward first");
  std::shared_ptr<ThreadPool> p = I.pool();
  const int dim = I.net.dim;
  const int64_t rows = I.batch;
  double lossSum = 0.0;
  for (int64_t r = 0; r < rows; ++r) lossSum += static_cast<double>(I.logq[r]) - targetLogDensity[r];
  const int S = I.slotCount(rows);
  const float scale = 1.0f / static_cast<float>(rows);
  I.accumulate(*p, rows, S, true, [&](int64_t first, int count, int worker, int /*slot*/, float* G) {
    Workspace& ws = I.workspaces[worker];
    std::copy_n(I.latent.data() + first * dim, static_cast<size_t>(count) * dim, ws.points.data());
    std::copy_n(I.latent.data() + first * dim, static_cast<size_t>(count) * dim, ws.latent.data());
    I.loadContext(ws, I.batchContext.data(), I.batchContextRows, nullptr, first, count);
    netForward(I.net, ws, count);  // recomputed: the activations are not kept between calls
    for (int i = 0; i < count * dim; ++i) ws.gpoints[i] = -targetGrad[first * dim + i] * scale;
    I.reverseTileBackward(ws, count, scale, G);
    return 0.0;
  });
  if (stepLoss) *stepLoss = lossSum / static_cast<double>(rows);
  if (update) {
    I.finishStep(*p, lossSum, rows, S, stats);
  } else {
    stats.lastGradNorm = I.reduce(*p, S);
  }
}

void Trainer::distillSteps(uint64_t seed, int64_t firstStep, int64_t steps, int64_t batchRows, double betaStart,
                           double betaSlope, double forwardWeight, StepStats& stats, double* stepLoss,
                           const float* contexts, int64_t contextRowsPerStep) {
  Impl& I = *impl_;
  if (!I.teacher) throw std::logic_error("distillSteps needs a teacher");
  const int C = I.net.contextDim;
  if (I.teacher->contextDim != C) throw std::invalid_argument("the teacher's context width differs from the student's");
  if (C > 0 && (!contexts || (contextRowsPerStep != 1 && contextRowsPerStep != batchRows)))
    throw std::invalid_argument("conditional distillation needs each step's contexts: one row, or one per row");
  std::shared_ptr<ThreadPool> p = I.pool();
  const int dim = I.net.dim;
  const int S = I.slotCount(batchRows);
  const float scale = 1.0f / static_cast<float>(batchRows);
  for (int64_t s = 0; s < steps && !I.cancelled(); ++s) {
    const uint64_t firstRow = static_cast<uint64_t>(firstStep + s) * static_cast<uint64_t>(batchRows);
    const double beta = std::min(1.0, betaStart + betaSlope * static_cast<double>(firstStep + s));
    const float gradScale = static_cast<float>(beta) * scale;
    std::vector<double> klSums(S, 0.0);  // the loss at beta = 1, per slot (summed in order)
    const float* stepContext = C > 0 ? contexts + s * contextRowsPerStep * C : nullptr;
    const double loss = I.accumulate(*p, batchRows, S, true, [&](int64_t first, int count, int worker, int slot, float* G) {
      Workspace& ws = I.workspaces[worker];
      Workspace& tws = I.teacherWorkspaces[worker];
      // The student and the teacher see each row's context (teacher samples for the forward term too).
      Impl::loadContextFor(I.net, ws, stepContext, contextRowsPerStep, nullptr, first, count);
      Impl::loadContextFor(*I.teacher, tws, stepContext, contextRowsPerStep, nullptr, first, count);
      fillNormalRows(seed, firstRow + first, count, dim, ws.latent.data());
      std::copy_n(ws.latent.data(), static_cast<size_t>(count) * dim, ws.points.data());
      netForward(I.net, ws, count);
      std::copy_n(ws.points.data(), static_cast<size_t>(count) * dim, tws.points.data());
      float logp[kTile];
      Impl::logProbGradTile(*I.teacher, tws, count, logp);
      double sum = 0.0, kl = 0.0;
      for (int r = 0; r < count; ++r) {
        const double logq = static_cast<double>(baseLogDensity(ws.latent.data() + r * dim, dim) - ws.logDet[r]);
        sum += logq - beta * logp[r];
        kl += logq - logp[r];
      }
      klSums[slot] += kl;
      clipOutlierRows(tws.gpoints.data(), count, dim, kScoreClip);
      for (int i = 0; i < count * dim; ++i) ws.gpoints[i] = -tws.gpoints[i] * gradScale;
      I.reverseTileBackward(ws, count, scale, G);
      if (forwardWeight > 0.0) {
        // Teacher samples from their own latent stream, scored by the student along x -> z.
        fillNormalRows(seed ^ kForwardStream, firstRow + first, count, dim, tws.points.data());
        netForward(*I.teacher, tws, count, Direction::ToData);
        std::copy_n(tws.points.data(), static_cast<size_t>(count) * dim, ws.points.data());
        netForward(I.net, ws, count, Direction::ToLatent);
        const float w = static_cast<float>(forwardWeight) * scale;
        for (int r = 0; r < count; ++r) {
          const float* zr = ws.points.data() + r * dim;
          sum -= forwardWeight * static_cast<double>(baseLogDensity(zr, dim) + ws.logDet[r]);
          for (int i = 0; i < dim; ++i) ws.gpoints[r * dim + i] = zr[i] * w;
        }
        netBackward(I.net, ws, count, -w, G, false, Direction::ToLatent);
      }
      return sum;
    });
    double kl = 0.0;
    for (double v : klSums) kl += v;
    if (stepLoss) stepLoss[s] = kl / static_cast<double>(batchRows);
    I.finishStep(*p, loss, batchRows, S, stats);
  }
}

void Trainer::parametersTo(const std::vector<DenseMadeView>& views) const {
  exportFlat(impl_->net, impl_->averaging() ? impl_->shadow.data() : impl_->net.params.data(), views);
}

void Trainer::gradientTo(const std::vector<DenseMadeView>& views) const {
  if (impl_->slots.empty()) throw std::logic_error("no gradient has been computed");
  exportFlat(impl_->net, impl_->slots[0].data(), views, impl_->net.params.data());
}

void Trainer::saveBest() { impl_->best = impl_->averaging() ? impl_->shadow : impl_->net.params; }

void Trainer::restoreBest() {
  Impl& I = *impl_;
  if (I.best.size() != I.net.params.size()) return;
  if (I.averaging()) I.shadow = I.best;
  I.net.params = I.best;
  I.net.refreshTransposed(0, I.net.linears.size());
}

}  // namespace iaflow
