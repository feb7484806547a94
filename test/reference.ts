/**
 * The oracle: a float64 reference implementation of MAF/IAF flows in plain TypeScript.
 *
 * It shares no code with the library (nothing from ../src) so that a bug in the library cannot
 * hide in both places. It is written to be obviously correct, not fast: dense loops over every
 * weight, explicit boolean masks, and the D-pass method for the sequential direction (the
 * library uses the one-pass degree-ordered method, so the two algorithms check each other).
 *
 * Conventions (see docs/DESIGN.md, "The math"):
 * - A flow maps latent z to data x, applying layers[0] first.
 * - Parameters of MADE layer k are dense row-major [out, in] tensors named `layers.{k}.…`;
 *   entries excluded by the MADE mask are ignored whatever they hold (even NaN).
 * - Batches are row-major Float64Array of n * dim.
 */

export type Activation = 'relu' | 'tanh' | 'elu';
export type ScaleKind = 'softplus' | 'exp' | 'gated';

export interface RefMadeLayer {
  type: 'iaf' | 'maf';
  hidden: number[];
  activation: Activation;
  scale: ScaleKind;
  /** Length D: degree of input dimension i, a permutation of 1..D. */
  inputDegrees: number[];
  /** Per hidden layer l, length hidden[l]: degree of each unit (integers in 0..D). */
  hiddenDegrees: number[][];
  /**
   * nflows' residual MADE: h = W0 u + b0 (no activation), then for each block (layers 2b+1, 2b+2)
   * h = h + W2 act(W1 act(h) + b1) + b2, and the heads read h (no activation).
   */
  residual?: boolean;
  /** The conditioner reads u / sqrt(1 + (u / softClamp)^2); absent or 0: u. */
  softClamp?: number;
  /**
   * Conditional flows: hidden layer 0's pre-activation gets Wc c + bc ('linear') or
   * act(Wc c + bc) ('activated'), tensors `layers.{k}.context.weight` [h0, C] and `.bias` [h0].
   */
  contextForm?: 'linear' | 'activated';
}

export interface RefPermutation {
  type: 'permutation';
  /** b_i = a_{permutation[i]}; a permutation of 0..D-1. */
  permutation: number[];
}

/** b_i = loc_i + scale_i a_i, tensors `layers.{k}.loc` and `layers.{k}.scale` (length D). */
export interface RefAffine {
  type: 'affine';
  trainable?: boolean;
}

export type RefLayer = RefMadeLayer | RefPermutation | RefAffine;

export interface RefConfig {
  dim: number;
  /** Conditional flows: the context width C (absent or 0: none). */
  contextDim?: number;
  layers: RefLayer[];
}

/**
 * A batch's context: one row of C values (every row's) or n rows, row-major. Row r's context;
 * undefined for an unconditional flow.
 */
export type RefContext = ArrayLike<number> | undefined;

function contextRow(context: RefContext, r: number, C: number): Float64Array | undefined {
  if (context === undefined || C === 0) return undefined;
  const offset = context.length === C ? 0 : r * C;
  return Float64Array.from({ length: C }, (_, k) => context[offset + k]);
}

export type RefParams = Record<string, ArrayLike<number>>;

export interface RefConditionerOutput {
  scale: Float64Array;
  logScale: Float64Array;
  shift: Float64Array;
}

export interface RefLayerResult {
  out: Float64Array;
  logDet: Float64Array;
}

export interface RefForwardResult {
  x: Float64Array;
  logDet: Float64Array;
}

export interface RefInverseResult {
  z: Float64Array;
  logDet: Float64Array;
}

/** Smallest scale the softplus parameterization can produce (as nflows and FlowJAX). */
const SOFTPLUS_MIN_SCALE = 1e-3;
/** The exp parameterization soft-clips its pre-activation to (-ln 1e3, ln 1e3) (as zuko). */
const EXP_SOFT_CLIP = Math.log(1000);
/** The gated parameterization adds this to its pre-activation so sigma starts near 1. */
const GATE_BIAS = 2;
const LOG_2PI = Math.log(2 * Math.PI);

// ---------------------------------------------------------------------------------------------
// Scalar helpers
// ---------------------------------------------------------------------------------------------

/** log(1 + exp(x)) without overflow for large x or loss of precision for very negative x. */
function softplus(x: number): number {
  return x > 0 ? x + Math.log1p(Math.exp(-x)) : Math.log1p(Math.exp(x));
}

/** 1 / (1 + exp(-x)) without overflow in exp for either sign of x. */
function sigmoid(x: number): number {
  if (x >= 0) return 1 / (1 + Math.exp(-x));
  const e = Math.exp(x);
  return e / (1 + e);
}

/** log(sigmoid(x)) = -softplus(-x); stays finite and accurate where sigmoid(x) underflows. */
function logSigmoid(x: number): number {
  return -softplus(-x);
}

function activate(kind: Activation, x: number): number {
  switch (kind) {
    case 'relu':
      return x > 0 ? x : 0;
    case 'tanh':
      return Math.tanh(x);
    case 'elu':
      return x > 0 ? x : Math.exp(x) - 1;
    default:
      throw new Error(`reference: unknown activation ${String(kind)}`);
  }
}

/** (scale, logScale, shift) of one dimension from its pre-scale a and pre-shift s. */
function parameterize(kind: ScaleKind, a: number, s: number): { scale: number; logScale: number; shift: number } {
  switch (kind) {
    case 'softplus': {
      const scale = softplus(a) + SOFTPLUS_MIN_SCALE;
      return { scale, logScale: Math.log(scale), shift: s };
    }
    case 'exp': {
      const clipped = a / (1 + Math.abs(a) / EXP_SOFT_CLIP);
      return { scale: Math.exp(clipped), logScale: clipped, shift: s };
    }
    case 'gated': {
      const gate = sigmoid(a + GATE_BIAS);
      return { scale: gate, logScale: logSigmoid(a + GATE_BIAS), shift: (1 - gate) * s };
    }
    default:
      throw new Error(`reference: unknown scale parameterization ${String(kind)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Parameters and masks
// ---------------------------------------------------------------------------------------------

/** Fetch a named tensor and check its length, so a naming or shape mismatch fails loudly. */
function getTensor(params: RefParams, name: string, expectedLength: number): ArrayLike<number> {
  const tensor = params[name];
  if (tensor === undefined) throw new Error(`reference: missing parameter ${name}`);
  if (tensor.length !== expectedLength) {
    throw new Error(`reference: parameter ${name} has length ${tensor.length}, expected ${expectedLength}`);
  }
  return tensor;
}

function checkMadeLayer(layer: RefMadeLayer): void {
  const D = layer.inputDegrees.length;
  const sortedDegrees = [...layer.inputDegrees].sort((p, q) => p - q);
  sortedDegrees.forEach((degree, index) => {
    if (degree !== index + 1) throw new Error('reference: inputDegrees must be a permutation of 1..D');
  });
  if (layer.hidden.length === 0) throw new Error('reference: a MADE needs at least one hidden layer');
  if (layer.hiddenDegrees.length !== layer.hidden.length) {
    throw new Error('reference: hiddenDegrees must have one entry per hidden layer');
  }
  layer.hidden.forEach((width, l) => {
    const degrees = layer.hiddenDegrees[l];
    if (degrees.length !== width) throw new Error(`reference: hiddenDegrees[${l}] must have length ${width}`);
    for (const degree of degrees) {
      if (!Number.isInteger(degree) || degree < 0 || degree > D) {
        throw new Error(`reference: hidden degree ${degree} outside 0..${D}`);
      }
    }
  });
}

/** Boolean connectivity of one MADE, mask[out][in] = true where the weight exists. */
interface MadeMasks {
  /** hidden[l][j][m]: unit j of hidden layer l sees input (l = 0) or unit m of layer l - 1. */
  hidden: boolean[][][];
  /** output[i][m]: dimension i's shift and scale see unit m of the last hidden layer. */
  output: boolean[][];
}

function buildMasks(layer: RefMadeLayer): MadeMasks {
  const hidden: boolean[][][] = [];
  for (let l = 0; l < layer.hidden.length; l++) {
    const previousDegrees = l === 0 ? layer.inputDegrees : layer.hiddenDegrees[l - 1];
    hidden.push(layer.hiddenDegrees[l].map((unitDegree) => previousDegrees.map((inDegree) => unitDegree >= inDegree)));
  }
  const lastDegrees = layer.hiddenDegrees[layer.hidden.length - 1];
  const output = layer.inputDegrees.map((outDegree) => lastDegrees.map((unitDegree) => outDegree > unitDegree));
  return { hidden, output };
}

/** y = W x + b over the entries the mask allows; masked entries are skipped, never read. */
function maskedAffine(
  weight: ArrayLike<number>,
  bias: ArrayLike<number>,
  mask: boolean[][],
  input: ArrayLike<number>,
): Float64Array {
  const outSize = mask.length;
  const inSize = input.length;
  const result = new Float64Array(outSize);
  for (let o = 0; o < outSize; o++) {
    let sum = bias[o];
    for (let m = 0; m < inSize; m++) {
      if (mask[o][m]) sum += weight[o * inSize + m] * input[m];
    }
    result[o] = sum;
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// One MADE layer
// ---------------------------------------------------------------------------------------------

/** The MADE conditioner for ONE row u (length D): scale, logScale and shift of every dimension. */
export function refMadeConditioner(
  layer: RefMadeLayer,
  params: RefParams,
  k: number,
  u: ArrayLike<number>,
  context?: ArrayLike<number>,
): RefConditionerOutput {
  checkMadeLayer(layer);
  const D = layer.inputDegrees.length;
  if (u.length !== D) throw new Error(`reference: conditioner input has length ${u.length}, expected ${D}`);
  const masks = buildMasks(layer);

  const act = (values: Float64Array) => values.map((value) => activate(layer.activation, value));
  const hiddenLayer = (l: number, input: ArrayLike<number>): Float64Array => {
    const weight = getTensor(params, `layers.${k}.hidden.${l}.weight`, layer.hidden[l] * input.length);
    const bias = getTensor(params, `layers.${k}.hidden.${l}.bias`, layer.hidden[l]);
    const pre = maskedAffine(weight, bias, masks.hidden[l], input);
    if (l === 0 && layer.contextForm !== undefined) {
      if (context === undefined) throw new Error('reference: a conditional MADE needs a context row');
      const C = context.length;
      const cw = getTensor(params, `layers.${k}.context.weight`, layer.hidden[0] * C);
      const cb = getTensor(params, `layers.${k}.context.bias`, layer.hidden[0]);
      const all = layer.hidden.map(() => [] as boolean[][]);
      all[0] = Array.from({ length: layer.hidden[0] }, () => new Array<boolean>(C).fill(true));
      let term = maskedAffine(cw, cb, all[0], context);
      if (layer.contextForm === 'activated') term = act(term);
      return pre.map((v, j) => v + term[j]);
    }
    return pre;
  };
  const c = layer.softClamp ?? 0;
  const read = c > 0 ? Float64Array.from(u, (v) => v / Math.sqrt(1 + (v / c) ** 2)) : u;
  let activations: ArrayLike<number> = read;
  if (layer.residual) {
    let stream = hiddenLayer(0, read);
    for (let l = 1; l + 1 < layer.hidden.length; l += 2) {
      const inner = act(hiddenLayer(l, act(stream)));
      const update = hiddenLayer(l + 1, inner);
      stream = stream.map((h, j) => h + update[j]);
    }
    activations = stream;
  } else {
    for (let l = 0; l < layer.hidden.length; l++) activations = act(hiddenLayer(l, activations));
  }

  const lastWidth = layer.hidden[layer.hidden.length - 1];
  const shiftWeight = getTensor(params, `layers.${k}.shift.weight`, D * lastWidth);
  const shiftBias = getTensor(params, `layers.${k}.shift.bias`, D);
  const scaleWeight = getTensor(params, `layers.${k}.scale.weight`, D * lastWidth);
  const scaleBias = getTensor(params, `layers.${k}.scale.bias`, D);
  const preShift = maskedAffine(shiftWeight, shiftBias, masks.output, activations);
  const preScale = maskedAffine(scaleWeight, scaleBias, masks.output, activations);

  const scale = new Float64Array(D);
  const logScale = new Float64Array(D);
  const shift = new Float64Array(D);
  for (let i = 0; i < D; i++) {
    const p = parameterize(layer.scale, preScale[i], preShift[i]);
    scale[i] = p.scale;
    logScale[i] = p.logScale;
    shift[i] = p.shift;
  }
  return { scale, logScale, shift };
}

function checkBatch(data: ArrayLike<number>, n: number, D: number, what: string): void {
  if (!Number.isInteger(n) || n < 0) throw new Error(`reference: bad row count ${n}`);
  if (data.length !== n * D) throw new Error(`reference: ${what} has length ${data.length}, expected ${n * D}`);
}

function sumOf(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i];
  return sum;
}

/**
 * The parallel direction u -> v of one MADE layer: v_i = u_i * scale_i(u) + shift_i(u).
 * logDet[r] = log|det dv/du| = sum_i logScale_i(u).
 */
export function refMadeLayerParallel(
  layer: RefMadeLayer,
  params: RefParams,
  k: number,
  u: ArrayLike<number>,
  n: number,
  context?: RefContext,
  contextDim = 0,
): RefLayerResult {
  const D = layer.inputDegrees.length;
  checkBatch(u, n, D, 'input');
  const out = new Float64Array(n * D);
  const logDet = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    const row = Float64Array.from({ length: D }, (_, i) => u[r * D + i]);
    const { scale, logScale, shift } = refMadeConditioner(layer, params, k, row, contextRow(context, r, contextDim));
    for (let i = 0; i < D; i++) out[r * D + i] = row[i] * scale[i] + shift[i];
    logDet[r] = sumOf(logScale);
  }
  return { out, logDet };
}

/**
 * The sequential direction v -> u of one MADE layer (the inverse of the parallel direction),
 * by the D-pass method as nflows and zuko do it: start at u = 0 and D times set
 * u = (v - shift(u)) / scale(u). After pass p every dimension of degree <= p is exact, because
 * its scale and shift only see dimensions of lower degree, so after D passes all of u is exact.
 * logDet[r] = -sum_i logScale_i(u), the parallel direction's log-det with the sign flipped,
 * evaluated at the recovered u.
 */
export function refMadeLayerSequential(
  layer: RefMadeLayer,
  params: RefParams,
  k: number,
  v: ArrayLike<number>,
  n: number,
  context?: RefContext,
  contextDim = 0,
): RefLayerResult {
  const D = layer.inputDegrees.length;
  checkBatch(v, n, D, 'input');
  const out = new Float64Array(n * D);
  const logDet = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    const target = Float64Array.from({ length: D }, (_, i) => v[r * D + i]);
    let u = new Float64Array(D);
    const c = contextRow(context, r, contextDim);
    for (let pass = 0; pass < D; pass++) {
      const { scale, shift } = refMadeConditioner(layer, params, k, u, c);
      u = target.map((value, i) => (value - shift[i]) / scale[i]);
    }
    // One more network pass at the final u, so the log-det is plainly "at u" (it equals the
    // last pass's scales anyway: the last-updated dimension has the top degree and feeds nothing).
    const { logScale } = refMadeConditioner(layer, params, k, u, c);
    out.set(u, r * D);
    logDet[r] = -sumOf(logScale);
  }
  return { out, logDet };
}

// ---------------------------------------------------------------------------------------------
// Whole flows
// ---------------------------------------------------------------------------------------------

function checkConfig(cfg: RefConfig): void {
  const D = cfg.dim;
  if (!Number.isInteger(D) || D < 1) throw new Error(`reference: bad dim ${D}`);
  cfg.layers.forEach((layer, k) => {
    if (layer.type === 'affine') return;
    if (layer.type === 'permutation') {
      const sorted = [...layer.permutation].sort((p, q) => p - q);
      if (sorted.length !== D || sorted.some((value, index) => value !== index)) {
        throw new Error(`reference: layer ${k} permutation is not a permutation of 0..${D - 1}`);
      }
    } else {
      if (layer.inputDegrees.length !== D) throw new Error(`reference: layer ${k} inputDegrees must have length ${D}`);
      checkMadeLayer(layer);
    }
  });
}

/** b_i = a_{permutation[i]} for every row. */
function permuteForward(permutation: number[], a: Float64Array, n: number): Float64Array {
  const D = permutation.length;
  const b = new Float64Array(n * D);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < D; i++) b[r * D + i] = a[r * D + permutation[i]];
  }
  return b;
}

/** The inverse of permuteForward: a_{permutation[i]} = b_i. */
function permuteInverse(permutation: number[], b: Float64Array, n: number): Float64Array {
  const D = permutation.length;
  const a = new Float64Array(n * D);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < D; i++) a[r * D + permutation[i]] = b[r * D + i];
  }
  return a;
}

/** Affine layer k: toward the data b = loc + scale a, else a = (b - loc) / scale; log-det of that direction. */
function affineStep(params: RefParams, k: number, v: Float64Array, n: number, D: number, toData: boolean): { out: Float64Array; logDet: Float64Array } {
  const loc = getTensor(params, `layers.${k}.loc`, D);
  const scale = getTensor(params, `layers.${k}.scale`, D);
  let sumLog = 0;
  for (let i = 0; i < D; i++) sumLog += Math.log(Math.abs(scale[i]));
  const out = new Float64Array(n * D);
  for (let r = 0; r < n; r++) {
    for (let i = 0; i < D; i++) out[r * D + i] = toData ? loc[i] + scale[i] * v[r * D + i] : (v[r * D + i] - loc[i]) / scale[i];
  }
  return { out, logDet: new Float64Array(n).fill(toData ? sumLog : -sumLog) };
}

function addInto(total: Float64Array, part: Float64Array): void {
  for (let r = 0; r < total.length; r++) total[r] += part[r];
}

/**
 * Latent z -> data x through layers[0], layers[1], ...; logDet[r] = log|det dx/dz|.
 * IAF layers run their parallel direction (log-det +sum logScale at the latent side);
 * MAF layers run their sequential direction (log-det -sum logScale at the data side).
 */
export function refForward(cfg: RefConfig, params: RefParams, z: ArrayLike<number>, n: number, context?: RefContext): RefForwardResult {
  const C = cfg.contextDim ?? 0;
  checkConfig(cfg);
  checkBatch(z, n, cfg.dim, 'z');
  let value: Float64Array = Float64Array.from(z);
  const logDet = new Float64Array(n);
  cfg.layers.forEach((layer, k) => {
    if (layer.type === 'permutation') {
      value = permuteForward(layer.permutation, value, n);
      return;
    }
    if (layer.type === 'affine') {
      const step = affineStep(params, k, value, n, cfg.dim, true);
      value = step.out;
      addInto(logDet, step.logDet);
      return;
    }
    const step =
      layer.type === 'iaf'
        ? refMadeLayerParallel(layer, params, k, value, n, context, C)
        : refMadeLayerSequential(layer, params, k, value, n, context, C);
    value = step.out;
    addInto(logDet, step.logDet);
  });
  return { x: value, logDet };
}

/**
 * Data x -> latent z through layers[K-1], ..., layers[0]; logDet[r] = log|det dz/dx|.
 * IAF layers run their sequential direction, MAF layers their parallel direction.
 */
export function refInverse(cfg: RefConfig, params: RefParams, x: ArrayLike<number>, n: number, context?: RefContext): RefInverseResult {
  const C = cfg.contextDim ?? 0;
  checkConfig(cfg);
  checkBatch(x, n, cfg.dim, 'x');
  let value: Float64Array = Float64Array.from(x);
  const logDet = new Float64Array(n);
  for (let k = cfg.layers.length - 1; k >= 0; k--) {
    const layer = cfg.layers[k];
    if (layer.type === 'permutation') {
      value = permuteInverse(layer.permutation, value, n);
      continue;
    }
    if (layer.type === 'affine') {
      const step = affineStep(params, k, value, n, cfg.dim, false);
      value = step.out;
      addInto(logDet, step.logDet);
      continue;
    }
    const step =
      layer.type === 'iaf'
        ? refMadeLayerSequential(layer, params, k, value, n, context, C)
        : refMadeLayerParallel(layer, params, k, value, n, context, C);
    value = step.out;
    addInto(logDet, step.logDet);
  }
  return { z: value, logDet };
}

/** log p(x) = sum_i log N(z_i; 0, 1) + log|det dz/dx| with z the inverse of x. */
export function refLogProb(cfg: RefConfig, params: RefParams, x: ArrayLike<number>, n: number, context?: RefContext): Float64Array {
  const { z, logDet } = refInverse(cfg, params, x, n, context);
  const D = cfg.dim;
  const logProb = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    let baseLogDensity = 0;
    for (let i = 0; i < D; i++) {
      const zi = z[r * D + i];
      baseLogDensity += -0.5 * zi * zi - 0.5 * LOG_2PI;
    }
    logProb[r] = baseLogDensity + logDet[r];
  }
  return logProb;
}

// ---------------------------------------------------------------------------------------------
// Numerical checking
// ---------------------------------------------------------------------------------------------

/**
 * log|det J| of f at a point: J by central differences with step h, then an LU decomposition
 * with partial pivoting; log|det| = sum log|U_ii|. Returns -Infinity for a singular J.
 */
export function numericalLogDetJacobian(
  f: (v: Float64Array) => Float64Array,
  at: Float64Array,
  h = 1e-5,
): number {
  const D = at.length;
  // jacobian[i][j] = d f_i / d v_j
  const jacobian: number[][] = Array.from({ length: D }, () => new Array<number>(D).fill(0));
  for (let j = 0; j < D; j++) {
    const plus = Float64Array.from(at);
    const minus = Float64Array.from(at);
    plus[j] += h;
    minus[j] -= h;
    const fPlus = f(plus);
    const fMinus = f(minus);
    if (fPlus.length !== D || fMinus.length !== D) throw new Error('reference: f must map R^D to R^D');
    for (let i = 0; i < D; i++) jacobian[i][j] = (fPlus[i] - fMinus[i]) / (2 * h);
  }

  // In-place Gaussian elimination with partial pivoting (row swaps only flip the sign of det,
  // which the absolute value discards).
  let logAbsDet = 0;
  for (let col = 0; col < D; col++) {
    let pivotRow = col;
    for (let row = col + 1; row < D; row++) {
      if (Math.abs(jacobian[row][col]) > Math.abs(jacobian[pivotRow][col])) pivotRow = row;
    }
    const pivot = jacobian[pivotRow][col];
    if (pivot === 0) return -Infinity;
    if (pivotRow !== col) [jacobian[pivotRow], jacobian[col]] = [jacobian[col], jacobian[pivotRow]];
    logAbsDet += Math.log(Math.abs(pivot));
    for (let row = col + 1; row < D; row++) {
      const factor = jacobian[row][col] / pivot;
      if (factor === 0) continue;
      for (let c = col; c < D; c++) jacobian[row][c] -= factor * jacobian[col][c];
    }
  }
  return logAbsDet;
}

// ---------------------------------------------------------------------------------------------
// Building test models
// ---------------------------------------------------------------------------------------------

/** Input degrees in natural order: [1, 2, ..., D]. */
export function naturalDegrees(D: number): number[] {
  return Array.from({ length: D }, (_, i) => i + 1);
}

/** The usual MADE rule per hidden layer: degree_j = (j mod max(1, D - 1)) + 1. */
export function defaultHiddenDegrees(D: number, hidden: number[]): number[][] {
  const period = Math.max(1, D - 1);
  return hidden.map((width) => Array.from({ length: width }, (_, j) => (j % period) + 1));
}

/** mulberry32: a tiny seeded 32-bit PRNG, uniform in [0, 1). */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Standard normal samples by Box-Muller over mulberry32. */
function normalGenerator(seed: number): () => number {
  const uniform = mulberry32(seed);
  return () => {
    const u1 = 1 - uniform(); // in (0, 1], so the log is finite
    const u2 = uniform();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  };
}

/**
 * Random parameters for every MADE layer of cfg, named and shaped as the library expects.
 * Every entry is filled, masked ones included, so tests also check that masked entries are
 * ignored. Hidden weights are N(0, 1) * 3 * scale / sqrt(fan_in) (1.5 / sqrt(fan_in) at the
 * default scale 0.5: far from the identity); the shift and scale heads get half that gain,
 * because with unbounded scales (softplus, ELU) stacked layers otherwise compound into values
 * of 1e6 and ill-conditioned round trips. Biases are N(0, 1) * scale.
 */
export function randomParams(cfg: RefConfig, seed: number, scale = 0.5): Record<string, Float64Array> {
  const normal = normalGenerator(seed);
  const params: Record<string, Float64Array> = {};
  const HIDDEN_GAIN = 3;
  const HEAD_GAIN = 1.5;
  const weightMatrix = (outSize: number, inSize: number, gain: number): Float64Array =>
    Float64Array.from({ length: outSize * inSize }, () => (normal() * gain * scale) / Math.sqrt(inSize));
  const biasVector = (size: number): Float64Array => Float64Array.from({ length: size }, () => normal() * scale);

  cfg.layers.forEach((layer, k) => {
    if (layer.type === 'permutation') return;
    if (layer.type === 'affine') {
      // Scales of both signs, far from 1, so a sign or direction mistake shows.
      params[`layers.${k}.loc`] = biasVector(cfg.dim);
      params[`layers.${k}.scale`] = Float64Array.from({ length: cfg.dim }, (_, i) => (i % 2 === 0 ? 1 : -1) * Math.exp(0.8 * normal()));
      return;
    }
    let inSize = cfg.dim;
    layer.hidden.forEach((width, l) => {
      params[`layers.${k}.hidden.${l}.weight`] = weightMatrix(width, inSize, HIDDEN_GAIN);
      params[`layers.${k}.hidden.${l}.bias`] = biasVector(width);
      inSize = width;
    });
    params[`layers.${k}.shift.weight`] = weightMatrix(cfg.dim, inSize, HEAD_GAIN);
    params[`layers.${k}.shift.bias`] = biasVector(cfg.dim);
    const C = cfg.contextDim ?? 0;
    if (C > 0) {
      params[`layers.${k}.context.weight`] = weightMatrix(layer.hidden[0], C, HIDDEN_GAIN);
      params[`layers.${k}.context.bias`] = biasVector(layer.hidden[0]);
    }
    params[`layers.${k}.scale.weight`] = weightMatrix(cfg.dim, inSize, HEAD_GAIN);
    params[`layers.${k}.scale.bias`] = biasVector(cfg.dim);
  });
  return params;
}
