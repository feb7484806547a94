// Training: maximum likelihood (fit), reverse KL / variational inference (fitReverseKL) and
// distillation (distill). The math runs in the native core (native/core/train.h): backward
// passes, Adam and clipping on the core's thread pool, a run of steps per native call. This file
// validates, schedules the chunks, reports progress and handles cancellation.
import { Flow, Rows, nativeSpec } from './flow';
import { gaussianBaseline } from './evaluate';
import { affineTensorNames, FlowConfig, isMade, LinearNames, madeTensorNames } from './layers';
import { native, NativeCancelToken, NativeLayerView, NativeOptimizerOptions, NativeTrainerInstance } from './native';
import {
  checkContext,
  checkInteger,
  checkOptions,
  checkSeed,
  checkSignal,
  invalidRange,
  invalidType,
  isPlainObject,
  isFloat32Array,
  isFloat64Array,
  randomSeed,
  seedWords,
  toRowMajor,
} from './validation';

/** A target's log-density and its gradient at a batch of points. */
export interface TargetEvaluation {
  /** log p~(x) per row (an unnormalized log-density is fine): length n. */
  value: Float32Array;
  /** d log p~ / dx, row-major: length n * dim. */
  grad: Float32Array;
}

/** A density to fit by reverse KL: built in (`targets`) or the user's. */
export interface Target {
  /** Dimension of x. */
  dim: number;
  /**
   * Evaluated at x (row-major, n * dim) for every step; may be async. For a conditional flow
   * (amortised inference) the second argument holds each row's context (n * contextDim): the
   * target is then the unnormalised density of x given that context, e.g. log p(theta) +
   * log p(y | theta) with y as the context.
   */
  logDensity(x: Float32Array, context?: Float32Array): TargetEvaluation | Promise<TargetEvaluation>;
  /** log of the normalizing constant of exp(logDensity), when known: the report then gives KL = logZ - ELBO. */
  logZ?: number;
}

/** Adam (with bias correction) and clipping; shared by every trainer. */
export interface OptimizerOptions {
  /** Adam's step size. Default 1e-3. */
  learningRate?: number;
  /** Decoupled weight decay, as AdamW: each step multiplies every parameter by 1 - learningRate * weightDecay. Default 0. */
  weightDecay?: number;
  /**
   * Rescales the gradient to this global L2 norm when it is larger (as torch.nn.utils.clip_grad_norm_);
   * 0 turns clipping off. Default: 5 for fitReverseKL and distill (without it, distilling the
   * README's teacher gave students with KL 1e10 in 4 runs of 4: one far-out sample's gradient
   * swamps Adam's statistics), none for fit.
   */
  clipGradNorm?: number;
  /** Adam's [beta1, beta2]. Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Adam's epsilon. Default 1e-8. */
  eps?: number;
  /** Seed: minibatch order (fit) or latent draws (reverse KL, distill); the same seed gives the same run at any thread count. Default: random. */
  seed?: number;
  /** Stops before the next step (native chunks poll it); the call then rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface FitProgress {
  /** Optimizer steps so far (skipped steps included). */
  step: number;
  /** The current epoch, from 0. */
  epoch: number;
  /** Mean negative log-likelihood (nats per point) of the current epoch's steps so far. */
  trainLoss: number;
  /** The latest validation loss (nats per point); NaN before the first, or without validation data. */
  validLoss: number;
  /** Training rows per second over the run so far. */
  samplesPerSec: number;
}

export interface FitOptions extends OptimizerOptions {
  /** Passes over the training data. Default: from the number of training rows (fitSchedule). */
  epochs?: number;
  /**
   * Rows per step; the last step of an epoch takes the rows left over. Default: from the number of
   * training rows (fitSchedule). One larger than the training rows uses the rows (and says so in
   * `notes`).
   */
  batchSize?: number;
  /**
   * Standardisation inside the model: computes each column's mean and standard deviation from the
   * training rows and adds a fixed affine layer (loc = mean, scale = sd) at the flow's data end,
   * so the inner layers see unit-scale data while sample, logProb and the model file stay in the
   * data's raw units (log-likelihoods count the Jacobian). A constant column gets scale 1 (said in
   * `notes`). A flow that already ends in an affine layer keeps it (a second fit continues in the
   * same units). Default false (the CLI's `train` turns it on).
   */
  standardize?: boolean;
  /**
   * Dequantisation for data on a grid (counts, values rounded to 0.1): adds uniform noise of this
   * width, U(-w/2, w/2), to each training value, fresh every epoch (and once, seeded, to the
   * validation rows), so the flow cannot pile density on the grid points. One width for every
   * column, or one per column (0: none). The log-likelihoods are then those of the dequantised
   * data: log P(grid cell) >= E[log p(x + u)] + sum log w. Default: none.
   */
  dequantize?: number | number[];
  /** Validation rows (as `data`): their mean NLL is measured after every epoch. */
  validation?: Rows;
  /** Or: hold out this fraction of `data` (chosen by the seed) for validation. */
  validationFraction?: number;
  /** Early stopping: stop when the validation loss has not improved for this many epochs. Needs validation data. Default: never. */
  patience?: number;
  /** With validation data, end with the weights of the epoch with the lowest validation loss. Default true. */
  restoreBest?: boolean;
  /**
   * Polyak averaging: decay, per optimizer step, of an exponential moving average of the weights,
   * in [0, 1); 0 turns it off. After each applied step, avg = d * avg + (1 - d) * weights, with the
   * warm-up d = min(ema, t / (9 + t)) at the t-th step (the average starts from the weights before
   * the first step). Adam steps the raw weights; the validation loss, the best-epoch weights
   * (`restoreBest`), the weights handed to the flow during `onProgress` and at the end are the
   * averaged ones. Default 0.99: on two moons (bench/quality.ts) it lifted the test log-likelihood
   * from -0.356 to -0.322 nats (mean of 10 seeds), partly because the averaged validation loss is
   * smooth enough that `patience` no longer stops training early on noise. 0 gives the raw Adam
   * iterates (the behaviour before this option).
   */
  ema?: number;
  /** Called between native chunks, at least once per epoch (after its validation); may return a promise. */
  onProgress?: (progress: FitProgress) => void | Promise<void>;
}

export interface FitReport {
  /** Per epoch: mean negative log-likelihood (nats per point) over the epoch's applied steps. */
  trainLoss: number[];
  /** Per epoch: mean negative log-likelihood of the validation rows after the epoch (empty without validation). */
  validLoss: number[];
  /** Index (from 0) of the epoch whose weights the flow has, with validation and restoreBest; else null. */
  bestEpoch: number | null;
  /** Epochs run. */
  epochs: number;
  /** Optimizer steps applied. */
  steps: number;
  /** Steps skipped because the loss or the gradient was not finite (their weights were never written). */
  skippedSteps: number;
  /** Whether patience ran out before `epochs`. */
  stoppedEarly: boolean;
  seconds: number;
  /** Training rows per second (validation excluded). */
  samplesPerSec: number;
  /**
   * Whether the weights training reached gave non-finite results (log-densities of training rows
   * or samples: finite weights whose products overflow float32, as after a far too large
   * `learningRate`). The flow then keeps the last weights that gave finite results instead (the
   * best epoch's, a snapshot taken during the run, or its weights from before the call), and
   * `warnings` says which.
   */
  diverged: boolean;
  /** What went wrong that did not stop the call (divergence); empty when nothing did. */
  warnings: string[];
  /** What fit chose or changed for you (a batch larger than the data, standardisation, constant columns). */
  notes: string[];
  /** The batch size and epochs used (the defaults from fitSchedule where not given). */
  batchSize: number;
  /** With `standardize`: the loc and scale of the affine layer at the data end (null when none was added). */
  standardization: { loc: number[]; scale: number[] } | null;
  /**
   * With validation data: the mean NLL of the validation rows under a full-covariance Gaussian
   * fitted to the training rows, the floor any useful flow beats. A kept validation loss that is
   * not finite or is worse than it by more than 0.1 nats/point adds a warning (the CLI then exits
   * non-zero). Null without validation data.
   */
  gaussianValidLoss: number | null;
}

/**
 * The defaults fit (and the CLI's train) take from the number of training rows: what matters is
 * the number of optimizer steps, not of epochs. The batch is 512 rows from 8192 rows up, else the
 * power of two nearest below rows / 16 (at least 16: 300 rows give 16 steps per epoch, not one);
 * epochs give about 10,000 steps (at least 10, at most 2000 epochs); patience, for early stopping,
 * about 1,500 steps (5 to 100 epochs). Given a batch size, the epochs and patience follow from it.
 */
export function fitSchedule(trainRows: number, givenBatchSize?: number): { batchSize: number; epochs: number; patience: number } {
  const rows = Math.max(1, Math.floor(trainRows));
  const batchSize = Math.min(rows, givenBatchSize ?? (rows >= 8192 ? 512 : Math.max(16, 2 ** Math.floor(Math.log2(Math.max(1, rows / 16))))));
  const batchesPerEpoch = Math.ceil(rows / batchSize);
  const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
  return {
    batchSize,
    epochs: clamp(Math.ceil(10_000 / batchesPerEpoch), 10, 2000),
    patience: clamp(Math.ceil(1500 / batchesPerEpoch), 5, 100),
  };
}

export interface ReverseKLProgress {
  /** Steps done so far (skipped ones included). */
  step: number;
  /** Mean loss, E_q[log q(x) - log p~(x)] (= -ELBO), over the steps since the last report. */
  loss: number;
  skippedSteps: number;
  samplesPerSec: number;
}

export interface ReverseKLOptions extends OptimizerOptions {
  /**
   * Optimizer steps, up to 1e9. Default 5000. Memory does not grow with them: the report's `loss`
   * keeps every step's loss up to 65536 steps and, for longer runs, the mean of each run of
   * `lossStride` steps (at most 65536 entries).
   */
  steps?: number;
  /** Latent draws per step. Default 256. */
  batchSize?: number;
  /** Called between native chunks (about every 0.2 s) and at the end; may return a promise. */
  onProgress?: (progress: ReverseKLProgress) => void | Promise<void>;
  /**
   * fitReverseKL of a conditional flow (amortised VI): the contexts of step `step`'s batch, one row
   * (every draw's) or batchSize rows (number[], number[][] or row-major Float32Array); the
   * target's logDensity gets them row by row. Required for a conditional flow.
   */
  context?: (step: number) => Rows | number[];
  /**
   * The gradient estimator. true: "sticking the landing" (Roeder et al. 2017), which leaves out
   * the score term d log q / d params at fixed x (its mean is zero), so only the path through
   * x = f(z) remains: (d log q(x)/dx - d log p(x)/dx) dx/dparams. Its variance vanishes as q
   * reaches the target, so late steps are nearly noise-free; d log q / dx costs one more
   * backward pass, through the flow's x -> z direction. false: the plain reparameterized gradient.
   * Default false: on U1..U4 (bench/quality.ts, 3 seeds) it helped U2 and U4 but hurt U1 and U3,
   * and with distill's forward-KL term it made rare runs diverge.
   */
  stickingTheLanding?: boolean;
  /**
   * Polyak averaging of the weights, as fit's `ema`: the flow gets the running average (decay per
   * step, warm-up min(ema, t / (9 + t))); each step's reported loss is that of the raw weights.
   * Default 0.99 for fitReverseKL; 0.999 for distill, whose student's log-likelihood of far test
   * points is noisy from step to step (averaging over ~1000 steps took the worst of 7 students at
   * 5000 steps from 0.097 to 0.091 nats behind the teacher, and of 5 at 20000 from 0.122 to 0.071).
   */
  ema?: number;
  /**
   * Annealing (Rezende & Mohamed 2015 trained their U1..U4 flows this way): over this fraction of
   * the steps the loss is E_q[log q - beta log p~] with beta rising linearly from `annealFrom` to
   * 1. A flattened target lets q spread before it sharpens; reverse KL alone is mode-seeking and
   * can stay too narrow (on U2 it covered the sine wave's middle only). The reported loss is at
   * beta = 1. fitReverseKL: default 0.3, which took U1..U4 from 0.025 / 0.13 / 0.18 / 0.44 to
   * 0.023 / 0.032 / 0.10 / 0.21 nats (6 seeds, bench/quality.ts); 0 turns it off. distill: see there.
   */
  anneal?: number;
  /** The first beta of the annealing, in (0, 1]. Default 0.2. */
  annealFrom?: number;
}

export interface DistillOptions extends ReverseKLOptions {
  /**
   * Annealing: over this fraction of the reverse-KL steps (after `match`), the teacher's
   * log-density is weighted by beta rising linearly from `annealFrom` to 1 (the loss is
   * E_q[log q - beta log p]). Reverse KL is mode-seeking: from a fresh student it often settles on
   * part of a multimodal teacher (one of two moons); a small beta flattens the teacher so the
   * student spreads over every mode first. Default 0 for distill: map matching (`match`) and the
   * forward term already put the student on every mode, and annealing on top of matching
   * measured worse on two moons.
   */
  anneal?: number;
  /**
   * Map matching first: over this fraction of the steps the student's sampling map is pulled onto
   * the teacher's, from the same latent draws (loss E_z[log q(S(z)) + |S(z) - T(z)|^2 / (2 s^2)],
   * s = 5% of the teacher samples' spread), before reverse KL takes over. Reverse KL alone is
   * mode-seeking and, from a fresh student, loses modes and tails; matching starts it where the
   * teacher's mass is. The teacher samples through its sequential direction, one pass in iaflow.
   * It needs steps: with a few hundred in all, use 0 (plain reverse KL). Default 0.2 (with the
   * forward term after it; 0.5 did as well at 20000 steps but left one student of four 0.23 nats
   * behind its teacher at 5000, bench/quality.ts).
   */
  match?: number;
  /**
   * Weight of the forward KL added to reverse KL after the matching phase: each step also draws a
   * batch of teacher samples and adds forwardKL * E_{x ~ teacher}[-log q(x)], the student's
   * negative log-likelihood of them (differentiated through the student's sequential direction,
   * one pass each way). Reverse KL never sees where the student puts too little mass, which is
   * where its log-likelihood of real data falls short; the forward term does. 0 turns it off
   * (half the cost per step). Default 1.
   */
  forwardKL?: number;
}

export interface ReverseKLReport {
  /**
   * The loss history: per step, the batch mean of log q(x) - log p~(x) (an estimate of -ELBO),
   * NaN where it was not finite. Runs longer than 65536 steps keep it summarised, so a long run
   * costs no memory per step: entry j is then the mean of the finite losses of steps
   * [j * lossStride, (j + 1) * lossStride) (NaN if none was finite), at most 65536 entries.
   */
  loss: Float64Array;
  /** Steps per entry of `loss`: 1 up to 65536 steps, else ceil(steps / 65536). */
  lossStride: number;
  /** Mean of `loss` over the last min(100, steps) finite steps. */
  finalLoss: number;
  /** -finalLoss. */
  elbo: number;
  /** logZ - elbo, the KL divergence from the target, when the target's logZ is known (distill: the teacher is normalized). */
  kl: number | null;
  steps: number;
  /** Steps skipped because the loss or the gradient was not finite (their weights were never written). */
  skippedSteps: number;
  seconds: number;
  samplesPerSec: number;
  /**
   * Whether the weights reached gave non-finite samples or log-densities (finite weights whose
   * products overflow float32, e.g. after a far too large `learningRate`). The flow then keeps the
   * last weights that gave finite results instead (a snapshot taken during the run, or its
   * weights from before the call), and `warnings` says which.
   */
  diverged: boolean;
  /** What went wrong that did not stop the call (divergence); empty when nothing did. */
  warnings: string[];
}

const TO_DATA = 0;
const TO_LATENT = 1;
const CHUNK_SECONDS = 0.2;
const MAX_BATCH = 1 << 22;
const MAX_STEPS = 1e9;
/** Per-step loss entries a reverse-KL report keeps; longer runs keep means of groups of steps. */
const LOSS_HISTORY = 65536;
let lossHistoryLimit = LOSS_HISTORY;
/** Rows of the finite-results probe run on the weights a training call hands back. */
const PROBE_ROWS = 32;
/** Seconds of training between snapshots of weights known to give finite losses. */
const SNAPSHOT_SECONDS = 1;
const training = new WeakSet<Flow>();

function checkFlow(name: string, value: unknown): Flow {
  if (!(value instanceof Flow)) throw invalidType(name, 'a Flow (from createFlow, createMAF, createIAF or loadFlow)', value);
  return value;
}

function checkNumber(name: string, value: unknown, expected: string, ok: (v: number) => boolean): number {
  if (typeof value !== 'number' || Number.isNaN(value)) throw invalidType(name, expected, value);
  if (!ok(value)) throw invalidRange(name, expected, value);
  return value;
}

function checkFunction<T>(name: string, value: unknown): T | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'function') throw invalidType(name, 'a function', value);
  return value as T;
}

const OPTIMIZER_KEYS = ['learningRate', 'weightDecay', 'clipGradNorm', 'betas', 'eps', 'seed', 'signal'] as const;

interface Optimizer {
  options: NativeOptimizerOptions;
  seed: number;
  signal?: AbortSignal;
}

function checkOptimizer(where: string, opts: Record<string, unknown>, defaultClip = 0): Optimizer {
  const lr = checkNumber(`${where}.learningRate`, opts.learningRate ?? 1e-3, 'a positive finite number', (v) => v > 0 && Number.isFinite(v));
  const wd = checkNumber(`${where}.weightDecay`, opts.weightDecay ?? 0, 'a finite number >= 0', (v) => v >= 0 && Number.isFinite(v));
  const clip =
    opts.clipGradNorm === undefined
      ? defaultClip
      : checkNumber(`${where}.clipGradNorm`, opts.clipGradNorm, 'a finite number >= 0 (0: no clipping)', (v) => v >= 0 && Number.isFinite(v));
  const betas = opts.betas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2) throw invalidType(`${where}.betas`, 'an array of two numbers in [0, 1)', betas);
  const [b1, b2] = betas.map((b: unknown, i: number) => checkNumber(`${where}.betas[${i}]`, b, 'a number in [0, 1)', (v) => v >= 0 && v < 1));
  const eps = checkNumber(`${where}.eps`, opts.eps ?? 1e-8, 'a positive finite number', (v) => v > 0 && Number.isFinite(v));
  const seed = opts.seed === undefined ? randomSeed() : checkSeed(`${where}.seed`, opts.seed);
  return {
    options: { learningRate: lr, beta1: b1, beta2: b2, eps, weightDecay: wd, clipGradNorm: clip },
    seed,
    signal: checkSignal(`${where}.signal`, opts.signal),
  };
}

/**
 * A flow training can handle: at least one MADE layer (plain or residual). Any mix of IAF and MAF
 * layers trains along either pass: each layer runs its parallel direction or, where the pass goes
 * the other way, its one-pass sequential direction, and the core differentiates both.
 */
function requireTrainable(flow: Flow, what: string): void {
  const layers = flow.config.layers;
  if (!layers.some((l) => isMade(l) || (l.type === 'affine' && l.trainable))) {
    throw new TypeError(`${what}: the flow has no MADE layer or trainable affine layer, so nothing to train`);
  }
}

/**
 * For tests and benchmarks: train on 'cpu-reference' (the dense path) whatever the flow's backend.
 * (The instruction set is native.selectKernels', shared with inference.)
 */
interface KernelChoice {
  reference?: boolean;
}

function newTrainer(flow: Flow, pass: 0 | 1, teacher: Flow | null, options: NativeOptimizerOptions, kernels: KernelChoice = {}): NativeTrainerInstance {
  const spec = nativeSpec(flow.config as FlowConfig, flow.currentParameters() as Map<string, Float32Array>);
  const teacherSpec = teacher ? nativeSpec(teacher.config as FlowConfig, teacher.currentParameters() as Map<string, Float32Array>) : null;
  // Training runs on the flow's own backend (its trainer shares the backend's kernels).
  return new native.NativeTrainer({ spec, pass, teacher: teacherSpec, optimizer: options, backend: kernels.reference ? 'cpu-reference' : flow.backend });
}

/** Dense arrays for every parameter of `flow`, as views for the native export. */
function denseViews(flow: Flow, fill: 'copy' | 'zero'): { map: Map<string, Float32Array>; views: NativeLayerView[] } {
  const map = new Map<string, Float32Array>();
  for (const [name, value] of flow.currentParameters()) map.set(name, fill === 'copy' ? value.slice() : new Float32Array(value.length));
  const get = (name: string) => map.get(name)!;
  const linear = (names: LinearNames) => ({ weight: get(names.weight), bias: get(names.bias) });
  const views = flow.config.layers.map((layer, k): NativeLayerView => {
    if (layer.type === 'permutation') return null;
    if (layer.type === 'affine') {
      const names = affineTensorNames(k);
      return { loc: get(names.loc), scale: get(names.scale) };
    }
    const names = madeTensorNames(k, layer.hidden.length);
    const view = { hidden: names.hidden.map(linear), shift: linear(names.shift), rawScale: linear(names.scale) };
    return flow.contextDim > 0 ? { ...view, context: linear(names.context) } : view;
  });
  return { map, views };
}

/** Hands the trainer's current weights to the flow (masked entries keep their stored values). */
function pushParameters(flow: Flow, trainer: NativeTrainerInstance): void {
  const { map, views } = denseViews(flow, 'copy');
  trainer.parametersTo(views);
  flow.adoptParameters(map);
}

function gradientRecord(flow: Flow, trainer: NativeTrainerInstance): Record<string, Float32Array> {
  const { map, views } = denseViews(flow, 'zero');
  trainer.gradientTo(views);
  return Object.fromEntries(map);
}

function abortError(what: string, kept: string): Error {
  return new DOMException(`${what} was aborted; the flow keeps ${kept}`, 'AbortError');
}

function claim(flow: Flow, what: string): void {
  if (training.has(flow)) throw new Error(`${what}: this flow is already being trained by another call`);
  training.add(flow);
}

function now(): number {
  return performance.now() / 1000;
}

/** Steps for the next chunk so that it lasts about CHUNK_SECONDS. */
function nextChunk(previous: number, seconds: number): number {
  if (seconds <= 0) return Math.min(previous * 4, 1 << 20);
  return Math.max(1, Math.min(Math.round((previous * CHUNK_SECONDS) / seconds), previous * 4, 1 << 20));
}

/**
 * Keeps training from handing back weights that give non-finite results. Weights stay finite
 * (a step with a non-finite loss or gradient is never applied), but finite weights can still be
 * so large that their products overflow float32, and then samples and log-densities are NaN.
 * `settle` probes the weights the flow ended with and, if they give non-finite results, falls
 * back to the newest snapshot (taken in the trainer's best-weights slot, at most every
 * SNAPSHOT_SECONDS, after chunks whose every step had a finite loss) or to the flow's weights from
 * before the call.
 */
class FiniteResultsGuard {
  private readonly before: ReadonlyMap<string, Float32Array>;
  private snapshotStep = -1;
  private lastSnapshot = -Infinity;

  constructor(
    private readonly flow: Flow,
    private readonly trainer: NativeTrainerInstance,
    private readonly what: string,
    /** Rows of training data to score, or null (reverse KL: samples only). */
    private readonly data: Float32Array | null,
    /** Whether the trainer's best-weights slot is free for snapshots (fit with restoreBest uses it). */
    private readonly snapshots: boolean,
    /** A conditional flow's contexts for the probes: one row, or one per probe row. */
    private readonly context?: Float32Array,
  ) {
    // pushParameters swaps in a fresh map, so this one is never written again.
    this.before = flow.currentParameters();
  }

  /** After a chunk: `healthy` when every step of it had a finite loss. */
  afterChunk(healthy: boolean, step: number): void {
    if (!this.snapshots || !healthy || now() - this.lastSnapshot < SNAPSHOT_SECONDS) return;
    this.trainer.saveBest();
    this.snapshotStep = step;
    this.lastSnapshot = now();
  }

  /** The flow holds the weights reached; keeps them if they give finite results, else falls back. */
  settle(): { diverged: boolean; warnings: string[] } {
    if (this.finiteResults()) return { diverged: false, warnings: [] };
    const problem = `${this.what}: the weights reached give non-finite samples or log-densities (finite weights whose products overflow float32; a smaller learningRate or clipGradNorm may help)`;
    if (this.snapshotStep >= 0) {
      this.trainer.restoreBest();
      pushParameters(this.flow, this.trainer);
      if (this.finiteResults()) return { diverged: true, warnings: [`${problem}; the flow keeps the weights of step ${this.snapshotStep} instead`] };
    }
    this.flow.adoptParameters(new Map(this.before));
    return { diverged: true, warnings: [`${problem}; the flow keeps its weights from before the call`] };
  }

  private finiteResults(): boolean {
    const allFinite = (a: Float32Array) => {
      for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return false;
      return true;
    };
    const C = this.flow.contextDim;
    // The probes' contexts: one row for the samples; the data rows' own for their log-densities.
    const sampleContext = C > 0 && this.context ? { context: this.context.subarray(0, C) } : {};
    const { x, logProb } = this.flow.sampleWithLogProbSync(PROBE_ROWS, { seed: 0, ...sampleContext });
    if (!allFinite(x) || !allFinite(logProb)) return false;
    return this.data === null || allFinite(this.flow.logProbSync(this.data, C > 0 ? { context: this.context } : undefined));
  }
}

/**
 * The loss history of a reverse-KL run without a per-step array: the first `limit` steps' losses
 * as they are when the run is no longer (stride 1), else means of `stride` consecutive steps; the
 * last 100 finite losses (for finalLoss) and the finite losses since the last progress report.
 */
class LossHistory {
  readonly stride: number;
  readonly entries: Float64Array;
  private readonly steps: number;
  private groupSum = 0;
  private groupCount = 0;
  private readonly recent = new Float64Array(100);
  private recentCount = 0;
  private reportSum = 0;
  private reportCount = 0;

  constructor(steps: number, limit: number) {
    this.steps = steps;
    this.stride = Math.ceil(steps / limit);
    this.entries = new Float64Array(Math.ceil(steps / this.stride)).fill(NaN);
  }

  /** The losses of steps [firstStep, firstStep + losses.length), in order. */
  add(firstStep: number, losses: Float64Array): void {
    for (let i = 0; i < losses.length; i++) {
      const step = firstStep + i;
      const v = losses[i];
      if (Number.isFinite(v)) {
        this.groupSum += v;
        this.groupCount++;
        this.recent[this.recentCount++ % 100] = v;
        this.reportSum += v;
        this.reportCount++;
      }
      if ((step + 1) % this.stride === 0 || step + 1 === this.steps) this.closeGroup(step);
    }
  }

  /** Mean of the finite losses since the last call (NaN if none). */
  takeSinceReport(): number {
    const mean = this.reportCount > 0 ? this.reportSum / this.reportCount : NaN;
    this.reportSum = 0;
    this.reportCount = 0;
    return mean;
  }

  /** Mean of the last min(100, finite steps) finite losses. */
  finalLoss(): number {
    const n = Math.min(this.recentCount, 100);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += this.recent[i];
    return n > 0 ? sum / n : NaN;
  }

  /** Closes the group that `step` ends; a run cut short (abort) leaves later entries NaN. */
  private closeGroup(step: number): void {
    this.entries[Math.floor(step / this.stride)] = this.groupCount > 0 ? this.groupSum / this.groupCount : NaN;
    this.groupSum = 0;
    this.groupCount = 0;
  }
}

/**
 * Maximum likelihood: minimises the mean negative log-likelihood of `data` with Adam, by
 * minibatches in an order reproducible from `seed`. Gradients flow along data -> latent: in one
 * parallel pass through MAF layers, and through IAF layers by their one-pass sequential direction
 * and its adjoint (every weight read once each way; slower per row than a MAF, but exact).
 *
 * The flow's parameters are updated in place: during training (before each `onProgress` call)
 * and at the end. With validation data, the flow ends with the weights of the best validation
 * epoch (unless `restoreBest: false`). With `ema`, "the weights" here (validated, kept as the
 * best, handed to the flow) are the moving average of the raw Adam iterates. When `signal`
 * aborts, training stops before its next step, the best weights so far (with validation;
 * else the current ones) are applied to the flow, and the promise rejects with an AbortError. A
 * step whose loss or gradient is not finite is skipped (never written into the weights) and
 * counted in `skippedSteps`. The weights the flow ends with always give finite samples and
 * log-densities: where those reached do not (finite weights whose products overflow), the flow
 * keeps the last ones that did and the report says so (`diverged`, `warnings`).
 */
/** A conditional flow's training rows: the points and each point's context (the same number of rows). */
export interface ConditionalRows {
  x: Rows;
  context: Rows;
}

/** Rows (and, for a conditional flow, their contexts) as row-major float32. */
function trainingRows(name: string, value: unknown, flow: Flow): { data: Float32Array; rows: number; context: Float32Array | null } {
  const C = flow.contextDim;
  if (C === 0) {
    if (isPlainObject(value) && 'context' in value) throw new TypeError(`${name}: this flow is not conditional (it was created without a context), so its data takes no context`);
    return { ...toRowMajor(name, value, flow.dim), context: null };
  }
  if (!isPlainObject(value) || value.x === undefined || value.context === undefined) {
    throw invalidType(name, `{ x, context } (the flow is conditional: each row of x needs its context of ${C} values)`, value);
  }
  const { data, rows } = toRowMajor(`${name}.x`, value.x, flow.dim);
  const context = toRowMajor(`${name}.context`, value.context, C);
  if (context.rows !== rows) throw invalidRange(`${name}.context`, `${rows} rows (one per row of ${name}.x)`, `${context.rows} rows`);
  for (let i = 0; i < context.data.length; i++) {
    if (!Number.isFinite(context.data[i])) throw invalidRange(`${name}.context[${Math.floor(i / C)}][${i % C}]`, 'a finite number', context.data[i]);
  }
  return { data, rows, context: context.data };
}

export async function fit(flow: Flow, data: Rows | ConditionalRows, options?: FitOptions): Promise<FitReport> {
  checkFlow('flow', flow);
  requireTrainable(flow, 'fit');
  const opts = checkOptions('fit options', options, [
    ...OPTIMIZER_KEYS,
    'epochs',
    'batchSize',
    'validation',
    'validationFraction',
    'patience',
    'restoreBest',
    'ema',
    'onProgress',
    'standardize',
    'dequantize',
  ]);
  const givenEpochs = opts.epochs === undefined ? undefined : checkInteger('options.epochs', opts.epochs, 1, MAX_STEPS);
  const givenBatch = opts.batchSize === undefined ? undefined : checkInteger('options.batchSize', opts.batchSize, 1, MAX_BATCH);
  if (opts.standardize !== undefined && typeof opts.standardize !== 'boolean') throw invalidType('options.standardize', 'true or false', opts.standardize);
  const dequantize = opts.dequantize === undefined ? null : checkDequantize('options.dequantize', opts.dequantize, flow.dim);
  const optimizer = checkOptimizer('options', opts);
  const onProgress = checkFunction<FitOptions['onProgress']>('options.onProgress', opts.onProgress);
  if (opts.restoreBest !== undefined && typeof opts.restoreBest !== 'boolean') throw invalidType('options.restoreBest', 'a boolean', opts.restoreBest);
  const restoreBest = opts.restoreBest ?? true;
  const ema = checkNumber('options.ema', opts.ema ?? 0.99, 'a number in [0, 1)', (v) => v >= 0 && v < 1);
  const dim = flow.dim;
  let { data: train, rows: trainRows, context: trainContext } = trainingRows('data', data, flow);
  let valid: Float32Array | null = null;
  let validContext: Float32Array | null = null;
  let validRows = 0;
  if (opts.validation !== undefined && opts.validationFraction !== undefined) {
    throw new TypeError('Give either options.validation or options.validationFraction, not both');
  }
  if (opts.validation !== undefined) {
    ({ data: valid, rows: validRows, context: validContext } = trainingRows('options.validation', opts.validation, flow));
  } else if (opts.validationFraction !== undefined) {
    const fraction = checkNumber('options.validationFraction', opts.validationFraction, 'a number in (0, 1)', (v) => v > 0 && v < 1);
    validRows = Math.round(trainRows * fraction);
    if (validRows < 1 || validRows >= trainRows) {
      throw invalidRange('options.validationFraction', `a fraction that leaves at least one row on each side of the ${trainRows} rows`, fraction);
    }
    const held = heldOutRows(trainRows, validRows, optimizer.seed);
    ({ train, valid } = splitRows(train, trainRows, held, dim));
    if (trainContext) ({ train: trainContext, valid: validContext } = splitRows(trainContext, trainRows, held, flow.contextDim));
    trainRows -= validRows;
  }
  const patience = opts.patience === undefined ? Infinity : checkInteger('options.patience', opts.patience, 1, MAX_STEPS);
  if (opts.patience !== undefined && !valid) throw new TypeError('options.patience needs validation data (options.validation or options.validationFraction)');
  if (optimizer.signal?.aborted) throw abortError('fit', 'its weights from before the call');
  const notes: string[] = [];
  const schedule = fitSchedule(trainRows, givenBatch);
  const batchSize = schedule.batchSize;
  if (givenBatch !== undefined && givenBatch > trainRows) {
    notes.push(`batchSize ${givenBatch} is larger than the ${trainRows} training rows: each step uses all ${trainRows} rows (one step per epoch)`);
  }
  const epochs = givenEpochs ?? schedule.epochs;

  claim(flow, 'fit');
  try {
    let standardization: FitReport['standardization'] = null;
    if (opts.standardize === true) {
      const last = flow.config.layers[flow.config.layers.length - 1];
      if (last?.type === 'affine') {
        notes.push('standardize: the flow already ends in an affine layer, which is kept as it is (fit continues in its units)');
      } else {
        standardization = columnStandardization(train, trainRows, flow.dim, notes);
        flow.appendLayer({ type: 'affine', trainable: false }, { loc: Float32Array.from(standardization.loc), scale: Float32Array.from(standardization.scale) });
      }
    }
    const dequantizer = dequantize ? new Dequantizer(dequantize, optimizer.seed) : null;
    if (dequantizer && valid) valid = dequantizer.noisy(valid, validRows, -1);
    const trainer = newTrainer(flow, TO_LATENT, null, { ...optimizer.options, ema });
    const contexts = trainContext ? { trainContext, ...(validContext ? { validContext } : {}) } : {};
    trainer.setData({ train: dequantizer ? dequantizer.noisy(train, trainRows, 0) : train, trainRows, valid, validRows, ...contexts });
    const [lo, hi] = seedWords(optimizer.seed);
    const batchesPerEpoch = Math.ceil(trainRows / batchSize);
    const stats = new Float64Array(5);
    const report: FitReport = {
      trainLoss: [],
      validLoss: [],
      bestEpoch: null,
      epochs: 0,
      steps: 0,
      skippedSteps: 0,
      stoppedEarly: false,
      seconds: 0,
      samplesPerSec: 0,
      diverged: false,
      warnings: [],
      notes,
      batchSize,
      standardization,
      gaussianValidLoss: valid ? gaussianNll(train, valid, dim, notes) : null,
    };
    const keepBest = valid !== null && restoreBest;
    const probeRows = Math.min(PROBE_ROWS, trainRows);
    const guard = new FiniteResultsGuard(flow, trainer, 'fit', train.slice(0, probeRows * dim), !keepBest, trainContext?.slice(0, probeRows * flow.contextDim));
    const started = now();
    let trainSeconds = 0;
    let rowsSeen = 0;
    let chunk = 1;
    let best = Infinity;
    let bestEpoch = -1;
    let lastValid = NaN;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (keepBest && bestEpoch >= 0) trainer.restoreBest();
      pushParameters(flow, trainer);
      Object.assign(report, guard.settle());
      report.bestEpoch = keepBest && bestEpoch >= 0 && !report.diverged ? bestEpoch : null;
      const kept = report.bestEpoch !== null ? report.validLoss[report.bestEpoch] : report.validLoss[report.validLoss.length - 1];
      // A flow of Gaussian data may end a little behind the Gaussian's exact fit: only a clear loss is a failure.
      if (report.gaussianValidLoss !== null && kept !== undefined && !(kept <= report.gaussianValidLoss + GAUSSIAN_MARGIN)) {
        report.warnings.push(
          `fit failed: the kept weights' validation NLL (${kept.toPrecision(4)} nats/point) is ${Number.isFinite(kept) ? 'worse than' : 'not finite, against'} ` +
            `a full-covariance Gaussian's on the same rows (${report.gaussianValidLoss.toPrecision(4)}); ` +
            `${report.standardization || flow.config.layers[flow.config.layers.length - 1]?.type === 'affine' ? 'try more epochs or a smaller learningRate' : 'try standardize: true (flows train best on unit-scale data)'}`,
        );
      }
      report.seconds = now() - started;
      report.samplesPerSec = trainSeconds > 0 ? rowsSeen / trainSeconds : 0;
    };
    const progress = async (epoch: number, trainLoss: number) => {
      if (!onProgress) return;
      pushParameters(flow, trainer);
      await onProgress({ step: report.steps + report.skippedSteps, epoch, trainLoss, validLoss: lastValid, samplesPerSec: trainSeconds > 0 ? rowsSeen / trainSeconds : 0 });
    };
    const stopIfAborted = () => {
      if (!optimizer.signal?.aborted) return;
      finish();
      throw abortError('fit', keepBest && bestEpoch >= 0 ? `the weights of its best epoch so far (${bestEpoch})` : 'the weights reached so far');
    };

    const cancel = cancelTokenFor(optimizer.signal);
    try {
      for (let epoch = 0; epoch < epochs; epoch++) {
        // Fresh dequantisation noise every epoch (the first epoch's was set with the data).
        if (dequantizer && epoch > 0) trainer.setData({ train: dequantizer.noisy(train, trainRows, epoch), trainRows, valid, validRows, ...contexts });
        let lossSum = 0;
        let lossRows = 0;
        for (let batch = 0; batch < batchesPerEpoch; ) {
          stopIfAborted();
          const count = Math.min(chunk, batchesPerEpoch - batch);
          const t0 = now();
          await trainer.fitBatches({ seed: [lo, hi], epoch, firstBatch: batch, batches: count, batchSize, stats, async: true, cancel });
          const seconds = now() - t0;
          trainSeconds += seconds;
          chunk = nextChunk(count, seconds);
          lossSum += stats[0];
          lossRows += stats[1];
          rowsSeen += Math.min(trainRows, (batch + count) * batchSize) - batch * batchSize;
          report.steps += stats[2];
          report.skippedSteps += stats[3];
          guard.afterChunk(stats[3] === 0 && Number.isFinite(stats[0]), report.steps + report.skippedSteps);
          batch += count;
          if (batch < batchesPerEpoch) await progress(epoch, lossSum / lossRows);
        }
        report.trainLoss.push(lossRows > 0 ? lossSum / lossRows : NaN);
        report.epochs = epoch + 1;
        if (valid) {
          lastValid = (await trainer.validationLoss({ async: true })) as number;
          report.validLoss.push(lastValid);
          if (lastValid < best) {
            best = lastValid;
            bestEpoch = epoch;
            if (keepBest) trainer.saveBest();
          }
        }
        await progress(epoch, report.trainLoss[epoch]);
        if (valid && epoch - Math.max(bestEpoch, 0) >= patience && epoch + 1 < epochs) {
          report.stoppedEarly = true;
          break;
        }
      }
    } catch (error) {
      // A throwing onProgress or a native failure: the flow still gets the best weights so far.
      try {
        finish();
      } catch {
        // keep the first error
      }
      throw error;
    }
    finish();
    return report;
  } finally {
    training.delete(flow);
  }
}

/**
 * Mean negative log-likelihood of `valid` under the full-covariance Gaussian fitted to `train`
 * (evaluate.ts). Null, with a note, where no Gaussian is a fair floor: a constant column, or
 * collinear columns, give it an infinite density where a flow's stays finite.
 */
function gaussianNll(train: Float32Array, valid: Float32Array, dim: number, notes: string[]): number | null {
  const baseline = gaussianBaseline(train, valid, { dim });
  if (baseline.ridge > 0) {
    notes.push(`no Gaussian baseline: ${baseline.note ?? 'its covariance is singular'}`);
    return null;
  }
  return -baseline.mean;
}

/** Per column: the mean and standard deviation of the rows (float64); a constant column gets scale 1. */
function columnStandardization(data: Float32Array, rows: number, dim: number, notes: string[]): { loc: number[]; scale: number[] } {
  const loc: number[] = [];
  const scale: number[] = [];
  for (let i = 0; i < dim; i++) {
    let sum = 0;
    for (let r = 0; r < rows; r++) sum += data[r * dim + i];
    const mean = sum / rows;
    let squares = 0;
    for (let r = 0; r < rows; r++) squares += (data[r * dim + i] - mean) ** 2;
    const sd = Math.sqrt(squares / Math.max(1, rows - 1));
    // float32 resolves about 6e-8 of a value: a spread below that is no spread at all.
    const constant = !(sd > 1e-6 * Math.max(1e-30, Math.abs(mean))) || !Number.isFinite(Math.fround(1 / sd));
    if (constant) notes.push(`standardize: column ${i} is constant (${Math.fround(mean)}) in the training rows: its scale is 1`);
    loc.push(Math.fround(mean));
    scale.push(constant ? 1 : Math.fround(sd));
  }
  return { loc, scale };
}

function checkDequantize(name: string, value: unknown, dim: number): number[] {
  const widths = typeof value === 'number' ? new Array<number>(dim).fill(value) : value;
  if (!Array.isArray(widths) || widths.length !== dim) throw invalidType(name, `a width >= 0, or an array of ${dim} of them (one per column)`, value);
  return widths.map((w: unknown, i) => checkNumber(typeof value === 'number' ? name : `${name}[${i}]`, w, 'a finite width >= 0', (v) => v >= 0 && Number.isFinite(v)));
}

/** Uniform dequantisation noise, reproducible from (seed, epoch); epoch -1 is the validation rows'. */
class Dequantizer {
  constructor(
    private readonly widths: number[],
    private readonly seed: number,
  ) {}

  noisy(data: Float32Array, rows: number, epoch: number): Float32Array {
    const dim = this.widths.length;
    const [lo, hi] = seedWords(this.seed);
    let state = (lo ^ Math.imul(hi, 0x9e3779b1) ^ Math.imul(epoch + 2, 0x85ebca6b)) >>> 0 || 1;
    const out = new Float32Array(rows * dim);
    for (let k = 0; k < rows * dim; k++) {
      state ^= state << 13;
      state >>>= 0;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      out[k] = data[k] + (state / 0x100000000 - 0.5) * this.widths[k % dim];
    }
    return out;
  }
}

/** The `validRows` rows (of `rows`) held out for validation, chosen by the seed, in the order chosen. */
function heldOutRows(rows: number, validRows: number, seed: number): Int32Array {
  // A seeded Fisher-Yates prefix picks the held-out rows (xorshift on the seed's two words).
  let state = (seedWords(seed)[0] ^ 0x9e3779b9 ^ Math.imul(seedWords(seed)[1], 0x85ebca6b)) >>> 0 || 1;
  const random = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x100000000;
  };
  const index = Int32Array.from({ length: rows }, (_, i) => i);
  for (let i = 0; i < validRows; i++) {
    const j = i + Math.floor(random() * (rows - i));
    const t = index[i];
    index[i] = index[j];
    index[j] = t;
  }
  return index.slice(0, validRows);
}

/** The held-out rows (in their chosen order) and the rest (in their order), of `width` values each. */
function splitRows(data: Float32Array, rows: number, heldOut: Int32Array, width: number) {
  const held = new Uint8Array(rows);
  const valid = new Float32Array(heldOut.length * width);
  heldOut.forEach((row, i) => {
    held[row] = 1;
    valid.set(data.subarray(row * width, (row + 1) * width), i * width);
  });
  const train = new Float32Array((rows - heldOut.length) * width);
  for (let r = 0, t = 0; r < rows; r++) if (!held[r]) train.set(data.subarray(r * width, (r + 1) * width), width * t++);
  return { train, valid };
}

function checkTarget(name: string, value: unknown, dim: number): Target {
  if (typeof value !== 'object' || value === null) throw invalidType(name, 'a target { dim, logDensity(x) }', value);
  const t = value as Target;
  if (typeof t.logDensity !== 'function') throw invalidType(`${name}.logDensity`, 'a function', t.logDensity);
  checkInteger(`${name}.dim`, t.dim, 1, Number.MAX_SAFE_INTEGER);
  if (t.dim !== dim) throw invalidRange(`${name}.dim`, `the flow's dim, ${dim}`, t.dim);
  if (t.logZ !== undefined) checkNumber(`${name}.logZ`, t.logZ, 'a finite number', Number.isFinite);
  return t;
}

/** A target's answer as float32 arrays of the right lengths (non-finite values pass: the step is then skipped). */
function checkEvaluation(result: unknown, rows: number, dim: number): { value: Float32Array; grad: Float32Array } {
  if (typeof result !== 'object' || result === null) throw invalidType('the target\'s logDensity result', 'an object { value, grad }', result);
  const { value, grad } = result as TargetEvaluation;
  const asFloat32 = (v: unknown, length: number, what: string): Float32Array => {
    if (!isFloat32Array(v) && !isFloat64Array(v) && !Array.isArray(v)) throw invalidType(what, `a Float32Array of ${length} values`, v);
    if (v.length !== length) throw invalidRange(`${what}.length`, `${length}`, v.length);
    return isFloat32Array(v) ? v : Float32Array.from(v as ArrayLike<number>);
  };
  return { value: asFloat32(value, rows, "the target's logDensity(x).value"), grad: asFloat32(grad, rows * dim, "the target's logDensity(x).grad") };
}

interface ReverseSetup {
  steps: number;
  batchSize: number;
  optimizer: Optimizer;
  onProgress?: ReverseKLOptions['onProgress'];
  stickingTheLanding: boolean;
  /** The optimizer options for the native trainer, ema included. */
  nativeOptions: NativeOptimizerOptions;
  anneal: number;
  annealFrom: number;
}

/** Defaults that differ between fitReverseKL and distill. */
interface ReverseDefaults {
  ema: number;
  anneal: number;
}

/** How far (nats/point) a fit's kept validation NLL may trail the Gaussian's before fit calls it failed. */
const GAUSSIAN_MARGIN = 0.1;

/** Gradient clipping for reverse KL and distillation unless the caller says otherwise. */
const REVERSE_CLIP_GRAD_NORM = 5;

function checkReverseOptions(
  where: string,
  options: unknown,
  extra: readonly string[],
  defaults: ReverseDefaults,
): ReverseSetup & { opts: Record<string, unknown> } {
  const opts = checkOptions(where, options, [
    ...OPTIMIZER_KEYS,
    'steps',
    'batchSize',
    'onProgress',
    'stickingTheLanding',
    'ema',
    'anneal',
    'annealFrom',
    ...extra,
  ]);
  const stl = opts.stickingTheLanding ?? false;
  if (typeof stl !== 'boolean') throw invalidType('options.stickingTheLanding', 'a boolean', stl);
  const ema = checkNumber('options.ema', opts.ema ?? defaults.ema, 'a number in [0, 1)', (v) => v >= 0 && v < 1);
  const optimizer = checkOptimizer('options', opts, REVERSE_CLIP_GRAD_NORM);
  return {
    opts,
    stickingTheLanding: stl,
    nativeOptions: { ...optimizer.options, ema },
    anneal: checkNumber('options.anneal', opts.anneal ?? defaults.anneal, 'a number in [0, 1]', (v) => v >= 0 && v <= 1),
    annealFrom: checkNumber('options.annealFrom', opts.annealFrom ?? 0.2, 'a number in (0, 1]', (v) => v > 0 && v <= 1),
    steps: checkInteger('options.steps', opts.steps ?? 5000, 1, MAX_STEPS),
    batchSize: checkInteger('options.batchSize', opts.batchSize ?? 256, 1, MAX_BATCH),
    optimizer,
    onProgress: checkFunction<ReverseKLOptions['onProgress']>('options.onProgress', opts.onProgress),
  };
}

/**
 * The annealing schedule as a line, beta(step) = min(1, start + slope * step), rising from
 * `annealFrom` at step `firstStep` to 1 over `anneal` of the steps; [1, 0] without annealing.
 */
function annealLine(setup: ReverseSetup, firstStep: number): [number, number] {
  const annealSteps = Math.round(setup.steps * setup.anneal);
  if (annealSteps === 0) return [1, 0];
  const slope = (1 - setup.annealFrom) / annealSteps;
  return [setup.annealFrom - slope * firstStep, slope];
}

/**
 * Runs chunks of reverse-KL steps, with progress, cancellation and the report. Memory does not
 * grow with `steps`: each chunk's per-step losses go to a buffer of the chunk's size, then into
 * the summarised history.
 */
async function runReverse(
  flow: Flow,
  trainer: NativeTrainerInstance,
  setup: ReverseSetup,
  what: string,
  logZ: number | null,
  runChunk: (firstStep: number, count: number, stepLoss: Float64Array, stats: Float64Array) => Promise<void>,
  probeContext?: Float32Array,
): Promise<ReverseKLReport> {
  const { steps, batchSize, optimizer, onProgress } = setup;
  const history = new LossHistory(steps, lossHistoryLimit);
  const guard = new FiniteResultsGuard(flow, trainer, what, null, true, probeContext);
  let chunkLoss = new Float64Array(0);
  const stats = new Float64Array(5);
  let skipped = 0;
  let chunk = 1;
  let seconds = 0;
  let lastReport = 0;
  const started = now();
  try {
    for (let step = 0; step < steps; ) {
      if (optimizer.signal?.aborted) throw abortError(what, 'the weights reached so far');
      const count = Math.min(chunk, steps - step);
      if (chunkLoss.length < count) chunkLoss = new Float64Array(Math.max(count, 2 * chunkLoss.length));
      // Steps a chunk does not run (it stops early on abort) stay NaN.
      const stepLoss = chunkLoss.subarray(0, count).fill(NaN);
      const t0 = now();
      await runChunk(step, count, stepLoss, stats);
      const elapsed = now() - t0;
      seconds += elapsed;
      chunk = nextChunk(count, elapsed);
      skipped += stats[3];
      history.add(step, stepLoss);
      guard.afterChunk(stats[3] === 0 && stepLoss.every(Number.isFinite), step + count);
      step += count;
      if (onProgress && (step === steps || now() - started - lastReport >= CHUNK_SECONDS)) {
        lastReport = now() - started;
        pushParameters(flow, trainer);
        await onProgress({ step, loss: history.takeSinceReport(), skippedSteps: skipped, samplesPerSec: seconds > 0 ? (step * batchSize) / seconds : 0 });
      }
    }
  } catch (error) {
    // Aborted, or failed (a throwing target or onProgress): the flow still gets the weights
    // reached (unless they give non-finite results), and the first error is what the caller sees.
    try {
      pushParameters(flow, trainer);
      guard.settle();
    } catch {
      // keep the first error
    }
    throw error;
  }
  // Done: the flow gets the weights reached, unless they give non-finite results.
  pushParameters(flow, trainer);
  const outcome = guard.settle();
  const finalLoss = history.finalLoss();
  return {
    loss: history.entries,
    lossStride: history.stride,
    finalLoss,
    elbo: -finalLoss,
    kl: logZ === null ? null : logZ + finalLoss,
    steps,
    skippedSteps: skipped,
    seconds: now() - started,
    samplesPerSec: seconds > 0 ? (steps * batchSize) / seconds : 0,
    ...outcome,
  };
}

/**
 * Reverse KL (variational inference): minimises E_q[log q(x) - log p~(x)] over the flow's q, with
 * x = f(z), z ~ N(0, I) reparameterised (the latent rows of step s are the Philox rows
 * s * batchSize + r under `seed`). The gradients flow along latent -> data: in one parallel pass
 * through IAF layers, and through MAF layers by their one-pass sequential direction and its adjoint.
 *
 * `target.logDensity` is called once per step with the batch x (row-major, batchSize * dim) and
 * returns the log-density (unnormalized is fine) and its gradient wrt x. The flow's parameters are
 * updated before each `onProgress` call and at the end; an aborted `signal` stops at the next step
 * and rejects with an AbortError, the flow keeping the weights reached so far. A step whose loss
 * or gradient is not finite is skipped (never written into the weights) and counted. As in `fit`,
 * weights that give non-finite samples or log-densities are never handed back (`diverged`).
 */
export async function fitReverseKL(flow: Flow, target: Target, options?: ReverseKLOptions): Promise<ReverseKLReport> {
  checkFlow('flow', flow);
  requireTrainable(flow, 'fitReverseKL');
  const t = checkTarget('target', target, flow.dim);
  const setup = checkReverseOptions('fitReverseKL options', options, ['context'], { ema: 0.99, anneal: 0.3 });
  const contextOf = setup.opts.context;
  if (flow.contextDim > 0 && typeof contextOf !== 'function') {
    throw invalidType('options.context', `a function (step) => the batch's contexts (the flow is conditional: ${flow.contextDim} values per row)`, contextOf);
  }
  if (flow.contextDim === 0 && contextOf !== undefined) throw new TypeError('options.context: this flow is not conditional, so it takes no context');
  const [betaStart, betaSlope] = annealLine(setup, 0);
  if (setup.optimizer.signal?.aborted) throw abortError('fitReverseKL', 'its weights from before the call');
  claim(flow, 'fitReverseKL');
  try {
    const trainer = newTrainer(flow, TO_DATA, null, setup.nativeOptions);
    trainer.setStickingTheLanding(setup.stickingTheLanding);
    const [lo, hi] = seedWords(setup.optimizer.seed);
    const { batchSize } = setup;
    const dim = flow.dim;
    const logq = new Float32Array(batchSize);
    return await runReverse(flow, trainer, setup, 'fitReverseKL', t.logZ ?? null, async (firstStep, count, stepLoss, stats) => {
      let skipped = 0;
      for (let s = 0; s < count; s++) {
        if (s > 0 && setup.optimizer.signal?.aborted) break;
        const x = new Float32Array(batchSize * dim);
        let rowContexts: Float32Array | undefined;
        if (flow.contextDim > 0) {
          const C = flow.contextDim;
          const { context, contextRows } = checkContext(`options.context(${firstStep + s})`, await (contextOf as (step: number) => unknown)(firstStep + s), batchSize, C);
          await trainer.reverseForward({ seed: [lo, hi], step: firstStep + s, batch: batchSize, x, logq, async: true, context, contextRows });
          rowContexts = contextRows === batchSize ? context : Float32Array.from({ length: batchSize * C }, (_, i) => context[i % C]);
        } else {
          await trainer.reverseForward({ seed: [lo, hi], step: firstStep + s, batch: batchSize, x, logq, async: true });
        }
        const { value, grad } = checkEvaluation(await (rowContexts ? t.logDensity(x, rowContexts) : t.logDensity(x)), batchSize, dim);
        // Annealed steps weight the target's gradient by beta; the reported loss stays at beta = 1.
        const beta = Math.min(1, betaStart + betaSlope * (firstStep + s));
        await trainer.reverseBackward({
          targetValue: value,
          targetGrad: beta === 1 ? grad : grad.map((g) => g * beta),
          update: true,
          stats,
          stepLoss: stepLoss.subarray(s, s + 1),
          async: true,
        });
        if (!Number.isFinite(stepLoss[s])) stepLoss[s] = NaN;
        skipped += stats[3];
      }
      stats[3] = skipped;
    }, flow.contextDim > 0 ? checkContext('options.context(0)', await (contextOf as (step: number) => unknown)(0), batchSize, flow.contextDim).context : undefined);
  } finally {
    training.delete(flow);
  }
}

/**
 * Distillation: the student IAF learns the teacher flow by reverse KL, E_q[log q(x) - log p(x)],
 * plus (`forwardKL`, default 1) the forward term E_teacher[-log q(x)] on fresh teacher samples,
 * with the teacher's samples, log-density and its gradient wrt x computed natively (a run of steps
 * per native call). Over a first fraction of the steps (`match`, default 0.5) the student's
 * sampling map is first pulled onto the teacher's from the same latent draws, which starts reverse
 * KL on every mode of a multimodal teacher; optionally (`anneal`) the teacher's log-density is
 * then weighted by beta rising to 1. A teacher score d log p / dx more than 10 times the median
 * of its tile of 32 rows (a rare student sample far outside the teacher's support) is scaled down
 * to that bound, direction kept. Any flows of the same dim work; the usual pairing, a MAF teacher
 * and an IAF student, runs the reverse-KL part in parallel directions only. The teacher is not
 * changed. Progress, abort and skipped steps behave as in fitReverseKL; `loss` is the reverse-KL
 * loss at every step (at beta = 1, annealed steps included) and `kl` in the report the KL
 * divergence from the teacher (the mean of the last 100 steps' losses).
 */
export async function distill(student: Flow, teacher: Flow, options?: DistillOptions): Promise<ReverseKLReport> {
  checkFlow('student', student);
  checkFlow('teacher', teacher);
  requireTrainable(student, 'distill (the student)');
  if (teacher.dim !== student.dim) throw invalidRange('teacher.dim', `the student's dim, ${student.dim}`, teacher.dim);
  if (teacher === student) throw new TypeError('distill needs a teacher other than the student');
  if (teacher.contextDim !== student.contextDim) {
    throw invalidRange('teacher.contextDim', `the student's context width, ${student.contextDim}`, teacher.contextDim);
  }
  const setup = checkReverseOptions('distill options', options, ['match', 'forwardKL', 'context'], { ema: 0.999, anneal: 0 });
  const C = student.contextDim;
  const contextOf = setup.opts.context;
  if (C > 0 && typeof contextOf !== 'function') {
    throw invalidType('options.context', `a function (step) => the batch's contexts (the flows are conditional: ${C} values per row)`, contextOf);
  }
  if (C === 0 && contextOf !== undefined) throw new TypeError('options.context: these flows are not conditional, so they take no context');
  /** Step `step`'s contexts, batchSize rows (a broadcast row repeated). */
  const stepContexts = async (step: number, batch: number): Promise<Float32Array> => {
    const { context, contextRows } = checkContext(`options.context(${step})`, await (contextOf as (s: number) => unknown)(step), batch, C);
    return contextRows === batch ? context : Float32Array.from({ length: batch * C }, (_, i) => context[i % C]);
  };
  const match = checkNumber('options.match', setup.opts.match ?? 0.2, 'a number in [0, 1]', (v) => v >= 0 && v <= 1);
  const forwardKL = checkNumber('options.forwardKL', setup.opts.forwardKL ?? 1, 'a finite number >= 0', (v) => v >= 0 && Number.isFinite(v));
  const matchSteps = Math.round(setup.steps * match);
  // Annealing counts from the first reverse-KL step (the core indexes beta by the global step).
  const [betaStart, betaSlope] = annealLine(setup, matchSteps);
  if (setup.optimizer.signal?.aborted) throw abortError('distill', 'its weights from before the call');
  claim(student, 'distill');
  try {
    const trainer = newTrainer(student, TO_DATA, teacher, setup.nativeOptions);
    trainer.setStickingTheLanding(setup.stickingTheLanding);
    const [lo, hi] = seedWords(setup.optimizer.seed);
    const { batchSize } = setup;
    const dim = student.dim;
    const matcher = matchSteps > 0 ? mapMatcher(teacher, dim, batchSize, lo, hi) : null;
    const probeContext = C > 0 ? await stepContexts(0, batchSize) : undefined;
    const cancel = cancelTokenFor(setup.optimizer.signal);
    return await runReverse(student, trainer, setup, 'distill', 0, async (firstStep, count, stepLoss, stats) => {
      let s = 0;
      let skipped = 0;
      for (; s < count && firstStep + s < matchSteps; s++) {
        if (s > 0 && setup.optimizer.signal?.aborted) break;
        const context = C > 0 ? await stepContexts(firstStep + s, batchSize) : undefined;
        const { z, value, grad, x, logq } = await matcher!.begin(firstStep + s, context);
        const contextOptions = context ? { context, contextRows: batchSize } : {};
        await trainer.reverseForward({ seed: [lo, hi], step: firstStep + s, batch: batchSize, z, x, logq, async: true, ...contextOptions });
        matcher!.finish(value, grad);
        await trainer.reverseBackward({ targetValue: value, targetGrad: grad, update: true, stats, stepLoss: stepLoss.subarray(s, s + 1), async: true });
        skipped += stats[3];
      }
      if (s < count) {
        let contextOptions = {};
        if (C > 0) {
          const all = new Float32Array((count - s) * batchSize * C);
          for (let k = s; k < count; k++) all.set(await stepContexts(firstStep + k, batchSize), (k - s) * batchSize * C);
          contextOptions = { context: all, contextRows: batchSize };
        }
        await trainer.distillSteps({
          ...contextOptions,
          seed: [lo, hi],
          firstStep: firstStep + s,
          steps: count - s,
          batch: batchSize,
          betaStart,
          betaSlope,
          forwardWeight: forwardKL,
          stats,
          stepLoss: stepLoss.subarray(s),
          async: true,
          cancel,
        });
        skipped += stats[3];
      }
      stats[3] = skipped;
      for (let i = 0; i < count; i++) if (!Number.isFinite(stepLoss[i])) stepLoss[i] = NaN;
    }, probeContext);
  } finally {
    training.delete(student);
  }
}

/**
 * The map-matching target of distill: for the latent rows of a step, the teacher's samples T(z)
 * (its sequential direction), and log N(S(z); T(z), s^2 I) with its gradient once the student's
 * S(z) is known. s is 5% of the spread of a first batch of teacher samples.
 */
function mapMatcher(teacher: Flow, dim: number, batch: number, seedLo: number, seedHi: number) {
  const z = new Float32Array(batch * dim);
  const x = new Float32Array(batch * dim);
  const logq = new Float32Array(batch);
  const value = new Float32Array(batch);
  const grad = new Float32Array(batch * dim);
  let teacherX: Float32Array = new Float32Array(0);
  let precision = 0;
  return {
    async begin(step: number, context?: Float32Array) {
      native.standardNormal({ seed: [seedLo, seedHi], firstRow: step * batch, rows: batch, dim, out: z });
      teacherX = (await teacher.forward(z, context ? { context } : undefined)).x;
      if (precision === 0) {
        let mean = 0;
        let square = 0;
        for (const v of teacherX) (mean += v), (square += v * v);
        mean /= teacherX.length;
        const spread = Math.sqrt(Math.max(square / teacherX.length - mean * mean, 1e-12));
        precision = 1 / (0.05 * spread) ** 2;
      }
      return { z, value, grad, x, logq };
    },
    finish(valueOut: Float32Array, gradOut: Float32Array) {
      for (let r = 0; r < batch; r++) {
        let sum = 0;
        for (let i = 0; i < dim; i++) {
          const d = x[r * dim + i] - teacherX[r * dim + i];
          gradOut[r * dim + i] = -precision * d;
          sum += d * d;
        }
        valueOut[r] = -0.5 * precision * sum;
      }
    },
  };
}

/**
 * @internal Test and benchmark hooks; not exported from index.ts. Gradients come back named and
 * shaped as the flow's parameters (masked entries zero).
 */
/**
 * A native cancel token raised when `signal` fires, so a chunk of training steps in flight stops
 * before its next step (the chunk's caller then rejects with an AbortError). Undefined without a signal.
 */
function cancelTokenFor(signal: AbortSignal | undefined): NativeCancelToken | undefined {
  if (!signal) return undefined;
  const token = new native.CancelToken();
  signal.addEventListener('abort', () => token.cancel(), { once: true });
  return token;
}

/** Adam's defaults, for the test hooks below. */
const TEST_OPTIMIZER: NativeOptimizerOptions = { learningRate: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, clipGradNorm: 0 };

export const __trainingInternals = {
  /** Sets how many per-step losses a reverse-KL report keeps before it summarises; returns the previous bound. */
  setLossHistoryLimit(limit: number): number {
    const previous = lossHistoryLimit;
    lossHistoryLimit = checkInteger('limit', limit, 1, LOSS_HISTORY);
    return previous;
  },

  /** Mean negative log-likelihood of x and its gradient wrt every parameter (MAF flows). */
  likelihoodGradient(flow: Flow, x: Float32Array, kernels: KernelChoice = {}, context?: Float32Array): { loss: number; grads: Record<string, Float32Array> } {
    const trainer = newTrainer(flow, TO_LATENT, null, TEST_OPTIMIZER, kernels);
    const loss = trainer.likelihoodGradient({ x, rows: x.length / flow.dim, ...(context ? { context } : {}) });
    return { loss, grads: gradientRecord(flow, trainer) };
  },

  /** log p(x) and d log p / dx (MAF flows): what distillation uses of its teacher. */
  logProbGradient(flow: Flow, x: Float32Array, kernels: KernelChoice = {}): { logProb: Float32Array; grad: Float32Array } {
    const trainer = newTrainer(flow, TO_LATENT, null, TEST_OPTIMIZER, kernels);
    const rows = x.length / flow.dim;
    const logProb = new Float32Array(rows);
    const grad = new Float32Array(x.length);
    trainer.logProbGradient({ x, rows, logProb, grad });
    return { logProb, grad };
  },

  /** The reverse-KL loss at the latent rows z and its gradient wrt every parameter (IAF flows). */
  async reverseKLGradient(
    flow: Flow,
    z: Float32Array,
    target: Target,
    kernels: KernelChoice = {},
    stickingTheLanding = false,
    context?: Float32Array,
  ): Promise<{ loss: number; x: Float32Array; grads: Record<string, Float32Array> }> {
    const trainer = newTrainer(flow, TO_DATA, null, TEST_OPTIMIZER, kernels);
    trainer.setStickingTheLanding(stickingTheLanding);
    const rows = z.length / flow.dim;
    const x = new Float32Array(z.length);
    const contextRows = context ? context.length / flow.contextDim : 0;
    trainer.reverseForward({ seed: [0, 0], step: 0, batch: rows, z, x, logq: new Float32Array(rows), async: false, ...(context ? { context, contextRows } : {}) });
    const { value, grad } = checkEvaluation(await target.logDensity(x, context), rows, flow.dim);
    const stepLoss = new Float64Array(1);
    trainer.reverseBackward({ targetValue: value, targetGrad: grad, update: false, stats: new Float64Array(5), stepLoss, async: false });
    return { loss: stepLoss[0], x, grads: gradientRecord(flow, trainer) };
  },

  /**
   * Training throughput: `steps` maximum-likelihood steps of `batchSize` rows of `data`, on the
   * staircase path or (kernels.reference) the simple dense one. Leaves the flow unchanged; returns rows/s.
   */
  likelihoodThroughput(flow: Flow, data: Float32Array, batchSize: number, steps: number, kernels: KernelChoice = {}): number {
    const trainer = newTrainer(flow, TO_LATENT, null, { ...TEST_OPTIMIZER, learningRate: 1e-4 }, kernels);
    const rows = data.length / flow.dim;
    trainer.setData({ train: data, trainRows: rows });
    const stats = new Float64Array(5);
    const perEpoch = Math.ceil(rows / batchSize);
    trainer.fitBatches({ seed: [1, 0], epoch: 0, firstBatch: 0, batches: 1, batchSize, stats, async: false }); // warm-up
    const t0 = now();
    let done = 0;
    for (let s = 0; s < steps; s++) {
      trainer.fitBatches({ seed: [1, 0], epoch: 1 + Math.floor(s / perEpoch), firstBatch: s % perEpoch, batches: 1, batchSize, stats, async: false });
      done += stats[1];
    }
    return done / (now() - t0);
  },
};

