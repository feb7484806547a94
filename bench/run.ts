// iaflow's benchmark (issue 10): rows/s and masked GFLOP/s of both directions against the
// machine's external fp32 ceiling (an FMA probe and a tuned sgemm, onnxruntime's MatMul and
// OpenBLAS through numpy) and against the strongest onnxruntime-node graph of the same network
// (the torch-exported files and the bench's own graph, side by side), with TensorFlow.js beside
// them, in one process. Prints one markdown report and writes it to bench/RESULTS.md.
//
//   npx tsx bench/run.ts [--quick] [--only CFG-A[,CFG-B,...]] [--peers DIR] [--no-ort] [--no-tfjs]
//                        [--no-profile] [--no-install] [--write|--no-write]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createIAF, createMAF, getThreads, setThreads, standardNormal } from '../src/index';
import type { Flow } from '../src/index';
import { native } from '../src/native';
import { FmaProbe, NumpySgemm, OrtSgemm, QUICK_SGEMM_SIZE, SGEMM_SIZE } from './ceiling';
import type { FmaReading } from './ceiling';
import { CeilingTracker, NeighbourMonitor, cpuInfo, loadAverage, measureContention, microarchitecture } from './machine';
import type { Contention, CpuInfo } from './machine';
import { Direction, GraphScale, flowNet, maskedMacsPerRow, maxAbsDiff, randomParameters } from './network';
import { buildOnnxGraph } from './onnx-graph';
import { BENCH_DIR, ensurePeersInstalled, loadOnnxProto, loadOrt, loadTf, peerVersion } from './peers';
import type { OnnxProtoModule, OrtModule, OrtSession, OrtSessionOptions, TfModule } from './peers';
import { perfAvailable, profileWhile, shortSymbol } from './profile';
import { tfParallelRunner } from './tfjs-net';
import type { TfRunner } from './tfjs-net';
import { Call, Interleaved, Latency, Prepared, Slot, interleave, latency, latencySync, median, prepare, rateOf, ratioOf, ratioToBestOf, slotIndex } from './timing';
import { checkTorchPeer, defaultPeersDir, loadTorchPeer } from './torch-peer';
import type { TorchCheck, TorchConfig, TorchPeer } from './torch-peer';
import { trainingCell } from './training';

// ---------------------------------------------------------------- configuration

interface FlowShape {
  dim: number;
  hidden: number[];
  layers: number;
  batch: number;
}

const CONFIGS: Record<'CFG-A' | 'CFG-B' | 'CFG-C', FlowShape> = {
  'CFG-A': { dim: 16, hidden: [256, 256], layers: 5, batch: 10_000 },
  'CFG-B': { dim: 64, hidden: [512, 512], layers: 5, batch: 4_096 },
  'CFG-C': { dim: 2, hidden: [64, 64], layers: 5, batch: 100_000 },
};
const SCALE_DIMS = [8, 32, 128, 512];
const SCALE_SHAPE = { hidden: [512, 512], layers: 3, batch: 4_096 };
const SECTIONS = ['CFG-A', 'CFG-B', 'CFG-C', 'CFG-D', 'SCALE'] as const;
type Section = (typeof SECTIONS)[number];
const SEED = 20261125;
/** iaflow's own dense kernel (native.measureMatmulGflops): only the threads table's 2/1 machine check uses it. */
const KERNEL_CEILING_SIZE = 1024;
/** The scale form of the main rows: the torch export's (exp); the bench's own graph also runs softplus beside it. */
const MAIN_SCALE: GraphScale = 'exp';

const ORT_OPTIONS: OrtSessionOptions & { logSeverityLevel: number } = {
  intraOpNumThreads: 2,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
};

// Targets of issue 10.
const TARGET_VS_ORT: Record<string, number> = { 'CFG-A': 2.5, 'CFG-B': 2.2 };
const TARGET_SGEMM_PCT = 70;
const TARGET_SEQ_FRACTION = 0.85;
const TARGET_TRAIN_VS_PARALLEL = 0.3;
const TARGET_LATENCY_US = 10;
// Targets of issue 5 still reported.
const TARGET_THREAD_SPEEDUP = 1.8;
const TARGET_SCALE_FRACTION = 0.25;

interface Args {
  quick: boolean;
  only: Set<Section> | null;
  peers: string | null;
  ort: boolean;
  tfjs: boolean;
  profile: boolean;
  install: boolean;
  write: boolean | null;
}

const USAGE =
  'npx tsx bench/run.ts [--quick] [--only CFG-A,CFG-B,CFG-C,CFG-D,SCALE] [--peers DIR] [--no-ort] [--no-tfjs] [--no-profile] [--no-install] [--write|--no-write]';

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, only: null, peers: null, ort: true, tfjs: true, profile: true, install: true, write: null };
  const value = (i: number, a: string, name: string) => {
    const v = a === name ? argv[i + 1] : a.slice(name.length + 1);
    if (!v) throw new Error(`${name} needs a value: ${USAGE}`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') args.quick = true;
    else if (a === '--no-ort') args.ort = false;
    else if (a === '--no-tfjs') args.tfjs = false;
    else if (a === '--no-profile') args.profile = false;
    else if (a === '--no-install') args.install = false;
    else if (a === '--write') args.write = true;
    else if (a === '--no-write') args.write = false;
    else if (a === '--peers' || a.startsWith('--peers=')) {
      args.peers = path.resolve(value(i, a, '--peers'));
      if (a === '--peers') i++;
    } else if (a === '--only' || a.startsWith('--only=')) {
      const list = value(i, a, '--only');
      if (a === '--only') i++;
      args.only ??= new Set();
      for (const s of list.split(',')) {
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

const fmtRate = (v: number): string => {
  if (!Number.isFinite(v)) return '—';
  if (v >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (v >= 1e3) return `${(v / 1e3).toPrecision(3)}k`;
  return v >= 10 ? v.toFixed(0) : v.toPrecision(2);
};
const fmtX = (v: number) => (Number.isFinite(v) ? `${v >= 10 ? v.toFixed(0) : v.toFixed(2)}x` : '—');
const fmtG = (v: number) => (Number.isFinite(v) ? (v >= 10 ? v.toFixed(1) : v.toFixed(2)) : '—');
const fmtPct = (v: number) => (Number.isFinite(v) ? `${v.toFixed(0)}%` : '—');
const fmtDiff = (v: number) => (Number.isFinite(v) ? v.toExponential(1) : 'mismatch');
const fmtFrac = (v: number) => (Number.isFinite(v) ? (v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)) : '—');
const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');

function markdownTable(header: string[], rows: string[][]): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${header.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

const log = (line: string) => console.error(`[bench] ${line}`);

// ---------------------------------------------------------------- result records

interface Measured {
  rowsPerSec: number;
  rows: number;
  /** iaflow's rows/s over this one's, median of the per-round ratios. */
  iaflowRatio: number;
}

type PeerCell = Measured | { skipped: string };
const isMeasured = (c: PeerCell | undefined): c is Measured => !!c && 'rowsPerSec' in c;
const peerText = (c: PeerCell | undefined, batch: number) =>
  c === undefined ? '—' : isMeasured(c) ? `${fmtRate(c.rowsPerSec)}${c.rows !== batch ? ` (b=${c.rows})` : ''}` : `skipped (${c.skipped})`;

interface Target {
  row: string;
  name: string;
  measured: string;
  pass: boolean | null; // null: could not be measured
}

interface MainRow {
  config: string;
  direction: string;
  pass: 'parallel' | 'sequential' | 'training';
  batch: number;
  maskedFlopsPerRow: number;
  iaflow?: { rowsPerSec: number; calls: number };
  /** onnxruntime on the torch export (IAF sample of CFG-A/CFG-B only) and on the bench's own graph, same scale form. */
  ortTorch?: PeerCell;
  ortOwn?: PeerCell;
  /** iaflow over the faster ORT graph of each round (median of the per-round ratios), and which graph won more rounds. */
  vsStrongest?: { ratio: number; graph: string };
  ownGraphNodes?: number;
  /** iaflow's masked GFLOP/s over the best sgemm (ORT MatMul or numpy) and over the 2-thread FMA peak timed in the same rounds (percent). */
  pctSgemm?: number;
  pctFma?: number;
  tfCpu?: PeerCell;
  tfWasm?: PeerCell;
  /** The other scale form (softplus): iaflow and the bench's own graph, same rounds. */
  softplus?: { iaflow: number; ort: PeerCell };
  /** Sequential rows: rows/s over the same flow's parallel direction (median of per-round ratios). */
  seqFraction?: number;
  /** Training row: training rows/s over the parallel direction's rows/s (same flow, same rounds). */
  trainFraction?: number;
  parallelRowsPerSec?: number;
  /** What the breakdown needs: the flow and the timed call. */
  flow?: Flow;
  call?: Call;
  targets: Target[];
  note?: string;
}

interface ThreadRow {
  config: string;
  direction: string;
  one: number;
  two: number;
  /** Median over all rounds of the per-round 2-thread/1-thread ratio. */
  speedup: number;
  /** The matmul ceiling's own 2/1 ratio in the same rounds (median). */
  machine: number;
  /** Rounds where the matmul ceiling itself scaled >= the target (the machine had two cores then). */
  twoCoreRounds: number;
  rounds: number;
  /** Median speedup over those rounds (NaN if none). */
  speedupTwoCore: number;
  target: Target;
}

interface Check {
  cell: string;
  ort: string;
  tfjs: string;
}

interface Breakdown {
  title: string;
  lines: string[];
}

// ---------------------------------------------------------------- context shared by the sections

/** The external ceiling: what each source gave in every round it was timed in. */
interface External {
  fma: FmaProbe | null;
  ortSgemm: OrtSgemm | null;
  numpy: NumpySgemm | null;
  /** n of the n x n x n sgemm (smaller with --quick). */
  sgemmSize: number;
  reasons: string[];
  fma1: FmaReading[];
  fma2: FmaReading[];
  ort: number[];
  numpyRates: number[];
}

interface Context {
  args: Args;
  maxCallSeconds: number;
  rounds: number;
  sliceSeconds: number;
  kernelCeilings: CeilingTracker;
  external: External;
  threads: number;
  tileRows: number;
  ort: OrtModule | null;
  onnx: OnnxProtoModule | null;
  tf: TfModule | null;
  tfBackends: string[];
  peerNotes: string[];
  peersDir: string;
  torch: Partial<Record<TorchConfig, TorchPeer | { skipped: string }>>;
  torchChecks: { config: string; check: TorchCheck }[];
  rows: MainRow[];
  checks: Check[];
  /** Targets outside the main table (latency, threads, SCALE); the main rows carry their own. */
  targets: Target[];
  threadRows: ThreadRow[];
  latencyRows: string[][];
  scaleRows: string[][];
  breakdowns: Breakdown[];
  /** Set when the batch-1 latency target is missed: a call to profile. */
  latencyProfile?: Call;
  notes: string[];
}

// softClamp 0: the peers' graphs are plain MADEs (the default clamp adds a square root and a
// division per input per layer, which the peers would not pay).
function makeFlow(kind: 'iaf' | 'maf', shape: { dim: number; hidden: number[]; layers: number }, seed: number, scale: GraphScale = MAIN_SCALE): Flow {
  const flow = (kind === 'iaf' ? createIAF : createMAF)({ dim: shape.dim, hidden: shape.hidden, layers: shape.layers, seed, scale, softClamp: 0 });
  flow.setParameters(randomParameters(flow, seed + 1));
  return flow;
}

/** iaflow's own dense kernel as an interleaved slot (the threads table's machine check), at `threads` pool threads. */
function ceilingSlot(ctx: Context, threads: 1 | 2, name = 'ceiling'): Slot {
  return {
    name,
    before: () => setThreads(threads),
    rate: () => native.measureMatmulGflops(KERNEL_CEILING_SIZE, ctx.args.quick ? 0.08 : 0.15),
  };
}

function recordCeiling(ctx: Context, result: Interleaved, name: string, threads: 1 | 2): void {
  ctx.kernelCeilings.add(threads, result.rates[slotIndex(result, name)]);
}

/** The external ceiling's slots: the FMA probe on 2 threads, ORT's sgemm, numpy's sgemm (those available). */
function externalSlots(ctx: Context, withFma1 = false): Slot[] {
  const e = ctx.external;
  const seconds = ctx.args.quick ? 0.15 : 0.25;
  const slots: Slot[] = [];
  if (e.fma) {
    const fma = e.fma;
    if (withFma1) slots.push({ name: 'fma-1', rate: async () => (e.fma1.push(await fma.run(1, seconds)), e.fma1[e.fma1.length - 1].sustainedGflops) });
    // Per round, what the probe sustained (the same interruptions as the workloads beside it); the
    // machine section reports the best undisturbed batch as the peak.
    slots.push({ name: 'fma-2', rate: async () => (e.fma2.push(await fma.run(2, seconds)), e.fma2[e.fma2.length - 1].sustainedGflops) });
  }
  if (e.ortSgemm) {
    const sgemm = e.ortSgemm;
    slots.push({ name: 'sgemm-ort', rate: async () => (e.ort.push(await sgemm.gflops()), e.ort[e.ort.length - 1]) });
  }
  if (e.numpy) {
    const sgemm = e.numpy;
    slots.push({ name: 'sgemm-numpy', rate: async () => (e.numpyRates.push(await sgemm.gflops()), e.numpyRates[e.numpyRates.length - 1]) });
  }
  return slots;
}

const sgemmSlots = (r: Interleaved) => r.names.filter((n) => n.startsWith('sgemm-'));

async function interleaveAll(ctx: Context, slots: Slot[]): Promise<Interleaved> {
  const result = await interleave(slots, { rounds: ctx.rounds, sliceSeconds: ctx.sliceSeconds });
  setThreads(ctx.threads);
  return result;
}

async function ownGraphSession(ctx: Context, flow: Flow, direction: Direction): Promise<{ session: OrtSession; nodes: number; passes: number; buildSeconds: number } | { skipped: string }> {
  if (!ctx.ort || !ctx.onnx) return { skipped: 'onnxruntime-node not loaded' };
  const t0 = performance.now();
  const graph = buildOnnxGraph(ctx.onnx, flowNet(flow), direction);
  const session = await ctx.ort.InferenceSession.create(graph.bytes, ORT_OPTIONS);
  return { session, nodes: graph.nodeCount, passes: graph.networkPasses, buildSeconds: (performance.now() - t0) / 1e3 };
}

// ---------------------------------------------------------------- CFG-A, B, C

interface DirectionSpec {
  name: string;
  flow: Flow;
  direction: Direction;
  pass: 'parallel' | 'sequential';
  /** Input of iaflow's calls (null: iaflow draws z itself) and of the peers (z or x). */
  iaflowInput: Float32Array | null;
  peerInput: Float32Array;
}

interface Outputs {
  x: Float32Array | null;
  logProb: Float32Array;
}

/** iaflow's async call for a direction of a flow (sampling directions draw z and return x and log q; density directions read x). */
function iaflowMaker(flow: Flow, direction: Direction, input: Float32Array | null) {
  return (rows: number): Call => {
    if (direction === 'toData') return () => flow.sampleWithLogProb(rows, { seed: SEED });
    const x = input!.slice(0, rows * flow.dim);
    return () => flow.logProb(x);
  };
}

async function iaflowOutputs(flow: Flow, spec: DirectionSpec, n: number): Promise<Outputs> {
  if (spec.direction === 'toData') {
    // The peers get z as an input: iaflow's forward(z) is the same map as its sampling pass.
    const z = spec.peerInput.slice(0, n * flow.dim);
    const f = await flow.forward(z);
    const logProb = new Float32Array(n);
    for (let r = 0; r < n; r++) {
      let sq = 0;
      for (let i = 0; i < flow.dim; i++) sq += z[r * flow.dim + i] ** 2;
      logProb[r] = -0.5 * sq - 0.5 * flow.dim * Math.log(2 * Math.PI) - f.logDet[r];
    }
    return { x: f.x, logProb };
  }
  return { x: null, logProb: await flow.logProb(spec.iaflowInput!.slice(0, n * flow.dim)) };
}

function diffText(reference: Outputs, other: Outputs): string {
  const parts: string[] = [];
  if (reference.x && other.x) parts.push(`x ${fmtDiff(maxAbsDiff(reference.x, other.x))}`);
  parts.push(`logProb ${fmtDiff(maxAbsDiff(reference.logProb, other.logProb))}`);
  return parts.join(', ');
}

/** An ORT session as a prepared slot: the batch reduced where one call would exceed the limit. */
async function ortPrepared(ctx: Context, session: OrtSession, inputName: string, input: Float32Array, dim: number, batch: number): Promise<Prepared> {
  const ort = ctx.ort!;
  return prepare(
    (rows) => {
      const tensor = new ort.Tensor('float32', input.slice(0, rows * dim), [rows, dim]);
      return () => session.run({ [inputName]: tensor });
    },
    batch,
    { maxCallSeconds: ctx.maxCallSeconds },
  );
}

async function runConfig(ctx: Context, name: 'CFG-A' | 'CFG-B' | 'CFG-C'): Promise<void> {
  const shape = CONFIGS[name];
  const { dim, batch } = shape;
  log(`${name}: D=${dim}, hidden [${shape.hidden.join(', ')}], ${shape.layers} layers, ${MAIN_SCALE} scale, batch ${batch}`);
  const iafFlow = makeFlow('iaf', shape, SEED);
  const mafFlow = makeFlow('maf', shape, SEED + 100);
  const maskedFlopsPerRow = 2 * maskedMacsPerRow(iafFlow.config);
  ctx.notes.push(`${name}: ${(maskedFlopsPerRow / 1e6).toFixed(3)} masked MFLOP per row (all ${shape.layers} layers, one network pass each).`);
  const torch = name === 'CFG-C' ? undefined : ctx.torch[name];
  if (torch && !('skipped' in torch) && ctx.ort) {
    const check = await checkTorchPeer(torch, ctx.ort, ORT_OPTIONS, maskedMacsPerRow(iafFlow.config), (f) => maskedMacsPerRow(f.config));
    ctx.torchChecks.push({ config: name, check });
  }
  const z = standardNormal(batch, dim, { seed: SEED });
  const xIaf = await iafFlow.sample(batch, { seed: SEED });
  const xMaf = await mafFlow.sample(batch, { seed: SEED });
  const specs: DirectionSpec[] = [
    { name: 'IAF sample', flow: iafFlow, direction: 'toData', pass: 'parallel', iaflowInput: null, peerInput: z },
    { name: 'MAF logProb', flow: mafFlow, direction: 'toLatent', pass: 'parallel', iaflowInput: xMaf, peerInput: xMaf },
    { name: 'IAF logProb', flow: iafFlow, direction: 'toLatent', pass: 'sequential', iaflowInput: xIaf, peerInput: xIaf },
    { name: 'MAF sample', flow: mafFlow, direction: 'toData', pass: 'sequential', iaflowInput: null, peerInput: z },
  ];
  const withTargets = name === 'CFG-A' || name === 'CFG-B';
  for (const spec of specs) {
    const flow = spec.flow;
    const headline = spec.name === 'IAF sample';
    const row: MainRow = { config: name, direction: spec.name, pass: spec.pass, batch, maskedFlopsPerRow, targets: [] };
    const check: Check = { cell: `${name} ${spec.name}`, ort: '—', tfjs: '—' };
    const n = Math.min(batch, 256);
    const reference = await iaflowOutputs(flow, spec, n);
    const fast = await prepare(iaflowMaker(flow, spec.direction, spec.iaflowInput), batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
    row.flow = flow;
    row.call = fast.call;

    // Slot order: the ORT graphs, iaflow, the external ceiling (parallel rows) or iaflow's other
    // direction (sequential rows): the targets' ratios are between neighbours in time.
    const ortSlots: Slot[] = [];
    const slots: Slot[] = [{ name: 'iaflow', rows: fast.rows, call: fast.call }];
    const rest: Slot[] = [];
    const sessions: OrtSession[] = [];
    const prepared: Record<string, Prepared> = {};
    if (spec.pass === 'parallel') slots.push(...externalSlots(ctx));
    else {
      const other: Direction = spec.direction === 'toData' ? 'toLatent' : 'toData';
      const otherInput = other === 'toLatent' ? await flow.sample(batch, { seed: SEED + 1 }) : null;
      const par = await prepare(iaflowMaker(flow, other, otherInput), batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
      slots.push({ name: 'iaflow-par', rows: par.rows, call: par.call });
    }

    if (ctx.args.ort && ctx.ort) {
      // The torch export: IAF sampling of CFG-A/CFG-B only (that is what was exported).
      if (headline && torch) {
        if ('skipped' in torch) row.ortTorch = { skipped: torch.skipped };
        else {
          const session = await ctx.ort.InferenceSession.create(torch.bytes, ORT_OPTIONS);
          sessions.push(session);
          prepared['ort-torch'] = await ortPrepared(ctx, session, torch.inputName, spec.peerInput, dim, batch);
          ortSlots.push({ name: 'ort-torch', rows: prepared['ort-torch'].rows, call: prepared['ort-torch'].call });
          log(`  ${spec.name} torch export: ${torch.nodeCount} nodes (${path.basename(torch.file)})`);
        }
      }
      const own = await ownGraphSession(ctx, flow, spec.direction);
      if ('skipped' in own) row.ortOwn = { skipped: own.skipped };
      else {
        sessions.push(own.session);
        row.ownGraphNodes = own.nodes;
        log(`  ${spec.name} bench graph: ${own.nodes} nodes, ${own.passes} network passes, built + session in ${own.buildSeconds.toFixed(1)} s`);
        const out = await own.session.run({ input: new ctx.ort.Tensor('float32', spec.peerInput.slice(0, n * dim), [n, dim]) });
        check.ort = diffText(reference, { x: spec.direction === 'toData' ? (out.x.data as Float32Array) : null, logProb: out.logProb.data as Float32Array });
        prepared['ort-own'] = await ortPrepared(ctx, own.session, 'input', spec.peerInput, dim, batch);
        ortSlots.push({ name: 'ort-own', rows: prepared['ort-own'].rows, call: prepared['ort-own'].call });
      }
      // The other scale form, for the headline row of CFG-A/CFG-B: iaflow and the bench's graph with softplus.
      if (headline && withTargets) {
        const soft = makeFlow('iaf', shape, SEED, 'softplus');
        const softOwn = await ownGraphSession(ctx, soft, 'toData');
        if (!('skipped' in softOwn)) {
          sessions.push(softOwn.session);
          const softFast = await prepare(iaflowMaker(soft, 'toData', null), batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
          prepared['ort-own-softplus'] = await ortPrepared(ctx, softOwn.session, 'input', spec.peerInput, dim, batch);
          rest.push({ name: 'iaflow-softplus', rows: softFast.rows, call: softFast.call });
          rest.push({ name: 'ort-own-softplus', rows: prepared['ort-own-softplus'].rows, call: prepared['ort-own-softplus'].call });
        }
      }
    } else {
      const why = ctx.args.ort ? 'onnxruntime-node not loaded' : '--no-ort';
      row.ortOwn = { skipped: why };
      if (headline && torch) row.ortTorch = { skipped: why };
    }

    // TensorFlow.js: the parallel direction of CFG-A, on its cpu and wasm backends.
    const tfRunners: TfRunner[] = [];
    const tfSkipped: Partial<Record<'cpu' | 'wasm', string>> = {};
    if (spec.pass === 'parallel' && name === 'CFG-A') {
      const diffs: string[] = [];
      for (const backend of ['cpu', 'wasm'] as const) {
        const tf = ctx.tf;
        if (!ctx.args.tfjs) tfSkipped[backend] = '--no-tfjs';
        else if (!tf) tfSkipped[backend] = 'tfjs not loaded';
        else if (!ctx.tfBackends.includes(backend)) tfSkipped[backend] = `${backend} backend did not initialise`;
        if (tfSkipped[backend] || !tf) continue;
        await tf.setBackend(backend);
        const runner = tfParallelRunner(tf, flowNet(flow), spec.direction);
        tfRunners.push(runner);
        diffs.push(`${backend}: ${diffText(reference, runner.run(spec.peerInput, n))}`);
        prepared[`tf-${backend}`] = await prepare((rows) => () => runner.run(spec.peerInput, rows), batch, { maxCallSeconds: ctx.maxCallSeconds });
        rest.push({ name: `tf-${backend}`, rows: prepared[`tf-${backend}`].rows, call: prepared[`tf-${backend}`].call, before: () => tf.setBackend(backend) });
      }
      check.tfjs = diffs.join('; ') || '—';
    }

    const all = [...ortSlots, ...slots, ...rest];
    log(`  ${spec.name} (${spec.pass}): ${ctx.rounds} interleaved rounds of ${all.map((s) => s.name).join(', ')}`);
    const r = await interleaveAll(ctx, all);
    for (const runner of tfRunners) runner.dispose();
    for (const session of sessions) await session.release();

    const fastRate = rateOf(r, 'iaflow');
    row.iaflow = { rowsPerSec: fastRate, calls: r.calls[slotIndex(r, 'iaflow')] };
    const measured = (slot: string): Measured => ({ rowsPerSec: rateOf(r, slot), rows: prepared[slot].rows, iaflowRatio: ratioOf(r, 'iaflow', slot) });
    if (prepared['ort-torch']) row.ortTorch = measured('ort-torch');
    if (prepared['ort-own']) row.ortOwn = measured('ort-own');
    const graphs = ortSlots.map((s) => s.name);
    if (graphs.length) {
      // Per round, the faster graph; the ratio is iaflow over that one.
      const wins = graphs.map((g) => r.rates[slotIndex(r, g)].filter((v, k) => graphs.every((o) => r.rates[slotIndex(r, o)][k] <= v)).length);
      const winner = graphs[wins.indexOf(Math.max(...wins))];
      row.vsStrongest = { ratio: ratioToBestOf(r, 'iaflow', graphs), graph: winner === 'ort-torch' ? 'torch export' : 'bench graph' };
    }
    if (prepared['ort-own-softplus']) {
      row.softplus = {
        iaflow: rateOf(r, 'iaflow-softplus'),
        ort: { rowsPerSec: rateOf(r, 'ort-own-softplus'), rows: prepared['ort-own-softplus'].rows, iaflowRatio: ratioOf(r, 'iaflow-softplus', 'ort-own-softplus') },
      };
    }
    const sgemms = sgemmSlots(r);
    if (sgemms.length) row.pctSgemm = 100 * ratioToBestOf(r, 'iaflow', sgemms, maskedFlopsPerRow / 1e9);
    if (r.names.includes('fma-2')) row.pctFma = 100 * ratioOf(r, 'iaflow', 'fma-2', maskedFlopsPerRow / 1e9);
    if (spec.pass === 'parallel' && name === 'CFG-A') {
      row.tfCpu = prepared['tf-cpu'] ? measured('tf-cpu') : { skipped: tfSkipped.cpu ?? 'not run' };
      row.tfWasm = prepared['tf-wasm'] ? measured('tf-wasm') : { skipped: tfSkipped.wasm ?? 'not run' };
    }
    if (spec.pass === 'sequential') row.seqFraction = ratioOf(r, 'iaflow', 'iaflow-par');
    log(
      `  -> iaflow ${fmtRate(fastRate)} rows/s, ${fmtG((fastRate * maskedFlopsPerRow) / 1e9)} masked GFLOP/s` +
        (row.pctSgemm !== undefined ? ` (${fmtPct(row.pctSgemm)} of the sgemm timed beside it)` : '') +
        (isMeasured(row.ortTorch) ? `, ORT torch export ${fmtRate(row.ortTorch.rowsPerSec)}` : '') +
        (isMeasured(row.ortOwn) ? `, ORT bench graph ${fmtRate(row.ortOwn.rowsPerSec)} (b=${row.ortOwn.rows})` : '') +
        (row.vsStrongest ? `, iaflow/strongest ORT ${fmtX(row.vsStrongest.ratio)}` : '') +
        (row.seqFraction !== undefined ? `, seq/par ${fmtFrac(row.seqFraction)}` : ''),
    );
    ctx.rows.push(row);
    ctx.checks.push(check);
  }

  if (name === 'CFG-A') ctx.rows.push(await trainingRow(ctx, mafFlow, xMaf, maskedFlopsPerRow, batch));
}

/** The main table's targets (issue 10), judged after the run. */
function addMainTargets(row: MainRow): void {
  if (row.config !== 'CFG-A' && row.config !== 'CFG-B') return;
  const label = `${row.config} ${row.direction}`;
  if (row.pass === 'training') return; // judged where it is measured
  row.targets = [];
  if (row.direction === 'IAF sample') {
    const want = TARGET_VS_ORT[row.config];
    const name = `>= ${want}x strongest ORT graph`;
    if (row.vsStrongest) row.targets.push({ row: label, name, measured: `${fmtX(row.vsStrongest.ratio)} (the ${row.vsStrongest.graph} was faster)`, pass: row.vsStrongest.ratio >= want });
    else row.targets.push({ row: label, name, measured: isMeasured(row.ortOwn) ? 'not run' : (row.ortOwn?.skipped ?? 'not run'), pass: null });
    const sg = `>= ${TARGET_SGEMM_PCT}% of the sgemm ceiling (masked GFLOP/s)`;
    if (row.pctSgemm !== undefined) row.targets.push({ row: label, name: sg, measured: fmtPct(row.pctSgemm), pass: row.pctSgemm >= TARGET_SGEMM_PCT });
    else row.targets.push({ row: label, name: sg, measured: 'no sgemm available', pass: null });
  } else if (row.pass === 'sequential') {
    const f = row.seqFraction!;
    row.targets.push({ row: label, name: `sequential >= ${TARGET_SEQ_FRACTION} of parallel`, measured: fmtFrac(f), pass: f >= TARGET_SEQ_FRACTION });
  }
}

/**
 * CFG-A training step: maximum-likelihood Adam steps of the MAF (forward through the parallel data ->
 * latent direction, backward, update) against the same flow's parallel direction (logProb) in the
 * same rounds: a backward costs about twice a forward, so 1/3 of the parallel rows/s is the ideal.
 */
async function trainingRow(ctx: Context, flow: Flow, data: Float32Array, maskedFlopsPerRow: number, batch: number): Promise<MainRow> {
  const row: MainRow = { config: 'CFG-A', direction: 'MAF training step', pass: 'training', batch, maskedFlopsPerRow, targets: [] };
  const label = 'CFG-A MAF training step';
  const name = `>= ${TARGET_TRAIN_VS_PARALLEL}x the parallel direction's rows/s`;
  const availability = trainingCell();
  if (!availability.available) {
    log(availability.reason);
    row.note = availability.reason;
    row.targets.push({ row: label, name, measured: 'not available in this build', pass: null });
    return row;
  }
  const { throughput } = availability;
  const steps = ctx.args.quick ? 1 : 2;
  const par = await prepare(iaflowMaker(flow, 'toLatent', data), batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
  log(`training: ${ctx.rounds} interleaved rounds of Adam steps on batch ${batch} and of the same MAF's logProb`);
  const r = await interleaveAll(ctx, [
    { name: 'train', rate: () => throughput(flow, data, batch, steps, false) },
    { name: 'parallel', rows: par.rows, call: par.call },
  ]);
  row.iaflow = { rowsPerSec: rateOf(r, 'train'), calls: r.calls[slotIndex(r, 'train')] };
  row.parallelRowsPerSec = rateOf(r, 'parallel');
  row.trainFraction = ratioOf(r, 'train', 'parallel');
  row.flow = flow;
  row.call = () => throughput(flow, data, batch, 1, false);
  row.note = 'one Adam step per call, whole batch: forward (parallel direction), backward, update (__trainingInternals.likelihoodThroughput, after a warm-up step)';
  const x = row.trainFraction;
  row.targets.push({ row: label, name, measured: fmtFrac(x), pass: x >= TARGET_TRAIN_VS_PARALLEL });
  log(`  -> training ${fmtRate(row.iaflow.rowsPerSec)} rows/s, parallel direction ${fmtRate(row.parallelRowsPerSec)} rows/s (${fmtFrac(x)})`);
  return row;
}

// ---------------------------------------------------------------- threads (CFG-A, CFG-B)

async function runThreads(ctx: Context, name: 'CFG-A' | 'CFG-B'): Promise<void> {
  const shape = CONFIGS[name];
  log(`threads: ${name} IAF sample and logProb with 1 and 2 threads, interleaved with the matmul ceiling at 1 and 2 threads`);
  const flow = makeFlow('iaf', shape, SEED);
  const x = await flow.sample(shape.batch, { seed: SEED });
  const par = await prepare(iaflowMaker(flow, 'toData', null), shape.batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
  const seq = await prepare(iaflowMaker(flow, 'toLatent', x), shape.batch, { maxCallSeconds: ctx.maxCallSeconds, fixed: true });
  // Each 1-thread slot sits next to its 2-thread twin: the speedups are ratios of neighbours in time.
  const on = (threads: 1 | 2) => () => setThreads(threads);
  // The matmul ceiling at 1 and 2 threads brackets the workloads in every round: a round counts
  // as "two-core" only when the machine scaled >= the target both before and after them.
  const slots: Slot[] = [
    ceilingSlot(ctx, 1, 'ceiling-1a'),
    ceilingSlot(ctx, 2, 'ceiling-2a'),
    { name: 'par-1', rows: par.rows, call: par.call, before: on(1) },
    { name: 'par-2', rows: par.rows, call: par.call, before: on(2) },
    { name: 'seq-1', rows: seq.rows, call: seq.call, before: on(1) },
    { name: 'seq-2', rows: seq.rows, call: seq.call, before: on(2) },
    ceilingSlot(ctx, 1, 'ceiling-1b'),
    ceilingSlot(ctx, 2, 'ceiling-2b'),
  ];
  // More rounds than elsewhere: the machine's one-core and two-core phases last tens of seconds.
  const r = await interleave(slots, { rounds: ctx.args.quick ? 2 : 8, sliceSeconds: ctx.sliceSeconds });
  setThreads(ctx.threads);
  for (const k of ['a', 'b']) {
    recordCeiling(ctx, r, `ceiling-1${k}`, 1);
    recordCeiling(ctx, r, `ceiling-2${k}`, 2);
  }
  const rates = (slot: string) => r.rates[slotIndex(r, slot)];
  const perRound = (a: string, b: string) => rates(a).map((v, i) => v / rates(b)[i]);
  const before = perRound('ceiling-2a', 'ceiling-1a');
  const after = perRound('ceiling-2b', 'ceiling-1b');
  const twoCore = before.map((m, i) => m >= TARGET_THREAD_SPEEDUP && after[i] >= TARGET_THREAD_SPEEDUP);
  const machine = median([...before, ...after]);
  const MIN_TWO_CORE_ROUNDS = 2;
  for (const [key, direction] of [['par', 'IAF sample (parallel)'], ['seq', 'IAF logProb (sequential)']] as const) {
    const rounds = perRound(`${key}-2`, `${key}-1`);
    const speedup = median(rounds);
    const inTwoCore = rounds.filter((_, i) => twoCore[i]);
    const speedupTwoCore = median(inTwoCore);
    // Judged where the machine itself gave two cores' worth; with fewer such rounds the target cannot be judged here.
    const target: Target =
      inTwoCore.length >= MIN_TWO_CORE_ROUNDS
      ? {
          row: `${name} ${direction} 2 vs 1 threads`,
          name: `>= ${TARGET_THREAD_SPEEDUP}x`,
          measured: `${fmtX(speedupTwoCore)} in the ${inTwoCore.length} of ${rounds.length} rounds where the matmul ceiling scaled >= ${TARGET_THREAD_SPEEDUP}x (all rounds: ${fmtX(speedup)})`,
          pass: speedupTwoCore >= TARGET_THREAD_SPEEDUP,
        }
      : {
          row: `${name} ${direction} 2 vs 1 threads`,
          name: `>= ${TARGET_THREAD_SPEEDUP}x`,
          measured: `${fmtX(speedup)}, but the machine gave two cores' worth in only ${inTwoCore.length} of ${rounds.length} rounds (matmul ceiling 2/1: ${fmtX(machine)})`,
          pass: null,
        };
    ctx.targets.push(target);
    ctx.threadRows.push({
      config: name,
      direction,
      one: rateOf(r, `${key}-1`),
      two: rateOf(r, `${key}-2`),
      speedup,
      machine,
      twoCoreRounds: inTwoCore.length,
      rounds: rounds.length,
      speedupTwoCore,
      target,
    });
    log(`  ${direction}: 1 thread ${fmtRate(rateOf(r, `${key}-1`))}, 2 threads ${fmtRate(rateOf(r, `${key}-2`))} rows/s (${fmtX(speedup)}; matmul ceiling ${fmtX(machine)}; ${inTwoCore.length} two-core rounds)`);
  }
}

// ---------------------------------------------------------------- CFG-D: latency

async function runLatency(ctx: Context): Promise<void> {
  const shape = CONFIGS['CFG-A'];
  log('CFG-D: batch-1 and batch-32 latency of a 5-layer IAF sample (CFG-A network)');
  const flow = makeFlow('iaf', shape, SEED);
  const opts = { seconds: ctx.args.quick ? 0.4 : 1.5, maxCalls: 200_000, warmup: 200 };
  const z = standardNormal(32, shape.dim, { seed: SEED });
  const sessions: { name: string; session: OrtSession; input: string }[] = [];
  if (ctx.args.ort && ctx.ort) {
    const torch = ctx.torch['CFG-A'];
    if (torch && !('skipped' in torch)) sessions.push({ name: 'torch', session: await ctx.ort.InferenceSession.create(torch.bytes, ORT_OPTIONS), input: torch.inputName });
    const own = await ownGraphSession(ctx, flow, 'toData');
    if (!('skipped' in own)) sessions.push({ name: 'own', session: own.session, input: 'input' });
  }
  try {
    for (const batch of [1, 32]) {
      const sync = latencySync(() => void flow.sampleSync(batch), opts);
      const asyncL = await latency(() => flow.sample(batch), { ...opts, seconds: opts.seconds / 2 });
      const ortL: Record<string, Latency> = {};
      for (const s of sessions) {
        const tensor = new ctx.ort!.Tensor('float32', z.slice(0, batch * shape.dim), [batch, shape.dim]);
        ortL[s.name] = await latency(() => s.session.run({ [s.input]: tensor }), { ...opts, seconds: opts.seconds / 2 });
      }
      const lat = (l: Latency | undefined) => (l ? `${l.medianMicros.toFixed(1)} / ${l.p99Micros.toFixed(1)}` : '—');
      const fastest = Object.values(ortL).reduce((m, l) => Math.min(m, l.medianMicros), Infinity);
      const row = [
        `CFG-D batch ${batch}`,
        lat(sync),
        fmtRate((batch * 1e6) / sync.medianMicros),
        lat(asyncL),
        lat(ortL.torch),
        lat(ortL.own),
        Number.isFinite(fastest) ? fmtX(fastest / sync.medianMicros) : '—',
        String(sync.calls),
      ];
      if (batch === 1) {
        const target: Target = {
          row: 'CFG-D batch-1 sampleSync latency (median)',
          name: `< ${TARGET_LATENCY_US} us`,
          measured: `${sync.medianMicros.toFixed(1)} us (p99 ${sync.p99Micros.toFixed(1)} us)`,
          pass: sync.medianMicros < TARGET_LATENCY_US,
        };
        ctx.targets.push(target);
        row.push(`${verdict(target.pass!)} (median < ${TARGET_LATENCY_US} us)`);
        if (!target.pass) ctx.latencyProfile = () => {
          for (let i = 0; i < 2000; i++) flow.sampleSync(1);
        };
      } else row.push('—');
      ctx.latencyRows.push(row);
      log(`  batch ${batch}: sampleSync median ${sync.medianMicros.toFixed(1)} us, p99 ${sync.p99Micros.toFixed(1)} us`);
    }
  } finally {
    for (const s of sessions) await s.session.release();
  }
}

// ---------------------------------------------------------------- where the time goes

/**
 * A coarse breakdown of the parallel direction by kernel, from public calls on flows of the same
 * shape, interleaved: the whole sampleWithLogProb; forward(z) (the same pass without drawing z);
 * standardNormal alone (the draw); forward on the same flow with one hidden layer fewer (the
 * difference is the H x H hidden products).
 */
async function parallelBreakdown(ctx: Context, row: MainRow, shape: FlowShape): Promise<string[]> {
  const flow = row.flow!;
  const { dim, batch } = shape;
  const z = standardNormal(batch, dim, { seed: SEED });
  const shorter = makeFlow('iaf', { ...shape, hidden: shape.hidden.slice(0, -1) }, SEED);
  const hh = 2 * (maskedMacsPerRow(flow.config) - maskedMacsPerRow(shorter.config));
  const slots: Slot[] = [
    { name: 'sample', rows: batch, call: row.call! },
    { name: 'forward', rows: batch, call: () => flow.forward(z) },
    { name: 'rng', rows: batch, call: () => standardNormal(batch, dim, { seed: SEED }) },
    { name: 'shorter', rows: batch, call: () => shorter.forward(z) },
    ...externalSlots(ctx).filter((s) => s.name.startsWith('sgemm-')),
  ];
  for (const s of slots) if ('call' in s) await s.call();
  const r = await interleaveAll(ctx, slots);
  const ms = (name: string) => (1e3 * batch) / rateOf(r, name);
  const whole = ms('sample');
  const pct = (v: number) => `${((100 * v) / whole).toFixed(0)}%`;
  const hhMs = ms('forward') - ms('shorter');
  const hhGflops = (hh * batch) / (hhMs / 1e3) / 1e9;
  const sgemms = sgemmSlots(r);
  const sgemm = sgemms.length ? median(r.rates[0].map((_, k) => Math.max(...sgemms.map((n) => r.rates[slotIndex(r, n)][k])))) : NaN;
  return [
    `whole sampleWithLogProb(${batch}): ${whole.toFixed(2)} ms per call (100%)`,
    `drawing z alone (standardNormal(${batch}, ${dim})): ${ms('rng').toFixed(2)} ms (${pct(ms('rng'))}); sampleWithLogProb minus forward(z): ${(whole - ms('forward')).toFixed(2)} ms (${pct(whole - ms('forward'))})`,
    `the ${shape.hidden.at(-1)} x ${shape.hidden.at(-2)} hidden products of all ${shape.layers} layers (forward(z) minus forward(z) of the same flow with one hidden layer fewer): ` +
      `${hhMs.toFixed(2)} ms (${pct(hhMs)}), ${fmtG(hhGflops)} masked GFLOP/s${Number.isFinite(sgemm) ? ` = ${fmtPct((100 * hhGflops) / sgemm)} of the sgemm timed beside it (${fmtG(sgemm)} GFLOP/s)` : ''}`,
    `the rest of forward(z) (first hidden layer, heads, affine steps, log-det, tiling): ${ms('shorter').toFixed(2)} ms (${pct(ms('shorter'))})`,
  ];
}

async function profileLines(ctx: Context, call: Call): Promise<string[]> {
  if (!ctx.args.profile) return ['(profile skipped: --no-profile)'];
  const perf = perfAvailable();
  if (!perf.ok) return [`(no profile: ${perf.reason})`];
  try {
    const p = await profileWhile(call, ctx.args.quick ? 1.5 : 3, 1.5);
    return [
      `perf record -e cpu-clock, ${p.samples} samples over ${p.calls} calls, symbols above 1.5%:`,
      ...p.lines.slice(0, 14).map((l) => `${l.percent.toFixed(1)}% ${l.dso} ${shortSymbol(l.symbol)}`),
    ];
  } catch (error) {
    return [`(profile failed: ${error instanceof Error ? error.message : String(error)})`];
  }
}

/** For every missed target: a breakdown by kernel (parallel rows) and a profile. */
async function whereTheTimeGoes(ctx: Context): Promise<void> {
  const done = new Set<MainRow>();
  for (const row of ctx.rows) {
    if (!row.targets.some((t) => t.pass === false) || done.has(row) || !row.call) continue;
    done.add(row);
    const missed = row.targets.filter((t) => t.pass === false).map((t) => `${t.name}: ${t.measured}`).join('; ');
    log(`where the time goes: ${row.config} ${row.direction} (missed ${missed})`);
    const lines: string[] = [];
    if (row.direction === 'IAF sample') lines.push(...(await parallelBreakdown(ctx, row, CONFIGS[row.config as 'CFG-A' | 'CFG-B'])));
    lines.push(...(await profileLines(ctx, row.call)));
    ctx.breakdowns.push({ title: `${row.config} ${row.direction} (missed ${missed})`, lines });
  }
  if (ctx.latencyProfile) {
    log('where the time goes: batch-1 sampleSync');
    ctx.breakdowns.push({ title: 'CFG-D batch-1 sampleSync (2000 calls per profiled call)', lines: await profileLines(ctx, ctx.latencyProfile) });
  }
}

// ---------------------------------------------------------------- SCALE

async function runScale(ctx: Context): Promise<void> {
  log(`SCALE: hidden [${SCALE_SHAPE.hidden.join(', ')}], ${SCALE_SHAPE.layers} IAF layers, batch ${SCALE_SHAPE.batch}; forward (parallel) vs inverse (sequential)`);
  for (const dim of SCALE_DIMS) {
    const shape = { dim, ...SCALE_SHAPE };
    const flow = makeFlow('iaf', shape, SEED + dim);
    const z = standardNormal(shape.batch, dim, { seed: SEED });
    const x = (await flow.forward(z)).x;
    const flops = 2 * maskedMacsPerRow(flow.config);
    const on = (data: Float32Array, run: (input: Float32Array, rows: number) => unknown) => (rows: number): Call => {
      const input = data.slice(0, rows * dim);
      return () => run(input, rows);
    };
    const batchOpts = { maxCallSeconds: ctx.maxCallSeconds };
    const fastPar = await prepare(on(z, (input) => flow.forward(input)), shape.batch, { ...batchOpts, fixed: true });
    const fastSeq = await prepare(on(x, (input) => flow.inverse(input)), shape.batch, { ...batchOpts, fixed: true });
    // The D-pass baseline's sequential direction sets its batch (reduced where a call would take too
    // long); its parallel direction runs on the same batch, so the fraction compares like with like.
    const simpleSeq = await prepare(on(x, (input, rows) => flow.referenceRun('toLatent', input, rows, SEED)), shape.batch, {
      ...batchOpts,
      minRows: 2 * ctx.tileRows,
    });
    const simplePar = await prepare(on(z, (input, rows) => flow.referenceRun('toData', input, rows, SEED)), simpleSeq.rows, { ...batchOpts, fixed: true });
    const r = await interleaveAll(ctx, [
      { name: 'fast-par', rows: fastPar.rows, call: fastPar.call },
      { name: 'fast-seq', rows: fastSeq.rows, call: fastSeq.call },
      { name: 'simple-par', rows: simplePar.rows, call: simplePar.call },
      { name: 'simple-seq', rows: simpleSeq.rows, call: simpleSeq.call },
      ceilingSlot(ctx, 2),
    ]);
    recordCeiling(ctx, r, 'ceiling', 2);
    const fracFast = ratioOf(r, 'fast-seq', 'fast-par');
    const fracSimple = ratioOf(r, 'simple-seq', 'simple-par');
    let verdictText = '—';
    if (dim === 512) {
      const target: Target = { row: 'SCALE D=512 iaflow seq/par', name: `>= ${TARGET_SCALE_FRACTION}`, measured: fmtFrac(fracFast), pass: fracFast >= TARGET_SCALE_FRACTION };
      ctx.targets.push(target);
      verdictText = `${verdict(target.pass!)} (>= ${TARGET_SCALE_FRACTION})`;
    }
    log(`  D=${dim}: iaflow seq/par ${fmtFrac(fracFast)}, simple seq/par ${fmtFrac(fracSimple)} (simple batch ${simpleSeq.rows})`);
    ctx.scaleRows.push([
      `D=${dim}`,
      fmtRate(rateOf(r, 'fast-par')),
      fmtG((rateOf(r, 'fast-par') * flops) / 1e9),
      fmtRate(rateOf(r, 'fast-seq')),
      fmtG((rateOf(r, 'fast-seq') * flops) / 1e9),
      fmtFrac(fracFast),
      fmtRate(rateOf(r, 'simple-par')),
      fmtRate(rateOf(r, 'simple-seq')),
      fmtFrac(fracSimple),
      fmtFrac(1 / dim),
      simpleSeq.rows === shape.batch ? String(shape.batch) : `${simpleSeq.rows} (reduced)`,
      verdictText,
    ]);
  }
}

// ---------------------------------------------------------------- report

function mainTable(ctx: Context): string {
  const header = [
    'config',
    'direction',
    'batch',
    'iaflow rows/s',
    'masked GFLOP/s',
    '% sgemm (% FMA peak), same rounds',
    'ORT torch export rows/s',
    'ORT bench graph rows/s',
    'iaflow / strongest ORT',
    'seq/par (training/par)',
    'targets',
  ];
  const targetText = (r: MainRow) => r.targets.map((t) => `${t.pass === null ? 'N/A' : verdict(t.pass)} ${t.name} (${t.measured})`).join('; ') || '—';
  const rows = ctx.rows.map((r) => {
    if (r.pass === 'training') {
      if (!r.iaflow) return [r.config, r.direction, String(r.batch), ...Array<string>(7).fill('—'), r.note ?? '—'];
      return [
        r.config,
        r.direction,
        String(r.batch),
        fmtRate(r.iaflow.rowsPerSec),
        '—',
        '—',
        '—',
        '—',
        '—',
        `(${fmtFrac(r.trainFraction!)} of MAF logProb's ${fmtRate(r.parallelRowsPerSec!)} rows/s)`,
        targetText(r),
      ];
    }
    const it = r.iaflow!;
    const gflops = (it.rowsPerSec * r.maskedFlopsPerRow) / 1e9;
    return [
      r.config,
      `${r.direction} (${r.pass === 'parallel' ? 'par' : 'seq'})`,
      String(r.batch),
      fmtRate(it.rowsPerSec),
      fmtG(gflops),
      r.pctSgemm !== undefined ? `${fmtPct(r.pctSgemm)}${r.pctFma !== undefined ? ` (${fmtPct(r.pctFma)})` : ''}` : '—',
      peerText(r.ortTorch, r.batch),
      peerText(r.ortOwn, r.batch),
      r.vsStrongest ? `${fmtX(r.vsStrongest.ratio)}${r.ortTorch ? ` (${r.vsStrongest.graph})` : ''}` : '—',
      r.seqFraction !== undefined ? fmtFrac(r.seqFraction) : '—',
      targetText(r),
    ];
  });
  return markdownTable(header, rows);
}

interface RunInfo {
  info: CpuInfo;
  contention: Contention | null;
  startedAt: Date;
  seconds: number;
  loadStart: string;
  neighbours: string;
}

function report(ctx: Context, run: RunInfo): string {
  const { info, contention } = run;
  const k = native.kernelInfo();
  const e = ctx.external;
  const out: string[] = [];
  const flags =
    `${ctx.args.quick ? ' --quick' : ''}${ctx.args.only ? ` --only ${[...ctx.args.only].join(',')}` : ''}${ctx.args.ort ? '' : ' --no-ort'}` +
    `${ctx.args.tfjs ? '' : ' --no-tfjs'}${ctx.args.peers ? ' --peers DIR' : ''}`;
  const spread = (v: number[]) => (v.length ? `${fmtG(Math.min(...v))}..${fmtG(Math.max(...v))} over ${v.length}` : 'not measured');
  const best = (v: number[]) => (v.length ? Math.max(...v) : NaN);
  out.push('# iaflow benchmark results');
  out.push('');
  out.push(`Written by \`npm run bench\` (bench/run.ts${flags}). What the columns mean: bench/README.md.`);
  out.push('');
  out.push('## The machine');
  out.push('');
  out.push(`- date: ${run.startedAt.toISOString()} (the run took ${run.seconds.toFixed(0)} s)`);
  out.push(
    `- CPU: "${info.procModel ?? info.osModel}"${info.family ? ` (family ${info.family}, model ${info.model}${microarchitecture(info) ? `: ${microarchitecture(info)}` : ''})` : ''}, ${info.logicalCpus} logical CPUs; ` +
      `iaflow's kernels: ${k.isa} (available: ${k.available}), ${k.vectorFloats} floats per vector, ${k.tileRows} rows per tile; iaflow pool ${ctx.threads} threads; ` +
      `ORT intraOp 2, interOp 1, sequential, graph optimization all; node ${process.version}`,
  );
  const readings = [...e.fma1, ...e.fma2];
  if (readings.length) {
    const ghz = readings.map((r) => r.ghz);
    const fpc = readings.map((r) => r.flopsPerCyclePerCore);
    const clock = median(ghz);
    const perCycle = median(fpc);
    const fma1 = best(e.fma1.map((r) => r.gflops));
    const fma2 = best(e.fma2.map((r) => r.gflops));
    const isa = readings[0];
    const units = Math.round(perCycle / (2 * isa.lanes));
    out.push(
      `- measured clock: ${clock.toFixed(2)} GHz (median of ${ghz.length} readings, ${Math.min(...ghz).toFixed(2)}..${Math.max(...ghz).toFixed(2)}): the best stretch of a dependent chain of ` +
        `integer adds (1 cycle each) per thread, from bench/fma_probe.cc; /proc/cpuinfo says ${info.mhz ? `${(info.mhz / 1000).toFixed(2)} GHz` : 'nothing'} (not used)`,
    );
    out.push(
      `- FMA peak (bench/fma_probe.cc, c++ -O2 -march=native, ${isa.accumulators} independent ${isa.isa} accumulators of ${isa.lanes} floats): ` +
        `${fmtG(fma1)} GFLOP/s with 1 thread, ${fmtG(fma2)} with 2 (best of ${e.fma1.length} and ${e.fma2.length} readings; sustained over whole readings ` +
        `${spread(e.fma2.map((r) => r.sustainedGflops))}); ${perCycle.toFixed(1)} flops per cycle per core at the measured clock` +
        (units >= 1 ? ` = ${units} x ${isa.lanes * 32}-bit FMA per cycle` : '') +
        `; theory ${isa.lanes} lanes x 2 flops x ${units >= 1 ? units : '?'} pipes x ${info.logicalCpus} cores x ${clock.toFixed(2)} GHz = ${fmtG(isa.lanes * 2 * Math.max(units, 1) * info.logicalCpus * clock)} GFLOP/s`,
    );
  } else out.push(`- FMA peak and clock: not measured (${e.reasons.filter((r) => r.includes('fma_probe')).join('; ') || 'no probe'})`);
  out.push(
    `- sgemm ceiling (${e.sgemmSize} x ${e.sgemmSize} x ${e.sgemmSize}${e.sgemmSize !== SGEMM_SIZE ? `, --quick: the full run uses ${SGEMM_SIZE}` : ''}, 2 threads): onnxruntime MatMul (MLAS) best ${fmtG(best(e.ort))} GFLOP/s (${spread(e.ort)} readings); ` +
      (e.numpy ? `${e.numpy.description} best ${fmtG(best(e.numpyRates))} GFLOP/s (${spread(e.numpyRates)} readings)` : `numpy: ${e.reasons.find((r) => r.includes('numpy')) ?? 'not run'}`) +
      `. "% sgemm" in the table divides iaflow's masked GFLOP/s by the faster of the two in each round of the same cell, "% FMA peak" by the 2-thread probe of that round.`,
  );
  out.push(`- other work on the machine: load average ${run.loadStart} at the start, ${loadAverage()} at the end; ${run.neighbours}`);
  if (contention) {
    out.push(
      `- vCPU independence: a single-threaded scalar JS spin loop took ${contention.aloneSeconds.toFixed(2)} s alone and ${contention.pairSeconds.map((s) => s.toFixed(2)).join(' s / ')} s with two copies at once: ` +
        `${contention.effectiveCores.toFixed(2)} cores' worth of throughput (2.00 = two independent cores; low whenever other work runs at that moment).`,
    );
  }
  const peersRel = path.relative(path.resolve(BENCH_DIR, '..'), ctx.peersDir) || '.';
  out.push(
    `- peers: onnxruntime-node ${peerVersion('onnxruntime-node')}, onnx-proto ${peerVersion('onnx-proto')}, @tensorflow/tfjs ${peerVersion('@tensorflow/tfjs')}, ` +
      `@tensorflow/tfjs-backend-wasm ${peerVersion('@tensorflow/tfjs-backend-wasm')}; torch exports from ${path.isAbsolute(peersRel) ? 'the folder given with --peers' : peersRel}: ` +
      `${(['CFG-A', 'CFG-B'] as const).map((c) => { const t = ctx.torch[c]; return `${c} ${!t ? 'not loaded' : 'skipped' in t ? `skipped (${t.skipped.replace(ctx.peersDir, 'that folder')})` : path.basename(t.file)}`; }).join(', ')}` +
      `${ctx.peerNotes.length ? ` (${ctx.peerNotes.join('; ')})` : ''}`,
  );
  out.push(
    `- method: the machine's CPU share changes every few seconds with other work, so each cell times its implementations and the external ceiling interleaved ` +
      `(${ctx.rounds} rounds of ~${ctx.sliceSeconds} s slices); rows/s are medians over rounds, ratios and percentages medians of the per-round ratios.`,
  );
  out.push('');
  if (ctx.rows.length) {
    out.push(`## Throughput (async API, 2 threads, ${MAIN_SCALE} scale)`);
    out.push('');
    out.push(mainTable(ctx));
    out.push('');
    out.push(
      '"(b=N)": that cell ran on a reduced batch of N rows (one call at the full batch would take over ' +
        `${ctx.maxCallSeconds} s). Sampling rows: ORT gets z as an input; iaflow draws z itself (Philox + Box-Muller) inside the timed call and returns x and log q (sampleWithLogProb), as both ORT graphs do. ` +
        'Masked GFLOP/s counts only the multiply-adds the MADE masks allow. "iaflow / strongest ORT": per round, iaflow over the faster of the torch export and the bench\'s own graph (in brackets the one that won more rounds); ' +
        `the torch export's scale is exp(s) without iaflow's soft clip (one Abs/Mul/Add/Div fewer per layer), the bench's graph computes iaflow's exact function. seq/par: the same flow's sequential over parallel rows/s.`,
    );
    out.push('');
    const soft = ctx.rows.filter((r) => r.softplus || r.tfCpu || r.tfWasm);
    if (soft.length) {
      out.push('## The other scale form, and TensorFlow.js');
      out.push('');
      out.push(
        markdownTable(
          ['config', 'direction', 'iaflow softplus rows/s', 'ORT bench graph softplus rows/s', 'iaflow/ORT (softplus)', `TF.js cpu / wasm rows/s (${MAIN_SCALE})`, 'iaflow/TF.js cpu / wasm'],
          soft.map((r) => [
            r.config,
            r.direction,
            r.softplus ? fmtRate(r.softplus.iaflow) : '—',
            r.softplus ? peerText(r.softplus.ort, r.batch) : '—',
            r.softplus && isMeasured(r.softplus.ort) ? fmtX(r.softplus.ort.iaflowRatio) : '—',
            r.tfCpu || r.tfWasm ? `${peerText(r.tfCpu, r.batch)} / ${peerText(r.tfWasm, r.batch)}` : '—',
            r.tfCpu || r.tfWasm ? `${isMeasured(r.tfCpu) ? fmtX(r.tfCpu.iaflowRatio) : '—'} / ${isMeasured(r.tfWasm) ? fmtX(r.tfWasm.iaflowRatio) : '—'}` : '—',
          ]),
        ),
      );
      out.push('');
      out.push("softplus: scale = softplus(a) + 1e-3, the log-det needs a Log node in ORT's graph; timed in the same rounds as the row above.");
      out.push('');
    }
  }
  const targets = [...ctx.rows.flatMap((r) => r.targets), ...ctx.targets];
  if (targets.length) {
    out.push('## Targets');
    out.push('');
    out.push(markdownTable(['cell', 'target', 'measured', 'result'], targets.map((t) => [t.row, t.name, t.measured, t.pass === null ? 'N/A' : verdict(t.pass)])));
    out.push('');
  }
  if (ctx.breakdowns.length) {
    out.push('## Where the time goes (cells that missed a target)');
    out.push('');
    for (const b of ctx.breakdowns) {
      out.push(`- ${b.title}`);
      for (const line of b.lines) out.push(`  - ${line}`);
    }
    out.push('');
  }
  if (ctx.torchChecks.length) {
    out.push('## The torch export, checked (its four reference rows, max abs diff)');
    out.push('');
    out.push(
      markdownTable(
        ['config', 'JS evaluation of its initializers vs reference (x, log q)', 'ORT on the export vs reference', "iaflow on the export's weights vs the JS evaluation with iaflow's soft clip", 'iaflow vs reference (the soft clip)', 'masks keep the same work as the bench flow'],
        ctx.torchChecks.map(({ config, check: c }) => [
          config,
          `${fmtDiff(c.jsVsReference.x)}, ${fmtDiff(c.jsVsReference.logq)}`,
          c.ortVsReference ? `${fmtDiff(c.ortVsReference.x)}, ${fmtDiff(c.ortVsReference.logq)}` : '—',
          `${fmtDiff(c.iaflowVsSoftClip.x)}, ${fmtDiff(c.iaflowVsSoftClip.logq)}`,
          `${fmtDiff(c.iaflowVsReference.x)}, ${fmtDiff(c.iaflowVsReference.logq)}`,
          c.sameMaskedWork === null ? '—' : c.sameMaskedWork ? 'yes' : 'no',
        ]),
      ),
    );
    out.push('');
    out.push(
      "The export computes x = z exp(s) + m with the raw s; iaflow's 'exp' scale is exp(s / (1 + |s| / ln 1e3)), so iaflow reproduces the export's network (weights, masks, order: the second column) " +
        'but not its scale function bit for bit: the last column is the soft clip alone. The timed iaflow flows have random weights of the same shape and masks.',
    );
    out.push('');
  }
  if (ctx.threadRows.length) {
    out.push('## Threads: 2 vs 1 (setThreads)');
    out.push('');
    const rows = ctx.threadRows.map((t) => [
      t.config,
      t.direction,
      fmtRate(t.one),
      fmtRate(t.two),
      fmtX(t.speedup),
      fmtX(t.machine),
      `${t.twoCoreRounds} of ${t.rounds}`,
      t.twoCoreRounds ? fmtX(t.speedupTwoCore) : '—',
      t.target.pass === null ? 'N/A (too few two-core rounds)' : `${verdict(t.target.pass)} (>= ${TARGET_THREAD_SPEEDUP}x)`,
    ]);
    out.push(
      markdownTable(
        ['config', 'direction', '1 thread rows/s', '2 threads rows/s', 'speedup (all rounds)', 'matmul 2/1 (same rounds)', `two-core rounds (matmul 2/1 >= ${TARGET_THREAD_SPEEDUP}x before and after)`, 'speedup in those rounds', 'target (issue 5)'],
        rows,
      ),
    );
    out.push('');
    out.push(
      `Both directions and iaflow's own ${KERNEL_CEILING_SIZE}^3 dense product (native.measureMatmulGflops, used here only to see whether the machine gave two cores), at 1 and 2 threads, are timed in the same interleaved rounds; ` +
        `the target is judged on the rounds where that product scaled >= ${TARGET_THREAD_SPEEDUP}x before and after the workloads.`,
    );
    out.push('');
  }
  if (ctx.latencyRows.length) {
    out.push('## CFG-D: latency of a full 5-layer IAF sample (CFG-A network)');
    out.push('');
    out.push(
      markdownTable(
        ['cell', 'sampleSync median / p99 (us)', 'sampleSync rows/s', 'sample (async) median / p99 (us)', 'ORT torch export median / p99 (us)', 'ORT bench graph median / p99 (us)', 'fastest ORT / sampleSync', 'calls', 'target'],
        ctx.latencyRows,
      ),
    );
    out.push('');
  }
  if (ctx.scaleRows.length) {
    out.push(`## SCALE: sequential vs parallel as D grows (hidden [${SCALE_SHAPE.hidden.join(', ')}], ${SCALE_SHAPE.layers} IAF layers, batch ${SCALE_SHAPE.batch})`);
    out.push('');
    out.push(
      markdownTable(
        ['D', 'iaflow par rows/s', 'par GFLOP/s', 'iaflow seq rows/s', 'seq GFLOP/s', 'iaflow seq/par', 'simple par rows/s', 'simple seq rows/s', 'simple seq/par', '1/D', 'simple batch', 'target (issue 5)'],
        ctx.scaleRows,
      ),
    );
    out.push('');
    out.push(
      'Parallel = forward(z), sequential = inverse(x) of the same IAF (both take an input). The simple path (flow.referenceRun: dense masked products, D passes) runs both directions on the batch its sequential direction can afford.',
    );
    out.push('');
  }
  if (ctx.checks.length) {
    out.push("## Same function? (max abs diff from iaflow on 256 rows, float32)");
    out.push('');
    out.push(markdownTable(['cell', 'ORT bench graph', 'TF.js'], ctx.checks.map((ch) => [ch.cell, ch.ort, ch.tfjs])));
    out.push('');
  }
  if (ctx.notes.length) {
    out.push('## Notes');
    out.push('');
    for (const n of ctx.notes) out.push(`- ${n}`);
    out.push('');
  }
  return out.join('\n');
}

// ---------------------------------------------------------------- main

async function loadPeers(args: Args, wantsTf: boolean) {
  const peerNotes: string[] = [];
  let ort: OrtModule | null = null;
  let onnx: OnnxProtoModule | null = null;
  if (args.ort) {
    const o = loadOrt();
    const p = loadOnnxProto();
    ort = o.module;
    onnx = p.module;
    if (o.error) peerNotes.push(`onnxruntime-node did not load: ${o.error}`);
    if (p.error) peerNotes.push(`onnx-proto did not load: ${p.error}`);
  }
  let tf: TfModule | null = null;
  const tfBackends: string[] = [];
  if (args.tfjs && wantsTf) {
    const t = loadTf();
    tf = t.tf;
    if (t.error) peerNotes.push(`@tensorflow/tfjs did not load: ${t.error}`);
    if (tf) {
      // tfjs-core advertises tfjs-node on first use in Node; keep the report clean.
      const warn = console.warn;
      console.warn = (...a: unknown[]) => {
        if (!String(a[0]).includes('tfjs-node')) warn(...a);
      };
      for (const backend of ['cpu', 'wasm']) {
        try {
          if (backend === 'wasm' && t.wasmError) throw new Error(t.wasmError);
          if (await tf.setBackend(backend)) {
            await tf.ready();
            tfBackends.push(backend);
          } else peerNotes.push(`tfjs ${backend} backend did not initialise`);
        } catch (error) {
          peerNotes.push(`tfjs ${backend} backend failed: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
        }
      }
    }
  }
  return { ort, onnx, tf, tfBackends, peerNotes };
}

/** Builds or starts the external ceiling's sources; a reason for each one missing. */
async function externalCeiling(ortModule: OrtModule | null, onnx: OnnxProtoModule | null, sgemmSize: number): Promise<External> {
  const e: External = { fma: null, ortSgemm: null, numpy: null, sgemmSize, reasons: [], fma1: [], fma2: [], ort: [], numpyRates: [] };
  const fma = FmaProbe.build();
  e.fma = fma.probe;
  if (!fma.probe) e.reasons.push(fma.reason);
  if (ortModule && onnx) {
    try {
      e.ortSgemm = await OrtSgemm.create(ortModule, onnx, ORT_OPTIONS, sgemmSize);
    } catch (error) {
      e.reasons.push(`onnxruntime MatMul sgemm failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  } else e.reasons.push('onnxruntime MatMul sgemm: onnxruntime-node not loaded');
  const numpy = await NumpySgemm.start(2, sgemmSize);
  e.numpy = numpy.sgemm;
  if (!numpy.sgemm) e.reasons.push(`numpy sgemm: ${numpy.reason}`);
  return e;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const startedAt = new Date();
  const t0 = performance.now();
  const loadStart = loadAverage();
  const monitor = new NeighbourMonitor();
  const wants = (s: Section) => !args.only || args.only.has(s);

  if (args.install && (args.ort || args.tfjs)) ensurePeersInstalled(log);
  const peers = await loadPeers(args, wants('CFG-A'));

  const info = cpuInfo();
  const threads = getThreads();
  const kernel = native.kernelInfo();
  log(`CPU ${info.procModel ?? info.osModel}, ${info.logicalCpus} logical CPUs, iaflow threads ${threads}, kernels ${kernel.isa}`);

  const peersDir = args.peers ?? defaultPeersDir();
  const torch: Context['torch'] = {};
  for (const c of ['CFG-A', 'CFG-B'] as const) {
    if (!wants(c) && !(c === 'CFG-A' && wants('CFG-D'))) continue;
    torch[c] = peers.onnx ? loadTorchPeer(peers.onnx, peersDir, c) : { skipped: 'onnx-proto not loaded' };
    const t = torch[c]!;
    log(`torch export for ${c}: ${'skipped' in t ? `skipped (${t.skipped}; --peers DIR names the folder)` : t.file}`);
  }

  log('the external ceiling: FMA probe (1 and 2 threads), onnxruntime MatMul and numpy sgemm');
  const external = await externalCeiling(args.ort ? peers.ort : null, peers.onnx, args.quick ? QUICK_SGEMM_SIZE : SGEMM_SIZE);
  for (const reason of external.reasons) log(`  ${reason}`);
  const ctx: Context = {
    args,
    maxCallSeconds: args.quick ? 0.4 : 1.0,
    rounds: args.quick ? 2 : 5,
    sliceSeconds: args.quick ? 0.1 : 0.25,
    kernelCeilings: new CeilingTracker(native, KERNEL_CEILING_SIZE, threads),
    external,
    threads,
    tileRows: kernel.tileRows,
    ...peers,
    peersDir,
    torch,
    torchChecks: [],
    rows: [],
    checks: [],
    targets: [],
    threadRows: [],
    latencyRows: [],
    scaleRows: [],
    breakdowns: [],
    notes: [],
  };
  try {
    const machine = externalSlots(ctx, true);
    if (machine.length) {
      const r = await interleave(machine, { rounds: args.quick ? 2 : 3, sliceSeconds: 0 });
      log(`  ${r.names.map((n) => `${n} ${fmtG(Math.max(...r.rates[slotIndex(r, n)]))}`).join(', ')} GFLOP/s (best sustained reading)`);
      const fma = [...external.fma1, ...external.fma2];
      if (fma.length) log(`  clock ${median(fma.map((f) => f.ghz)).toFixed(2)} GHz, ${median(fma.map((f) => f.flopsPerCyclePerCore)).toFixed(1)} flops/cycle/core`);
    }
    const contention = await measureContention(args.quick ? 0.7 : 1.5, args.quick ? 1 : 2);
    log(`  spin loop alone ${contention.aloneSeconds.toFixed(2)} s, two at once ${contention.pairSeconds.map((s) => s.toFixed(2)).join(' / ')} s`);

    for (const name of ['CFG-A', 'CFG-B', 'CFG-C'] as const) if (wants(name)) await runConfig(ctx, name);
    if (wants('CFG-D')) await runLatency(ctx);
    for (const name of ['CFG-A', 'CFG-B'] as const) if (wants(name)) await runThreads(ctx, name);
    if (wants('SCALE')) await runScale(ctx);
    for (const row of ctx.rows) addMainTargets(row);
    await whereTheTimeGoes(ctx);

    if (args.ort) {
      ctx.notes.push(
        "ORT's sequential graphs unroll the D-pass loop (weights stored once as initializers): 80 network passes for CFG-A, 320 for CFG-B; where one call at the full batch would exceed the limit they run on a reduced batch (b=N).",
      );
    }
    const text = report(ctx, { info, contention, startedAt, seconds: (performance.now() - t0) / 1e3, loadStart, neighbours: monitor.summary() });
    console.log(text);
    const write = args.write ?? (!args.quick && !args.only && args.ort && args.tfjs);
    if (write) {
      // bench/realdata.ts keeps its section in the same file, between its markers: carry it over.
      const file = path.join(BENCH_DIR, 'RESULTS.md');
      const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
      const realData = /<!-- bench\/realdata\.ts: begin[\s\S]*?<!-- bench\/realdata\.ts: end -->\n?/.exec(old)?.[0];
      fs.writeFileSync(file, `${text}\n${realData ? `\n${realData}` : ''}`);
      log('wrote bench/RESULTS.md');
    } else log('bench/RESULTS.md not written (partial or quick run; pass --write to write it anyway)');
  } finally {
    external.fma?.dispose();
    external.numpy?.dispose();
    await external.ortSgemm?.release();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
