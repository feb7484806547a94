// Layer builders (iaf, maf, reverse, permute), the flow's config as stored in
// the model file, parameter names and shapes, and the initialisation.
import {
  checkEnum,
  checkInteger,
  checkOptions,
  checkPermutation,
  checkSeed,
  invalidRange,
  invalidType,
  isPlainObject,
} from './validation';

export type Activation = 'relu' | 'tanh' | 'elu';
/**
 * How a conditional MADE's context c enters its first hidden layer: 'linear' adds Wc c + bc to the
 * pre-activation (zuko: c as extra input columns); 'activated' adds act(Wc c + bc) (nflows'
 * context_layer, as sbi builds it).
 */
export type ContextForm = 'linear' | 'activated';
export const CONTEXT_FORMS: readonly ContextForm[] = ['linear', 'activated'];
/** The widest context a flow takes. */
export const MAX_CONTEXT_DIM = 65536;
export type ScaleKind = 'softplus' | 'exp' | 'gated';
export const ACTIVATIONS: readonly Activation[] = ['relu', 'tanh', 'elu'];
export const SCALE_KINDS: readonly ScaleKind[] = ['softplus', 'exp', 'gated'];
export const FORMAT_VERSION = 1;
/** Bounds that keep a config (and a model file that claims one) within reason. */
export const MAX_DIM = 65536;
export const MAX_HIDDEN_WIDTH = 65536;
export const MAX_HIDDEN_LAYERS = 64;
export const MAX_LAYERS = 4096;
/** 2^28 float32 parameters: 1 GiB of weights. */
export const MAX_PARAMETERS = 2 ** 28;
/**
 * Integers the config itself holds: input degrees, hidden degrees and permutation entries (dim per
 * permutation, a reversal included). The config is JSON in the model file's header and number[]s
 * in memory, so it needs its own bound: 2^20 integers are at most 7.4 MB of header JSON (values
 * up to 65536: at most 6 bytes each with the comma) and take a few seconds to create, save and
 * load. Every flow the parameter bound leaves room for at dim 65536 fits (with 15 permutations
 * beside a MADE layer), as do 1000 layers of dim 1024. Before this bound permutations counted
 * toward nothing, and 4096 reversals of dim 65536 (2^28 entries) ran out of heap.
 */
export const MAX_CONFIG_INTEGERS = 2 ** 20;

/** A MADE layer as stored in the model file. Degrees say which inputs each unit sees. */
export interface MadeLayerConfig {
  type: 'iaf' | 'maf';
  hidden: number[];
  activation: Activation;
  scale: ScaleKind;
  /** Degree of input dimension i (a permutation of 1..dim): its place in the autoregressive order. */
  inputDegrees: number[];
  /** Degree of each unit of each hidden layer, in 0..dim. */
  hiddenDegrees: number[][];
  /**
   * Residual MADE (nflows' residual blocks): hidden layer 0 is linear with no activation after it,
   * then each pair of hidden layers is a block h += W2 act(W1 act(h)), and the heads read h.
   * Absent means false.
   */
  residual?: boolean;
  /**
   * The conditioner reads u / sqrt(1 + (u / softClamp)^2) instead of u: u itself near 0, never
   * beyond softClamp (docs/DESIGN.md). A sample far out in an earlier layer's tail then cannot make
   * this layer's shift and scale extrapolate, which is what made ReLU flows' samples run away.
   * Absent or 0: off (files from before it, and imported PyTorch models).
   */
  softClamp?: number;
  /** Conditional flows only (contextDim > 0): how the context enters hidden layer 0 (tensors `layers.k.context.*`). */
  contextForm?: ContextForm;
}

/** Data-side b[i] = latent-side a[permutation[i]]. */
export interface PermutationLayerConfig {
  type: 'permutation';
  permutation: number[];
}

/**
 * An elementwise affine layer, data-side b[i] = loc[i] + scale[i] * a[i] (log-det sum log|scale|):
 * standardisation inside the model. loc and scale are tensors (`layers.k.loc`, `layers.k.scale`,
 * [dim] each); a trainable one is optimised by training (through log|scale|: the sign is kept),
 * a fixed one never changes.
 */
export interface AffineLayerConfig {
  type: 'affine';
  trainable: boolean;
}

export type LayerConfig = MadeLayerConfig | PermutationLayerConfig | AffineLayerConfig;

/** Whether a layer is a MADE layer (iaf or maf). */
export function isMade(layer: LayerConfig): layer is MadeLayerConfig {
  return layer.type === 'iaf' || layer.type === 'maf';
}

/** Everything but the weights. Layers are listed in sampling order: layers[0] acts on the latent z. */
export interface FlowConfig {
  formatVersion: number;
  dim: number;
  contextDim: number;
  layers: LayerConfig[];
}

export interface MadeOptions {
  /** Width of each hidden layer (one or more); a number means one layer. Default [64, 64]. */
  hidden?: number | number[];
  /** Hidden-layer nonlinearity. Default 'relu'. */
  activation?: Activation;
  /** Scale parameterization (docs/DESIGN.md). Default 'softplus'. */
  scale?: ScaleKind;
  /**
   * Autoregressive order: 'natural' (dimension 0 first) or `order[i]` = the rank (0-based) of
   * dimension i, as zuko's `order`. Default 'natural'.
   */
  order?: 'natural' | number[];
  /** Explicit hidden-unit degrees (advanced: reproduces a MADE built elsewhere). */
  hiddenDegrees?: number[][];
  /**
   * Residual blocks as nflows builds them: `hidden` is then [w, w, w, ...] of odd length 1 + 2 * blocks,
   * one width throughout. Default false.
   */
  residual?: boolean;
  /**
   * Soft clamp of the conditioner's inputs: it reads u / sqrt(1 + (u / c)^2), bounded by c, so
   * samples in the far tail of earlier layers do not run away (see MadeLayerConfig.softClamp).
   * 0 turns it off (as PyTorch's MADEs, and iaflow before it). Default DEFAULT_SOFT_CLAMP (4).
   */
  softClamp?: number;
  /**
   * In a conditional flow (createFlow's `context`), how the context enters the first hidden
   * layer: 'linear' (default; zuko) or 'activated' (nflows, sbi). See ContextForm.
   */
  contextForm?: ContextForm;
}

/**
 * The default soft clamp of a MADE conditioner's inputs. Measured 2026-12-07 (2-vCPU Zen 5) on a
 * 2-D "map" with far islands, 5-layer ReLU MAFs [64, 64], standardised, 3 seeds, 10^6 samples:
 * without the clamp up to 22 samples lay beyond 20 sd (the farthest at 47 sd); with c = 8 one
 * seed of 3 still had 44; with c = 2, 3 or 4 none lay beyond 20 sd (farthest 7 to 17.6 sd), at
 * the same validation NLL within the seeds' spread (6.77 vs 6.74 nats), and on two moons the
 * same test log-likelihood (-0.324 vs -0.332, 2 seeds). At |u| = 2 the conditioner reads 1.79.
 */
export const DEFAULT_SOFT_CLAMP = 4;

const MADE_OPTION_KEYS = ['hidden', 'activation', 'scale', 'order', 'hiddenDegrees', 'residual', 'softClamp', 'contextForm'] as const;

/** A layer before the flow's dimension is known; createFlow resolves it. */
export interface LayerDescriptor {
  readonly kind: 'iaf' | 'maf' | 'reverse' | 'permute' | 'affine';
  readonly options: Readonly<Record<string, unknown>>;
  /** @internal contextDim: the flow's context width (0: unconditional). */
  resolve(dim: number, position: string, contextDim?: number): LayerConfig;
  /** @internal Tensors the layer starts with instead of initialParameters' (by name suffix: 'loc', 'scale'). */
  initialTensors?(dim: number, position: string): Record<string, Float32Array>;
}

function madeDescriptor(type: 'iaf' | 'maf', options: unknown): LayerDescriptor {
  // A private copy: changing the caller's object after the call must not change the layer.
  const given = checkOptions(`${type}() options`, options, MADE_OPTION_KEYS);
  const copyArray = (v: unknown) => (Array.isArray(v) ? v.map((e: unknown) => (Array.isArray(e) ? [...e] : e)) : v);
  const opts: Record<string, unknown> = { ...given, order: copyArray(given.order), hiddenDegrees: copyArray(given.hiddenDegrees) };
  // Check what can be checked without the dimension now, so the error points at the builder call.
  // Only a missing option takes the default (as for order and hiddenDegrees): null is rejected.
  const hidden = checkHidden(`${type}().hidden`, opts.hidden === undefined ? [64, 64] : opts.hidden);
  const activation = checkEnum(`${type}().activation`, opts.activation === undefined ? 'relu' : opts.activation, ACTIVATIONS);
  const scale = checkEnum(`${type}().scale`, opts.scale === undefined ? 'softplus' : opts.scale, SCALE_KINDS);
  const residual = opts.residual === undefined ? false : checkBoolean(`${type}().residual`, opts.residual);
  if (residual) checkResidualWidths(`${type}().hidden`, hidden);
  const softClamp = opts.softClamp === undefined ? DEFAULT_SOFT_CLAMP : checkSoftClamp(`${type}().softClamp`, opts.softClamp);
  const contextForm = opts.contextForm === undefined ? 'linear' : checkEnum(`${type}().contextForm`, opts.contextForm, CONTEXT_FORMS);
  return {
    kind: type,
    options: Object.freeze({ ...opts }),
    // The degrees are built when checkFlowConfig reads them, after it has checked the flow's size:
    // an oversized flow is refused before anything of its size is allocated.
    resolve(dim: number, position: string, contextDim = 0): MadeLayerConfig {
      if (opts.contextForm !== undefined && contextDim === 0) {
        throw new TypeError(`${position}.contextForm: the flow has no context (createFlow's context option)`);
      }
      return {
        type,
        hidden: [...hidden],
        activation,
        scale,
        get inputDegrees() {
          return opts.order === undefined || opts.order === 'natural'
            ? naturalDegrees(dim)
            : checkPermutation(`${position}.order`, opts.order, dim).map((rank) => rank + 1);
        },
        get hiddenDegrees() {
          const degrees =
            opts.hiddenDegrees === undefined
              ? hidden.map((width) => (contextDim > 0 ? conditionalHiddenDegrees(dim, width) : defaultHiddenDegrees(dim, width)))
              : checkHiddenDegrees(`${position}.hiddenDegrees`, opts.hiddenDegrees, hidden, dim);
          if (residual) checkResidualDegrees(`${position}.hiddenDegrees`, degrees);
          return degrees;
        },
        residual,
        ...(softClamp > 0 ? { softClamp } : {}),
        ...(contextDim > 0 ? { contextForm } : {}),
      };
    },
  };
}

function checkSoftClamp(name: string, value: unknown): number {
  // As float32 (the core's type): finite, and a positive one with a finite reciprocal.
  const single = typeof value === 'number' ? Math.fround(value) : NaN;
  if (typeof value !== 'number' || !(single >= 0) || !Number.isFinite(single) || (single > 0 && !Number.isFinite(1 / single)) || (value > 0 && single === 0)) {
    throw invalidType(name, 'a finite number >= 0 (0: off)', value);
  }
  return single;
}

/** An inverse autoregressive layer: sampling is one parallel pass; density of new data is sequential. */
export function iaf(options?: MadeOptions): LayerDescriptor {
  return madeDescriptor('iaf', options);
}

/** A masked autoregressive layer: density is one parallel pass; sampling is sequential. */
export function maf(options?: MadeOptions): LayerDescriptor {
  return madeDescriptor('maf', options);
}

/**
 * Reverses the order of the dimensions (log-det 0). Until checkFlowConfig reads it, a reversal is
 * only its flag (the getter); the config and the model file then hold it as the permutation
 * [dim-1, ..., 0], the form every reader of the format knows.
 */
export function reverse(): LayerDescriptor {
  return {
    kind: 'reverse',
    options: Object.freeze({}),
    resolve: (dim) => ({
      type: 'permutation',
      get permutation() {
        return reversal(dim);
      },
    }),
  };
}

export function reversal(dim: number): number[] {
  const perm = new Array<number>(dim);
  for (let i = 0; i < dim; i++) perm[i] = dim - 1 - i;
  return perm;
}

/** A fixed permutation: an explicit one (data-side b[i] = a[perm[i]]) or a random one from `{ seed }`. */
export function permute(permutation: number[] | { seed: number }): LayerDescriptor {
  if (isPlainObject(permutation)) {
    const opts = checkOptions('permute() options', permutation, ['seed']);
    const seed = checkSeed('permute().seed', opts.seed);
    return {
      kind: 'permute',
      options: Object.freeze({ seed }),
      resolve: (dim) => ({
        type: 'permutation',
        get permutation() {
          return randomPermutation(dim, new Random(seed));
        },
      }),
    };
  }
  if (!Array.isArray(permutation)) {
    throw invalidType('permute()', 'a permutation array or { seed }', permutation);
  }
  const given = [...permutation];
  return {
    kind: 'permute',
    options: Object.freeze({ permutation: given }),
    resolve: (dim, position) => ({
      type: 'permutation',
      get permutation() {
        return checkPermutation(position, given, dim);
      },
    }),
  };
}

export interface AffineOptions {
  /** Added after scaling: one number for every dimension, or dim of them. Default 0. */
  loc?: number | ArrayLike<number>;
  /** Multiplies each dimension: finite and nonzero; one number, or dim of them. Default 1. */
  scale?: number | ArrayLike<number>;
  /** Whether training optimises loc and scale (scale through log|scale|, so its sign stays). Default false. */
  trainable?: boolean;
}

/**
 * An elementwise affine layer, data-side b = loc + scale * a (log-det sum log|scale|), as zuko's and
 * nflows' affine transforms. Put last (the data end), it is standardisation inside the model:
 * `affine({ loc: means, scale: sds })` makes the flow's inner layers see unit-scale data while
 * sample and logProb work in raw units. `fit(..., { standardize: true })` adds one for you.
 */
export function affine(options?: AffineOptions): LayerDescriptor {
  const opts = checkOptions('affine() options', options, ['loc', 'scale', 'trainable']);
  const trainable = opts.trainable === undefined ? false : checkBoolean('affine().trainable', opts.trainable);
  const loc = opts.loc === undefined ? 0 : checkAffineValues('affine().loc', opts.loc, false);
  const scale = opts.scale === undefined ? 1 : checkAffineValues('affine().scale', opts.scale, true);
  const expand = (name: string, values: number | number[], dim: number): Float32Array => {
    if (typeof values === 'number') return new Float32Array(dim).fill(values);
    if (values.length !== dim) throw invalidRange(`${name}.length`, `${dim} (the flow's dim) or one number`, values.length);
    return Float32Array.from(values);
  };
  return {
    kind: 'affine',
    options: Object.freeze({ loc, scale, trainable }),
    resolve: () => ({ type: 'affine', trainable }),
    initialTensors: (dim, position) => ({ loc: expand(`${position}.loc`, loc, dim), scale: expand(`${position}.scale`, scale, dim) }),
  };
}

/** One finite number or an array of them (as float32; nonzero for a scale). */
export function checkAffineValues(name: string, value: unknown, nonzero: boolean): number | number[] {
  const expected = nonzero ? 'a finite nonzero number' : 'a finite number';
  const check = (at: string, v: unknown): number => {
    if (typeof v !== 'number') throw invalidType(at, expected, v);
    if (!Number.isFinite(v) || !Number.isFinite(Math.fround(v)) || (nonzero && Math.fround(v) === 0)) throw invalidRange(at, `${expected} (in float32)`, v);
    return v;
  };
  if (typeof value === 'number') return check(name, value);
  const isArrayLike = Array.isArray(value) || ArrayBuffer.isView(value);
  if (!isArrayLike || value instanceof DataView || (value as ArrayLike<unknown>).length > MAX_DIM) {
    throw invalidType(name, `${expected}, or an array of at most ${MAX_DIM} of them`, value);
  }
  return Array.from(value as ArrayLike<unknown>, (v, i) => check(`${name}[${i}]`, v));
}

export function naturalDegrees(dim: number): number[] {
  return Array.from({ length: dim }, (_, i) => i + 1);
}

/**
 * A conditional MADE's rule (zuko's): unit j gets degree j mod dim, 0..dim-1, so units of degree
 * 0 see the context alone and the first dimension's shift and scale depend on it.
 */
export function conditionalHiddenDegrees(dim: number, width: number): number[] {
  return Array.from({ length: width }, (_, j) => j % dim);
}

/** MADE's rule (as nflows): unit j of a hidden layer gets degree (j mod max(1, dim-1)) + 1. */
export function defaultHiddenDegrees(dim: number, width: number): number[] {
  const span = Math.max(1, dim - 1);
  return Array.from({ length: width }, (_, j) => (j % span) + 1);
}

function checkHidden(name: string, value: unknown): number[] {
  const list = typeof value === 'number' ? [value] : value;
  if (!Array.isArray(list) || list.length === 0) {
    throw invalidType(name, 'a positive integer or a non-empty array of them', value);
  }
  if (list.length > MAX_HIDDEN_LAYERS) throw invalidRange(`${name}.length`, `at most ${MAX_HIDDEN_LAYERS}`, list.length);
  return list.map((w, l) => checkInteger(`${name}[${l}]`, w, 1, MAX_HIDDEN_WIDTH));
}

function checkHiddenDegrees(name: string, value: unknown, hidden: number[], dim: number): number[][] {
  if (!Array.isArray(value) || value.length !== hidden.length) {
    throw invalidType(name, `an array of ${hidden.length} degree arrays (one per hidden layer)`, value);
  }
  return value.map((layer: unknown, l: number) => {
    if (!Array.isArray(layer) || layer.length !== hidden[l]) {
      throw invalidType(`${name}[${l}]`, `an array of ${hidden[l]} integers`, layer);
    }
    // A plain loop that builds the element's name only for an error: a legal big flow has
    // millions of degrees, and a template string per element cost more than the check.
    const degrees = new Array<number>(layer.length);
    for (let j = 0; j < layer.length; j++) {
      const d: unknown = layer[j];
      if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d > dim) checkInteger(`${name}[${l}][${j}]`, d, 0, dim);
      degrees[j] = d as number;
    }
    return degrees;
  });
}

function checkBoolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw invalidType(name, 'true or false', value);
  return value;
}

function checkResidualWidths(name: string, hidden: number[]): void {
  if (hidden.length < 3 || hidden.length % 2 === 0 || hidden.some((w) => w !== hidden[0])) {
    throw invalidRange(name, 'one width repeated 1 + 2 * blocks times (e.g. [64, 64, 64]) for a residual MADE', hidden);
  }
}

function checkResidualDegrees(name: string, degrees: number[][]): void {
  degrees.forEach((layer, l) => {
    if (layer.some((d, j) => d !== degrees[0][j])) {
      throw invalidRange(`${name}[${l}]`, 'the same degrees as hidden layer 0 (a residual block keeps its degrees)', layer);
    }
  });
}

/** Validates a whole config (from createFlow's output or from a model file). */
export function checkFlowConfig(value: unknown, source: string): FlowConfig {
  if (!isPlainObject(value)) throw invalidType(source, 'a flow config object', value);
  const version = checkInteger(`${source}.formatVersion`, value.formatVersion, FORMAT_VERSION, FORMAT_VERSION);
  const dim = checkInteger(`${source}.dim`, value.dim, 1, MAX_DIM);
  const contextDim = checkInteger(`${source}.contextDim`, value.contextDim ?? 0, 0, MAX_CONTEXT_DIM);
  if (!Array.isArray(value.layers) || value.layers.length > MAX_LAYERS) {
    throw invalidType(`${source}.layers`, `an array of at most ${MAX_LAYERS} layers`, value.layers);
  }
  const layerList = value.layers as unknown[];
  // First the size, from each layer's type and widths alone: nothing of the flow's size (degrees,
  // permutations) is read or built for a flow that is refused.
  // A plain loop, not map: map would skip (and keep) the holes of a sparse array.
  const kinds: { layer: Record<string, unknown>; type: LayerConfig['type']; hidden: number[] | null }[] = [];
  for (let k = 0; k < layerList.length; k++) {
    const at = `${source}.layers[${k}]`;
    const layer = layerList[k];
    if (!isPlainObject(layer)) throw invalidType(at, 'a layer object', layer);
    const type = checkEnum(`${at}.type`, layer.type, ['iaf', 'maf', 'permutation', 'affine'] as const);
    const made = type === 'iaf' || type === 'maf';
    kinds.push({ layer, type, hidden: made ? checkHidden(`${at}.hidden`, layer.hidden) : null });
  }
  checkFlowSize(source, value.layers, dim, kinds, contextDim);
  const layers = kinds.map(({ layer, type, hidden }, k: number): LayerConfig => {
    const at = `${source}.layers[${k}]`;
    if (type === 'affine') {
      checkOptions(at, layer, ['type', 'trainable']);
      return { type: 'affine', trainable: layer.trainable === undefined ? false : checkBoolean(`${at}.trainable`, layer.trainable) };
    }
    if (type === 'permutation' || hidden === null) {
      return { type: 'permutation', permutation: checkPermutation(`${at}.permutation`, layer.permutation, dim) };
    }
    const residual = layer.residual === undefined ? false : checkBoolean(`${at}.residual`, layer.residual);
    const hiddenDegrees = checkHiddenDegrees(`${at}.hiddenDegrees`, layer.hiddenDegrees, hidden, dim);
    if (residual) {
      checkResidualWidths(`${at}.hidden`, hidden);
      checkResidualDegrees(`${at}.hiddenDegrees`, hiddenDegrees);
    }
    const softClamp = layer.softClamp === undefined ? 0 : checkSoftClamp(`${at}.softClamp`, layer.softClamp);
    if (contextDim === 0 && layer.contextForm !== undefined) throw invalidType(`${at}.contextForm`, 'nothing (the flow has no context)', layer.contextForm);
    const contextForm = contextDim > 0 ? checkEnum(`${at}.contextForm`, layer.contextForm, CONTEXT_FORMS) : undefined;
    return {
      type: type as MadeLayerConfig['type'],
      hidden,
      activation: checkEnum(`${at}.activation`, layer.activation, ACTIVATIONS),
      scale: checkEnum(`${at}.scale`, layer.scale, SCALE_KINDS),
      inputDegrees: checkPermutation(`${at}.inputDegrees`, layer.inputDegrees, dim, 1),
      hiddenDegrees,
      residual,
      ...(softClamp > 0 ? { softClamp } : {}),
      ...(contextForm ? { contextForm } : {}),
    };
  });
  return { formatVersion: version, dim, contextDim, layers };
}

/**
 * The flow's two size bounds: its parameters (MAX_PARAMETERS) and the integers its config holds
 * (MAX_CONFIG_INTEGERS: degrees, and dim per permutation). `hidden` is null but for MADE layers.
 */
function checkFlowSize(source: string, layers: unknown, dim: number, kinds: { type: LayerConfig['type']; hidden: number[] | null }[], contextDim: number): void {
  let parameters = 0;
  let integers = 0;
  for (const { type, hidden } of kinds) {
    if (type === 'affine') {
      parameters += 2 * dim;
      continue;
    }
    integers += dim;
    if (hidden === null) continue;
    parameters += hidden[0] * (contextDim + 1) * (contextDim > 0 ? 1 : 0);
    let fanIn = dim;
    for (const width of hidden) {
      parameters += width * (fanIn + 1);
      integers += width;
      fanIn = width;
    }
    parameters += 2 * dim * (fanIn + 1);
  }
  if (parameters > MAX_PARAMETERS) {
    throw invalidRange(`${source}.layers`, `a flow of at most ${MAX_PARAMETERS} parameters (these layers have ${parameters})`, layers);
  }
  if (integers > MAX_CONFIG_INTEGERS) {
    throw invalidRange(
      `${source}.layers`,
      `a flow whose config holds at most ${MAX_CONFIG_INTEGERS} integers (dim per permutation, dim + hidden widths per MADE layer; these layers have ${integers})`,
      layers,
    );
  }
}

/** The names of one Linear's tensors. */
export interface LinearNames {
  weight: string;
  bias: string;
}

/**
 * The model file's tensor names of MADE layer k (k counts permutations too): the one place they
 * are spelled. Hidden layer l is [width_l, width_{l-1}] (width_{-1} = dim); the shift and scale
 * heads are [dim, width_last], rows by original dimension.
 */
export function madeTensorNames(k: number, hiddenLayers: number): { hidden: LinearNames[]; shift: LinearNames; scale: LinearNames; context: LinearNames } {
  const linear = (prefix: string): LinearNames => ({ weight: `${prefix}.weight`, bias: `${prefix}.bias` });
  return {
    hidden: Array.from({ length: hiddenLayers }, (_, l) => linear(`layers.${k}.hidden.${l}`)),
    shift: linear(`layers.${k}.shift`),
    scale: linear(`layers.${k}.scale`),
    // conditional flows: [width_0, contextDim] and [width_0]
    context: linear(`layers.${k}.context`),
  };
}

/** The model file's tensor names of affine layer k: [dim] each. */
export function affineTensorNames(k: number): { loc: string; scale: string } {
  return { loc: `layers.${k}.loc`, scale: `layers.${k}.scale` };
}

/** Parameter names and [out, in] / [out] shapes, in a stable order. */
export function parameterShapes(config: FlowConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  config.layers.forEach((layer, k) => {
    if (layer.type === 'affine') {
      const names = affineTensorNames(k);
      shapes.set(names.loc, [config.dim]);
      shapes.set(names.scale, [config.dim]);
      return;
    }
    if (layer.type === 'permutation') return;
    const names = madeTensorNames(k, layer.hidden.length);
    let fanIn = config.dim;
    layer.hidden.forEach((width, l) => {
      shapes.set(names.hidden[l].weight, [width, fanIn]);
      shapes.set(names.hidden[l].bias, [width]);
      fanIn = width;
    });
    for (const head of [names.shift, names.scale]) {
      shapes.set(head.weight, [config.dim, fanIn]);
      shapes.set(head.bias, [config.dim]);
    }
    if (config.contextDim > 0) {
      shapes.set(names.context.weight, [layer.hidden[0], config.contextDim]);
      shapes.set(names.context.bias, [layer.hidden[0]]);
    }
  });
  return shapes;
}

/** The scale head's bias that makes a fresh layer's scale exactly 1 (near 1 for 'gated'). */
export function identityScaleBias(scale: ScaleKind): number {
  // softplus(b) + 1e-3 = 1  =>  b = log(expm1(0.999)); exp: exp(0) = 1; gated: sigmoid(0 + 2) ~ 0.88,
  // Kingma et al.'s advice to start the gate "sufficiently positive".
  return scale === 'softplus' ? Math.log(Math.expm1(0.999)) : 0;
}

/**
 * Initial parameters, after PyTorch's Linear (which zuko and nflows use): hidden weights and biases
 * uniform in +-1/sqrt(fanIn), fanIn being the layer's input width. The shift and scale heads get
 * 0.3 of that bound, plus the scale bias that makes the scale 1 (sigmoid(2) for 'gated'), so a
 * fresh flow is near the identity while every head weight already gets a useful gradient. In a
 * residual MADE each block's second layer starts at 0.01 of the bound, so blocks start near the
 * identity. Masked-out entries are stored as 0. On two moons this trains markedly better than
 * He initialisation over the masked fan-in with near-zero heads (bench/quality.ts).
 */
export function initialParameters(config: FlowConfig, seed: number): Map<string, Float32Array> {
  const random = new Random(seed);
  const uniform = (bound: number) => (2 * random.next() - 1) * bound;
  const params = new Map<string, Float32Array>();
  config.layers.forEach((layer, k) => {
    if (layer.type === 'affine') {
      // The identity until set (affine() gives its own loc and scale; see createFlow).
      const names = affineTensorNames(k);
      params.set(names.loc, new Float32Array(config.dim));
      params.set(names.scale, new Float32Array(config.dim).fill(1));
      return;
    }
    if (layer.type === 'permutation') return;
    const names = madeTensorNames(k, layer.hidden.length);
    let inDegrees = layer.inputDegrees;
    layer.hidden.forEach((width, l) => {
      const degrees = layer.hiddenDegrees[l];
      const fanIn = inDegrees.length;
      const blockOutput = layer.residual === true && l > 0 && l % 2 === 0;
      const bound = (blockOutput ? 0.01 : 1) / Math.sqrt(fanIn);
      const weight = new Float32Array(width * fanIn);
      for (let j = 0; j < width; j++) {
        for (let i = 0; i < fanIn; i++) if (inDegrees[i] <= degrees[j]) weight[j * fanIn + i] = uniform(bound);
      }
      params.set(names.hidden[l].weight, weight);
      params.set(names.hidden[l].bias, Float32Array.from({ length: width }, () => uniform(bound)));
      inDegrees = degrees;
    });
    const fanIn = inDegrees.length;
    const bound = 0.3 / Math.sqrt(fanIn);
    for (const head of ['shift', 'scale'] as const) {
      const weight = new Float32Array(config.dim * fanIn);
      for (let i = 0; i < config.dim; i++) {
        for (let m = 0; m < fanIn; m++) if (inDegrees[m] < layer.inputDegrees[i]) weight[i * fanIn + m] = uniform(bound);
      }
      const offset = head === 'scale' ? identityScaleBias(layer.scale) : 0;
      params.set(names[head].weight, weight);
      params.set(names[head].bias, Float32Array.from({ length: config.dim }, () => offset + uniform(bound)));
    }
    if (config.contextDim > 0) {
      // As PyTorch's Linear over the context; the 'linear' form's bias adds to hidden layer 0's, so it starts at 0.
      const width = layer.hidden[0];
      const contextBound = 1 / Math.sqrt(config.contextDim);
      params.set(names.context.weight, Float32Array.from({ length: width * config.contextDim }, () => uniform(contextBound)));
      params.set(names.context.bias, Float32Array.from({ length: width }, () => (layer.contextForm === 'activated' ? uniform(contextBound) : 0)));
    }
  });
  return params;
}

export function randomPermutation(dim: number, random: Random): number[] {
  const perm = new Array<number>(dim);
  for (let i = 0; i < dim; i++) perm[i] = i;
  for (let i = dim - 1; i > 0; i--) {
    const j = Math.floor(random.next() * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/**
 * xoshiro128** seeded through splitmix32 from both halves of a 53-bit seed: the
 * generator for initialisation and random permutations (sampling uses the
 * native Philox stream).
 */
export class Random {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(seed: number) {
    let state = (seed >>> 0) ^ Math.imul(Math.floor(seed / 0x100000000) >>> 0, 0x9e3779b9);
    const splitmix = (): number => {
      state = (state + 0x9e3779b9) | 0;
      let z = state;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s0 = splitmix();
    this.s1 = splitmix();
    this.s2 = splitmix();
    this.s3 = splitmix();
  }

  /** Uniform in [0, 1). */
  next(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result / 0x100000000;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
