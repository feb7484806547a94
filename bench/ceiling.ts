// The external fp32 ceiling (issue 10): nothing of iaflow's own code measures it.
//  - the FMA peak and the clock, from bench/fma_probe.cc compiled here with the system c++
//    (-O2 -march=native) into a temporary folder and run with 1 and 2 threads;
//  - a tuned sgemm: onnxruntime's MatMul on SGEMM_SIZE x SGEMM_SIZE (MLAS, 2 intra-op threads) and
//    OpenBLAS through numpy where python3 has numpy (OPENBLAS_NUM_THREADS=2), in a long-lived child
//    process so each measurement costs one product, not a Python start.
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import type { Interface } from 'node:readline';
import { addChildCpuSeconds, processCpuSeconds } from './machine';
import { BENCH_DIR } from './peers';
import type { OnnxProtoModule, OrtModule, OrtSession } from './peers';

/** The sgemm's size (n x n times n x n); --quick uses QUICK_SGEMM_SIZE, an eighth of the work. */
export const SGEMM_SIZE = 4096;
export const QUICK_SGEMM_SIZE = 2048;

export interface FmaReading {
  isa: string;
  lanes: number;
  accumulators: number;
  threads: number;
  /** Sum over threads of each thread's best batch (GFLOP/s). */
  gflops: number;
  /** All batches of all threads (GFLOP/s): what the machine gave while the probe ran. */
  sustainedGflops: number;
  /** Mean over threads of the best add-chain batch (GHz). */
  ghz: number;
  flopsPerCyclePerCore: number;
}

/** Compiles bench/fma_probe.cc; null and a reason when there is no C++ compiler. */
export class FmaProbe {
  private constructor(
    private readonly binary: string,
    private readonly dir: string,
  ) {}

  static build(): { probe: FmaProbe | null; reason: string } {
    const cxx = process.env.CXX || 'c++';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-fma-'));
    const binary = path.join(dir, 'fma_probe');
    const result = spawnSync(cxx, ['-O2', '-march=native', '-std=c++17', '-pthread', '-o', binary, path.join(BENCH_DIR, 'fma_probe.cc')], { encoding: 'utf8' });
    if (result.status !== 0) {
      fs.rmSync(dir, { recursive: true, force: true });
      const why = result.error ? result.error.message : (result.stderr || '').split('\n')[0];
      return { probe: null, reason: `${cxx} -O2 -march=native could not build bench/fma_probe.cc (${why})` };
    }
    return { probe: new FmaProbe(binary, dir), reason: '' };
  }

  /** Runs the probe for `seconds` on `threads` threads (asynchronously: the event loop stays free). */
  run(threads: number, seconds: number): Promise<FmaReading> {
    return new Promise((resolve, reject) => {
      const t0 = performance.now();
      const child = spawn(this.binary, [String(threads), String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', reject);
      child.on('close', (code) => {
        addChildCpuSeconds((threads * (performance.now() - t0)) / 1e3); // it spins every thread throughout
        if (code !== 0) reject(new Error(`fma_probe exited with ${code}: ${err.trim()}`));
        else {
          try {
            resolve(JSON.parse(out) as FmaReading);
          } catch {
            reject(new Error(`fma_probe printed ${JSON.stringify(out.slice(0, 200))}`));
          }
        }
      });
    });
  }

  dispose(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** onnxruntime's MatMul (MLAS sgemm) on [n, n] x [n, n], B an initializer as a trained weight would be. */
export class OrtSgemm {
  private constructor(
    private readonly session: OrtSession,
    private readonly feed: Record<string, unknown>,
    readonly size: number,
  ) {}

  static async create(ort: OrtModule, onnx: OnnxProtoModule, options: object, n: number): Promise<OrtSgemm> {
    const b = randomMatrix(n, 2);
    const model = {
      irVersion: 8,
      producerName: 'iaflow-bench',
      opsetImport: [{ domain: '', version: 17 }],
      graph: {
        name: 'sgemm',
        node: [{ name: 'mm', opType: 'MatMul', input: ['a', 'b'], output: ['c'], attribute: [] }],
        initializer: [{ name: 'b', dims: [n, n], dataType: 1, rawData: new Uint8Array(b.buffer) }],
        input: [{ name: 'a', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: n }, { dimValue: n }] } } } }],
        output: [{ name: 'c', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: n }, { dimValue: n }] } } } }],
      },
    };
    const session = await ort.InferenceSession.create(onnx.onnx.ModelProto.encode(model).finish(), options as never);
    const feed = { a: new ort.Tensor('float32', randomMatrix(n, 1), [n, n]) };
    await session.run(feed); // warm-up: thread pool, packing of B
    return new OrtSgemm(session, feed, n);
  }

  /** GFLOP/s of one product. */
  async gflops(): Promise<number> {
    const t0 = performance.now();
    await this.session.run(this.feed as never);
    return (2 * this.size ** 3) / ((performance.now() - t0) / 1e3) / 1e9;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

const NUMPY_SCRIPT = `
import sys, time, json
import numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(1)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), dtype=np.float32)
np.matmul(a, b, out=c)
info = ''
try:
    cfg = np.show_config(mode='dicts')
    blas = cfg.get('Build Dependencies', {}).get('blas', {})
    info = ' '.join(str(blas.get(k, '')) for k in ('name', 'version')).strip()
except Exception:
    pass
print(json.dumps({'ready': True, 'numpy': np.__version__, 'blas': info}), flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    np.matmul(a, b, out=c)
    print(json.dumps({'gflops': 2.0 * n ** 3 / (time.perf_counter() - t) / 1e9}), flush=True)
`;

/** OpenBLAS (or whatever BLAS numpy has) through numpy, in a child process that waits for requests. */
export class NumpySgemm {
  private readonly pending: ((line: string) => void)[] = [];

  private constructor(
    private readonly child: ChildProcessWithoutNullStreams,
    private readonly lines: Interface,
    readonly description: string,
  ) {
    lines.on('line', (line) => this.pending.shift()?.(line));
  }

  static async start(threads: number, size: number): Promise<{ sgemm: NumpySgemm | null; reason: string }> {
    const check = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
    if (check.error || check.status !== 0) return { sgemm: null, reason: `python3 has no numpy (${check.error ? check.error.message : (check.stderr || '').trim().split('\n').pop()})` };
    const env = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) };
    const child = spawn('python3', ['-c', NUMPY_SCRIPT, String(size)], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const lines = createInterface({ input: child.stdout });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const first = await new Promise<string | null>((resolve) => {
      lines.once('line', resolve);
      child.once('close', () => resolve(null));
      child.once('error', () => resolve(null));
    });
    if (!first) return { sgemm: null, reason: `python3 numpy sgemm did not start: ${stderr.trim().split('\n').pop() ?? ''}` };
    const hello = JSON.parse(first) as { numpy: string; blas: string };
    return { sgemm: new NumpySgemm(child, lines, `numpy ${hello.numpy}${hello.blas ? `, ${hello.blas}` : ''}, ${threads} threads`), reason: '' };
  }

  gflops(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.pending.push((line) => {
        try {
          resolve((JSON.parse(line) as { gflops: number }).gflops);
        } catch (error) {
          reject(error);
        }
      });
      this.child.stdin.write('run\n');
    });
  }

  dispose(): void {
    if (this.child.pid) addChildCpuSeconds(processCpuSeconds(this.child.pid));
    this.lines.close();
    this.child.stdin.end();
    this.child.kill();
  }
}

function randomMatrix(n: number, seed: number): Float32Array {
  const m = new Float32Array(n * n);
  let s = seed >>> 0;
  for (let i = 0; i < m.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    m[i] = s / 4294967296 - 0.5;
  }
  return m;
}
