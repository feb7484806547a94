// A flow as the core sees it: the spec (weights as PyTorch stores them) and the
// plan built from it once per parameter change (units sorted by MADE degree,
// masks folded into the weights, so every weight matrix is a staircase).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "flow_math.h"

namespace iaflow {

enum class LayerKind : int { IAF = 0, MAF = 1, Permutation = 2, Affine = 3 };

// How a conditional MADE's context c enters its first hidden layer (docs/DESIGN.md):
// Linear: h1 = act(W0 u + b0 + Wc c + bc) (zuko: c as extra input columns);
// Activated: h1 = act(W0 u + b0 + act(Wc c + bc)) (nflows' context_layer, as sbi builds it).
// In a residual MADE the stream starts h = W0 u + b0 + g(Wc c + bc).
enum class ContextForm : int { None = 0, Linear = 1, Activated = 2 };

// One dense [out, in] matrix (row-major, PyTorch's Linear layout) with its bias.
struct DenseLinear {
  int out = 0;
  int in = 0;
  std::vector<float> weight;  // out * in
  std::vector<float> bias;    // out
};

struct LayerSpec {
  LayerKind kind = LayerKind::IAF;
  // MADE layers
  Activation activation = Activation::ReLU;
  ScaleKind scale = ScaleKind::Softplus;
  std::vector<int> inputDegrees;               // dim entries, a permutation of 1..dim
  std::vector<std::vector<int>> hiddenDegrees;  // per hidden layer, values in 0..dim
  // Residual MADE (nflows' MaskedResidualBlock): hidden[0] is a linear layer with no activation
  // after it, then pairs (2b+1, 2b+2) form blocks h += W2 act(W1 act(h)), and the heads read h
  // itself. All hidden layers then share one width and one set of degrees.
  bool residual = false;
  // The conditioner reads softClamp(u) (flow_math.h) with c = softClamp; 0: u itself.
  float softClamp = 0.0f;
  // Conditional flows (FlowSpec::contextDim > 0): the context term of the first hidden layer.
  ContextForm contextForm = ContextForm::None;
  DenseLinear context;                         // [h0, contextDim]
  std::vector<DenseLinear> hidden;             // hidden[0]: [h0, dim], hidden[l]: [h_l, h_{l-1}]
  DenseLinear shift;                           // [dim, h_last], rows by original dimension
  DenseLinear rawScale;                        // [dim, h_last]
  // permutation layers: data-side b[i] = latent-side a[permutation[i]]
  std::vector<int> permutation;
  // elementwise affine layers: data-side b[i] = loc[i] + scale[i] * a[i] (scale finite, nonzero);
  // trainable ones are optimised by training (through log|scale|, so the sign stays), fixed ones not.
  std::vector<float> affineLoc, affineScale;
  bool trainable = false;
};

struct FlowSpec {
  int dim = 0;
  int contextDim = 0;  // C: every MADE layer's first hidden layer reads a context row of C values
  std::vector<LayerSpec> layers;  // in sampling order: layers[0] acts on the latent z
};

// A masked linear layer in degree-sorted coordinates. Unit j reads exactly the
// first prefix[j] inputs, and prefix is nondecreasing in j: the staircase.
struct StaircaseLinear {
  int in = 0;
  int out = 0;
  int outStride = 0;            // out rounded up to kColumnBlock; padding columns are zero
  std::vector<float> weightKM;  // [in][outStride], K-major, masked entries zero
  std::vector<float> bias;      // [outStride]
  std::vector<int> prefix;      // [out]
  // The one-row path's copy of the weights (kernels.h's linearRow): whole stripes of kRowStripe
  // units, each stripe's first prefix[its last unit] rows of weights contiguous, [stripe][k][unit],
  // stripe s at rowStripeOffset[s]. A batch of one streams them in order instead of striding
  // outStride floats per input (about 30% less time per row where the weights come from L3).
  std::vector<float> rowStripes;
  std::vector<int64_t> rowStripeOffset;  // [out / kRowStripe]
  // A hidden layer only: the sequential direction computes one degree group at a time (group p:
  // the units unitsOfDegree reads for position p), so each group's live weights are kept together,
  // [k][units of the group] (the group's width is its row stride), group p at groupOffset[p] (at
  // least its first unit's index, so a view based at groupOffset[p] - first stays in the array):
  // whole cache lines in order instead of a few floats per line.
  std::vector<float> groupWeights;
  std::vector<int64_t> groupOffset;  // [dim]
};

constexpr int kColumnBlock = 16;
constexpr int kRowStripe = 2 * kColumnBlock;  // a whole number of vectors on every instruction set

struct MadePlan {
  int dim = 0;
  bool residual = false;
  bool parallelTowardData = true;  // IAF: true, MAF: false
  float softClampInv = 0.0f;       // 1 / softClamp; 0: the conditioner reads its inputs as they are
  // The context term g(Wc c + bc) of hidden layer 0, as a staircase whose units are hidden layer
  // 0's (sorted) and which reads every context value (prefix C): the kernels' dense case.
  ContextForm contextForm = ContextForm::None;
  StaircaseLinear context;
  // The Linear form folded into hidden layer 0 for the CPU kernels: contextFirst reads [c; u]
  // (C context inputs of degree 0, then the sorted inputs): weights [Wc; W0], bias b0 + bc,
  // prefix C + layer 0's prefix, so the context costs no pass of its own. contextOnly is its
  // first C rows (bias b0 + bc): with one context row for a whole call, t = contextOnly(c) is
  // computed once and serves as layer 0's bias, which rounds exactly as contextFirst does per row.
  StaircaseLinear contextFirst, contextOnly;
  Activation activation = Activation::ReLU;
  ScaleKind scale = ScaleKind::Softplus;
  std::vector<int> dimAtPosition;        // sorted position p (degree p + 1) -> original dimension
  std::vector<StaircaseLinear> hidden;   // units sorted by degree
  // unitSource[l][j]: the original row (in the spec's [out, in] weight) of sorted unit j of hidden layer l.
  std::vector<std::vector<int>> unitSource;
  // Output columns 2p (raw shift) and 2p + 1 (raw scale) belong to position p.
  StaircaseLinear output;
  // unitsUpToDegree[l][d]: how many units of hidden layer l have degree <= d, d in 0..dim.
  std::vector<std::vector<int>> unitsUpToDegree;
};

// An elementwise affine layer, b = loc + scale * a: log|det db/da| = sum_i log|scale[i]|.
struct AffinePlan {
  std::vector<float> loc, scale;
  float logAbsScaleSum = 0.0f;
  bool trainable = false;
};

struct LayerPlan {
  LayerKind kind = LayerKind::IAF;
  MadePlan made;
  std::vector<int> permutation;
  AffinePlan affine;
};

struct FlowPlan {
  int dim = 0;
  int contextDim = 0;
  std::vector<LayerPlan> layers;
  int widestHidden = 0;  // largest outStride among hidden layers
  int deepestHidden = 0; // most hidden layers in one MADE
};

// Builds the plan; throws std::invalid_argument when the spec is inconsistent
// (the TypeScript layer validates user input first, so this is a second guard).
std::shared_ptr<const FlowPlan> buildPlan(const FlowSpec& spec);

}  // namespace iaflow
