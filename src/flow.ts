// The Flow: composes layers, owns the parameters (named Float32Arrays, as in the
// model file) and runs the whole chain of layers in one native call.
import {
  FlowConfig,
  FORMAT_VERSION,
  LayerDescriptor,
  MadeOptions,
  MAX_DIM,
  MAX_LAYERS,
  checkFlowConfig,
  iaf as iafLayer,
  initialParameters,
  maf as mafLayer,
  parameterShapes,
  reverse,
} from './layers';
import { native, NativeFlowInstance, NativeFlowSpec, NativeLayerSpec } from './native';
import {
  allocateFloats,
  checkInteger,
  checkOptions,
  checkRowCount,
  checkSeed,
  invalidRange,
  invalidType,
  isFloat32Array,
  isFloat64Array,
  isPlainObject,
  randomSeed,
  seedWords,
  toRowMajor,
} from './validation';

export type Rows = Float32Array | Float64Array | number[][];

export interface SampleOptions {
  /** Seed of the Philox stream; the same seed gives the same samples at any thread count. Default: random. */
  seed?: number;
}

const ACTIVATION_CODE = { relu: 0, tanh: 1, elu: 2 } as const;
const SCALE_CODE = { softplus: 0, exp: 1, gated: 2 } as const;
const TO_DATA = 0;
const TO_LATENT = 1;

export class Flow {
  /** The flow's config (everything but the weights); frozen. */
  readonly config: Readonly<FlowConfig>;
  readonly dim: number;
  private readonly shapes: Map<string, number[]>;
  private params: Map<string, Float32Array>;
  private nativeFlow: NativeFlowInstance;

  /** @internal Use createFlow or loadFlow. */
  constructor(config: FlowConfig, params: Map<string, Float32Array>) {
    this.config = deepFreeze(structuredClone(config));
    this.dim = config.dim;
    this.shapes = parameterShapes(config);
    this.params = params;
    this.nativeFlow = buildNative(this.config, params);
  }

  /** Number of scalar parameters (masked-out weight entries included, as stored). */
  get numParameters(): number {
    let total = 0;
    for (const p of this.params.values()) total += p.length;
    return total;
  }

  /** Parameter names and shapes ([out, in] for weights), as in the model file. */
  parameterShapes(): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const [name, shape] of this.shapes) out[name] = [...shape];
    return out;
  }

  /** Copies of all parameters, named as in the model file. */
  getParameters(): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = {};
    for (const [name, value] of this.params) out[name] = value.slice();
    return out;
  }

  /**
   * Replaces some or all parameters. Every name must be one of this flow's, every array the right
   * length and every value finite; nothing changes unless all of them are valid.
   * Entries that the MADE masks exclude are stored but never used.
   */
  setParameters(values: Record<string, Float32Array | Float64Array | number[]>): void {
    if (!isPlainObject(values)) throw invalidType('parameters', 'an object of named Float32Arrays', values);
    const next = new Map(this.params);
    for (const [name, value] of Object.entries(values)) {
      const shape = this.shapes.get(name);
      if (!shape) {
        throw new TypeError(`Unknown parameter ${JSON.stringify(name)}; this flow has: ${[...this.shapes.keys()].join(', ')}`);
      }
      const expected = shape.reduce((a, b) => a * b, 1);
      if (!isFloat32Array(value) && !isFloat64Array(value) && !Array.isArray(value)) {
        throw invalidType(`parameters[${JSON.stringify(name)}]`, `a Float32Array of ${expected} values`, value);
      }
      if (value.length !== expected) {
        throw invalidRange(`parameters[${JSON.stringify(name)}].length`, `${expected} (shape [${shape.join(', ')}])`, value.length);
      }
      const copy = new Float32Array(expected);
      for (let i = 0; i < expected; i++) {
        const v = value[i];
        if (typeof v !== 'number') throw invalidType(`parameters[${JSON.stringify(name)}][${i}]`, 'a number', v);
        if (!Number.isFinite(v) || !Number.isFinite(Math.fround(v))) {
          throw invalidRange(`parameters[${JSON.stringify(name)}][${i}]`, 'a finite float32 value', v);
        }
        copy[i] = v;
      }
      next.set(name, copy);
    }
    this.nativeFlow = buildNative(this.config, next);
    this.params = next;
  }

  /**
   * @internal Training's way in: the current parameter map (not copied; treat as read-only), and
   * a swap to a complete new map whose arrays the flow takes over. The trainer only hands over
   * finite values of the right shapes, so nothing is re-validated here.
   */
  currentParameters(): ReadonlyMap<string, Float32Array> {
    return this.params;
  }

  /** @internal See currentParameters. */
  adoptParameters(next: Map<string, Float32Array>): void {
    this.nativeFlow = buildNative(this.config, next);
    this.params = next;
  }

  /** n samples x ~ p(x), row-major n*dim. */
  async sample(n: number, options?: SampleOptions): Promise<Float32Array> {
    const job = this.sampleJob(n, options, false);
    await job.run(true);
    return job.x;
  }

  sampleSync(n: number, options?: SampleOptions): Float32Array {
    const job = this.sampleJob(n, options, false);
    job.run(false);
    return job.x;
  }

  /** Samples with their log-density. For IAF layers the density comes from the same pass. */
  async sampleWithLogProb(n: number, options?: SampleOptions): Promise<{ x: Float32Array; logProb: Float32Array }> {
    const job = this.sampleJob(n, options, true);
    await job.run(true);
    return { x: job.x, logProb: job.logProb! };
  }

  sampleWithLogProbSync(n: number, options?: SampleOptions): { x: Float32Array; logProb: Float32Array } {
    const job = this.sampleJob(n, options, true);
    job.run(false);
    return { x: job.x, logProb: job.logProb! };
  }

  /** log p(x) for each row of x. */
  async logProb(x: Rows): Promise<Float32Array> {
    const job = this.transformJob('x', x, TO_LATENT, 'logProb');
    await job.run(true);
    return job.logProb!;
  }

  logProbSync(x: Rows): Float32Array {
    const job = this.transformJob('x', x, TO_LATENT, 'logProb');
    job.run(false);
    return job.logProb!;
  }

  /** Latent -> data: x = f(z) and log|det dx/dz| per row. */
  async forward(z: Rows): Promise<{ x: Float32Array; logDet: Float32Array }> {
    const job = this.transformJob('z', z, TO_DATA, 'logDet');
    await job.run(true);
    return { x: job.points!, logDet: job.logDet! };
  }

  forwardSync(z: Rows): { x: Float32Array; logDet: Float32Array } {
    const job = this.transformJob('z', z, TO_DATA, 'logDet');
    job.run(false);
    return { x: job.points!, logDet: job.logDet! };
  }

  /** Data -> latent: z = f^-1(x) and log|det dz/dx| per row (the Jacobian of the map computed). */
  async inverse(x: Rows): Promise<{ z: Float32Array; logDet: Float32Array }> {
    const job = this.transformJob('x', x, TO_LATENT, 'logDet');
    await job.run(true);
    return { z: job.points!, logDet: job.logDet! };
  }

  inverseSync(x: Rows): { z: Float32Array; logDet: Float32Array } {
    const job = this.transformJob('x', x, TO_LATENT, 'logDet');
    job.run(false);
    return { z: job.points!, logDet: job.logDet! };
  }

  /**
   * @internal The simple path (dense masked products, dim full passes for the sequential
   * direction): the benchmark's baseline and the tests' second oracle. Not part of the API.
   */
  referenceRun(direction: 'toData' | 'toLatent', input: Float32Array | null, rows: number, seed = 0) {
    const points = allocateFloats(rows * this.dim, 'the result');
    const logDet = allocateFloats(rows, 'log-determinants');
    const logProb = allocateFloats(rows, 'log-densities');
    const [lo, hi] = seedWords(seed);
    this.nativeFlow.run(direction === 'toData' ? TO_DATA : TO_LATENT, input, rows, lo, hi, points, logDet, logProb, false, true);
    return { points, logDet, logProb };
  }

  private sampleJob(n: number, options: SampleOptions | undefined, withLogProb: boolean) {
    const rows = checkRowCount('n', n, this.dim);
    const opts = checkOptions('sample options', options, ['seed']);
    const seed = opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed);
    const [lo, hi] = seedWords(seed);
    const x = allocateFloats(rows * this.dim, `${rows} samples`);
    const logProb = withLogProb ? allocateFloats(rows, 'log-densities') : null;
    const nativeFlow = this.nativeFlow;
    return {
      x,
      logProb,
      run: (async: boolean) => nativeFlow.run(TO_DATA, null, rows, lo, hi, x, null, logProb, async),
    };
  }

  private transformJob(name: string, input: Rows, direction: 0 | 1, want: 'logDet' | 'logProb') {
    const { data, rows } = toRowMajor(name, input, this.dim);
    const points = want === 'logDet' ? allocateFloats(rows * this.dim, 'the result') : null;
    const logDet = want === 'logDet' ? allocateFloats(rows, 'log-determinants') : null;
    const logProb = want === 'logProb' ? allocateFloats(rows, 'log-densities') : null;
    const nativeFlow = this.nativeFlow;
    return {
      points,
      logDet,
      logProb,
      run: (async: boolean) => nativeFlow.run(direction, data, rows, 0, 0, points, logDet, logProb, async),
    };
  }
}

function buildNative(config: FlowConfig, params: Map<string, Float32Array>): NativeFlowInstance {
  return new native.NativeFlow(nativeSpec(config, params));
}

/** @internal The flow as the native core takes it (the arrays are shared, not copied). */
export function nativeSpec(config: FlowConfig, params: Map<string, Float32Array>): NativeFlowSpec {
  const take = (name: string): Float32Array => {
    const value = params.get(name);
    if (!value) throw new Error(`iaflow internal: parameter ${name} is missing`);
    return value;
  };
  const linear = (prefix: string) => ({ weight: take(`${prefix}.weight`), bias: take(`${prefix}.bias`) });
  const layers: NativeLayerSpec[] = config.layers.map((layer, k) => {
    if (layer.type === 'permutation') return { kind: 2, permutation: Int32Array.from(layer.permutation) };
    return {
      kind: layer.type === 'iaf' ? 0 : 1,
      activation: ACTIVATION_CODE[layer.activation],
      scale: SCALE_CODE[layer.scale],
      inputDegrees: Int32Array.from(layer.inputDegrees),
      residual: layer.residual === true,
      hiddenDegrees: layer.hiddenDegrees.map((d) => Int32Array.from(d)),
      hidden: layer.hidden.map((_, l) => linear(`layers.${k}.hidden.${l}`)),
      shift: linear(`layers.${k}.shift`),
      rawScale: linear(`layers.${k}.scale`),
    };
  });
  return { dim: config.dim, layers };
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    Object.values(value).forEach(deepFreeze);
    Object.freeze(value);
  }
  return value;
}

export interface FlowOptions {
  /** Number of dimensions of the data. */
  dim: number;
  /** Layers in sampling order (latent first): iaf(), maf(), reverse(), permute(). */
  layers: LayerDescriptor[];
  /** Seed for the parameter initialisation. Default: random. */
  seed?: number;
}

export function createFlow(options: FlowOptions): Flow {
  const opts = checkOptions('createFlow options', options, ['dim', 'layers', 'seed']);
  const dim = checkInteger('dim', opts.dim, 1, MAX_DIM);
  if (!Array.isArray(opts.layers) || opts.layers.length > MAX_LAYERS) {
    throw invalidType('layers', 'an array of layers made by iaf(), maf(), reverse() or permute()', opts.layers);
  }
  const layers = opts.layers.map((layer: unknown, k: number) => {
    if (!isPlainObject(layer) || typeof layer.resolve !== 'function') {
      throw invalidType(`layers[${k}]`, 'a layer made by iaf(), maf(), reverse() or permute()', layer);
    }
    return (layer as unknown as LayerDescriptor).resolve(dim, `layers[${k}]`);
  });
  const seed = opts.seed === undefined ? randomSeed() : checkSeed('seed', opts.seed);
  const config = checkFlowConfig({ formatVersion: FORMAT_VERSION, dim, contextDim: 0, layers }, 'config');
  return new Flow(config, initialParameters(config, seed));
}

export interface StackOptions extends Omit<MadeOptions, 'hiddenDegrees' | 'order'> {
  dim: number;
  /** Number of autoregressive layers; reversals go between them. Default 5. */
  layers?: number;
  seed?: number;
}

function createStack(kind: 'iaf' | 'maf', options: StackOptions): Flow {
  const opts = checkOptions(`create${kind.toUpperCase()} options`, options, ['dim', 'layers', 'seed', 'hidden', 'activation', 'scale']);
  const count = checkInteger('layers', opts.layers ?? 5, 1, MAX_LAYERS / 2);
  const made = { hidden: opts.hidden, activation: opts.activation, scale: opts.scale } as MadeOptions;
  for (const key of Object.keys(made) as (keyof MadeOptions)[]) if (made[key] === undefined) delete made[key];
  const builder = kind === 'iaf' ? iafLayer : mafLayer;
  const layers: LayerDescriptor[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0) layers.push(reverse());
    layers.push(builder(made));
  }
  return createFlow({ dim: opts.dim as number, layers, seed: opts.seed as number | undefined });
}

/** `layers` IAF layers with reversals between them: one-pass sampling. */
export function createIAF(options: StackOptions): Flow {
  return createStack('iaf', options);
}

/** `layers` MAF layers with reversals between them: one-pass density. */
export function createMAF(options: StackOptions): Flow {
  return createStack('maf', options);
}

/** Threads of the native pool (default: the machine's core count). */
export function setThreads(threads: number): void {
  native.setThreads(checkInteger('threads', threads, 1, 1024));
}

export function getThreads(): number {
  return native.getThreads();
}

/** rows*dim standard normals from the library's Philox stream (the latent draws of `sample`). */
export function standardNormal(rows: number, dim: number, options?: SampleOptions): Float32Array {
  const d = checkInteger('dim', dim, 1, MAX_DIM);
  const n = checkRowCount('rows', rows, d);
  const opts = checkOptions('standardNormal options', options, ['seed']);
  const [lo, hi] = seedWords(opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed));
  const out = allocateFloats(n * d, `${n} rows`);
  native.standardNormal(lo, hi, 0, n, d, out);
  return out;
}
