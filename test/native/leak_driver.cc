// The core without Node, for LeakSanitizer (scripts/test-asan.js builds it with
// -fsanitize=address,undefined and runs it with leak detection on). Under Node leak detection
// cannot run: V8 and Node keep their heaps until exit by design. Here the process owns every
// allocation, so anything the core forgets to free is reported when main returns.
//
// It sends every path of the core through the sanitizers once: each instruction set this CPU
// runs, both CPU backends, IAF and MAF layers of every activation and scale parameterization,
// plain and residual, with permutations between them; both directions with the Philox noise or
// given rows and with any subset of the outputs; a cancelled run; every Trainer entry point
// (maximum likelihood, reverse KL with and without sticking the landing, distillation, export,
// best-weight keeping, averaging and clipping); thread-pool replacement; and the errors of bad
// specs and misused trainers, whose exceptions must free what was built before the throw.
// Sizes are small: the sanitizers slow the code down, and coverage, not volume, finds the bugs.
//
// It checks what it can without an oracle (outputs finite, each direction inverting the other
// within float tolerance) and exits non-zero on a failed check; the sanitizers abort on their own.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../native/core/backend.h"
#include "../../native/core/kernels.h"
#include "../../native/core/plan.h"
#include "../../native/core/thread_pool.h"
#include "../../native/core/train.h"

using namespace iaflow;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "leak_driver: FAILED: %s\n", what.c_str());
    ++failures;
  }
}

std::mt19937 rng(12345);

std::vector<float> randomVector(size_t n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

DenseLinear randomDense(int out, int in) {
  DenseLinear d;
  d.out = out;
  d.in = in;
  d.weight = randomVector(static_cast<size_t>(out) * in, 0.3f / std::sqrt(static_cast<float>(in)));
  d.bias = randomVector(out, 0.1f);
  return d;
}

struct MadeShape {
  LayerKind kind;
  Activation activation;
  ScaleKind scale;
  bool residual;
};

// A MADE layer of `dim` inputs with random degree orders (hidden degrees in 1..dim-1, as MADE
// assigns them; with dim 1 they are 0, units that read nothing) and small random weights.
LayerSpec randomMade(int dim, const MadeShape& shape, int width, int contextDim = 0, bool softClamp = false) {
  LayerSpec layer;
  layer.kind = shape.kind;
  layer.softClamp = softClamp ? 2.0f : 0.0f;
  if (contextDim > 0) {
    layer.contextForm = rng() % 2 ? ContextForm::Linear : ContextForm::Activated;
    layer.context = randomDense(width, contextDim);
  }
  layer.activation = shape.activation;
  layer.scale = shape.scale;
  layer.residual = shape.residual;
  layer.inputDegrees.resize(dim);
  for (int i = 0; i < dim; ++i) layer.inputDegrees[i] = i + 1;
  std::shuffle(layer.inputDegrees.begin(), layer.inputDegrees.end(), rng);
  const int depth = shape.residual ? 3 : 2;
  std::vector<int> degrees(width);
  for (int j = 0; j < width; ++j) degrees[j] = dim > 1 ? 1 + static_cast<int>(rng() % (dim - 1)) : 0;
  int previous = dim;
  for (int l = 0; l < depth; ++l) {
    if (!shape.residual) {
      for (int j = 0; j < width; ++j) degrees[j] = dim > 1 ? 1 + static_cast<int>(rng() % (dim - 1)) : 0;
    }
    layer.hiddenDegrees.push_back(degrees);
    layer.hidden.push_back(randomDense(width, previous));
    previous = width;
  }
  layer.shift = randomDense(dim, width);
  layer.rawScale = randomDense(dim, width);
  return layer;
}

LayerSpec randomPermutation(int dim) {
  LayerSpec layer;
  layer.kind = LayerKind::Permutation;
  layer.permutation.resize(dim);
  for (int i = 0; i < dim; ++i) layer.permutation[i] = i;
  std::shuffle(layer.permutation.begin(), layer.permutation.end(), rng);
  return layer;
}

// extras: soft clamps on the MADEs and an affine layer at the data end (trainable or fixed, scales of both signs).
FlowSpec randomFlow(int dim, const std::vector<MadeShape>& shapes, int width, int contextDim = 0, bool extras = false) {
  FlowSpec spec;
  spec.dim = dim;
  spec.contextDim = contextDim;
  for (size_t k = 0; k < shapes.size(); ++k) {
    if (k > 0) spec.layers.push_back(randomPermutation(dim));
    spec.layers.push_back(randomMade(dim, shapes[k], width, contextDim, extras));
  }
  if (extras) {
    LayerSpec affine;
    affine.kind = LayerKind::Affine;
    affine.affineLoc = randomVector(dim, 1.0f);
    for (int i = 0; i < dim; ++i) affine.affineScale.push_back((i % 2 ? -1.0f : 1.0f) * (0.5f + static_cast<float>(rng() % 100) / 50.0f));
    affine.trainable = rng() % 2 == 0;
    spec.layers.push_back(affine);
  }
  return spec;
}

bool allFinite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

std::string describe(const std::string& isa, const std::string& backend, int dim, const MadeShape& s) {
  std::ostringstream out;
  out << isa << "/" << backend << " dim " << dim << " " << (s.kind == LayerKind::IAF ? "IAF" : "MAF") << " act "
      << static_cast<int>(s.activation) << " scale " << static_cast<int>(s.scale) << (s.residual ? " residual" : "");
  return out.str();
}

// Inference: noise -> data with every output, back to the latent side, and the partial-output
// and cancelled requests.
void runInference(const Backend& backend, const FlowSpec& spec, const std::string& label) {
  std::shared_ptr<const FlowPlan> plan = buildPlan(spec);
  std::string whyNot;
  check(backend.supports(*plan, &whyNot), label + ": backend refuses the plan: " + whyNot);
  std::shared_ptr<const Runner> runner = backend.prepare(plan);
  const int dim = spec.dim;
  for (int64_t rows : {1, 3, 67}) {
    std::vector<float> x(rows * dim), logDet(rows), logProb(rows), z(rows * dim), logDetBack(rows), logProbBack(rows);
    // A conditional flow: one context per row (and, below, one broadcast context).
    const std::vector<float> contexts = randomVector(rows * spec.contextDim, 1.0f);
    auto withContext = [&](RunRequest& req) {
      if (spec.contextDim == 0) return;
      req.context = contexts.data();
      req.contextRows = rows;
    };
    RunRequest sample;
    withContext(sample);
    sample.direction = Direction::ToData;
    sample.seed = 7;
    sample.firstRow = 5;
    sample.rows = rows;
    sample.outPoints = x.data();
    sample.outLogDet = logDet.data();
    sample.outLogProb = logProb.data();
    runner->run(sample);
    check(allFinite(x) && allFinite(logDet) && allFinite(logProb), label + ": non-finite sample");

    RunRequest density;
    withContext(density);
    density.direction = Direction::ToLatent;
    density.input = x.data();
    density.rows = rows;
    density.outPoints = z.data();
    density.outLogDet = logDetBack.data();
    density.outLogProb = logProbBack.data();
    runner->run(density);
    std::vector<float> noise(rows * dim);
    fillStandardNormal(7, 5, rows, dim, noise.data());
    double worst = 0.0;
    for (size_t i = 0; i < z.size(); ++i) worst = std::max(worst, std::fabs(static_cast<double>(z[i]) - noise[i]));
    for (int64_t r = 0; r < rows; ++r) worst = std::max(worst, std::fabs(static_cast<double>(logProb[r]) - logProbBack[r]));
    check(worst < 1e-2, label + ": the density direction does not invert the sample (worst " + std::to_string(worst) + ")");

    // One output at a time, and given latent rows instead of the stream.
    RunRequest partial;
    withContext(partial);
    if (spec.contextDim > 0) partial.contextRows = 1;  // the first row's context, broadcast
    partial.direction = Direction::ToData;
    partial.input = noise.data();
    partial.rows = rows;
    partial.outLogProb = logProb.data();
    runner->run(partial);
    partial.outLogProb = nullptr;
    partial.outLogDet = logDet.data();
    runner->run(partial);
    partial.direction = Direction::ToLatent;
    partial.input = x.data();
    partial.outLogDet = nullptr;
    partial.outPoints = z.data();
    runner->run(partial);
  }
  CancelFlag cancel(true);
  std::vector<float> x(1000 * dim);
  const std::vector<float> oneContext = randomVector(spec.contextDim, 1.0f);
  RunRequest cancelled;
  cancelled.context = spec.contextDim > 0 ? oneContext.data() : nullptr;
  cancelled.contextRows = spec.contextDim > 0 ? 1 : 0;
  cancelled.rows = 1000;
  cancelled.outPoints = x.data();
  cancelled.cancel = &cancel;
  bool threw = false;
  try {
    runner->run(cancelled);
  } catch (const Cancelled&) {
    threw = true;
  }
  check(threw, label + ": a cancelled run did not throw Cancelled");
}

// The dense views a Trainer exports into, one per layer (empty for a permutation), over storage
// kept in `store`.
std::vector<DenseMadeView> denseViews(const FlowSpec& spec, std::vector<std::vector<float>>& store) {
  std::vector<DenseMadeView> views;
  auto slot = [&store](size_t n) {
    store.emplace_back(n, 0.0f);
    return store.back().data();
  };
  store.reserve(64);
  for (const LayerSpec& layer : spec.layers) {
    DenseMadeView view;
    if (layer.kind == LayerKind::Permutation) {
      views.push_back(view);
      continue;
    }
    if (layer.kind == LayerKind::Affine) {
      view.loc = slot(layer.affineLoc.size());
      view.scale = slot(layer.affineScale.size());
      views.push_back(view);
      continue;
    }
    if (layer.contextForm != ContextForm::None) {
      view.contextWeight = slot(layer.context.weight.size());
      view.contextBias = slot(layer.context.bias.size());
    }
    for (const DenseLinear& h : layer.hidden) {
      view.hiddenWeight.push_back(slot(h.weight.size()));
      view.hiddenBias.push_back(slot(h.bias.size()));
    }
    view.shiftWeight = slot(layer.shift.weight.size());
    view.shiftBias = slot(layer.shift.bias.size());
    view.scaleWeight = slot(layer.rawScale.weight.size());
    view.scaleBias = slot(layer.rawScale.bias.size());
    views.push_back(view);
  }
  return views;
}

void runTraining(const Backend& backend, const FlowSpec& spec, const FlowSpec& teacher, const std::string& label) {
  const int dim = spec.dim;
  OptimizerOptions options;
  options.learningRate = 1e-3;
  options.clipGradNorm = 5.0;
  options.weightDecay = 1e-4;
  options.ema = 0.9;

  // Maximum likelihood (x -> z).
  {
    std::unique_ptr<Trainer> trainer = backend.makeTrainer(spec, Direction::ToLatent, nullptr, options);
    const int64_t trainRows = 100, validRows = 20;
    std::vector<float> train = randomVector(trainRows * dim, 1.0f), valid = randomVector(validRows * dim, 1.0f);
    const int C = spec.contextDim;
    std::vector<float> trainContext = randomVector(trainRows * C, 1.0f), validContext = randomVector(validRows * C, 1.0f);
    trainer->setData(train.data(), trainRows, valid.data(), validRows, C > 0 ? trainContext.data() : nullptr,
                     C > 0 ? validContext.data() : nullptr);
    StepStats stats;
    for (int64_t epoch = 0; epoch < 2; ++epoch) trainer->fitBatches(3, epoch, 0, 4, 32, stats);
    check(stats.steps + stats.skipped == 8, label + ": fitBatches did not take 8 steps");
    const double loss = trainer->validationLoss();
    check(std::isfinite(loss), label + ": non-finite validation loss");
    trainer->saveBest();
    trainer->fitBatches(3, 2, 0, 2, 32, stats);
    trainer->restoreBest();
    check(trainer->validationLoss() == loss, label + ": restoreBest did not restore the saved weights");
    trainer->setOptions(OptimizerOptions{});
    const double nll = trainer->likelihoodGradient(train.data(), 10, C > 0 ? trainContext.data() : nullptr);
    check(std::isfinite(nll), label + ": non-finite likelihood");
    if (C == 0) {
      std::vector<float> logProb(10), grad(10 * dim);
      trainer->logProbGradient(train.data(), 10, logProb.data(), grad.data());
      check(allFinite(logProb) && allFinite(grad), label + ": non-finite logProbGradient");
    }
    std::vector<std::vector<float>> store;
    std::vector<DenseMadeView> views = denseViews(spec, store);
    trainer->parametersTo(views);
    trainer->gradientTo(views);
    bool threw = false;
    try {
      float x = 0, logq = 0;
      trainer->reverseForward(1, 0, 1, nullptr, &x, &logq);  // the wrong pass
    } catch (const std::logic_error&) {
      threw = true;
    }
    check(threw, label + ": reverseForward on an x -> z trainer did not throw");
    threw = false;
    try {
      std::vector<DenseMadeView> tooFew;
      trainer->parametersTo(tooFew);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    check(threw, label + ": parametersTo with no views did not throw");
  }

  // Reverse KL (z -> x) against a standard normal target computed here, with and without
  // sticking the landing, drawing the latent rows or taking them.
  for (bool stickingTheLanding : {false, true}) {
    std::unique_ptr<Trainer> trainer = backend.makeTrainer(spec, Direction::ToData, nullptr, options);
    trainer->setStickingTheLanding(stickingTheLanding);
    const int64_t batch = 16;
    std::vector<float> z = randomVector(batch * dim, 1.0f), x(batch * dim), logq(batch), target(batch),
        targetGrad(batch * dim);
    StepStats stats;
    const std::vector<float> contexts = randomVector(batch * spec.contextDim, 1.0f);
    for (int64_t step = 0; step < 3; ++step) {
      // Conditional: one context per row, then one for the batch.
      trainer->reverseForward(11, step, batch, step == 1 ? z.data() : nullptr, x.data(), logq.data(),
                              spec.contextDim > 0 ? contexts.data() : nullptr, step == 2 ? 1 : batch);
      for (int64_t r = 0; r < batch; ++r) {
        double sum = 0.0;
        for (int i = 0; i < dim; ++i) {
          const float xi = x[r * dim + i];
          sum += 0.5 * static_cast<double>(xi) * xi;
          targetGrad[r * dim + i] = -xi;
        }
        target[r] = static_cast<float>(-sum - dim * 0.9189385332046727);
      }
      double stepLoss = 0.0;
      trainer->reverseBackward(target.data(), targetGrad.data(), step != 2, stats, &stepLoss);
      check(std::isfinite(stepLoss), label + ": non-finite reverse-KL loss");
    }
    std::vector<std::vector<float>> store;
    std::vector<DenseMadeView> views = denseViews(spec, store);
    trainer->gradientTo(views);
    trainer->parametersTo(views);
  }

  // Distillation from a teacher of the same dim.
  {
    std::unique_ptr<Trainer> trainer = backend.makeTrainer(spec, Direction::ToData, &teacher, options);
    StepStats stats;
    std::vector<double> losses(3);
    const std::vector<float> contexts = randomVector(3 * 16 * spec.contextDim, 1.0f);
    trainer->distillSteps(21, 0, 3, 16, 0.5, 0.25, 0.5, stats, losses.data(), spec.contextDim > 0 ? contexts.data() : nullptr, 16);
    for (double loss : losses) check(std::isfinite(loss), label + ": non-finite distillation loss");
  }
}

// Specs the core must refuse, each failing part-way through building (the partial plan freed).
void runBadSpecs(const Backend& backend) {
  const MadeShape shape{LayerKind::MAF, Activation::ReLU, ScaleKind::Softplus, false};
  std::vector<FlowSpec> bad;
  for (int which = 0; which < 6; ++which) bad.push_back(randomFlow(4, {shape, shape}, 8));
  bad[0].dim = 0;
  bad[1].layers[2].inputDegrees[0] = 9;
  bad[2].layers[2].hidden[1].weight.pop_back();
  bad[3].layers[1].permutation[0] = bad[3].layers[1].permutation[1];
  bad[4].layers[2].hiddenDegrees[0][0] = 5;
  bad[5].layers[2].shift.bias.push_back(0.0f);
  for (size_t i = 0; i < bad.size(); ++i) {
    bool threw = false;
    try {
      buildPlan(bad[i]);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    check(threw, "bad spec " + std::to_string(i) + " was accepted by buildPlan");
    threw = false;
    try {
      backend.makeTrainer(bad[i], Direction::ToLatent, nullptr, OptimizerOptions{});
    } catch (const std::exception&) {
      threw = true;
    }
    check(threw, "bad spec " + std::to_string(i) + " was accepted by makeTrainer");
  }
  // A student and teacher of different dims, a teacher on the wrong pass, an ema out of range.
  const FlowSpec student = randomFlow(4, {shape}, 8), other = randomFlow(3, {shape}, 8);
  OptimizerOptions badEma;
  badEma.ema = 1.0;
  const struct {
    const FlowSpec* teacher;
    Direction pass;
    OptimizerOptions options;
  } misuse[] = {{&other, Direction::ToData, {}}, {&student, Direction::ToLatent, {}}, {nullptr, Direction::ToData, badEma}};
  for (const auto& m : misuse) {
    bool threw = false;
    try {
      backend.makeTrainer(student, m.pass, m.teacher, m.options);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    check(threw, "a misconfigured trainer was accepted");
  }
}

}  // namespace

// The CUDA backend's kernels (block_kernels.h) under the CPU emulator of thread blocks, both
// block shapes (5 threads and 32-row tiles, 67 threads and 64-row tiles): every layer shape, plain
// and conditional. Under ASan an index past a buffer in the kernels' code is caught here; under
// ThreadSanitizer (--emulator-only, scripts/test-races.js) a missing __syncthreads() is.
int runEmulators(const std::vector<MadeShape>& shapes) {
  int paths = 0;
  for (bool wide : {false, true}) {
    const std::unique_ptr<Backend> emulator = makeCudaEmulatorBackend(wide);
    const std::string name = emulator->info().name;
    for (int dim : {1, 5, 19}) {
      for (size_t s = 0; s < shapes.size(); ++s) {
        const FlowSpec spec = randomFlow(dim, {shapes[s], shapes[(s + 1) % shapes.size()]}, dim == 19 ? 40 : 12);
        runInference(*emulator, spec, describe("block", name, dim, shapes[s]));
        const FlowSpec conditional = randomFlow(dim, {shapes[s], shapes[(s + 1) % shapes.size()]}, dim == 19 ? 40 : 12, 3, true);
        runInference(*emulator, conditional, describe("block", name, dim, shapes[s]) + " conditional");
        paths += 2;
      }
    }
  }
  return paths;
}

int main(int argc, char** argv) {
  const std::vector<MadeShape> shapes = {
      {LayerKind::IAF, Activation::ReLU, ScaleKind::Softplus, false},
      {LayerKind::MAF, Activation::Tanh, ScaleKind::Exp, false},
      {LayerKind::IAF, Activation::ELU, ScaleKind::Gated, true},
      {LayerKind::MAF, Activation::ReLU, ScaleKind::Gated, true},
      {LayerKind::IAF, Activation::Tanh, ScaleKind::Exp, true},
      {LayerKind::MAF, Activation::ELU, ScaleKind::Softplus, false},
  };
  if (argc > 1 && std::string(argv[1]) == "--emulator-only") {
    const int paths = runEmulators(shapes);
    std::printf("leak_driver --emulator-only: %d flows on the CUDA kernels' emulator: %s\n", paths,
                failures == 0 ? "all checks passed" : "FAILED");
    return failures == 0 ? 0 : 1;
  }
  std::vector<std::string> isas;
  {
    std::stringstream list(availableKernels());
    for (std::string isa; std::getline(list, isa, ',');) isas.push_back(isa);
  }
  int paths = 0;
  for (int threads : {2, 1}) {
    setThreadCount(threads);
    for (const std::string& isa : isas) {
      check(selectKernels(isa.c_str()), "selectKernels(" + isa + ") refused an available set");
      for (const char* backendName : {"cpu", "cpu-reference"}) {
        const Backend* backend = findBackend(backendName);
        check(backend != nullptr, std::string("no backend ") + backendName);
        if (!backend) continue;
        for (int dim : {1, 5, 19}) {
          for (size_t s = 0; s < shapes.size(); ++s) {
            // Each flow: this layer shape, then the next one, a permutation between.
            const FlowSpec spec = randomFlow(dim, {shapes[s], shapes[(s + 1) % shapes.size()]}, dim == 19 ? 40 : 12);
            const FlowSpec teacher = randomFlow(dim, {shapes[(s + 2) % shapes.size()]}, 10);
            const std::string label = describe(isa, backendName, dim, shapes[s]);
            runInference(*backend, spec, label);
            // Training is thread-count independent by design; one thread count covers it.
            if (threads == 2) runTraining(*backend, spec, teacher, label);
            // The same shapes conditional (a context of 3), with soft clamps and an affine layer.
            const FlowSpec conditional = randomFlow(dim, {shapes[s], shapes[(s + 1) % shapes.size()]}, dim == 19 ? 40 : 12, 3, true);
            const FlowSpec conditionalTeacher = randomFlow(dim, {shapes[(s + 2) % shapes.size()]}, 10, 3, true);
            runInference(*backend, conditional, label + " conditional");
            if (threads == 2) runTraining(*backend, conditional, conditionalTeacher, label + " conditional");
            paths += 2;
          }
        }
      }
    }
  }
  paths += runEmulators(shapes);
  runBadSpecs(*findBackend("cpu"));
  std::vector<float> normals(13 * 7);
  fillStandardNormal(1, 2, 13, 7, normals.data());
  check(allFinite(normals), "non-finite standard normals");
  check(measureMatmulGflops(32, 0.01) > 0.0, "measureMatmulGflops gave no rate");
  selectKernels(isas.front().c_str());
  std::printf("leak_driver: %d flows on %zu instruction sets (%s), both CPU backends and the CUDA kernels' emulator: %s\n", paths, isas.size(),
              availableKernels(), failures == 0 ? "all checks passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
