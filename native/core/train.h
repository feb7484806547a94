// Training in the core: backward passes of the masked MLP and of the affine
// step, Adam (bias-corrected, decoupled weight decay) and gradient clipping, on
// the core's thread pool. No Node headers.
//
// A Trainer holds one flow's parameters in the degree-sorted staircase layout of
// plan.h (masks folded in, so masked weights stay exactly zero), the optimizer
// state, and copies of the training data. It trains along a pass,
// Direction::ToLatent (maximum likelihood, x -> z) or Direction::ToData (reverse
// KL and distillation, z -> x): each MADE layer (plain or residual) runs its
// parallel direction where that goes the pass's way (MAF for x -> z, IAF for
// z -> x) and otherwise its one-pass sequential direction, whose adjoint the
// backward pass sweeps in reverse degree order (see train_kernels.h).
// Parameters are mapped back to the dense PyTorch layout on export.
//
// Determinism: a batch is split into a fixed number of row slots (a function of
// the batch size and the model size only), each slot accumulates its own
// gradient, and slots are summed in order, so results do not depend on the
// thread count or on scheduling.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend.h"
#include "plan.h"

namespace iaflow {

struct OptimizerOptions {
  double learningRate = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weightDecay = 0.0;   // decoupled, as AdamW: p -= lr * weightDecay * p
  double clipGradNorm = 0.0;  // global L2 norm; 0 turns clipping off
  // Polyak averaging: an exponential moving average of the parameters, updated after every
  // applied step (shadow = d * shadow + (1 - d) * params, with the warm-up d = min(ema,
  // t / (9 + t)) at the t-th applied step, the shadow starting from the weights before the
  // first step). In [0, 1); 0 turns it off. When on, validationLoss, saveBest / restoreBest
  // and parametersTo use the averaged weights; the optimizer steps the raw ones.
  double ema = 0.0;
};

// Where one MADE (or affine) layer's dense tensors live (PyTorch layout, as in the model
// file); export writes only the entries the MADE mask keeps.
struct DenseMadeView {
  std::vector<float*> hiddenWeight;
  std::vector<float*> hiddenBias;
  float* shiftWeight = nullptr;
  float* shiftBias = nullptr;
  float* scaleWeight = nullptr;
  float* scaleBias = nullptr;
  // an affine layer's (dim each)
  float* loc = nullptr;
  float* scale = nullptr;
  // a conditional MADE's context term: [h0, contextDim] and [h0]
  float* contextWeight = nullptr;
  float* contextBias = nullptr;
};

struct StepStats {
  double lossSum = 0.0;   // sum of per-row losses over the applied steps' rows
  int64_t rows = 0;       // rows of the applied steps
  int64_t steps = 0;      // steps applied (optimizer updates)
  int64_t skipped = 0;    // steps skipped: non-finite loss or gradient
  double lastGradNorm = 0.0;  // gradient norm of the last step (before clipping)
};

class Trainer {
 public:
  // `teacher` (optional, distillation): any flow of the same dim, scored along x -> z
  // and sampled along z -> x (a MAF teacher: one pass, then sequential). `reference` selects the simple dense
  // path (every weight multiplied, zeros included): the benchmark's baseline. The
  // instruction set is the one inference runs (kernels.h's activeKernels; selectKernels
  // switches both).
  Trainer(const FlowSpec& spec, Direction pass, const FlowSpec* teacher, const OptimizerOptions& options,
          bool reference = false);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  int dim() const;
  size_t numParameters() const;  // in the sorted layout, padding included
  void setOptions(const OptimizerOptions& options);
  // Reverse KL's gradient estimator. Off: the reparameterized gradient of log q(x) - log p(x)
  // with x = f(z). On ("sticking the landing", Roeder et al. 2017): the score term
  // d log q / d params at fixed x, whose mean is zero, is left out, so only the path through x
  // remains, (d log q(x)/dx - d log p(x)/dx) dx/dparams; its variance vanishes as q reaches p.
  // d log q / dx runs the flow's x -> z direction backward (sequential for IAF layers).
  void setStickingTheLanding(bool on);
  // A flag the multi-step calls (fitBatches, distillSteps) poll before each step: once raised,
  // they return after the step in progress (stats count the steps done). Null: none. Set by the
  // caller around a call; one call at a time per trainer.
  void setCancel(const CancelFlag* flag);

  // Maximum likelihood. Copies the data (row-major).
  // Conditional flows: trainContext / validContext hold each row's context (contextDim floats).
  void setData(const float* train, int64_t trainRows, const float* valid, int64_t validRows,
               const float* trainContext = nullptr, const float* validContext = nullptr);
  // Runs minibatches [firstBatch, firstBatch + batches) of epoch `epoch` (the epoch's
  // order is a shuffle of the training rows reproducible from (seed, epoch)).
  void fitBatches(uint64_t seed, int64_t epoch, int64_t firstBatch, int64_t batches, int64_t batchSize,
                  StepStats& stats);
  // Mean negative log-likelihood of the validation rows (NaN when there are none).
  double validationLoss();

  // Reverse KL with a target evaluated outside the core. reverseForward draws the
  // latent rows (Philox rows step * batch + r under seed) or takes `z`, and writes
  // x = f(z) and log q(x); reverseBackward takes the target's log-density and its
  // gradient at those x, and applies one step (or, with update false, leaves the
  // gradient for gradientTo).
  // Conditional flows: the step's contexts, contextRows rows (1: every row's, or batch).
  void reverseForward(uint64_t seed, int64_t step, int64_t batch, const float* z, float* x, float* logq,
                      const float* context = nullptr, int64_t contextRows = 0);
  void reverseBackward(const float* targetLogDensity, const float* targetGrad, bool update, StepStats& stats,
                       double* stepLoss);
  // Distillation: `steps` steps of reverse KL against the teacher, all in the core:
  // E_z[log q(x) - beta log p(x)], x = f(z), with beta = min(1, betaStart + betaSlope * step)
  // (annealing: a small beta flattens the teacher, so the student spreads over every mode
  // before it sharpens), plus forwardWeight times the forward KL's cross-entropy
  // E_{x ~ teacher}[-log q(x)] on a second batch of teacher samples (the teacher samples along
  // z -> x and the student is evaluated and differentiated along x -> z, sequentially where its
  // layers are IAF). Reverse KL is mode-seeking and never sees where the student puts too little
  // mass; the forward term does. stepLoss gets the reverse-KL loss at beta = 1, the KL from the teacher.
  // Conditional flows: contexts holds each step's contexts, contextRowsPerStep rows (1 or batch) per step.
  void distillSteps(uint64_t seed, int64_t firstStep, int64_t steps, int64_t batch, double betaStart,
                    double betaSlope, double forwardWeight, StepStats& stats, double* stepLoss,
                    const float* contexts = nullptr, int64_t contextRowsPerStep = 0);

  // Test hooks. Gradient of the mean negative log-likelihood of x (kept for gradientTo);
  // returns the mean. logProbGradient: log p(x) and its gradient wrt x, of this flow
  // (ToLatent) or of the teacher when there is one.
  double likelihoodGradient(const float* x, int64_t rows, const float* context = nullptr);
  void logProbGradient(const float* x, int64_t rows, float* logProb, float* grad);

  // views[k] for MADE layer k: the averaged weights when `ema` is on (and a step was applied), else the raw ones
  void parametersTo(const std::vector<DenseMadeView>& views) const;
  void gradientTo(const std::vector<DenseMadeView>& views) const;    // the last computed gradient
  // Keeps a copy of the weights validationLoss measures (the averaged ones when `ema` is on);
  // restoreBest makes that copy the current weights (raw and averaged both).
  void saveBest();
  void restoreBest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace iaflow
