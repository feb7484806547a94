// The benchmark's peers (onnxruntime-node, onnx-proto, TensorFlow.js), loaded at run time from
// bench/node_modules. They are not imported statically on purpose: `npm test` type-checks bench/
// on a clone where only the library's own dependencies are installed, so the peers' modules (and
// their types) may be absent there. The few parts of their APIs the bench uses are typed here.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const BENCH_DIR = __dirname;
const PEERS = ['onnxruntime-node', 'onnx-proto', '@tensorflow/tfjs', '@tensorflow/tfjs-backend-wasm'] as const;

function resolvable(name: string): boolean {
  try {
    require.resolve(name, { paths: [BENCH_DIR] });
    return true;
  } catch {
    return false;
  }
}

/**
 * Installs bench/package.json's peers on first use (`npm --prefix bench install`); bench/.npmrc
 * holds `onnxruntime-node-install=skip`, without which the install fails offline.
 */
export function ensurePeersInstalled(log: (line: string) => void): void {
  const missing = PEERS.filter((p) => !resolvable(p));
  if (missing.length === 0) return;
  log(`installing the benchmark's peers (${missing.join(', ')}): npm --prefix bench install`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const result = spawnSync(npm, ['--prefix', BENCH_DIR, 'install', '--no-audit', '--no-fund'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (result.status !== 0) log(`npm --prefix bench install failed (status ${result.status}); peers that did not install are skipped`);
}

function load<T>(name: string): { module: T | null; error: string | null } {
  try {
    const resolved = require.resolve(name, { paths: [BENCH_DIR] });
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return { module: require(resolved) as T, error: null };
  } catch (error) {
    return { module: null, error: error instanceof Error ? error.message.split('\n')[0] : String(error) };
  }
}

export function peerVersion(name: string): string {
  try {
    const file = path.join(path.dirname(require.resolve(`${name}/package.json`, { paths: [BENCH_DIR] })), 'package.json');
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
  } catch {
    return 'not installed';
  }
}

// ---- onnxruntime-node ----

export interface OrtTensor {
  readonly data: unknown;
  readonly dims: readonly number[];
}

export interface OrtSession {
  run(feeds: Record<string, OrtTensor>): Promise<Record<string, OrtTensor>>;
  release(): Promise<void>;
}

export interface OrtSessionOptions {
  intraOpNumThreads: number;
  interOpNumThreads: number;
  executionMode: 'sequential' | 'parallel';
  graphOptimizationLevel: 'disabled' | 'basic' | 'extended' | 'all';
}

export interface OrtModule {
  InferenceSession: { create(model: Uint8Array, options: OrtSessionOptions): Promise<OrtSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: number[]) => OrtTensor;
  env: { versions?: Record<string, string> };
}

export const loadOrt = () => load<OrtModule>('onnxruntime-node');

// ---- onnx-proto (protobufjs-generated ONNX messages) ----

export interface DecodedTensor {
  name: string;
  dataType: number;
  dims: unknown[];
  rawData?: Uint8Array;
}

export interface DecodedModel {
  graph: {
    node: { opType: string }[];
    initializer: DecodedTensor[];
    input: { name: string }[];
    output: { name: string }[];
  };
}

export interface OnnxProtoModule {
  onnx: {
    ModelProto: { encode(model: object): { finish(): Uint8Array }; decode(bytes: Uint8Array): DecodedModel };
  };
}

export const loadOnnxProto = () => load<OnnxProtoModule>('onnx-proto');

// ---- TensorFlow.js ----

export interface TfTensor {
  readonly shape: number[];
  dataSync(): Float32Array | Int32Array | Uint8Array;
  dispose(): void;
}

export interface TfModule {
  setBackend(name: string): Promise<boolean>;
  ready(): Promise<void>;
  getBackend(): string;
  tensor2d(values: Float32Array, shape: [number, number]): TfTensor;
  tensor1d(values: Float32Array | Int32Array, dtype?: 'float32' | 'int32'): TfTensor;
  scalar(value: number): TfTensor;
  matMul(a: TfTensor, b: TfTensor): TfTensor;
  add(a: TfTensor, b: TfTensor): TfTensor;
  sub(a: TfTensor, b: TfTensor): TfTensor;
  mul(a: TfTensor, b: TfTensor): TfTensor;
  relu(a: TfTensor): TfTensor;
  softplus(a: TfTensor): TfTensor;
  log(a: TfTensor): TfTensor;
  exp(a: TfTensor): TfTensor;
  abs(a: TfTensor): TfTensor;
  div(a: TfTensor, b: TfTensor): TfTensor;
  square(a: TfTensor): TfTensor;
  sum(a: TfTensor, axis?: number): TfTensor;
  gather(a: TfTensor, indices: TfTensor, axis?: number): TfTensor;
  slice(a: TfTensor, begin: number[], size: number[]): TfTensor;
  tidy<T extends TfTensor | TfTensor[]>(fn: () => T): T;
  version?: Record<string, string>;
}

export interface TfWasmModule {
  setWasmPaths?(prefix: string): void;
}

/** Loads @tensorflow/tfjs (cpu backend) and, if it loads, registers the wasm backend. */
export function loadTf(): { tf: TfModule | null; error: string | null; wasmError: string | null } {
  // tfjs-core prints an advert for tfjs-node when it sees Node; keep the bench's output clean.
  const info = console.info;
  const log = console.log;
  console.info = () => undefined;
  console.log = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].includes('tfjs-node')) return;
    log(...args);
  };
  try {
    const tf = load<TfModule>('@tensorflow/tfjs');
    if (!tf.module) return { tf: null, error: tf.error, wasmError: 'tfjs did not load' };
    const wasm = load<TfWasmModule>('@tensorflow/tfjs-backend-wasm');
    return { tf: tf.module, error: null, wasmError: wasm.error };
  } finally {
    console.info = info;
    console.log = log;
  }
}
