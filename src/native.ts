// Loads the addon: a prebuilt binary from prebuilds/ or a local build (build/Release),
// through node-gyp-build. Typed here, in one place, so nothing else touches `any`.
import { existsSync } from 'node:fs';
import * as path from 'node:path';

export interface NativeLinear {
  weight: Float32Array;
  bias: Float32Array;
}

export interface NativeLayerSpec {
  kind: number; // 0 IAF, 1 MAF, 2 permutation, 3 affine
  activation?: number;
  /** A MADE layer's scale kind (its code); an affine layer's scale values. */
  scale?: number | Float32Array;
  inputDegrees?: Int32Array;
  residual?: boolean;
  softClamp?: number;
  /** Conditional flows: LAYOUT_CODES.contextForm, and the context term's weights [h0, C] and bias. */
  contextForm?: number;
  context?: NativeLinear;
  hiddenDegrees?: Int32Array[];
  hidden?: NativeLinear[];
  shift?: NativeLinear;
  rawScale?: NativeLinear;
  permutation?: Int32Array;
  loc?: Float32Array;
  trainable?: boolean;
}

/** A cancel flag the native work polls before each tile; raised when an AbortSignal fires. */
export interface NativeCancelToken {
  cancel(): void;
}

/** One run of the whole chain of layers (native/core/backend.h, RunRequest). */
/**
 * Every field is always present and the callers write them in this order, so V8 gives all requests
 * one shape and the runners set `async` and `cancel` in place (an object spread per call took a
 * slow path that cost about an eighth of a batch-1 sample).
 */
export interface NativeRunOptions {
  direction: 0 | 1; // 0: latent -> data, 1: data -> latent
  rows: number;
  /** Input rows (rows*dim, row-major); checked for finiteness (and converted) off the event loop when async. Null: Philox normals. */
  input: Float32Array | Float64Array | null;
  /** How errors about the input name it ('x', 'z'). */
  inputName: string;
  /** Seed words [lo, hi] of the Philox stream (input-less sampling). */
  seed: [number, number];
  /** Row r of the result is stream row firstRow + r. */
  firstRow: number;
  outPoints: Float32Array | null;
  outLogDet: Float32Array | null;
  outLogProb: Float32Array | null;
  /** Conditional flows: contextRows rows (1: every row's) of contextDim values; null and 0 otherwise. */
  context: Float32Array | null;
  contextRows: number;
  async: boolean;
  cancel: NativeCancelToken | null;
}

export interface NativeFlowInstance {
  run(options: NativeRunOptions): Promise<void> | undefined;
  /** Frees the prepared plan now instead of at garbage collection. */
  release(): void;
  readonly backend: string;
}

export interface NativeBackendInfo {
  name: string;
  usable: boolean;
  whyNot: string;
  detail: string;
}

/** The native enum codes a spec carries (pinned to the TypeScript ones by test/backend.test.ts). */
export const LAYOUT_CODES = {
  kind: { iaf: 0, maf: 1, permutation: 2, affine: 3 },
  activation: { relu: 0, tanh: 1, elu: 2 },
  scale: { softplus: 0, exp: 1, gated: 2 },
  contextForm: { linear: 1, activated: 2 },
  direction: { toData: 0, toLatent: 1 },
} as const;

export interface NativeFlowSpec {
  dim: number;
  contextDim?: number;
  layers: NativeLayerSpec[];
}

/** Where export writes one layer's dense tensors: a MADE layer's, an affine layer's, null for a permutation. */
export type NativeLayerView = { hidden: NativeLinear[]; shift: NativeLinear; rawScale: NativeLinear; context?: NativeLinear } | { loc: Float32Array; scale: Float32Array } | null;

/** Adam with decoupled weight decay, clipping (0: off) and Polyak averaging (ema; 0: off). */
export interface NativeOptimizerOptions {
  learningRate: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  clipGradNorm: number;
  ema?: number;
}

type Seed = [number, number];

/** The training core (native/core/train.h). Stats arrays: [lossSum, rows, steps, skipped, lastGradNorm]. */
export interface NativeTrainerInstance {
  setOptions(options: NativeOptimizerOptions): void;
  setStickingTheLanding(on: boolean): void;
  /** Conditional flows: trainContext / validContext, each row's context (contextDim floats). */
  setData(options: { train: Float32Array; trainRows: number; valid?: Float32Array | null; validRows?: number; trainContext?: Float32Array; validContext?: Float32Array }): void;
  /** Stops before its next batch once `cancel` is raised (stats count the batches done). */
  fitBatches(options: { seed: Seed; epoch: number; firstBatch: number; batches: number; batchSize: number; stats: Float64Array; async: boolean; cancel?: NativeCancelToken }): Promise<void> | undefined;
  validationLoss(options: { async: boolean }): Promise<number> | number;
  reverseForward(options: { seed: Seed; step: number; batch: number; z?: Float32Array | null; x: Float32Array; logq: Float32Array; async: boolean; context?: Float32Array; contextRows?: number }): Promise<void> | undefined;
  reverseBackward(options: { targetValue: Float32Array; targetGrad: Float32Array; update: boolean; stats: Float64Array; stepLoss: Float64Array; async: boolean }): Promise<void> | undefined;
  distillSteps(options: {
    seed: Seed;
    firstStep: number;
    steps: number;
    batch: number;
    betaStart: number;
    betaSlope: number;
    forwardWeight: number;
    stats: Float64Array;
    stepLoss: Float64Array;
    async: boolean;
    /** Stops before its next step once raised (stats count the steps done). */
    cancel?: NativeCancelToken;
    /** Conditional flows: each step's contexts, contextRows (1 or batch) rows per step, steps after steps. */
    context?: Float32Array;
    contextRows?: number;
  }): Promise<void> | undefined;
  likelihoodGradient(options: { x: Float32Array; rows: number; context?: Float32Array }): number;
  logProbGradient(options: { x: Float32Array; rows: number; logProb: Float32Array; grad: Float32Array }): void;
  parametersTo(views: NativeLayerView[]): void;
  gradientTo(views: NativeLayerView[]): void;
  saveBest(): void;
  restoreBest(): void;
}

export interface NativeBinding {
  /** backend: a registered name or 'auto' (the first usable backend that runs the flow). */
  NativeFlow: new (spec: NativeFlowSpec, options: { backend: string }) => NativeFlowInstance;
  CancelToken: new () => NativeCancelToken;
  /** pass: 0 (z -> x, reverse KL) or 1 (x -> z, maximum likelihood); backend: a registered name. */
  NativeTrainer: new (options: { spec: NativeFlowSpec; pass: 0 | 1; teacher?: NativeFlowSpec | null; optimizer: NativeOptimizerOptions; backend: string }) => NativeTrainerInstance;
  /** The registered backends, fastest first. */
  backends(): NativeBackendInfo[];
  /** Loads a backend library (the CUDA one) and registers its backend: '' when registered (or already was), else why not. */
  loadBackendLibrary(path: string): string;
  /** Test hook: registers the 'cuda-emulator' backend (idempotent), as IAFLOW_CUDA_EMULATOR=1 does when the addon loads. */
  __registerCudaEmulator(): void;
  /** The native enum codes and, given a spec, the [out, in] shape of each tensor as the addon read it. */
  layout(spec?: NativeFlowSpec): typeof LAYOUT_CODES & { layers?: ({ hidden: [number, number][]; shift: [number, number]; rawScale: [number, number] } | null)[] };
  /** Process-wide: the pool serves every worker_thread of the process. */
  setThreads(threads: number): void;
  getThreads(): number;
  standardNormal(options: { seed: [number, number]; firstRow?: number; rows: number; dim: number; out: Float32Array }): void;
  /** The fp32 ceiling: GFLOP/s of a dense size^3 product with the best kernel, on the pool. */
  measureMatmulGflops(size: number, minSeconds: number): number;
  kernelInfo(): { isa: string; vectorFloats: number; tileRows: number; available: string };
  /** Test/bench hook: use the kernels of one instruction set ('avx512', 'avx2', 'portable'). */
  selectKernels(isa: string): boolean;
}

function load(): NativeBinding {
  const root = path.join(__dirname, '..');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
    return nodeGypBuild(root) as NativeBinding;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      `iaflow could not load its native addon (${reason}).\n` +
        `No prebuilt binary for ${process.platform}-${process.arch} could be loaded (none ships for this ` +
        `platform, or it needs newer system libraries) and no local build was found.\n` +
        `Build it from source (node-gyp needs Python 3 and a C++17 toolchain): \`npm rebuild iaflow\` ` +
        `(or, in a clone of the repository, \`npm run build:native\`).`,
    );
  }
}

export const native: NativeBinding = load();

/** What backends() says of 'cuda' when no CUDA library was found. */
export const NO_CUDA_LIBRARY = 'no CUDA library: build it with npm run build:cuda (needs nvcc)';

/** The file name of the CUDA backend library (native/cuda/cuda_entry.h). */
const CUDA_LIBRARY = 'libiaflow_cuda.so';

let cudaLoadResult: string | undefined;

/**
 * Loads the CUDA backend library on first need (backends(), a backend 'cuda' or 'auto'), never at
 * require time, and registers its backend. Returns '' when 'cuda' is registered, else why not.
 * Tried once per instance of this module; the addon makes a second load of one library a no-op.
 *
 * Where: IAFLOW_CUDA_LIBRARY (a path; nothing else is tried when it is set), else the first of
 * build-cuda/Release (npm run build:cuda), build/Release (npm run build:cmake) and
 * prebuilds/<platform>-<arch> that holds the library. IAFLOW_CUDA=0 turns CUDA off.
 */
export function loadCudaBackend(): string {
  if (cudaLoadResult === undefined) cudaLoadResult = findAndLoadCuda();
  return cudaLoadResult;
}

function findAndLoadCuda(): string {
  if (process.env.IAFLOW_CUDA === '0') return 'turned off by IAFLOW_CUDA=0';
  if (native.backends().some((b) => b.name === 'cuda')) return '';
  const explicit = process.env.IAFLOW_CUDA_LIBRARY;
  if (explicit) {
    const why = native.loadBackendLibrary(path.resolve(explicit));
    return why && `IAFLOW_CUDA_LIBRARY could not be loaded: ${why}`;
  }
  if (process.platform !== 'linux') return 'the CUDA backend is built for Linux only';
  const root = path.join(__dirname, '..');
  const folders = [path.join('build-cuda', 'Release'), path.join('build', 'Release'), path.join('prebuilds', `${process.platform}-${process.arch}`)];
  const found = folders.map((folder) => path.join(root, folder, CUDA_LIBRARY)).find((file) => existsSync(file));
  return found ? native.loadBackendLibrary(found) : NO_CUDA_LIBRARY;
}
