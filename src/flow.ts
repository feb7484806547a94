// The Flow: composes layers, owns the parameters (named Float32Arrays, as in the
// model file) and runs the whole chain of layers in one native call.
import {
  affineTensorNames,
  FlowConfig,
  FORMAT_VERSION,
  LayerConfig,
  LayerDescriptor,
  LinearNames,
  MadeOptions,
  MAX_DIM,
  MAX_CONTEXT_DIM,
  MAX_LAYERS,
  checkFlowConfig,
  iaf as iafLayer,
  initialParameters,
  madeTensorNames,
  maf as mafLayer,
  parameterShapes,
  reverse,
} from './layers';
import { SampleStream, SampleStreamOptions } from './stream';
import { LAYOUT_CODES, loadCudaBackend, native, NO_CUDA_LIBRARY, NativeFlowInstance, NativeFlowSpec, NativeLayerSpec, NativeRunOptions } from './native';
import {
  allocateFloats,
  checkContext,
  checkInteger,
  checkOptions,
  checkRowCount,
  checkSeed,
  checkSignal,
  invalidRange,
  invalidType,
  isFloat32Array,
  isFloat64Array,
  isPlainObject,
  randomSeed,
  rowsForNative,
  seedWords,
  warnOnHugeWeights,
} from './validation';

export type Rows = Float32Array | Float64Array | number[][];

export interface RunOptions {
  /** Aborts the call: the native work stops within one tile of rows and the promise rejects with an AbortError. */
  signal?: AbortSignal;
  /**
   * Conditional flows (createFlow's `context`): the context of every row, as one row of C values
   * (Float32Array, Float64Array, number[] or [[...]]: the same for all rows) or one row per row
   * (n*C row-major, or number[][]). Required by a conditional flow, refused by any other.
   */
  context?: Rows | number[];
}

/** The sync twins of logProb, forward and inverse take the context (they cannot be interrupted). */
export type RunSyncOptions = Omit<RunOptions, 'signal'>;

export interface SampleOptions extends RunOptions {
  /** Seed of the Philox stream; the same seed gives the same samples at any thread count. Default: random. */
  seed?: number;
  /**
   * Row r of the result is row firstRow + r of the seed's stream, so a sample taken in pieces
   * (firstRow 0, n1, n1 + n2, ...) equals one call, bit for bit. Default 0; needs a seed.
   */
  firstRow?: number;
}

/** Sync calls take the same options, less the signal (they cannot be interrupted). */
export type SampleSyncOptions = Omit<SampleOptions, 'signal'>;

/** A compute backend: its name, whether it is usable here and why not, and details (the CPU's instruction set). */
export interface BackendInfo {
  name: string;
  usable: boolean;
  /** Why the backend is unusable here (empty when usable). */
  whyNot: string;
  detail: string;
}

/**
 * The backends, fastest first: 'cpu' (the staircase kernels), 'cpu-reference' (the simple dense
 * path) and 'cuda', which is always listed: when its library is not loaded (not built, not found,
 * IAFLOW_CUDA=0, or it failed to load), last and unusable, with the reason. Loads the CUDA library
 * on the first call.
 */
export function backends(): BackendInfo[] {
  return listBackends(true);
}

/** The registered backends, and 'cuda' (unusable, with why) when it is not registered. */
function listBackends(loadCuda: boolean): BackendInfo[] {
  const whyNoCuda = loadCuda ? loadCudaBackend() : undefined;
  const all: BackendInfo[] = native.backends().map((b) => ({ ...b }));
  if (!all.some((b) => b.name === 'cuda')) all.push({ name: 'cuda', usable: false, whyNot: whyNoCuda || NO_CUDA_LIBRARY, detail: '' });
  return all;
}

/** 'auto' (the first usable backend that runs the flow) or a registered name that is usable here. */
function checkBackend(name: string, value: unknown): string {
  if (value === undefined) return 'auto';
  // Only a request for CUDA ('cuda', 'auto') loads its library.
  const all = listBackends(value === 'cuda' || value === 'auto');
  const info = all.find((b) => b.name === value);
  if (value !== 'auto' && !info) {
    throw invalidType(name, `'auto' or a backend name (${all.map((b) => `'${b.name}'`).join(', ')})`, value);
  }
  if (info && !info.usable) throw new Error(`The ${info.name} backend is not usable here: ${info.whyNot}`);
  return value as string;
}

const MAX_FIRST_ROW = 2 ** 53 - 1;

function abortError(what: string, signal: AbortSignal): DOMException {
  const error = new DOMException(`${what} was aborted`, 'AbortError');
  (error as { cause?: unknown }).cause = signal.reason;
  return error;
}

/**
 * The addon's errors as errors of the caller's realm (instanceof RangeError holds in a vm
 * context or a test runner too), with this call's stack.
 */
function fromNative(error: unknown): unknown {
  const { name, message } = (error ?? {}) as { name?: unknown; message?: unknown };
  if (typeof message !== 'string') return error;
  if (name === 'RangeError') return new RangeError(message);
  if (name === 'TypeError') return new TypeError(message);
  return error;
}

function runSync(nativeFlow: NativeFlowInstance, request: NativeRunOptions): void {
  request.async = false;
  try {
    nativeFlow.run(request);
  } catch (error) {
    throw fromNative(error);
  }
}

/** Runs a native request off the event loop; an AbortSignal raises the request's cancel flag. */
async function runAsync(nativeFlow: NativeFlowInstance, what: string, request: NativeRunOptions, signal?: AbortSignal) {
  if (signal?.aborted) throw abortError(what, signal);
  const cancel = signal ? new native.CancelToken() : null;
  request.async = true;
  request.cancel = cancel;
  const onAbort = () => cancel!.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await nativeFlow.run(request);
  } catch (error) {
    if (signal?.aborted && (error as { name?: unknown })?.name === 'AbortError') throw abortError(what, signal);
    throw fromNative(error);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

const ACTIVATION_CODE = LAYOUT_CODES.activation;
const SCALE_CODE = LAYOUT_CODES.scale;
const TO_DATA = LAYOUT_CODES.direction.toData;
const TO_LATENT = LAYOUT_CODES.direction.toLatent;
const NO_CONTEXT = Object.freeze({ context: null, contextRows: 0 });
const NO_SEED: [number, number] = [0, 0]; // transforms read no random stream

export class Flow {
  readonly dim: number;
  private frozenConfig: Readonly<FlowConfig>;
  private shapes: Map<string, number[]>;
  private params: Map<string, Float32Array>;
  private nativeFlow: NativeFlowInstance;
  private backendChoice: string;
  private referenceFlow: NativeFlowInstance | null = null;
  private disposed = false;

  /** @internal Use createFlow or loadFlow. */
  constructor(config: FlowConfig, params: Map<string, Float32Array>, backend = 'auto') {
    this.frozenConfig = deepFreeze(structuredClone(config));
    this.dim = config.dim;
    this.shapes = parameterShapes(config);
    checkAffineScales(this.frozenConfig, params, 'parameters');
    this.params = params;
    this.backendChoice = backend;
    this.nativeFlow = buildNative(this.frozenConfig, params, backend);
  }

  /**
   * The flow's config (everything but the weights); frozen. A new object only when a layer is
   * added at the data end (fit with `standardize`).
   */
  get config(): Readonly<FlowConfig> {
    return this.frozenConfig;
  }

  /** The context width of a conditional flow (0: unconditional). */
  get contextDim(): number {
    return this.frozenConfig.contextDim;
  }

  /**
   * @internal Adds a layer after the last one (the data end) with its tensors (named by their
   * suffix, e.g. 'loc'), as fit's `standardize` does. The flow's earlier layers and weights are
   * unchanged.
   */
  appendLayer(layer: LayerConfig, tensors: Record<string, Float32Array>): void {
    this.checkUsable();
    const k = this.frozenConfig.layers.length;
    // Through JSON, not structuredClone: the check wants objects of this realm (jest runs in a vm context).
    const config = checkFlowConfig(JSON.parse(JSON.stringify({ ...this.frozenConfig, layers: [...this.frozenConfig.layers, layer] })), 'config');
    const params = new Map(this.params);
    for (const [suffix, value] of Object.entries(tensors)) params.set(`layers.${k}.${suffix}`, value);
    const shapes = parameterShapes(config);
    for (const [name, shape] of shapes) {
      if (params.get(name)?.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`iaflow internal: appendLayer needs ${name} of shape [${shape.join(', ')}]`);
    }
    checkAffineScales(config, params, 'parameters');
    this.replaceNative(buildNative(config, params, this.backendChoice));
    this.frozenConfig = deepFreeze(structuredClone(config));
    this.shapes = shapes;
    this.params = params;
  }

  /** The backend that runs this flow (see backends()). */
  get backend(): string {
    return this.nativeFlow.backend;
  }

  /**
   * Moves the flow to another backend ('auto' or a name from backends()); the weights are
   * prepared for it once, here. Calls in flight finish where they started. Returns the flow.
   */
  to(backend: string): this {
    this.checkUsable();
    const choice = checkBackend('backend', backend);
    this.replaceNative(buildNative(this.config, this.params, choice));
    this.backendChoice = choice;
    return this;
  }

  /**
   * Frees the flow's native memory now, instead of when the garbage collector's finalizers run
   * (after the event loop turns: a synchronous loop creating flows holds them all until then).
   * Calls in flight finish; the flow refuses every later call.
   */
  dispose(): void {
    this.nativeFlow.release();
    this.referenceFlow?.release();
    this.referenceFlow = null;
    this.disposed = true;
  }

  private checkUsable(): void {
    if (this.disposed) throw new Error('This flow was disposed (flow.dispose()); load or create it again to use it');
  }

  private replaceNative(next: NativeFlowInstance): void {
    // Free the old plan now: a tight loop of setParameters would otherwise hold every old one until GC.
    this.nativeFlow.release();
    this.referenceFlow?.release();
    this.referenceFlow = null;
    this.nativeFlow = next;
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
    this.checkUsable();
    if (!isPlainObject(values)) throw invalidType('parameters', 'an object of named Float32Arrays', values);
    const next = new Map(this.params);
    let maxAbs = 0;
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
        if (Math.abs(v) > maxAbs) maxAbs = Math.abs(v);
      }
      next.set(name, copy);
    }
    checkAffineScales(this.frozenConfig, next, 'parameters');
    // Finite but huge weights overflow float32 products: said once per process, not refused.
    warnOnHugeWeights('setParameters', maxAbs);
    this.replaceNative(buildNative(this.config, next, this.backendChoice));
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
    this.checkUsable();
    this.replaceNative(buildNative(this.config, next, this.backendChoice));
    this.params = next;
  }

  /** n samples x ~ p(x), row-major n*dim. */
  async sample(n: number, options?: SampleOptions): Promise<Float32Array> {
    const job = this.sampleJob('sample', n, options, false, true);
    await runAsync(this.nativeFlow, 'sample', job.request, job.signal);
    return job.x;
  }

  /**
   * n samples in chunks of options.chunkRows rows: an async iterable of Float32Arrays and, with
   * toReadable(), a byte stream (float32, little-endian). The chunks, concatenated, are the bytes
   * of `sample(n, { seed, firstRow })`; memory stays at two chunks for any n (src/stream.ts).
   */
  sampleStream(n: number, options?: SampleStreamOptions): SampleStream {
    this.checkUsable();
    return new SampleStream(this, n, options);
  }

  sampleSync(n: number, options?: SampleSyncOptions): Float32Array {
    const job = this.sampleJob('sample', n, options, false, false);
    runSync(this.nativeFlow, job.request);
    return job.x;
  }

  /** Samples with their log-density. For IAF layers the density comes from the same pass. */
  async sampleWithLogProb(n: number, options?: SampleOptions): Promise<{ x: Float32Array; logProb: Float32Array }> {
    const job = this.sampleJob('sample', n, options, true, true);
    await runAsync(this.nativeFlow, 'sampleWithLogProb', job.request, job.signal);
    return { x: job.x, logProb: job.logProb! };
  }

  sampleWithLogProbSync(n: number, options?: SampleSyncOptions): { x: Float32Array; logProb: Float32Array } {
    const job = this.sampleJob('sample', n, options, true, false);
    runSync(this.nativeFlow, job.request);
    return { x: job.x, logProb: job.logProb! };
  }

  /** log p(x) for each row of x. */
  async logProb(x: Rows, options?: RunOptions): Promise<Float32Array> {
    const signal = runSignal('logProb', options);
    const job = this.transformJob('x', x, TO_LATENT, 'logProb', options?.context);
    await runAsync(this.nativeFlow, 'logProb', job.request, signal);
    return job.logProb!;
  }

  logProbSync(x: Rows, options?: RunSyncOptions): Float32Array {
    const job = this.transformJob('x', x, TO_LATENT, 'logProb', syncContext('logProbSync', options));
    runSync(this.nativeFlow, job.request);
    return job.logProb!;
  }

  /** Latent -> data: x = f(z) and log|det dx/dz| per row. */
  async forward(z: Rows, options?: RunOptions): Promise<{ x: Float32Array; logDet: Float32Array }> {
    const signal = runSignal('forward', options);
    const job = this.transformJob('z', z, TO_DATA, 'logDet', options?.context);
    await runAsync(this.nativeFlow, 'forward', job.request, signal);
    return { x: job.points!, logDet: job.logDet! };
  }

  forwardSync(z: Rows, options?: RunSyncOptions): { x: Float32Array; logDet: Float32Array } {
    const job = this.transformJob('z', z, TO_DATA, 'logDet', syncContext('forwardSync', options));
    runSync(this.nativeFlow, job.request);
    return { x: job.points!, logDet: job.logDet! };
  }

  /** Data -> latent: z = f^-1(x) and log|det dz/dx| per row (the Jacobian of the map computed). */
  async inverse(x: Rows, options?: RunOptions): Promise<{ z: Float32Array; logDet: Float32Array }> {
    const signal = runSignal('inverse', options);
    const job = this.transformJob('x', x, TO_LATENT, 'logDet', options?.context);
    await runAsync(this.nativeFlow, 'inverse', job.request, signal);
    return { z: job.points!, logDet: job.logDet! };
  }

  inverseSync(x: Rows, options?: RunSyncOptions): { z: Float32Array; logDet: Float32Array } {
    const job = this.transformJob('x', x, TO_LATENT, 'logDet', syncContext('inverseSync', options));
    runSync(this.nativeFlow, job.request);
    return { z: job.points!, logDet: job.logDet! };
  }

  /**
   * @internal The simple path (the 'cpu-reference' backend: dense masked products, dim full
   * passes for the sequential direction): the benchmark's baseline and the tests' second oracle.
   */
  referenceRun(direction: 'toData' | 'toLatent', input: Float32Array | null, rows: number, seed = 0, context?: Rows | number[]) {
    const points = allocateFloats(rows * this.dim, 'the result');
    const logDet = allocateFloats(rows, 'log-determinants');
    const logProb = allocateFloats(rows, 'log-densities');
    this.referenceFlow ??= buildNative(this.config, this.params, 'cpu-reference');
    const { context: contextRowsData, contextRows } = this.contextFor('context', context, rows);
    this.referenceFlow.run({
      direction: direction === 'toData' ? TO_DATA : TO_LATENT,
      rows,
      input,
      inputName: 'input',
      seed: seedWords(seed),
      firstRow: 0,
      outPoints: points,
      outLogDet: logDet,
      outLogProb: logProb,
      context: contextRowsData,
      contextRows,
      async: false,
      cancel: null,
    });
    return { points, logDet, logProb };
  }

  private sampleJob(what: 'sample', n: number, options: SampleOptions | undefined, withLogProb: boolean, async: boolean) {
    this.checkUsable();
    const rows = checkRowCount('n', n, this.dim);
    const opts = checkOptions(`${what} options`, options, async ? ['seed', 'firstRow', 'signal', 'context'] : ['seed', 'firstRow', 'context']);
    if (opts.firstRow !== undefined && opts.seed === undefined) {
      throw new TypeError(`options.firstRow needs options.seed: rows of a random stream cannot be continued`);
    }
    const seed = opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed);
    const firstRow = opts.firstRow === undefined ? 0 : checkInteger('options.firstRow', opts.firstRow, 0, MAX_FIRST_ROW - rows);
    const signal = checkSignal('options.signal', opts.signal);
    const x = allocateFloats(rows * this.dim, `${rows} samples`);
    const logProb = withLogProb ? allocateFloats(rows, 'log-densities') : null;
    const { context, contextRows } = this.contextFor('options.context', opts.context, rows);
    const request: NativeRunOptions = {
      direction: TO_DATA, rows, input: null, inputName: 'input', seed: seedWords(seed), firstRow,
      outPoints: x, outLogDet: null, outLogProb: logProb, context, contextRows, async: false, cancel: null,
    };
    return { x, logProb, signal, request };
  }

  /** A conditional flow's context for `rows` rows (required), or nothing for an unconditional one (refused if given). */
  private contextFor(name: string, value: unknown, rows: number): { context: Float32Array | null; contextRows: number } {
    const C = this.frozenConfig.contextDim;
    if (C === 0) {
      if (value !== undefined) throw new TypeError(`${name}: this flow is not conditional (it was created without a context), so it takes no context`);
      return NO_CONTEXT;
    }
    if (value === undefined) {
      throw new TypeError(`This flow is conditional: ${name} is required, one row of ${C} context values (for every row) or one per row`);
    }
    return checkContext(name, value, rows, C);
  }

  private transformJob(name: string, input: Rows, direction: 0 | 1, want: 'logDet' | 'logProb', context?: unknown) {
    this.checkUsable();
    const { data, rows } = rowsForNative(name, input, this.dim);
    const points = want === 'logDet' ? allocateFloats(rows * this.dim, 'the result') : null;
    const logDet = want === 'logDet' ? allocateFloats(rows, 'log-determinants') : null;
    const logProb = want === 'logProb' ? allocateFloats(rows, 'log-densities') : null;
    const { context: contextRowsData, contextRows } = this.contextFor('options.context', context, rows);
    const request: NativeRunOptions = {
      direction, rows, input: data, inputName: name, seed: NO_SEED, firstRow: 0,
      outPoints: points, outLogDet: logDet, outLogProb: logProb, context: contextRowsData, contextRows, async: false, cancel: null,
    };
    return { points, logDet, logProb, request };
  }
}

function runSignal(what: string, options: RunOptions | undefined): AbortSignal | undefined {
  return checkSignal('options.signal', checkOptions(`${what} options`, options, ['signal', 'context']).signal);
}

function syncContext(what: string, options: RunSyncOptions | undefined): unknown {
  return checkOptions(`${what} options`, options, ['context']).context;
}

function buildNative(config: FlowConfig, params: Map<string, Float32Array>, backend: string): NativeFlowInstance {
  // 'auto' may pick CUDA: load its library first (once; loadFlow and importTorch come here too).
  if (backend === 'auto' || backend === 'cuda') loadCudaBackend();
  return new native.NativeFlow(nativeSpec(config, params), { backend });
}

/** @internal The flow as the native core takes it (the arrays are shared, not copied). */
export function nativeSpec(config: FlowConfig, params: Map<string, Float32Array>): NativeFlowSpec {
  const take = (name: string): Float32Array => {
    const value = params.get(name);
    if (!value) throw new Error(`iaflow internal: parameter ${name} is missing`);
    return value;
  };
  const linear = (names: LinearNames) => ({ weight: take(names.weight), bias: take(names.bias) });
  const layers: NativeLayerSpec[] = config.layers.map((layer, k) => {
    if (layer.type === 'permutation') return { kind: LAYOUT_CODES.kind.permutation, permutation: Int32Array.from(layer.permutation) };
    if (layer.type === 'affine') {
      const names = affineTensorNames(k);
      return { kind: LAYOUT_CODES.kind.affine, loc: take(names.loc), scale: take(names.scale), trainable: layer.trainable };
    }
    const names = madeTensorNames(k, layer.hidden.length);
    return {
      kind: LAYOUT_CODES.kind[layer.type],
      activation: ACTIVATION_CODE[layer.activation],
      scale: SCALE_CODE[layer.scale],
      inputDegrees: Int32Array.from(layer.inputDegrees),
      residual: layer.residual === true,
      softClamp: layer.softClamp ?? 0,
      ...(config.contextDim > 0 ? { contextForm: LAYOUT_CODES.contextForm[layer.contextForm!], context: linear(names.context) } : {}),
      hiddenDegrees: layer.hiddenDegrees.map((d) => Int32Array.from(d)),
      hidden: names.hidden.map(linear),
      shift: linear(names.shift),
      rawScale: linear(names.scale),
    };
  });
  return { dim: config.dim, contextDim: config.contextDim, layers };
}

/** An affine layer's scale must be nonzero (finiteness is checked where values come in). */
function checkAffineScales(config: FlowConfig, params: ReadonlyMap<string, Float32Array>, what: string): void {
  config.layers.forEach((layer, k) => {
    if (layer.type !== 'affine') return;
    const name = affineTensorNames(k).scale;
    const scale = params.get(name);
    const at = scale?.findIndex((v) => v === 0 || !Number.isFinite(v)) ?? -1;
    if (scale && at >= 0) throw invalidRange(`${what}[${JSON.stringify(name)}][${at}]`, 'a finite nonzero scale', scale[at]);
  });
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
  /** Layers in sampling order (latent first): iaf(), maf(), reverse(), permute(), affine(). */
  layers: LayerDescriptor[];
  /** Seed for the parameter initialisation. Default: random. */
  seed?: number;
  /**
   * A conditional flow p(x | c): the width C of the context c, which every MADE layer's first
   * hidden layer reads (maf/iaf's `contextForm`) and every call then takes (`options.context`).
   * Default 0: unconditional.
   */
  context?: number;
  /** The backend that runs it: 'auto' (default: the fastest usable) or a name from backends(). */
  backend?: string;
}

export function createFlow(options: FlowOptions): Flow {
  const opts = checkOptions('createFlow options', options, ['dim', 'layers', 'seed', 'backend', 'context']);
  const contextDim = opts.context === undefined ? 0 : checkInteger('context', opts.context, 0, MAX_CONTEXT_DIM);
  const backend = checkBackend('backend', opts.backend);
  const dim = checkInteger('dim', opts.dim, 1, MAX_DIM);
  if (!Array.isArray(opts.layers) || opts.layers.length > MAX_LAYERS) {
    throw invalidType('layers', 'an array of layers made by iaf(), maf(), reverse(), permute() or affine()', opts.layers);
  }
  const layers = opts.layers.map((layer: unknown, k: number) => {
    if (!isPlainObject(layer) || typeof layer.resolve !== 'function') {
      throw invalidType(`layers[${k}]`, 'a layer made by iaf(), maf(), reverse(), permute() or affine()', layer);
    }
    return (layer as unknown as LayerDescriptor).resolve(dim, `layers[${k}]`, contextDim);
  });
  const seed = opts.seed === undefined ? randomSeed() : checkSeed('seed', opts.seed);
  const config = checkFlowConfig({ formatVersion: FORMAT_VERSION, dim, contextDim, layers }, 'config');
  const params = initialParameters(config, seed);
  (opts.layers as LayerDescriptor[]).forEach((layer, k) => {
    const tensors = layer.initialTensors?.(dim, `layers[${k}]`) ?? {};
    for (const [suffix, value] of Object.entries(tensors)) params.set(`layers.${k}.${suffix}`, value);
  });
  return new Flow(config, params, backend);
}

export interface StackOptions extends Omit<MadeOptions, 'hiddenDegrees' | 'order'> {
  dim: number;
  /** Number of autoregressive layers; reversals go between them. Default 5. */
  layers?: number;
  seed?: number;
  backend?: string;
}

function createStack(kind: 'iaf' | 'maf', options: StackOptions): Flow {
  const opts = checkOptions(`create${kind.toUpperCase()} options`, options, ['dim', 'layers', 'seed', 'backend', 'hidden', 'activation', 'scale', 'softClamp']);
  const count = checkInteger('layers', opts.layers ?? 5, 1, MAX_LAYERS / 2);
  const made = { hidden: opts.hidden, activation: opts.activation, scale: opts.scale, softClamp: opts.softClamp } as MadeOptions;
  for (const key of Object.keys(made) as (keyof MadeOptions)[]) if (made[key] === undefined) delete made[key];
  const builder = kind === 'iaf' ? iafLayer : mafLayer;
  const layers: LayerDescriptor[] = [];
  for (let i = 0; i < count; i++) {
    if (i > 0) layers.push(reverse());
    layers.push(builder(made));
  }
  return createFlow({ dim: opts.dim as number, layers, seed: opts.seed as number | undefined, backend: opts.backend as string | undefined });
}

/** `layers` IAF layers with reversals between them: one-pass sampling. */
export function createIAF(options: StackOptions): Flow {
  return createStack('iaf', options);
}

/** `layers` MAF layers with reversals between them: one-pass density. */
export function createMAF(options: StackOptions): Flow {
  return createStack('maf', options);
}

/**
 * Threads of the native pool (default: the machine's core count). Process-wide: one pool serves
 * every flow and every worker_thread of the process.
 */
export function setThreads(threads: number): void {
  native.setThreads(checkInteger('threads', threads, 1, 1024));
}

export function getThreads(): number {
  return native.getThreads();
}

/** rows*dim standard normals from the library's Philox stream (the latent draws of `sample`). */
export function standardNormal(rows: number, dim: number, options?: SampleSyncOptions): Float32Array {
  const d = checkInteger('dim', dim, 1, MAX_DIM);
  const n = checkRowCount('rows', rows, d);
  const opts = checkOptions('standardNormal options', options, ['seed', 'firstRow']);
  if (opts.firstRow !== undefined && opts.seed === undefined) throw new TypeError('options.firstRow needs options.seed');
  const seed = seedWords(opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed));
  const firstRow = opts.firstRow === undefined ? 0 : checkInteger('options.firstRow', opts.firstRow, 0, MAX_FIRST_ROW - n);
  const out = allocateFloats(n * d, `${n} rows`);
  native.standardNormal({ seed, firstRow, rows: n, dim: d, out });
  return out;
}
