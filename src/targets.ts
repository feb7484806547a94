// Target densities for reverse-KL (variational) training: the flow q is fitted by
// maximising the ELBO E_q[log p~(x) - log q(x)], which needs log p~ and its gradient
// at the flow's samples. The built-ins are the four 2-D energies of Rezende & Mohamed
// (2015), Haario's banana, Neal's funnel and isotropic Gaussian mixtures, plus a grid
// integrator for the log normaliser of any 2-D target, so that KL(q || p) =
// log Z - ELBO can be reported even where Z has no closed form.
//
// All built-ins take a Float32Array (the flow's format) but compute in float64 and
// round once at the end, so values and gradients are as accurate as float32 can hold.
// Each also offers logDensity64 for reference work (finite-difference checks, grid
// normalisers) where that final rounding would get in the way.
import { MAX_DIM } from './layers';
import {
  allocateFloats,
  checkInteger,
  checkOptions,
  invalidRange,
  invalidType,
  isFloat32Array,
  isFloat64Array,
} from './validation';

// Globals bound once at module scope. In a vm context (jest, node:vm) every read of a
// global such as Math, Number or Infinity goes through the context's interceptor and
// costs some 20-50x a local read, enough to make the loops here ten times slower under
// a test runner.
const { abs, cos, exp, floor, hypot, log, log1p, max, min, PI, sign, sin } = Math;
const isFiniteNumber = Number.isFinite;
const isNaNNumber = Number.isNaN;
const INFINITY = Number.POSITIVE_INFINITY;

/**
 * An unnormalised density p~ on R^dim. `logDensity` takes a row-major batch x of n*dim
 * values and returns `value` (n entries, log p~(x_i)) and `grad` (n*dim entries, the
 * gradient of value_i with respect to x_i). `logZ`, where known exactly, is
 * log of the integral of p~, so log p(x) = log p~(x) - logZ.
 */
export interface Target {
  name: string;
  dim: number;
  logZ?: number;
  logDensity(x: Float32Array): { value: Float32Array; grad: Float32Array };
}

/** A built-in target: the same density also in float64, without the final rounding to float32. */
export interface BuiltinTarget extends Target {
  logDensity64(x: Float64Array): { value: Float64Array; grad: Float64Array };
}

export interface GaussianMixtureOptions {
  /** One mean vector per component, all of the same length (the target's dim). */
  means: number[][];
  /** Isotropic standard deviation: one for all components, or one per component. Default 1. */
  stds?: number | number[];
  /** Mixture weights, one per component, >= 0 with a positive sum; normalised here. Default equal. */
  weights?: number[];
}

export interface GridOptions {
  /** The box to integrate over: [min, max] for both axes, or [[min1, max1], [min2, max2]]. */
  range: [number, number] | [[number, number], [number, number]];
  /** Cells per axis: one count for both, or [cells1, cells2]. Default 512. */
  resolution?: number | [number, number];
}

/** log p~ of the row x[offset .. offset + dim), in float64; writes its gradient to grad at the same offset. */
type RowLogDensity = (x: Float64Array, offset: number, grad: Float64Array) => number;

/** U(z) of a 2-D energy (density proportional to exp(-U)); writes dU/dz1, dU/dz2 to gradient[0], gradient[1]. */
type Energy2D = (z1: number, z2: number, gradient: Float64Array) => number;

const LOG_TWO_PI = log(2 * PI);
const HALF_PI = PI / 2;

// Targets built here: frozen, so their logDensity64 is known to compute the same density as
// their logDensity, and logNormalizer2D may use it. A user object that copies a built-in's
// methods but replaces logDensity is not in this set, so its own logDensity is what counts.
const builtinTargets = new WeakSet<object>();

function checkBatch<T extends Float32Array | Float64Array>(
  name: string,
  x: unknown,
  dim: number,
  typeName: string,
  isType: (value: unknown) => value is T,
): T {
  if (!isType(x)) throw invalidType(name, `a ${typeName} of n*${dim} values (row-major)`, x);
  if (x.length === 0 || x.length % dim !== 0) throw invalidRange(`${name}.length`, `a positive multiple of ${dim}`, x.length);
  for (let i = 0; i < x.length; i++) {
    if (!isFiniteNumber(x[i])) {
      throw invalidRange(`${name}[${i}]`, 'a finite number', x[i]);
    }
  }
  return x;
}

function makeTarget(name: string, dim: number, logZ: number | undefined, rowLogDensity: RowLogDensity): BuiltinTarget {
  const evaluate = (x: Float64Array): { value: Float64Array; grad: Float64Array } => {
    const rows = x.length / dim;
    const value = new Float64Array(rows);
    const grad = new Float64Array(x.length);
    for (let r = 0; r < rows; r++) value[r] = rowLogDensity(x, r * dim, grad);
    return { value, grad };
  };
  const target: BuiltinTarget = {
    name,
    dim,
    ...(logZ === undefined ? {} : { logZ }),
    logDensity(x: Float32Array): { value: Float32Array; grad: Float32Array } {
      const batch = checkBatch(`${name}.logDensity(x)`, x, dim, 'Float32Array', isFloat32Array);
      const { value, grad } = evaluate(Float64Array.from(batch));
      const value32 = allocateFloats(value.length, `${name}.logDensity values`);
      const grad32 = allocateFloats(grad.length, `${name}.logDensity gradients`);
      value32.set(value);
      grad32.set(grad);
      return { value: value32, grad: grad32 };
    },
    logDensity64(x: Float64Array): { value: Float64Array; grad: Float64Array } {
      return evaluate(checkBatch(`${name}.logDensity64(x)`, x, dim, 'Float64Array', isFloat64Array));
    },
  };
  builtinTargets.add(target);
  return Object.freeze(target);
}

function fromEnergy(energy: Energy2D): RowLogDensity {
  const energyGradient = new Float64Array(2);
  return (x, offset, grad) => {
    const u = energy(x[offset], x[offset + 1], energyGradient);
    grad[offset] = -energyGradient[0];
    grad[offset + 1] = -energyGradient[1];
    return -u;
  };
}

/** log(e^a + e^b) from the larger term, so that neither exponential overflows nor both underflow. */
function logAddExp(a: number, b: number): number {
  const larger = a > b ? a : b;
  if (larger === -INFINITY) return -INFINITY;
  return larger + log1p(exp(-abs(a - b)));
}

// ---------------------------------------------------------------------------------------
// Rezende & Mohamed (2015), "Variational Inference with Normalizing Flows", Table 1.
// w1(z) = sin(2 pi z1 / 4), w2(z) = 3 exp(-0.5 ((z1 - 1) / 0.6)^2), w3(z) = 3 sigmoid((z1 - 1) / 0.3).

/**
 * The envelope (z1^4 + z2^4) / 8192 that normflows adds to U2..U4: as printed they are flat
 * along z1 and have no normaliser; the quartic makes them proper while changing almost
 * nothing where their mass is (it is 0.1 at |z1| = 5).
 */
function addEnvelope(z1: number, z2: number, gradient: Float64Array): number {
  gradient[0] += (z1 * z1 * z1) / 2048;
  gradient[1] += (z2 * z2 * z2) / 2048;
  return (z1 * z1 * z1 * z1 + z2 * z2 * z2 * z2) / 8192;
}

/**
 * -log( exp(-0.5 (a / sigmaA)^2) + exp(-0.5 (b / sigmaB)^2) ) with a = z2 - w1(z), b = a + shift,
 * where shift depends on z1 only (w2 for U3, w3 for U4) with derivative shiftSlope.
 */
function twoBranchEnergy(
  z1: number,
  z2: number,
  shift: number,
  shiftSlope: number,
  sigmaA: number,
  sigmaB: number,
  gradient: Float64Array,
): number {
  const w1Slope = HALF_PI * cos(HALF_PI * z1);
  const a = z2 - sin(HALF_PI * z1);
  const b = a + shift;
  const logA = -0.5 * (a / sigmaA) ** 2;
  const logB = -0.5 * (b / sigmaB) ** 2;
  const logSum = logAddExp(logA, logB);
  // dU/da and dU/db: each branch's Gaussian slope, weighted by that branch's share.
  const slopeA = (exp(logA - logSum) * a) / (sigmaA * sigmaA);
  const slopeB = (exp(logB - logSum) * b) / (sigmaB * sigmaB);
  gradient[0] = -slopeA * w1Slope + slopeB * (shiftSlope - w1Slope);
  gradient[1] = slopeA + slopeB;
  return -logSum;
}

/** U1 = 0.5 ((||z|| - 2) / 0.4)^2 - ln( exp(-0.5 ((z1 - 2) / 0.6)^2) + exp(-0.5 ((z1 + 2) / 0.6)^2) ). */
const energyU1: Energy2D = (z1, z2, gradient) => {
  const radius = hypot(z1, z2);
  const ring = (radius - 2) / 0.4;
  const ringSlope = ring / 0.4;
  // ||z|| has no gradient at 0, where the ring term is a cone tip pointing up. 0 lies in its
  // generalised gradient (the disc of radius 12.5) and is the symmetric choice.
  gradient[0] = radius > 0 ? (ringSlope * z1) / radius : 0;
  gradient[1] = radius > 0 ? (ringSlope * z2) / radius : 0;
  const logRight = -0.5 * ((z1 - 2) / 0.6) ** 2;
  const logLeft = -0.5 * ((z1 + 2) / 0.6) ** 2;
  const logSum = logAddExp(logRight, logLeft);
  gradient[0] += (exp(logRight - logSum) * (z1 - 2) + exp(logLeft - logSum) * (z1 + 2)) / 0.36;
  return 0.5 * ring * ring - logSum;
};

/** U2 = 0.5 ((z2 - w1) / 0.4)^2, plus the envelope. */
const energyU2: Energy2D = (z1, z2, gradient) => {
  const offset = z2 - sin(HALF_PI * z1);
  const slope = offset / 0.16;
  gradient[0] = -slope * HALF_PI * cos(HALF_PI * z1);
  gradient[1] = slope;
  return 0.5 * (offset / 0.4) ** 2 + addEnvelope(z1, z2, gradient);
};

/** U3 = -ln( exp(-0.5 ((z2 - w1) / 0.35)^2) + exp(-0.5 ((z2 - w1 + w2) / 0.35)^2) ), plus the envelope. */
const energyU3: Energy2D = (z1, z2, gradient) => {
  const w2 = 3 * exp(-0.5 * ((z1 - 1) / 0.6) ** 2);
  const w2Slope = (-w2 * (z1 - 1)) / 0.36;
  return twoBranchEnergy(z1, z2, w2, w2Slope, 0.35, 0.35, gradient) + addEnvelope(z1, z2, gradient);
};

/** U4 = -ln( exp(-0.5 ((z2 - w1) / 0.4)^2) + exp(-0.5 ((z2 - w1 + w3) / 0.35)^2) ), plus the envelope. */
const energyU4: Energy2D = (z1, z2, gradient) => {
  const s = (z1 - 1) / 0.3;
  // sigmoid and sigmoid * (1 - sigmoid) from e^-|s|, which cannot overflow.
  const decay = exp(-abs(s));
  const sigmoid = s >= 0 ? 1 / (1 + decay) : decay / (1 + decay);
  const sigmoidSlope = decay / ((1 + decay) * (1 + decay));
  return twoBranchEnergy(z1, z2, 3 * sigmoid, (3 * sigmoidSlope) / 0.3, 0.4, 0.35, gradient) + addEnvelope(z1, z2, gradient);
};

/** Rezende & Mohamed's U1 (a ring with two lobes). Already proper; no envelope; log Z not known in closed form. */
export const U1: BuiltinTarget = makeTarget('U1', 2, undefined, fromEnergy(energyU1));
/** Rezende & Mohamed's U2 (a sine wave) plus the envelope (z1^4 + z2^4) / 8192 that makes it proper. */
export const U2: BuiltinTarget = makeTarget('U2', 2, undefined, fromEnergy(energyU2));
/** Rezende & Mohamed's U3 (a sine wave splitting around a bump) plus the envelope (z1^4 + z2^4) / 8192. */
export const U3: BuiltinTarget = makeTarget('U3', 2, undefined, fromEnergy(energyU3));
/** Rezende & Mohamed's U4 (a sine wave splitting into a step) plus the envelope (z1^4 + z2^4) / 8192. */
export const U4: BuiltinTarget = makeTarget('U4', 2, undefined, fromEnergy(energyU4));

// ---------------------------------------------------------------------------------------

const BANANA_TWIST = 0.03;
const BANANA_X1_VARIANCE = 100;

/**
 * Haario, Saksman & Tamminen's twisted Gaussian ("banana"; Computational Statistics 14:375,
 * 1999) in 2-D with their moderate twist b = 0.03: N(0, diag(100, 1)) composed with
 * phi(x) = (x1, x2 + b x1^2 - 100 b). So x1 ~ N(0, 100) and x2 | x1 ~ N(-b (x1^2 - 100), 1),
 * an arch opening downwards. phi has Jacobian 1, so the density is normalised: log Z = 0.
 * Its mass lies roughly in [-40, 40] x [-50, 6].
 */
export const banana: BuiltinTarget = makeTarget('banana', 2, 0, (x, offset, grad) => {
  const x1 = x[offset];
  const residual = x[offset + 1] + BANANA_TWIST * (x1 * x1 - BANANA_X1_VARIANCE);
  grad[offset] = -x1 / BANANA_X1_VARIANCE - residual * 2 * BANANA_TWIST * x1;
  grad[offset + 1] = -residual;
  // The two normalisers: 0.5 log(2 pi 100) + 0.5 log(2 pi) = log(2 pi) + 0.5 log(100).
  return -(x1 * x1) / (2 * BANANA_X1_VARIANCE) - 0.5 * residual * residual - LOG_TWO_PI - 0.5 * log(BANANA_X1_VARIANCE);
});

/**
 * Neal's funnel (Annals of Statistics 31:705, 2003) in `dim` >= 2 dimensions:
 * v = x[0] ~ N(0, 3^2) and x[i] | v ~ N(0, e^v) for i = 1..dim-1. Normalised: log Z = 0.
 * Far down the neck (v very negative, x[i] != 0) the true log-density is below what float64
 * holds, and value is -Infinity there rather than NaN.
 */
export function funnel(dim: number): BuiltinTarget {
  checkInteger('funnel dim', dim, 2, MAX_DIM);
  const vVariance = 9;
  const widths = dim - 1;
  return makeTarget(`funnel(${dim})`, dim, 0, (x, offset, grad) => {
    const v = x[offset];
    let value = (-v * v) / (2 * vVariance) - 0.5 * log(2 * PI * vVariance) - widths * 0.5 * (LOG_TWO_PI + v);
    let vSlope = -v / vVariance - widths * 0.5;
    for (let i = 1; i < dim; i++) {
      const xi = x[offset + i];
      if (xi === 0) {
        grad[offset + i] = 0;
        continue;
      }
      // x^2 e^-v through logarithms: e^-v alone overflows for v < -709 even where x^2 e^-v
      // is small, and 0 * Infinity would be NaN.
      const logAbs = log(abs(xi));
      const scaledSquare = exp(2 * logAbs - v);
      value -= 0.5 * scaledSquare;
      vSlope += 0.5 * scaledSquare;
      grad[offset + i] = -sign(xi) * exp(logAbs - v);
    }
    grad[offset] = vSlope;
    return value;
  });
}

// ---------------------------------------------------------------------------------------

const MAX_COMPONENTS = 65536;

function checkPositiveNumber(name: string, value: unknown): number {
  if (typeof value !== 'number' || isNaNNumber(value)) throw invalidType(name, 'a finite number > 0', value);
  if (!isFiniteNumber(value) || value <= 0) throw invalidRange(name, 'a finite number > 0', value);
  return value;
}

function checkNumberList(name: string, value: unknown, length: number, what: string): unknown[] {
  if (!Array.isArray(value)) throw invalidType(name, `an array of ${length} ${what}`, value);
  if (value.length !== length) throw invalidRange(`${name}.length`, `${length} (one per component)`, value.length);
  return value;
}

/**
 * A normalised mixture of isotropic Gaussians: sum_k w_k N(x; means[k], stds[k]^2 I), with the
 * weights rescaled to sum to 1, so log Z = 0. Components of weight 0 are dropped.
 */
export function gaussianMixture(options: GaussianMixtureOptions): BuiltinTarget {
  const opts = checkOptions('gaussianMixture options', options, ['means', 'stds', 'weights']);
  const meansName = 'gaussianMixture options.means';
  const means: unknown = opts.means;
  if (!Array.isArray(means) || means.length === 0) throw invalidType(meansName, 'a non-empty array of mean vectors', means);
  if (means.length > MAX_COMPONENTS) throw invalidRange(`${meansName}.length`, `at most ${MAX_COMPONENTS} components`, means.length);
  const first: unknown = means[0];
  if (!Array.isArray(first) || first.length === 0) throw invalidType(`${meansName}[0]`, 'a non-empty array of numbers', first);
  const dim = checkInteger(`${meansName}[0].length`, first.length, 1, MAX_DIM);
  const count = means.length;
  const flatMeans = new Float64Array(count * dim);
  means.forEach((mean: unknown, k: number) => {
    if (!Array.isArray(mean)) throw invalidType(`${meansName}[${k}]`, `an array of ${dim} numbers`, mean);
    if (mean.length !== dim) throw invalidRange(`${meansName}[${k}].length`, `${dim} (the length of means[0])`, mean.length);
    mean.forEach((entry: unknown, j: number) => {
      if (typeof entry !== 'number' || !isFiniteNumber(entry)) {
        throw invalidType(`${meansName}[${k}][${j}]`, 'a finite number', entry);
      }
      flatMeans[k * dim + j] = entry;
    });
  });

  const stdsName = 'gaussianMixture options.stds';
  let stds: number[];
  if (opts.stds === undefined) stds = new Array<number>(count).fill(1);
  else if (typeof opts.stds === 'number') stds = new Array<number>(count).fill(checkPositiveNumber(stdsName, opts.stds));
  else stds = checkNumberList(stdsName, opts.stds, count, 'standard deviations').map((s, k) => checkPositiveNumber(`${stdsName}[${k}]`, s));

  const weightsName = 'gaussianMixture options.weights';
  let weights: number[];
  if (opts.weights === undefined) weights = new Array<number>(count).fill(1);
  else {
    weights = checkNumberList(weightsName, opts.weights, count, 'weights').map((w, k) => {
      if (typeof w !== 'number' || isNaNNumber(w)) throw invalidType(`${weightsName}[${k}]`, 'a finite number >= 0', w);
      if (!isFiniteNumber(w) || w < 0) throw invalidRange(`${weightsName}[${k}]`, 'a finite number >= 0', w);
      return w;
    });
  }
  const totalWeight = weights.reduce((sum, w) => sum + w, 0);
  if (!(totalWeight > 0) || !isFiniteNumber(totalWeight)) {
    throw invalidRange(weightsName, 'weights with a positive, finite sum', opts.weights);
  }

  const kept = weights.map((w, k) => (w > 0 ? k : -1)).filter((k) => k >= 0);
  const keptMeans = new Float64Array(kept.length * dim);
  const precisions = new Float64Array(kept.length);
  // log w_k - (dim/2) log(2 pi s_k^2): everything in a component's log term that does not depend on x.
  const logConstants = new Float64Array(kept.length);
  kept.forEach((k, c) => {
    keptMeans.set(flatMeans.subarray(k * dim, (k + 1) * dim), c * dim);
    precisions[c] = 1 / (stds[k] * stds[k]);
    logConstants[c] = log(weights[k] / totalWeight) - 0.5 * dim * (LOG_TWO_PI + 2 * log(stds[k]));
  });
  const componentLogs = new Float64Array(kept.length);

  return makeTarget('gaussianMixture', dim, 0, (x, offset, grad) => {
    let largest = -INFINITY;
    for (let c = 0; c < kept.length; c++) {
      let squaredDistance = 0;
      for (let j = 0; j < dim; j++) {
        const d = x[offset + j] - keptMeans[c * dim + j];
        squaredDistance += d * d;
      }
      componentLogs[c] = logConstants[c] - 0.5 * precisions[c] * squaredDistance;
      if (componentLogs[c] > largest) largest = componentLogs[c];
    }
    let sum = 0;
    for (let c = 0; c < kept.length; c++) sum += exp(componentLogs[c] - largest);
    const value = largest + log(sum);
    for (let j = 0; j < dim; j++) grad[offset + j] = 0;
    for (let c = 0; c < kept.length; c++) {
      // The gradient is the responsibility-weighted pull of each component towards its mean.
      const pull = exp(componentLogs[c] - value) * precisions[c];
      for (let j = 0; j < dim; j++) grad[offset + j] += pull * (keptMeans[c * dim + j] - x[offset + j]);
    }
    return value;
  });
}

// ---------------------------------------------------------------------------------------

const MAX_GRID_CELLS_PER_AXIS = 16384;
const GRID_CHUNK_POINTS = 65536;

function checkInterval(name: string, value: unknown): [number, number] {
  const expected = 'an interval [min, max] of finite numbers with min < max';
  if (!Array.isArray(value) || value.length !== 2 || typeof value[0] !== 'number' || typeof value[1] !== 'number') {
    throw invalidType(name, expected, value);
  }
  const [lower, upper] = value as [number, number];
  if (!isFiniteNumber(lower) || !isFiniteNumber(upper) || !(lower < upper)) {
    // invalidRange would describe the pair only as "an array of length 2"; the bounds say more.
    throw new RangeError(`Expected ${expected} for ${name} but received [${lower}, ${upper}]`);
  }
  return [lower, upper];
}

function isTargetLike(value: unknown): value is Target {
  return typeof value === 'object' && value !== null && typeof (value as { logDensity?: unknown }).logDensity === 'function';
}

/**
 * log Z = log of the integral of p~ over a 2-D box, by the midpoint rule on a grid of cells,
 * summed as a streaming log-sum-exp (so a p~ of e^-1000 or e^+1000 is no problem). For the
 * smooth targets here the midpoint rule converges very fast once a cell is a fraction of the
 * narrowest feature (0.35 for U3, U4), so 0.1-wide cells are plenty. The box must hold
 * essentially all the mass: what lies outside is missed, so a box too small gives too low a
 * log Z. With it, KL(q || p) = log Z - ELBO for a flow q fitted to the target.
 *
 * Built-in targets are evaluated in float64; any other 2-D target through its logDensity,
 * in chunks of at most 65536 points.
 */
export function logNormalizer2D(target: Target, options: GridOptions): number {
  if (!isTargetLike(target)) throw invalidType('target', 'a target with a logDensity(x) function', target);
  if (target.dim !== 2) throw invalidRange('target.dim', '2 (logNormalizer2D integrates over a 2-D grid)', target.dim);
  const opts = checkOptions('logNormalizer2D options', options, ['range', 'resolution']);

  const range: unknown = opts.range;
  if (range === undefined) throw invalidType('logNormalizer2D options.range', 'an interval [min, max] or [[min1, max1], [min2, max2]]', range);
  const perAxisRange = Array.isArray(range) && Array.isArray(range[0]);
  const [min1, max1] = checkInterval(`logNormalizer2D options.range${perAxisRange ? '[0]' : ''}`, perAxisRange ? (range as unknown[])[0] : range);
  const [min2, max2] = perAxisRange ? checkInterval('logNormalizer2D options.range[1]', (range as unknown[])[1]) : [min1, max1];
  if (perAxisRange && (range as unknown[]).length !== 2) {
    throw invalidRange('logNormalizer2D options.range.length', '2 (one interval per axis)', (range as unknown[]).length);
  }

  const resolution: unknown = opts.resolution ?? 512;
  const resolutionName = 'logNormalizer2D options.resolution';
  let cells1: number;
  let cells2: number;
  if (Array.isArray(resolution)) {
    if (resolution.length !== 2) throw invalidRange(`${resolutionName}.length`, '2 (one count per axis)', resolution.length);
    cells1 = checkInteger(`${resolutionName}[0]`, resolution[0], 1, MAX_GRID_CELLS_PER_AXIS);
    cells2 = checkInteger(`${resolutionName}[1]`, resolution[1], 1, MAX_GRID_CELLS_PER_AXIS);
  } else {
    cells1 = cells2 = checkInteger(resolutionName, resolution, 1, MAX_GRID_CELLS_PER_AXIS);
  }

  const width1 = (max1 - min1) / cells1;
  const width2 = (max2 - min2) / cells2;
  const useFloat64 = builtinTargets.has(target);
  const gridRowsPerChunk = max(1, floor(GRID_CHUNK_POINTS / cells1));

  // Streaming log-sum-exp: sum of exp(value - peak) over the cells seen so far.
  let peak = -INFINITY;
  let sum = 0;
  for (let firstRow = 0; firstRow < cells2; firstRow += gridRowsPerChunk) {
    const chunkRows = min(gridRowsPerChunk, cells2 - firstRow);
    const count = chunkRows * cells1;
    const points = useFloat64 ? new Float64Array(2 * count) : new Float32Array(2 * count);
    for (let r = 0; r < chunkRows; r++) {
      const z2 = min2 + (firstRow + r + 0.5) * width2;
      for (let c = 0; c < cells1; c++) {
        const at = 2 * (r * cells1 + c);
        points[at] = min1 + (c + 0.5) * width1;
        points[at + 1] = z2;
      }
    }
    const values = useFloat64
      ? (target as BuiltinTarget).logDensity64(points as Float64Array).value
      : (target.logDensity(points as Float32Array) as { value?: unknown } | undefined)?.value;
    if (!(isFloat32Array(values) || isFloat64Array(values)) || values.length !== count) {
      throw invalidType(`${target.name ?? 'target'}.logDensity(x).value`, `a Float32Array of ${count} values`, values);
    }
    for (let i = 0; i < count; i++) {
      const value = values[i];
      if (value === -INFINITY) continue;
      if (isNaNNumber(value) || value === INFINITY) {
        throw invalidRange(
          `${target.name ?? 'target'}.logDensity at (${points[2 * i]}, ${points[2 * i + 1]})`,
          'a log density below +Infinity (-Infinity where the density is 0)',
          value,
        );
      }
      if (value > peak) {
        sum = sum * exp(peak - value) + 1;
        peak = value;
      } else {
        sum += exp(value - peak);
      }
    }
  }
  if (peak === -INFINITY) return -INFINITY;
  return peak + log(sum) + log(width1) + log(width2);
}

/** Built-in targets and the grid normaliser, as one namespace: `targets.U1`, `targets.funnel(10)`. */
export const targets = {
  U1,
  U2,
  U3,
  U4,
  banana,
  funnel,
  gaussianMixture,
  logNormalizer2D,
} as const;
