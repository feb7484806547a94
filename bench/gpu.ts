// iaflow's GPU benchmark (issue 15): rows/s and masked GFLOP/s of the 'cuda' backend in both
// directions of an IAF and a MAF, against the device's measured fp32 ceiling (bench/gpu_fma_probe.cu,
// compiled here with nvcc; torch.matmul's sgemm with TF32 off and on where python3 has torch),
// against a masked-linear MADE in plain PyTorch on the same GPU (bench/gpu_torch_peer.py), and
// against the same flow on iaflow's 'cpu' backend, from one run. Prints a markdown report on
// stdout (the progress log goes to stderr).
//
// Without a usable 'cuda' backend (no library, no driver, no device) it says why, still builds
// (and tries) the FMA probe and the torch peer, and exits 0.
//
//   npx tsx bench/gpu.ts [--quick] [--only CFG-A,CFG-B,CFG-E] [--no-torch] [--no-compile] [--no-cpu]
//                        [--python PATH] [--json FILE] [--backend NAME] [--budget SECONDS]
//                        [--torch-device cuda|cpu]
//
// --backend cuda-emulator (with IAFLOW_CUDA_EMULATOR=1) and --torch-device cpu run every code path
// on a machine without a GPU, slowly (a smoke test of the bench, not a measurement).
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { backends, createIAF, createMAF, standardNormal } from '../src/index';
import type { Flow } from '../src/index';
import { cpuInfo } from './machine';
import { maskedMacsPerRow, randomParameters } from './network';
import { BENCH_DIR } from './peers';
import { interleave, median, prepare, rateOf, ratioOf } from './timing';
import type { Call, Prepared, Slot } from './timing';

// ---------------------------------------------------------------- configuration

interface Shape {
  /** The section --only names. */
  section: 'CFG-A' | 'CFG-B' | 'CFG-E';
  dim: number;
  hidden: number[];
  layers: number;
  batch: number;
}

/** Issue 15's configurations; CFG-A also at a batch that fills a GPU, CFG-B at that batch only. */
const SHAPES: Shape[] = [
  { section: 'CFG-A', dim: 16, hidden: [256, 256], layers: 5, batch: 10_000 },
  { section: 'CFG-A', dim: 16, hidden: [256, 256], layers: 5, batch: 1_048_576 },
  { section: 'CFG-B', dim: 64, hidden: [512, 512], layers: 5, batch: 1_048_576 },
  { section: 'CFG-E', dim: 64, hidden: [1024, 1024], layers: 8, batch: 1_048_576 },
];
const SECTIONS = ['CFG-A', 'CFG-B', 'CFG-E'] as const;
type Section = (typeof SECTIONS)[number];
const SEED = 20261125;
/** The cuda sample must equal the cpu sample (same seed) within this, relative, on the first rows. */
const SAME_SAMPLE_TOLERANCE = 1e-4;
const CHECK_ROWS = 256;

// Targets of issue 15 (on an H100).
const TARGET_CEILING_PCT = 50; // parallel direction at CFG-E, % of the measured fp32 ceiling
const TARGET_VS_TORCH = 2; // parallel direction at CFG-E, x PyTorch's rows/s
const TARGET_SEQ_FRACTION = 0.25; // sequential rows/s over the same flow's parallel rows/s
const TARGET_SECTION: Section = 'CFG-E';

interface Args {
  quick: boolean;
  only: Set<Section> | null;
  torch: boolean;
  compile: boolean;
  cpu: boolean;
  python: string;
  json: string | null;
  backend: string;
  /** Seconds the whole run should fit in (gpu-check.sh's time left): later cells are skipped, the torch peer cut short. */
  budget: number | null;
  /** Where the torch peer runs: 'cuda', or 'cpu' for a smoke test on a machine without a GPU. */
  torchDevice: 'cuda' | 'cpu';
}

const USAGE =
  'npx tsx bench/gpu.ts [--quick] [--only CFG-A,CFG-B,CFG-E] [--no-torch] [--no-compile] [--no-cpu] [--python PATH] [--json FILE] [--backend NAME] [--budget SECONDS] [--torch-device cuda|cpu]';

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, only: null, torch: true, compile: true, cpu: true, python: process.env.PYTHON || 'python3', json: null, backend: 'cuda', budget: null, torchDevice: 'cuda' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (name: string): string => {
      const v = a === name ? argv[++i] : a.slice(name.length + 1);
      if (!v) throw new Error(`${name} needs a value: ${USAGE}`);
      return v;
    };
    if (a === '--quick') args.quick = true;
    else if (a === '--no-torch') args.torch = false;
    else if (a === '--no-compile') args.compile = false;
    else if (a === '--no-cpu') args.cpu = false;
    else if (a === '--python' || a.startsWith('--python=')) args.python = value('--python');
    else if (a === '--json' || a.startsWith('--json=')) args.json = path.resolve(value('--json'));
    else if (a === '--backend' || a.startsWith('--backend=')) args.backend = value('--backend');
    else if (a === '--budget' || a.startsWith('--budget=')) {
      const v = Number(value('--budget'));
      if (!(v > 0)) throw new Error(`--budget: a number of seconds > 0`);
      args.budget = v;
    }    else if (a === '--torch-device' || a.startsWith('--torch-device=')) {
      const v = value('--torch-device');
      if (v !== 'cuda' && v !== 'cpu') throw new Error(`--torch-device: 'cuda' or 'cpu', not ${v}`);
      args.torchDevice = v;
    } else if (a === '--only' || a.startsWith('--only=')) {
      args.only ??= new Set();
      for (const s of value('--only').split(',')) {
        const name = s.trim().toUpperCase() as Section;
        if (!SECTIONS.includes(name)) throw new Error(`--only: unknown section ${s} (one of ${SECTIONS.join(', ')})`);
        args.only.add(name);
      }
    } else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}: ${USAGE}`);
  }
  return args;
}

// ---------------------------------------------------------------- formatting

const fmtRate = (v: number | undefined): string => {
  if (v === undefined || !Number.isFinite(v)) return '—';
  if (v >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (v >= 1e3) return `${(v / 1e3).toPrecision(3)}k`;
  return v >= 10 ? v.toFixed(0) : v.toPrecision(2);
};
const fmtX = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? `${v >= 10 ? v.toFixed(0) : v.toFixed(2)}x` : '—');
const fmtG = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : '—');
const fmtPct = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? `${v >= 10 ? v.toFixed(0) : v.toFixed(1)}%` : '—');
const fmtFrac = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? (v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)) : '—');
const fmtErr = (v: number) => (Number.isFinite(v) ? v.toExponential(1) : 'mismatch');
const fmtBatch = (rows: number, batch: number) => (rows < batch ? ` (b=${rows})` : '');
const verdict = (pass: boolean | null) => (pass === null ? 'N/A' : pass ? 'PASS' : 'MISS');
const firstLine = (error: unknown) => (error instanceof Error ? error.message : String(error)).split('\n')[0];

function markdownTable(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [`| ${header.map(esc).join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`)].join('\n');
}

const log = (line: string) => console.error(`[bench:gpu] ${line}`);

// ---------------------------------------------------------------- the device's ceiling: the FMA probe

export interface GpuFmaReading {
  device: string;
  computeCapability: string;
  sms: number;
  ratedClockMHz: number;
  measuredClockMHz: number;
  /** Best batch of launches (GFLOP/s): the peak. */
  gflops: number;
  /** All batches together. */
  sustainedGflops: number;
  flopsPerCyclePerSm: number;
}

/** bench/gpu_fma_probe.cu compiled with nvcc into a temporary folder; null and a reason where that fails. */
class GpuFmaProbe {
  private constructor(
    private readonly binary: string,
    private readonly dir: string,
  ) {}

  static nvcc(): string | null {
    const candidates = [process.env.NVCC, 'nvcc', process.env.CUDA_HOME && path.join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc'];
    for (const c of candidates) {
      if (!c) continue;
      const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
      if (!r.error && r.status === 0) return c;
    }
    return null;
  }

  static build(): { probe: GpuFmaProbe | null; reason: string; nvccVersion: string } {
    const nvcc = GpuFmaProbe.nvcc();
    if (!nvcc) return { probe: null, reason: 'nvcc not found (PATH, $NVCC, $CUDA_HOME/bin, /usr/local/cuda/bin)', nvccVersion: '' };
    const version = /release [^\n]*/.exec(spawnSync(nvcc, ['--version'], { encoding: 'utf8' }).stdout ?? '')?.[0] ?? 'unknown';
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-gpu-fma-'));
    const binary = path.join(dir, 'gpu_fma_probe');
    // sm_90 (Hopper) and sm_80 machine code, PTX of compute_75 for any other card the driver can JIT for.
    const flags = ['-O3', '-std=c++17', '-gencode', 'arch=compute_90,code=sm_90', '-gencode', 'arch=compute_80,code=sm_80', '-gencode', 'arch=compute_75,code=compute_75'];
    const t0 = performance.now();
    const result = spawnSync(nvcc, [...flags, '-o', binary, path.join(BENCH_DIR, 'gpu_fma_probe.cu')], { encoding: 'utf8' });
    if (result.status !== 0) {
      fs.rmSync(dir, { recursive: true, force: true });
      const why = result.error ? result.error.message : (result.stderr || result.stdout || '').trim().split('\n').slice(0, 6).join(' / ');
      return { probe: null, reason: `nvcc could not build bench/gpu_fma_probe.cu: ${why}`, nvccVersion: version };
    }
    log(`nvcc (${version}) built bench/gpu_fma_probe.cu in ${((performance.now() - t0) / 1e3).toFixed(1)} s`);
    return { probe: new GpuFmaProbe(binary, dir), reason: '', nvccVersion: version };
  }

  /** Runs the probe; its reading, or why it could not run (no device, no driver). */
  run(seconds: number): Promise<GpuFmaReading | { error: string }> {
    return new Promise((resolve) => {
      const child = spawn(this.binary, [String(seconds)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      const timer = setTimeout(() => child.kill('SIGKILL'), (seconds + 60) * 1e3);
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('error', (error) => {
        clearTimeout(timer);
        resolve({ error: error.message });
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        try {
          const parsed = JSON.parse(out) as GpuFmaReading | { error: string };
          resolve(parsed);
        } catch {
          resolve({ error: `gpu_fma_probe exited with ${signal ?? code}: ${(err || out).trim().split('\n')[0]}` });
        }
      });
    });
  }

  dispose(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- the PyTorch peer

interface TorchTiming {
  rowsPerSec: number;
  seconds: number;
  calls: number;
  compileSeconds?: number;
  maxAbsDiffLogProb?: number;
  what?: string;
}

interface TorchCell {
  name: string;
  rows?: number;
  maskedMacsPerRow?: number;
  eager?: TorchTiming;
  compiled?: TorchTiming | { error: string };
  best?: 'eager' | 'compiled';
  rowsPerSec?: number;
  withCopies?: { rowsPerSec: number; calls: number };
  error?: string;
  wallSeconds?: number;
}

interface TorchReport {
  available: boolean;
  reason?: string;
  torch?: string;
  device?: string;
  cuda?: string;
  sgemm?: { size: number; fp32: { gflops: number }; tf32: { gflops: number } };
  cells?: TorchCell[];
}

interface TorchSpecCell {
  name: string;
  dim: number;
  batch: number;
  direction: 'toData' | 'toLatent';
  compile: boolean;
  layers: unknown[];
}

/** The running torch peer, killed with the bench when a time limit stops it. */
let torchChild: ChildProcess | null = null;

/** Runs bench/gpu_torch_peer.py once on every cell (one process: one torch import, one CUDA context). */
function runTorchPeer(python: string, device: 'cuda' | 'cpu', spec: { seconds: number; maxCallSeconds: number; sgemm: number; deadlineSeconds: number; cells: TorchSpecCell[] }, timeoutSeconds: number): Promise<TorchReport> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-torch-peer-'));
  const file = path.join(dir, 'spec.json');
  fs.writeFileSync(file, JSON.stringify(spec));
  return new Promise((resolve) => {
    const done = (report: TorchReport) => {
      fs.rmSync(dir, { recursive: true, force: true });
      resolve(report);
    };
    const child = spawn(python, [path.join(BENCH_DIR, 'gpu_torch_peer.py'), file, '--device', device], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PYTHONUNBUFFERED: '1' } });
    torchChild = child;
    let out = '';
    let errTail = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutSeconds * 1e3);
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      const text = d.toString();
      errTail = (errTail + text).slice(-2000);
      for (const line of text.split('\n')) if (line.startsWith('[torch peer]')) log(line.length > 300 ? `${line.slice(0, 300)}...` : line);
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      done({ available: false, reason: `${python} did not start (${error.message})` });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      torchChild = null;
      const last = out.trim().split('\n').pop() ?? '';
      try {
        done(JSON.parse(last) as TorchReport);
      } catch {
        const why = timedOut ? `killed after ${timeoutSeconds} s` : `exited with ${code}`;
        done({ available: false, reason: `bench/gpu_torch_peer.py ${why}: ${errTail.trim().split('\n').slice(-1)[0] ?? ''}` });
      }
    });
  });
}

// ---------------------------------------------------------------- cells

type DirectionName = 'IAF sample' | 'MAF logProb' | 'IAF logProb' | 'MAF sample';
const DIRECTIONS: { name: DirectionName; kind: 'iaf' | 'maf'; direction: 'toData' | 'toLatent'; pass: 'parallel' | 'sequential'; other: DirectionName }[] = [
  { name: 'IAF sample', kind: 'iaf', direction: 'toData', pass: 'parallel', other: 'IAF logProb' },
  { name: 'MAF logProb', kind: 'maf', direction: 'toLatent', pass: 'parallel', other: 'MAF sample' },
  { name: 'IAF logProb', kind: 'iaf', direction: 'toLatent', pass: 'sequential', other: 'IAF sample' },
  { name: 'MAF sample', kind: 'maf', direction: 'toData', pass: 'sequential', other: 'MAF logProb' },
];

interface Row {
  config: string;
  section: Section;
  direction: DirectionName;
  pass: 'parallel' | 'sequential';
  batch: number;
  maskedFlopsPerRow: number;
  gpu?: { rowsPerSec: number; rows: number };
  cpu?: { rowsPerSec: number; rows: number; ratio: number };
  /** Sequential rows: gpu rows/s over the same flow's parallel direction on the gpu, same rounds. */
  seqFraction?: number;
  torch?: TorchCell;
  error?: string;
}

interface SameSample {
  config: string;
  cell: string;
  /** max |gpu - cpu| / max(|cpu|, 1) over the first rows: x (where the cell has it) and log p. */
  x: number | null;
  logProb: number;
  pass: boolean;
}

interface Target {
  name: string;
  measured: string;
  pass: boolean | null;
}

const label = (s: Shape) => `${s.section}${s.batch !== SHAPES.find((o) => o.section === s.section)!.batch ? ` (batch ${s.batch.toLocaleString('en-US')})` : ''}`;

function makeFlow(kind: 'iaf' | 'maf', shape: Shape, backend: string, params?: Record<string, Float32Array>): Flow {
  // softClamp 0: the torch peer is a plain MADE (the default clamp adds work the peer would not do).
  const flow = (kind === 'iaf' ? createIAF : createMAF)({ dim: shape.dim, hidden: shape.hidden, layers: shape.layers, seed: SEED, scale: 'exp', softClamp: 0, backend });
  flow.setParameters(params ?? randomParameters(flow, SEED + 1));
  return flow;
}

/** max over elements of |a - b| / max(|b|, 1): relative for large values, absolute near zero. */
function relativeDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), 1);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

function caller(flow: Flow, direction: 'toData' | 'toLatent', input: Float32Array | null) {
  return (rows: number): Call => {
    if (direction === 'toData') return () => flow.sampleWithLogProb(rows, { seed: SEED });
    const x = input!.subarray(0, rows * flow.dim);
    return () => flow.logProb(x);
  };
}

/** The torch peer's description of a flow: its layers with their degrees and permutations. */
function torchLayers(flow: Flow): unknown[] {
  return flow.config.layers.map((layer) => {
    if (layer.type === 'permutation') return { type: 'permutation', permutation: [...layer.permutation] };
    if (layer.type === 'iaf' || layer.type === 'maf') return { type: layer.type, inputDegrees: [...layer.inputDegrees], hiddenDegrees: layer.hiddenDegrees.map((d) => [...d]) };
    throw new Error(`bench: the torch peer has no ${layer.type} layer`);
  });
}

interface Context {
  args: Args;
  rounds: number;
  sliceSeconds: number;
  maxCallSeconds: number;
  cpuMaxCallSeconds: number;
  rows: Row[];
  same: SameSample[];
  notes: string[];
}

async function runShape(ctx: Context, shape: Shape): Promise<void> {
  const config = label(shape);
  log(`${config}: D=${shape.dim}, hidden [${shape.hidden.join(', ')}], ${shape.layers} layers, exp scale, batch ${shape.batch}`);
  const flows: Record<'iaf' | 'maf', { cpu: Flow; gpu: Flow | null; error?: string }> = {} as never;
  for (const kind of ['iaf', 'maf'] as const) {
    const cpu = makeFlow(kind, shape, 'cpu');
    try {
      flows[kind] = { cpu, gpu: makeFlow(kind, shape, ctx.args.backend, cpu.getParameters()) };
    } catch (error) {
      flows[kind] = { cpu, gpu: null, error: `createFlow({ backend: '${ctx.args.backend}' }) failed: ${firstLine(error)}` };
      log(`  ${kind.toUpperCase()}: ${flows[kind].error}`);
    }
  }
  const maskedFlopsPerRow = 2 * maskedMacsPerRow(flows.iaf.cpu.config);
  ctx.notes.push(`${config}: ${(maskedFlopsPerRow / 1e6).toFixed(3)} masked MFLOP per row (all ${shape.layers} layers, one network pass each).`);

  // Inputs of the density directions: the IAF's own samples (its parallel direction, on the gpu
  // where it works); N(0, I) rows for the MAF (its sampling is the slow direction, and the work
  // does not depend on the values).
  const inputs: Record<'iaf' | 'maf', Float32Array> = {
    iaf: flows.iaf.gpu ? (await flows.iaf.gpu.sample(shape.batch, { seed: SEED + 1 }).catch(() => null)) ?? standardNormal(shape.batch, shape.dim, { seed: SEED + 1 }) : standardNormal(shape.batch, shape.dim, { seed: SEED + 1 }),
    maf: standardNormal(shape.batch, shape.dim, { seed: SEED + 2 }),
  };

  // Same samples? The gpu against the cpu, same seed, first rows, every direction.
  for (const d of DIRECTIONS) {
    const { cpu, gpu } = flows[d.kind];
    if (!gpu) continue;
    try {
      if (d.direction === 'toData') {
        const a = await gpu.sampleWithLogProb(CHECK_ROWS, { seed: SEED });
        const b = await cpu.sampleWithLogProb(CHECK_ROWS, { seed: SEED });
        const x = relativeDiff(a.x, b.x);
        const lp = relativeDiff(a.logProb, b.logProb);
        ctx.same.push({ config, cell: d.name, x, logProb: lp, pass: x <= SAME_SAMPLE_TOLERANCE && lp <= SAME_SAMPLE_TOLERANCE });
      } else {
        const x = inputs[d.kind].subarray(0, CHECK_ROWS * shape.dim);
        const lp = relativeDiff(await gpu.logProb(x), await cpu.logProb(x));
        ctx.same.push({ config, cell: d.name, x: null, logProb: lp, pass: lp <= SAME_SAMPLE_TOLERANCE });
      }
    } catch (error) {
      ctx.same.push({ config, cell: d.name, x: Infinity, logProb: Infinity, pass: false });
      ctx.notes.push(`${config} ${d.name}: the same-sample check failed: ${firstLine(error)}`);
    }
  }

  const gpuPrepared: Partial<Record<DirectionName, Prepared>> = {};
  const gpuPrepare = async (d: (typeof DIRECTIONS)[number]): Promise<Prepared> => {
    const flow = flows[d.kind].gpu!;
    gpuPrepared[d.name] ??= await prepare(caller(flow, d.direction, inputs[d.kind]), shape.batch, { maxCallSeconds: ctx.maxCallSeconds, granule: 256 });
    return gpuPrepared[d.name]!;
  };
  for (const d of DIRECTIONS) {
    const row: Row = { config, section: shape.section, direction: d.name, pass: d.pass, batch: shape.batch, maskedFlopsPerRow };
    ctx.rows.push(row);
    const { cpu, gpu, error } = flows[d.kind];
    if (!gpu) {
      row.error = error;
      continue;
    }
    try {
      const fast = await gpuPrepare(d);
      const slots: Slot[] = [{ name: 'gpu', rows: fast.rows, call: fast.call }];
      if (d.pass === 'sequential') {
        const par = await gpuPrepare(DIRECTIONS.find((o) => o.name === d.other)!);
        slots.push({ name: 'gpu-par', rows: par.rows, call: par.call });
      }
      let cpuRows = 0;
      if (ctx.args.cpu) {
        const slow = await prepare(caller(cpu, d.direction, inputs[d.kind]), shape.batch, { maxCallSeconds: ctx.cpuMaxCallSeconds });
        cpuRows = slow.rows;
        slots.push({ name: 'cpu', rows: slow.rows, call: slow.call });
      }
      log(`  ${d.name} (${d.pass}): ${ctx.rounds} interleaved rounds of ${slots.map((s) => `${s.name}${'rows' in s ? ` (${s.rows} rows)` : ''}`).join(', ')}`);
      const r = await interleave(slots, { rounds: ctx.rounds, sliceSeconds: ctx.sliceSeconds });
      row.gpu = { rowsPerSec: rateOf(r, 'gpu'), rows: fast.rows };
      if (ctx.args.cpu) row.cpu = { rowsPerSec: rateOf(r, 'cpu'), rows: cpuRows, ratio: ratioOf(r, 'gpu', 'cpu') };
      if (d.pass === 'sequential') row.seqFraction = ratioOf(r, 'gpu', 'gpu-par');
      log(
        `  -> ${ctx.args.backend} ${fmtRate(row.gpu.rowsPerSec)} rows/s${fmtBatch(fast.rows, shape.batch)}, ${fmtG((row.gpu.rowsPerSec * maskedFlopsPerRow) / 1e9)} masked GFLOP/s` +
          (row.cpu ? `, cpu ${fmtRate(row.cpu.rowsPerSec)} rows/s${fmtBatch(row.cpu.rows, shape.batch)} (${fmtX(row.cpu.ratio)})` : '') +
          (row.seqFraction !== undefined ? `, seq/par ${fmtFrac(row.seqFraction)}` : ''),
      );
    } catch (error) {
      row.error = `${d.name} on ${ctx.args.backend} failed: ${firstLine(error)}`;
      log(`  ${row.error}`);
    }
  }
  for (const kind of ['iaf', 'maf'] as const) {
    flows[kind].cpu.dispose();
    flows[kind].gpu?.dispose();
  }
}

// ---------------------------------------------------------------- report

interface Ceiling {
  probe: GpuFmaReading | null;
  probeReason: string;
  nvccVersion: string;
  torch: TorchReport | null;
  /** The fp32 ceiling the targets use: the FMA probe's peak, else torch's fp32 sgemm. */
  fp32: number | null;
  fp32Source: string;
}

function judge(ctx: Context, ceiling: Ceiling): Target[] {
  const targets: Target[] = [];
  for (const row of ctx.rows) {
    if (row.section !== TARGET_SECTION || row.pass !== 'parallel') continue;
    const name = `${row.config} ${row.direction}`;
    const gflops = row.gpu ? (row.gpu.rowsPerSec * row.maskedFlopsPerRow) / 1e9 : undefined;
    const pct = gflops !== undefined && ceiling.fp32 ? (100 * gflops) / ceiling.fp32 : undefined;
    targets.push({
      name: `${name}: masked GFLOP/s >= ${TARGET_CEILING_PCT}% of the measured fp32 ceiling (${ceiling.fp32Source})`,
      measured: pct !== undefined ? `${fmtPct(pct)} (${fmtG(gflops)} of ${fmtG(ceiling.fp32 ?? undefined)} GFLOP/s)` : 'not measured',
      pass: pct !== undefined ? pct >= TARGET_CEILING_PCT : null,
    });
    const torchRate = row.torch?.rowsPerSec;
    const vsTorch = row.gpu && torchRate ? row.gpu.rowsPerSec / torchRate : undefined;
    targets.push({
      name: `${name}: >= ${TARGET_VS_TORCH}x PyTorch's rows/s (same network, same GPU)`,
      measured: vsTorch !== undefined ? `${fmtX(vsTorch)} (${fmtRate(row.gpu!.rowsPerSec)} vs ${fmtRate(torchRate)})` : 'not measured',
      pass: vsTorch !== undefined ? vsTorch >= TARGET_VS_TORCH : null,
    });
  }
  for (const row of ctx.rows) {
    if (row.pass !== 'sequential') continue;
    targets.push({
      name: `${row.config} ${row.direction}: sequential rows/s >= ${TARGET_SEQ_FRACTION} of the parallel direction's`,
      measured: row.seqFraction !== undefined ? fmtFrac(row.seqFraction) : 'not measured',
      pass: row.seqFraction !== undefined ? row.seqFraction >= TARGET_SEQ_FRACTION : null,
    });
  }
  for (const s of ctx.same) {
    targets.push({
      name: `${s.config} ${s.cell}: ${s.cell.endsWith('sample') ? 'the sample equals the cpu backend\'s (same seed)' : 'log p equals the cpu backend\'s (same x)'} within ${SAME_SAMPLE_TOLERANCE} relative on the first ${CHECK_ROWS} rows`,
      measured: s.x !== null ? `x ${fmtErr(s.x)}, log q ${fmtErr(s.logProb)}` : `log p ${fmtErr(s.logProb)}`,
      pass: s.pass,
    });
  }
  return targets;
}

function report(ctx: Context, ceiling: Ceiling, header: string[], gpuProblem: string | null, targets: Target[]): string {
  const out: string[] = [];
  const backend = ctx.args.backend;
  out.push(`<!-- bench/gpu.ts: begin (${new Date().toISOString().slice(0, 10)}) -->`);
  out.push(`# iaflow GPU benchmark${ctx.args.quick ? ' (quick)' : ''}`);
  out.push('');
  for (const line of header) out.push(`- ${line}`);
  out.push('');
  if (gpuProblem) {
    out.push(`**Nothing was timed on the GPU: ${gpuProblem}**`);
    out.push('');
  }

  out.push("## The device's fp32 ceiling");
  out.push('');
  const ceilingRows: string[][] = [];
  if (ceiling.probe) {
    const p = ceiling.probe;
    ceilingRows.push([
      `FMA probe (bench/gpu_fma_probe.cu; ${p.sms} SMs)`,
      `${fmtG(p.gflops)} (sustained ${fmtG(p.sustainedGflops)})`,
      `SM clock ${p.measuredClockMHz.toFixed(0)} MHz measured (rated ${p.ratedClockMHz.toFixed(0)}), ${p.flopsPerCyclePerSm.toFixed(0)} flops/cycle/SM`,
    ]);
  } else ceilingRows.push(['FMA probe (bench/gpu_fma_probe.cu)', '—', ceiling.probeReason]);
  const t = ceiling.torch;
  if (t?.available && t.sgemm) {
    ceilingRows.push([`torch.matmul ${t.sgemm.size}^3, TF32 off (cuBLAS sgemm)`, fmtG(t.sgemm.fp32.gflops), `torch ${t.torch} on ${t.device}`]);
    ceilingRows.push([`torch.matmul ${t.sgemm.size}^3, TF32 on (tensor cores)`, fmtG(t.sgemm.tf32.gflops), 'a second ceiling: the kernels are fp32 (TF32 not built)']);
  } else ceilingRows.push(['torch.matmul sgemm, TF32 off and on', '—', t ? (t.reason ?? 'not run') : '--no-torch']);
  out.push(markdownTable(['source', 'GFLOP/s', 'note'], ceilingRows));
  out.push('');
  out.push(`"% fp32 ceiling" below is over ${ceiling.fp32Source}.`);
  out.push('');

  if (ctx.rows.length) {
    out.push(`## Rows/s: ${backend} against PyTorch and iaflow's cpu backend`);
    out.push('');
    const order = (r: Row) => SHAPES.findIndex((s) => label(s) === r.config);
    const rows = [...ctx.rows].sort((a, b) => order(a) - order(b)).map((r) => {
      const g = r.gpu ? (r.gpu.rowsPerSec * r.maskedFlopsPerRow) / 1e9 : undefined;
      const torch = r.torch;
      const torchText = torch?.rowsPerSec
        ? `${fmtRate(torch.rowsPerSec)}${fmtBatch(torch.rows ?? r.batch, r.batch)} ${torch.best === 'compiled' ? '(compiled)' : '(eager)'}`
        : torch?.error
          ? `failed (${torch.error})`
          : '—';
      return [
        r.config,
        r.direction,
        r.pass,
        r.batch.toLocaleString('en-US'),
        r.gpu ? `${fmtRate(r.gpu.rowsPerSec)}${fmtBatch(r.gpu.rows, r.batch)}` : r.error ? `failed (${r.error})` : '—',
        fmtG(g),
        g !== undefined && ceiling.fp32 ? fmtPct((100 * g) / ceiling.fp32) : '—',
        g !== undefined && t?.sgemm ? fmtPct((100 * g) / t.sgemm.fp32.gflops) : '—',
        torchText,
        r.gpu && torch?.rowsPerSec ? fmtX(r.gpu.rowsPerSec / torch.rowsPerSec) : '—',
        torch?.withCopies ? fmtRate(torch.withCopies.rowsPerSec) : '—',
        r.cpu ? `${fmtRate(r.cpu.rowsPerSec)}${fmtBatch(r.cpu.rows, r.batch)}` : '—',
        r.cpu ? fmtX(r.cpu.ratio) : '—',
        r.seqFraction !== undefined ? fmtFrac(r.seqFraction) : '—',
      ];
    });
    out.push(
      markdownTable(
        ['config', 'direction', 'pass', 'batch', `${backend} rows/s`, 'masked GFLOP/s', '% fp32 ceiling', '% sgemm', 'PyTorch rows/s (device-resident)', `${backend} / PyTorch`, 'PyTorch with host copies', 'cpu rows/s', `${backend} / cpu`, 'seq/par'],
        rows,
      ),
    );
    out.push('');
    out.push(
      `iaflow's calls are the public async API on Float32Arrays (host to device and back included): sampling directions draw z themselves (Philox in the kernel) and return x and log q; density directions read x. ` +
        `PyTorch's rows/s has its inputs already on the device (z given, not drawn) and is the faster of eager and torch.compile; "with host copies" is the same call with a pinned host input copied in and the outputs copied back. ` +
        `${backend} / cpu is the median of per-round ratios of the two timed interleaved; seq/par the same against the flow's parallel direction on the GPU. A (b=N) cell ran on N rows because one call at the full batch would have taken too long.`,
    );
    out.push('');
  }

  if (targets.length) {
    out.push('## Targets (issue 15)');
    out.push('');
    out.push(markdownTable(['target', 'measured', 'verdict'], targets.map((x) => [x.name, x.measured, verdict(x.pass)])));
    out.push('');
  }

  const compiledNotes = (t?.cells ?? []).flatMap((c) => {
    if (!c.compiled) return [];
    if ('error' in c.compiled) return [`${c.name}: torch.compile failed (${c.compiled.error}); eager only`];
    return [`${c.name}: torch.compile (${c.compiled.what}) ${fmtRate(c.compiled.rowsPerSec)} rows/s against eager ${fmtRate(c.eager?.rowsPerSec)}, compiled in ${c.compiled.compileSeconds?.toFixed(0)} s, log-prob max abs diff from eager ${fmtErr(c.compiled.maxAbsDiffLogProb ?? NaN)}`];
  });
  if (compiledNotes.length) {
    out.push('## PyTorch: eager and torch.compile');
    out.push('');
    for (const n of compiledNotes) out.push(`- ${n}`);
    out.push('');
  }

  if (ctx.notes.length) {
    out.push('## Notes');
    out.push('');
    for (const n of ctx.notes) out.push(`- ${n}`);
    out.push('');
  }
  out.push('<!-- bench/gpu.ts: end -->');
  return out.join('\n');
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date();
  const t0 = performance.now();
  const wants = (s: Section) => !args.only || args.only.has(s);
  const ctx: Context = {
    args,
    rounds: args.quick ? 2 : 5,
    sliceSeconds: args.quick ? 0.2 : 0.5,
    maxCallSeconds: args.quick ? 1.5 : 3,
    cpuMaxCallSeconds: args.quick ? 0.5 : 1.5,
    rows: [],
    same: [],
    notes: [],
  };

  const info = cpuInfo();
  const all = backends();
  const gpuInfo = all.find((b) => b.name === args.backend);
  const gpuProblem = !gpuInfo
    ? `this build of iaflow has no '${args.backend}' backend (backends() lists ${all.map((b) => `'${b.name}'`).join(', ')}): build it with \`npm run build:cuda\``
    : !gpuInfo.usable
      ? `iaflow's '${args.backend}' backend is not usable here: ${gpuInfo.whyNot}`
      : null;
  log(gpuProblem ?? `backend '${args.backend}': ${gpuInfo!.detail}`);

  const built = GpuFmaProbe.build();
  if (!built.probe) log(built.reason);
  const ceiling: Ceiling = { probe: null, probeReason: built.reason, nvccVersion: built.nvccVersion, torch: null, fp32: null, fp32Source: 'nothing (no ceiling was measured)' };
  const readings: GpuFmaReading[] = [];
  const runProbe = async () => {
    if (!built.probe) return;
    const r = await built.probe.run(args.quick ? 0.5 : 1.5);
    if ('error' in r) {
      ceiling.probeReason = `gpu_fma_probe could not run: ${r.error}`;
      log(ceiling.probeReason);
    } else {
      readings.push(r);
      log(`FMA probe: ${r.device}, ${fmtG(r.gflops)} GFLOP/s (sustained ${fmtG(r.sustainedGflops)}), SM clock ${r.measuredClockMHz.toFixed(0)} MHz, ${r.flopsPerCyclePerSm.toFixed(0)} flops/cycle/SM`);
    }
  };

  // The report from what has been measured so far: at the end, or when a time limit stops the run
  // (SIGTERM, as timeout(1) sends), so a cut run still leaves its figures.
  const finish = (stoppedBy?: string) => {
    if (readings.length) {
      const best = readings.reduce((a, b) => (b.gflops > a.gflops ? b : a));
      ceiling.probe = { ...best, sustainedGflops: median(readings.map((r) => r.sustainedGflops)) };
      ceiling.fp32 = best.gflops;
      ceiling.fp32Source = `the FMA probe's peak, ${fmtG(best.gflops)} GFLOP/s`;
    } else if (ceiling.torch?.sgemm) {
      ceiling.fp32 = ceiling.torch.sgemm.fp32.gflops;
      ceiling.fp32Source = `torch's fp32 sgemm, ${fmtG(ceiling.fp32)} GFLOP/s (the FMA probe did not run)`;
    }

    const header = [
      `date ${started.toISOString()}, ${((performance.now() - t0) / 1e3).toFixed(0)} s`,
      `GPU: ${ceiling.probe ? `${ceiling.probe.device} (compute capability ${ceiling.probe.computeCapability}, ${ceiling.probe.sms} SMs)` : 'none measured'}; iaflow backend '${args.backend}': ${gpuInfo ? (gpuInfo.usable ? gpuInfo.detail : `unusable (${gpuInfo.whyNot})`) : 'not in this build'}`,
      `nvcc: ${ceiling.nvccVersion || 'not found'}; PyTorch: ${ceiling.torch ? (ceiling.torch.available ? `${ceiling.torch.torch} (${ceiling.torch.cuda ? `CUDA ${ceiling.torch.cuda}` : 'no CUDA'}) on ${ceiling.torch.device}` : `not used (${ceiling.torch.reason})`) : 'not used (--no-torch)'}`,
      `CPU: ${info.procModel ?? info.osModel}, ${info.logicalCpus} logical CPUs; node ${process.version}`,
      `flows: exp scale, relu, softClamp 0, reversals between layers, random weights (bench/network.ts randomParameters), the same weights on both backends`,
    ];
    const targets = judge(ctx, ceiling);
    const text = report(ctx, ceiling, header, gpuProblem, targets);
    console.log(text);
    if (args.json) {
      fs.writeFileSync(
        args.json,
        JSON.stringify({ date: started.toISOString(), seconds: (performance.now() - t0) / 1e3, stoppedBy: stoppedBy ?? null, quick: args.quick, backend: args.backend, gpuProblem, ceiling, rows: ctx.rows, same: ctx.same, targets, notes: ctx.notes }, null, 1),
      );
      log(`wrote ${args.json}`);
    }
  };
  const onTerm = () => {
    ctx.notes.push('The run was stopped by SIGTERM (a time limit) before it finished: the tables hold what was measured until then.');
    torchChild?.kill('SIGKILL');
    finish('SIGTERM');
    built.probe?.dispose();
    process.exit(143);
  };
  process.on('SIGTERM', onTerm);

  try {
    await runProbe();
    // CFG-E first: its cells carry the targets, so a run cut short by --budget or a time limit has them.
    const shapes = SHAPES.filter((s) => wants(s.section)).sort((a, b) => Number(b.section === TARGET_SECTION) - Number(a.section === TARGET_SECTION));
    const left = () => (args.budget === null ? Infinity : args.budget - (performance.now() - t0) / 1e3);
    // What the torch peer needs at least, kept back from iaflow's cells when a budget is set.
    const torchReserve = args.torch ? (args.quick ? 120 : 300) : 10;
    if (!gpuProblem) {
      for (const [k, shape] of shapes.entries()) {
        if (k > 0 && left() < torchReserve + 30) {
          ctx.notes.push(`${label(shape)}: skipped, the time budget (--budget ${args.budget}) ran out.`);
          log(`${label(shape)}: skipped (time budget)`);
          continue;
        }
        await runShape(ctx, shape);
      }
      ctx.notes.push('Training on the GPU is not timed: the cuda backend has no trainer yet (makeTrainer returns null; training runs on the cpu backend).');
    }
    await runProbe(); // a second reading after the load: the peak is the best of both

    // PyTorch, after iaflow (one process at a time on the GPU).
    if (args.torch) {
      const cells: TorchSpecCell[] = [];
      for (const shape of shapes) {
        for (const d of DIRECTIONS) {
          const flow = (d.kind === 'iaf' ? createIAF : createMAF)({ dim: shape.dim, hidden: shape.hidden, layers: shape.layers, seed: SEED, scale: 'exp', softClamp: 0, backend: 'cpu' });
          cells.push({
            name: `${label(shape)} ${d.name}`,
            dim: shape.dim,
            batch: shape.batch,
            direction: d.direction,
            // --quick compiles only where the 2x-PyTorch target is judged (each compile costs tens of seconds).
            compile: args.compile && (!args.quick || (shape.section === TARGET_SECTION && d.pass === 'parallel')),
            layers: torchLayers(flow),
          });
          flow.dispose();
        }
      }
      // Without a GPU backend the peer still runs (it says whether torch sees a GPU), but times nothing.
      const timeout = Math.max(30, Math.min(args.quick ? 360 : 1200, left() - 10));
      const spec = {
        seconds: args.quick ? 0.3 : 1.0,
        maxCallSeconds: args.quick ? 1.0 : 2.0,
        sgemm: args.quick ? 4096 : 8192,
        // The peer skips the cells it has no time left for, and torch.compile when under 90 s remain.
        deadlineSeconds: timeout - 10,
        cells: gpuProblem ? [] : cells.filter((c) => ctx.rows.some((r) => `${r.config} ${r.direction}` === c.name)),
      };
      log(`PyTorch peer (${args.python} bench/gpu_torch_peer.py): ${spec.cells.length} cells`);
      const tr = await runTorchPeer(args.python, args.torchDevice, spec, timeout);
      ceiling.torch = tr;
      if (!tr.available) log(`PyTorch peer: ${tr.reason}`);
      else {
        log(`PyTorch peer: torch ${tr.torch} on ${tr.device}${tr.sgemm ? `, sgemm fp32 ${fmtG(tr.sgemm.fp32.gflops)} GFLOP/s, tf32 ${fmtG(tr.sgemm.tf32.gflops)}` : ''}`);
        for (const row of ctx.rows) {
          row.torch = tr.cells?.find((c) => c.name === `${row.config} ${row.direction}`);
          if (row.torch?.maskedMacsPerRow !== undefined && 2 * row.torch.maskedMacsPerRow !== row.maskedFlopsPerRow) {
            ctx.notes.push(`${row.config} ${row.direction}: the torch peer's masks keep ${2 * row.torch.maskedMacsPerRow} FLOP per row against iaflow's ${row.maskedFlopsPerRow} (they should be the same network).`);
          }
        }
      }
    }

    finish();
    process.off('SIGTERM', onTerm);
    if (gpuProblem) log(`nothing timed on the GPU: ${gpuProblem}`);
  } finally {
    built.probe?.dispose();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
