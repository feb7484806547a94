// iaflow's benchmark (issue 5): rows/s and masked GFLOP/s of both directions against this
// machine's measured fp32 ceiling, side by side with the alternatives a Node user has
// (onnxruntime-node on the same network exported to ONNX, TensorFlow.js, iaflow's own simple
// path), in one process. Prints one markdown report and writes it to bench/RESULTS.md.
//
//   npx tsx bench/run.ts [--quick] [--only CFG-A[,CFG-B,...]] [--no-ort] [--no-tfjs] [--no-install] [--write|--no-write]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createIAF, createMAF, getThreads, setThreads, standardNormal } from '../src/index';
import type { Flow } from '../src/index';
import { native } from '../src/native';
import { CeilingTracker, NeighbourMonitor, cpuInfo, loadAverage, measureContention, theoreticalPeak } from './machine';
import type { Ceiling, Contention, CpuInfo } from './machine';
import { Direction, denseMacsPerRow, flowNet, maskedMacsPerRow, maxAbsDiff, randomParameters } from './network';
import { buildOnnxGraph } from './onnx-graph';
import { BENCH_DIR, ensurePeersInstalled, loadOnnxProto, loadOrt, loadTf, peerVersion } from './peers';
import type { OnnxProtoModule, OrtModule, OrtSession, OrtSessionOptions, TfModule } from './peers';
import { tfParallelRunner } from './tfjs-net';
import type { TfRunner } from './tfjs-net';
import { Call, Interleaved, Latency, Prepared, Slot, interleave, latency, latencySync, median, prepare, rateOf, ratioOf, slotIndex } from './timing';
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
const CEILING_SIZE = 1024;

const ORT_OPTIONS: OrtSessionOptions & { logSeverityLevel: number } = {
  intraOpNumThreads: 2,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
  logSeverityLevel: 3,
};

// Targets of issue 5.
const TARGET_CEILING_PCT = 60;
const TARGET_VS_ORT = 2;
const TARGET_SEQ_FRACTION = 0.4;
const TARGET_TRAIN_VS_SIMPLE = 2;
const TARGET_LATENCY_US = 50;
const TARGET_THREAD_SPEEDUP = 1.8;
const TARGET_SCALE_FRACTION = 0.25;

interface Args {
  quick: boolean;
  only: Set<Section> | null;
  ort: boolean;
  tfjs: boolean;
  install: boolean;
  write: boolean | null;
}

const USAGE = 'npx tsx bench/run.ts [--quick] [--only CFG-A,CFG-B,CFG-C,CFG-D,SCALE] [--no-ort] [--no-tfjs] [--no-install] [--write|--no-write]';

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, only: null, ort: true, tfjs: true, install: true, write: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') args.quick = true;
    else if (a === '--no-ort') args.ort = false;
    else if (a === '--no-tfjs') args.tfjs = false;
    else if (a === '--no-install') args.install = false;
    else if (a === '--write') args.write = true;
    else if (a === '--no-write') args.write = false;
    else if (a === '--only' || a.startsWith('--only=')) {
      const list = a === '--only' ? argv[++i] : a.slice('--only='.length);
      if (!list) throw new Error(`--only needs a value: ${USAGE}`);
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
  ortDenseFlopsPerRow: number;
  iaflow?: { rowsPerSec: number; calls: number };
  /** iaflow's masked GFLOP/s over the matmul ceiling timed in the same rounds (percent). */
  pctAdjacent?: number;
  adjacentCeiling?: number;
  ort?: PeerCell;
  tfCpu?: PeerCell;
  tfWasm?: PeerCell;
  simple?: Measured;
  seqFracIaflow?: number;
  seqFracSimple?: number;
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
  simple: string;
  tfjs: string;
}

const withBatch = (rate: number, rows: number, nominal: number) => `${fmtRate(rate)}${rows !== nominal ? ` (b=${rows})` : ''}`;

// ---------------------------------------------------------------- context shared by the sections

interface Context {
  args: Args;
  maxCallSeconds: number;
  rounds: number;
  sliceSeconds: number;
  ceilings: CeilingTracker;
  /** Final after the run: the best of every ceiling measurement. */
  ceiling: Ceiling;
  threads: number;
  tileRows: number;
  ort: OrtModule | null;
  onnx: OnnxProtoModule | null;
  tf: TfModule | null;
  tfBackends: string[];
  peerNotes: string[];
  rows: MainRow[];
  checks: Check[];
  /** Targets outside the main table (latency, threads, SCALE); the main rows carry their own. */
  targets: Target[];
  threadRows: ThreadRow[];
  latencyRows: string[][];
  scaleRows: string[][];
  notes: string[];
}

function makeFlow(kind: 'iaf' | 'maf', shape: { dim: number; hidden: number[]; layers: number }, seed: number): Flow {
  const flow = (kind === 'iaf' ? createIAF : createMAF)({ dim: shape.dim, hidden: shape.hidden, layers: shape.layers, seed });
  flow.setParameters(randomParameters(flow, seed + 1));
  return flow;
}

/** The matmul ceiling as an interleaved slot, at `threads` pool threads. */
function ceilingSlot(ctx: Context, threads: 1 | 2, name = 'ceiling'): Slot {
  return {
    name,
    before: () => setThreads(threads),
    rate: () => native.measureMatmulGflops(CEILING_SIZE, ctx.args.quick ? 0.08 : 0.15),
  };
}

function recordCeiling(ctx: Context, result: Interleaved, name: string, threads: 1 | 2): void {
  ctx.ceilings.add(threads, result.rates[slotIndex(result, name)]);
}

async function interleaveAll(ctx: Context, slots: Slot[]): Promise<Interleaved> {
  const result = await interleave(slots, { rounds: ctx.rounds, sliceSeconds: ctx.sliceSeconds });
  setThreads(ctx.threads);
  return result;
}

async function ortSession(ctx: Context, flow: Flow, direction: Direction): Promise<{ session: OrtSession; nodes: number; passes: number; buildSeconds: number } | { skipped: string }> {
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

/** iaflow's async call for a direction of a flow (sampling directions draw z; density directions read x). */
function iaflowMaker(flow: Flow, direction: Direction, input: Float32Array | null) {
  return (rows: number): Call => {
    if (direction === 'toData') return () => flow.sampleWithLogProb(rows, { seed: SEED });
    const x = input!.slice(0, rows * flow.dim);
    return () => flow.logProb(x);
  };
}

function simpleMaker(flow: Flow, direction: Direction, input: Float32Array | null) {
  return (rows: number): Call => {
    const data = input ? input.slice(0, rows * flow.dim) : null;
    return () => flow.referenceRun(direction, data, rows, SEED);
  };
}

async function iaflowOutputs(flow: Flow, spec: DirectionSpec, n: number): Promise<Outputs> {
  if (spec.direction === 'toData') {
    const s = await flow.sampleWithLogProb(n, { seed: SEED });
    return { x: s.x, logProb: s.logProb };
  }
  return { x: null, logProb: await flow.logProb(spec.iaflowInput!.slice(0, n * flow.dim)) };
}

function diffText(reference: Outputs, other: Outputs): string {
  const parts: string[] = [];
  if (reference.x && other.x) parts.push(`x ${fmtDiff(maxAbsDiff(reference.x, other.x))}`);
  parts.push(`logProb ${fmtDiff(maxAbsDiff(reference.logProb, other.logProb))}`);
  return parts.join(', ');
}

async function runConfig(ctx: Context, name: 'CFG-A' | 'CFG-B' | 'CFG-C'): Promise<void> {
  const shape = CONFIGS[name];
  const { dim, batch } = shape;
  log(`${name}: D=${dim}, hidden [${shape.hidden.join(', ')}], ${shape.layers} layers, batch ${batch}`);
  const iafFlow = makeFlow('iaf', shape, SEED);
  const mafFlow = makeFlow('maf', shape, SEED + 100);
  const maskedFlopsPerRow = 2 * maskedMacsPerRow(iafFlow.config);
  const densePass = 2 * denseMacsPerRow(iafFlow.config);
  ctx.notes.push(
    `${name}: ${(maskedFlopsPerRow / 1e6).toFixed(3)} masked MFLOP per row (all ${shape.layers} layers), ` +
      `${(densePass / 1e6).toFixed(3)} dense MFLOP per network pass; the masks keep ${((100 * maskedFlopsPerRow) / densePass).toFixed(0)}%.`,
  );
  const z = standardNormal(batch, dim, { seed: SEED });
  const xIaf = await iafFlow.sample(batch, { seed: SEED });
  const xMaf = await mafFlow.sample(batch, { seed: SEED });
  const specs: DirectionSpec[] = [
    { name: 'IAF sample', flow: iafFlow, direction: 'toData', pass: 'parallel', iaflowInput: null, peerInput: z },
    { name: 'MAF logProb', flow: mafFlow, direction: 'toLatent', pass: 'parallel', iaflowInput: xMaf, peerInput: xMaf },
    { name: 'IAF logProb', flow: iafFlow, direction: 'toLatent', pass: 'sequential', iaflowInput: xIaf, peerInput: xIaf },
    { name: 'MAF sample', flow: mafFlow, direction: 'toData', pass: 'sequential', iaflowInput: null, peerInput: z },
  ];
  const peerBatch = { maxCallSeconds: ctx.maxCallSeconds };
  for (const spec of specs) {
    const flow = spec.flow;
    const row: MainRow = {
      config: name,
      direction: spec.name,
      pass: spec.pass,
      batch,
      maskedFlopsPerRow,
      ortDenseFlopsPerRow: densePass * (spec.pass === 'parallel' ? 1 : dim),
      targets: [],
    };
    const check: Check = { cell: `${name} ${spec.name}`, ort: '—', simple: '—', tfjs: '—' };
    const n = Math.min(batch, 256);
    const reference = await iaflowOutputs(flow, spec, n);

    // iaflow (async API, the configuration's batch) and its simple path (dense masked, D passes).
    const fast = await prepare(iaflowMaker(flow, spec.direction, spec.iaflowInput), batch, { ...peerBatch, fixed: true });
    const simple = await prepare(simpleMaker(flow, spec.direction, spec.iaflowInput), batch, { ...peerBatch, minRows: 2 * ctx.tileRows });
    const simpleOut = flow.referenceRun(spec.direction, spec.iaflowInput ? spec.iaflowInput.slice(0, n * dim) : null, n, SEED);
    check.simple = diffText(reference, { x: spec.direction === 'toData' ? simpleOut.points : null, logProb: simpleOut.logProb });
    // Slot order: ORT, iaflow, ceiling, iaflow's other direction first (the targets' ratios are
    // between neighbours in time), then the slower rest.
    const first: Slot[] = [];
    const slots: Slot[] = [
      { name: 'iaflow', rows: fast.rows, call: fast.call },
      ceilingSlot(ctx, 2),
    ];
    const rest: Slot[] = [{ name: 'simple', rows: simple.rows, call: simple.call }];
    if (spec.pass === 'sequential') {
      // The same flow's parallel direction, in the same rounds: the seq/par fractions.
      const other: Direction = spec.direction === 'toData' ? 'toLatent' : 'toData';
      const otherInput = other === 'toLatent' ? (await flow.sample(batch, { seed: SEED + 1 })) : null;
      const fastPar = await prepare(iaflowMaker(flow, other, otherInput), batch, { ...peerBatch, fixed: true });
      const simplePar = await prepare(simpleMaker(flow, other, otherInput), simple.rows, { ...peerBatch, fixed: true });
      slots.push({ name: 'iaflow-par', rows: fastPar.rows, call: fastPar.call });
      rest.push({ name: 'simple-par', rows: simplePar.rows, call: simplePar.call });
    }

    // onnxruntime-node on the same network.
    let session: OrtSession | null = null;
    let ortPrepared: Prepared | null = null;
    if (ctx.args.ort) {
      const made = await ortSession(ctx, flow, spec.direction);
      if ('skipped' in made) row.ort = { skipped: made.skipped };
      else {
        session = made.session;
        log(`  ${spec.name} ORT graph: ${made.nodes} nodes, ${made.passes} network passes, built + session in ${made.buildSeconds.toFixed(1)} s`);
        const ort = ctx.ort!;
        const out = await session.run({ input: new ort.Tensor('float32', spec.peerInput.slice(0, n * dim), [n, dim]) });
        check.ort = diffText(reference, { x: spec.direction === 'toData' ? (out.x.data as Float32Array) : null, logProb: out.logProb.data as Float32Array });
        const s = session;
        ortPrepared = await prepare((rows) => {
          const tensor = new ort.Tensor('float32', spec.peerInput.slice(0, rows * dim), [rows, dim]);
          return () => s.run({ input: tensor });
        }, batch, peerBatch);
        first.push({ name: 'ort', rows: ortPrepared.rows, call: ortPrepared.call });
      }
    } else row.ort = { skipped: '--no-ort' };

    // TensorFlow.js: the parallel direction of CFG-A, on its cpu and wasm backends.
    const tfRunners: TfRunner[] = [];
    const tfPrepared: Partial<Record<'cpu' | 'wasm', Prepared>> = {};
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
        tfPrepared[backend] = await prepare((rows) => () => runner.run(spec.peerInput, rows), batch, peerBatch);
        rest.push({ name: `tf-${backend}`, rows: tfPrepared[backend]!.rows, call: tfPrepared[backend]!.call, before: () => tf.setBackend(backend) });
      }
      check.tfjs = diffs.join('; ') || '—';
    }

    const all = [...first, ...slots, ...rest];
    log(`  ${spec.name} (${spec.pass}): ${ctx.rounds} interleaved rounds of ${all.map((s) => s.name).join(', ')}`);
    const r = await interleaveAll(ctx, all);
    recordCeiling(ctx, r, 'ceiling', 2);
    for (const runner of tfRunners) runner.dispose();
    if (session) await session.release();

    const fastRate = rateOf(r, 'iaflow');
    row.iaflow = { rowsPerSec: fastRate, calls: r.calls[slotIndex(r, 'iaflow')] };
    row.pctAdjacent = 100 * ratioOf(r, 'iaflow', 'ceiling', maskedFlopsPerRow / 1e9);
    row.adjacentCeiling = rateOf(r, 'ceiling');
    const measured = (slot: string, prepared: Prepared): Measured => ({ rowsPerSec: rateOf(r, slot), rows: prepared.rows, iaflowRatio: ratioOf(r, 'iaflow', slot) });
    row.simple = measured('simple', simple);
    if (ortPrepared) row.ort = measured('ort', ortPrepared);
    if (spec.pass === 'parallel' && name === 'CFG-A') {
      row.tfCpu = tfPrepared.cpu ? measured('tf-cpu', tfPrepared.cpu) : { skipped: tfSkipped.cpu ?? 'not run' };
      row.tfWasm = tfPrepared.wasm ? measured('tf-wasm', tfPrepared.wasm) : { skipped: tfSkipped.wasm ?? 'not run' };
    }
    if (spec.pass === 'sequential') {
      row.seqFracIaflow = ratioOf(r, 'iaflow', 'iaflow-par');
      row.seqFracSimple = ratioOf(r, 'simple', 'simple-par');
    }
    log(
      `  -> iaflow ${fmtRate(fastRate)} rows/s (${fmtPct(row.pctAdjacent)} of the adjacent ceiling ${fmtG(row.adjacentCeiling)} GFLOP/s), simple ${fmtRate(row.simple.rowsPerSec)} (b=${simple.rows})` +
        (isMeasured(row.ort) ? `, ORT ${fmtRate(row.ort.rowsPerSec)} (b=${row.ort.rows})` : '') +
        (row.seqFracIaflow !== undefined ? `, seq/par ${fmtFrac(row.seqFracIaflow)}` : ''),
    );
    ctx.rows.push(row);
    ctx.checks.push(check);
  }

  if (name === 'CFG-A') ctx.rows.push(await trainingRow(ctx, mafFlow, xMaf, maskedFlopsPerRow, batch));
}

/** The main table's targets, judged after the run. */
function addMainTargets(row: MainRow): void {
  if (row.pass === 'training' || (row.config !== 'CFG-A' && row.config !== 'CFG-B')) return;
  const label = `${row.config} ${row.direction}`;
  row.targets = [];
  if (row.pass === 'parallel') {
    const pct = row.pctAdjacent!;
    row.targets.push({ row: label, name: `>= ${TARGET_CEILING_PCT}% of ceiling`, measured: fmtPct(pct), pass: pct >= TARGET_CEILING_PCT });
    if (isMeasured(row.ort)) {
      const x = row.ort.iaflowRatio;
      row.targets.push({ row: label, name: `>= ${TARGET_VS_ORT}x ORT`, measured: fmtX(x), pass: x >= TARGET_VS_ORT });
    } else row.targets.push({ row: label, name: `>= ${TARGET_VS_ORT}x ORT`, measured: row.ort ? row.ort.skipped : 'not run', pass: null });
  } else {
    const f = row.seqFracIaflow!;
    row.targets.push({ row: label, name: `seq/par >= ${TARGET_SEQ_FRACTION}`, measured: fmtFrac(f), pass: f >= TARGET_SEQ_FRACTION });
  }
}

/**
 * CFG-A training step: maximum-likelihood Adam steps of the MAF (fit trains through the parallel
 * data -> latent direction, so it takes MAF layers), iaflow's kernels against the simple path,
 * interleaved with the matmul ceiling. Add further training rows here.
 */
async function trainingRow(ctx: Context, flow: Flow, data: Float32Array, maskedFlopsPerRow: number, batch: number): Promise<MainRow> {
  const row: MainRow = {
    config: 'CFG-A',
    direction: 'MAF training step',
    pass: 'training',
    batch,
    maskedFlopsPerRow,
    ortDenseFlopsPerRow: NaN,
    targets: [],
  };
  const label = 'CFG-A training step';
  const name = `>= ${TARGET_TRAIN_VS_SIMPLE}x simple path`;
  const availability = trainingCell();
  if (!availability.available) {
    log(availability.reason);
    row.note = availability.reason;
    row.targets.push({ row: label, name, measured: 'not available in this build', pass: null });
    return row;
  }
  const { throughput } = availability;
  // The simple path is ~10x slower: it steps on a smaller batch, sized for ~0.3 s a step.
  const probe = throughput(flow, data, 512, 1, true);
  const simpleRows = Math.max(512, Math.min(batch, Math.floor((probe * 0.3) / 32) * 32));
  const steps = ctx.args.quick ? 1 : 2;
  log(`training: ${ctx.rounds} interleaved rounds of Adam steps, iaflow on batch ${batch}, simple path on batch ${simpleRows}`);
  const r = await interleaveAll(ctx, [
    { name: 'iaflow', rate: () => throughput(flow, data, batch, steps, false) },
    ceilingSlot(ctx, 2),
    { name: 'simple', rate: () => throughput(flow, data, simpleRows, 1, true) },
  ]);
  recordCeiling(ctx, r, 'ceiling', 2);
  row.iaflow = { rowsPerSec: rateOf(r, 'iaflow'), calls: r.calls[slotIndex(r, 'iaflow')] };
  row.adjacentCeiling = rateOf(r, 'ceiling');
  row.simple = { rowsPerSec: rateOf(r, 'simple'), rows: simpleRows, iaflowRatio: ratioOf(r, 'iaflow', 'simple') };
  row.note = 'one Adam step per call: forward (parallel direction), backward, update; rows/s as measured by __trainingInternals.likelihoodThroughput';
  const x = row.simple.iaflowRatio;
  row.targets.push({ row: label, name, measured: fmtX(x), pass: x >= TARGET_TRAIN_VS_SIMPLE });
  log(`  -> iaflow ${fmtRate(row.iaflow.rowsPerSec)} rows/s, simple ${fmtRate(row.simple.rowsPerSec)} rows/s (${fmtX(x)})`);
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
  const ort = ctx.args.ort ? await ortSession(ctx, flow, 'toData') : null;
  try {
    for (const batch of [1, 32]) {
      const sync = latencySync(() => void flow.sampleSync(batch), opts);
      const asyncL = await latency(() => flow.sample(batch), { ...opts, seconds: opts.seconds / 2 });
      let ortL: Latency | null = null;
      if (ort && !('skipped' in ort)) {
        const tensor = new ctx.ort!.Tensor('float32', z.slice(0, batch * shape.dim), [batch, shape.dim]);
        const session = ort.session;
        ortL = await latency(() => session.run({ input: tensor }), { ...opts, seconds: opts.seconds / 2 });
      }
      const row = [
        `CFG-D batch ${batch}`,
        `${sync.medianMicros.toFixed(1)} / ${sync.p99Micros.toFixed(1)}`,
        fmtRate((batch * 1e6) / sync.medianMicros),
        `${asyncL.medianMicros.toFixed(1)} / ${asyncL.p99Micros.toFixed(1)}`,
        ortL ? `${ortL.medianMicros.toFixed(1)} / ${ortL.p99Micros.toFixed(1)}` : '—',
        ortL ? fmtX(ortL.medianMicros / sync.medianMicros) : '—',
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
      } else row.push('—');
      ctx.latencyRows.push(row);
      log(`  batch ${batch}: sampleSync median ${sync.medianMicros.toFixed(1)} us, p99 ${sync.p99Micros.toFixed(1)} us`);
    }
  } finally {
    if (ort && !('skipped' in ort)) await ort.session.release();
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
    '% ceiling: adjacent (run best)',
    'ORT rows/s',
    'iaflow/ORT',
    'ORT dense GFLOP/s',
    'TF.js cpu / wasm rows/s',
    'simple rows/s',
    'iaflow/simple',
    'seq/par iaflow (simple)',
    'targets',
  ];
  const rows = ctx.rows.map((r) => {
    if (r.pass === 'training') {
      if (!r.iaflow || !r.simple) return [r.config, r.direction, String(r.batch), ...Array<string>(10).fill('—'), r.note ?? '—'];
      const targets = r.targets.map((t) => `${t.pass === null ? 'N/A' : verdict(t.pass)} ${t.name} (${t.measured})`).join('; ');
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
        '—',
        withBatch(r.simple.rowsPerSec, r.simple.rows, r.batch),
        fmtX(r.simple.iaflowRatio),
        '—',
        targets,
      ];
    }
    const it = r.iaflow!;
    const gflops = (it.rowsPerSec * r.maskedFlopsPerRow) / 1e9;
    const peer = (c: PeerCell | undefined) => (c === undefined ? '—' : isMeasured(c) ? withBatch(c.rowsPerSec, c.rows, r.batch) : `skipped (${c.skipped})`);
    const tfText = r.tfCpu || r.tfWasm ? `${peer(r.tfCpu)} / ${peer(r.tfWasm)}` : '—';
    const targets = r.targets.map((t) => `${t.pass === null ? 'N/A' : verdict(t.pass)} ${t.name} (${t.measured})`).join('; ') || '—';
    return [
      r.config,
      `${r.direction} (${r.pass === 'parallel' ? 'par' : 'seq'})`,
      String(r.batch),
      fmtRate(it.rowsPerSec),
      fmtG(gflops),
      `${fmtPct(r.pctAdjacent!)} (${fmtPct((100 * gflops) / ctx.ceiling.best)})`,
      peer(r.ort),
      isMeasured(r.ort) ? fmtX(r.ort.iaflowRatio) : '—',
      isMeasured(r.ort) ? fmtG((r.ort.rowsPerSec * r.ortDenseFlopsPerRow) / 1e9) : '—',
      tfText,
      r.simple ? withBatch(r.simple.rowsPerSec, r.simple.rows, r.batch) : '—',
      r.simple ? fmtX(r.simple.iaflowRatio) : '—',
      r.seqFracIaflow !== undefined ? `${fmtFrac(r.seqFracIaflow)} (${fmtFrac(r.seqFracSimple!)})` : '—',
      targets,
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
  const peak = theoreticalPeak(k.vectorFloats, info.logicalCpus, info.mhz);
  const c = ctx.ceiling;
  const out: string[] = [];
  const flags = `${ctx.args.quick ? ' --quick' : ''}${ctx.args.only ? ` --only ${[...ctx.args.only].join(',')}` : ''}${ctx.args.ort ? '' : ' --no-ort'}${ctx.args.tfjs ? '' : ' --no-tfjs'}`;
  out.push('# iaflow benchmark results');
  out.push('');
  out.push(`Written by \`npm run bench\` (bench/run.ts${flags}). What the columns mean: bench/README.md.`);
  out.push('');
  out.push(`- date: ${run.startedAt.toISOString()} (the run took ${run.seconds.toFixed(0)} s)`);
  out.push(
    `- CPU: os.cpus()[0].model "${info.osModel}"; /proc/cpuinfo model name "${info.procModel ?? 'n/a'}"${info.family ? ` (family ${info.family}, model ${info.model})` : ''}; ` +
      `${info.logicalCpus} logical CPUs; clock ${info.mhz ? `${info.mhz.toFixed(0)} MHz (/proc/cpuinfo "cpu MHz")` : 'unknown'}`,
  );
  out.push(`- threads: iaflow pool ${ctx.threads} (main table); ORT intraOp 2, interOp 1, sequential, graph optimization all; node ${process.version}`);
  out.push(`- kernels: isa ${k.isa} (available: ${k.available}), ${k.vectorFloats} floats per vector, ${k.tileRows} rows per tile; backend ${native.backends()[0].name}`);
  const spread = (v: number[]) => `${v.length} measurements, ${fmtG(Math.min(...v))}..${fmtG(Math.max(...v))}`;
  out.push(
    `- measured fp32 ceiling (native.measureMatmulGflops, a dense ${c.size}^3 product with iaflow's best kernel): best ${fmtG(c.gflops1)} GFLOP/s with 1 thread ` +
      `(${spread(c.samples1)}), best ${fmtG(c.gflops2)} GFLOP/s with 2 threads (${spread(c.samples2)}); the run's best, ${fmtG(c.best)} GFLOP/s, is "run best" in the table`,
  );
  out.push(
    `- theoretical peak: ${peak ? `${fmtG(peak)} GFLOP/s` : 'unknown (no clock in /proc/cpuinfo)'} = ${k.vectorFloats} floats x 2 (FMA) x 2 (FMA units per core, an assumption) x ` +
      `${info.logicalCpus} cores x ${info.mhz ? `${(info.mhz / 1000).toFixed(2)} GHz` : '? GHz'}; the best measured ceiling is ${peak ? fmtPct((100 * c.best) / peak) : '?'} of it` +
      (info.family === 25 && k.isa === 'avx512'
        ? '. Caveat: family 25 with AVX-512 is AMD Zen 4, which executes a 512-bit FMA as two 256-bit halves (16 fp32 FMAs per cycle per core, not 32), so its peak is half this figure at the reported clock; a measured ceiling above that half means the cores run faster than the "cpu MHz" the VM reports (boost)'
        : ''),
  );
  out.push(`- other work on the machine: load average ${run.loadStart} at the start, ${loadAverage()} at the end; ${run.neighbours}`);
  if (contention) {
    out.push(
      `- vCPU independence: a single-threaded scalar JS spin loop took ${contention.aloneSeconds.toFixed(2)} s alone and ${contention.pairSeconds.map((s) => s.toFixed(2)).join(' s / ')} s with two copies at once: ` +
        `${contention.effectiveCores.toFixed(2)} cores' worth of throughput (2.00 = two independent cores; a one-off reading, low whenever other work runs at that moment). ` +
        `The matmul ceiling with 2 threads over 1 thread, timed in the same rounds as the threads table: ` +
        `${
          ctx.threadRows.length
            ? ctx.threadRows
                .filter((_, i) => i % 2 === 0)
                .map((t) => `${t.config} median ${fmtX(t.machine)} (>= ${TARGET_THREAD_SPEEDUP}x in ${t.twoCoreRounds} of ${t.rounds} rounds)`)
                .join(', ')
            : 'not measured (the threads table runs with CFG-A/CFG-B)'
        }; best 2-thread ceiling over best 1-thread ceiling: ${fmtX(c.gflops2 / c.gflops1)}.`,
    );
  }
  out.push(
    `- peers: onnxruntime-node ${peerVersion('onnxruntime-node')}, onnx-proto ${peerVersion('onnx-proto')}, @tensorflow/tfjs ${peerVersion('@tensorflow/tfjs')}, ` +
      `@tensorflow/tfjs-backend-wasm ${peerVersion('@tensorflow/tfjs-backend-wasm')}${ctx.peerNotes.length ? ` (${ctx.peerNotes.join('; ')})` : ''}`,
  );
  out.push(
    `- method: this machine's CPU share changes every few seconds with other work, so each cell times its implementations and the matmul ceiling interleaved ` +
      `(${ctx.rounds} rounds of ~${ctx.sliceSeconds} s slices); rows/s are medians over rounds, ratios and "% ceiling: adjacent" are medians of the per-round ratios.`,
  );
  out.push('');
  if (ctx.rows.length) {
    out.push('## Throughput (async API, 2 threads)');
    out.push('');
    out.push(mainTable(ctx));
    out.push('');
    out.push(
      `"(b=N)": that cell ran on a reduced batch of N rows (one call at the full batch would take over ${ctx.maxCallSeconds} s). ` +
        'Sampling rows: ORT and TF.js get z as an input; iaflow draws z itself (Philox + Box-Muller) inside the timed call, and calls sampleWithLogProb (the peers output x and log p(x) too). ' +
        'Masked GFLOP/s counts only the multiply-adds the MADE masks allow (the same count for every implementation, so rows/s ratios are GFLOP/s ratios); ' +
        '"% ceiling: adjacent" divides by the matmul ceiling timed in the same rounds (the targets use it), "run best" by the best ceiling of the whole run. ' +
        '"ORT dense GFLOP/s" counts what its graph multiplies (dense matrices; D passes per layer in the sequential direction). TF.js runs the parallel direction of CFG-A only.',
    );
    const training = ctx.rows.find((r) => r.pass === 'training' && r.iaflow);
    if (training) {
      out.push('');
      out.push(
        `Training row: maximum-likelihood Adam steps of the CFG-A MAF (forward through the parallel direction, backward, update), iaflow's kernels against the simple dense path ` +
          `(via the library's benchmark hook __trainingInternals.likelihoodThroughput, which times whole steps after a warm-up step); the simple path steps on a smaller batch (b=N).`,
      );
    }
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
        ['config', 'direction', '1 thread rows/s', '2 threads rows/s', 'speedup (all rounds)', 'matmul ceiling 2/1 (same rounds)', `two-core rounds (matmul 2/1 >= ${TARGET_THREAD_SPEEDUP}x before and after)`, 'speedup in those rounds', 'target'],
        rows,
      ),
    );
    out.push('');
    out.push(
      'Both directions and the matmul ceiling, at 1 and 2 threads, are timed in the same interleaved rounds; speedups are medians of per-round ratios. ' +
        `The matmul ceiling at 1 and 2 threads is timed before and after the workloads in every round; the target is judged on the rounds where it scaled >= ${TARGET_THREAD_SPEEDUP}x both times (the machine had two cores to give), and is N/A with fewer than 2 such rounds: the machine, not iaflow, set the limit then.`,
    );
    out.push('');
  }
  if (ctx.latencyRows.length) {
    out.push('## CFG-D: latency of a full 5-layer IAF sample (CFG-A network)');
    out.push('');
    out.push(
      markdownTable(
        ['cell', 'sampleSync median / p99 (us)', 'sampleSync rows/s', 'sample (async) median / p99 (us)', 'ORT run median / p99 (us)', 'ORT / sampleSync', 'calls', 'target'],
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
        ['D', 'iaflow par rows/s', 'par GFLOP/s', 'iaflow seq rows/s', 'seq GFLOP/s', 'iaflow seq/par', 'simple par rows/s', 'simple seq rows/s', 'simple seq/par', '1/D', 'simple batch', 'target'],
        ctx.scaleRows,
      ),
    );
    out.push('');
    out.push(
      'Parallel = forward(z), sequential = inverse(x) of the same IAF (both take an input). The simple path runs both directions on the batch its sequential direction can afford ' +
        '(reduced where one call would exceed the limit, but kept at 2 tiles = one per thread where such a call fits 3x the limit; a batch of one tile or less runs on one thread, both directions alike).',
    );
    out.push('');
  }
  const targets = [...ctx.rows.flatMap((r) => r.targets), ...ctx.targets];
  if (targets.length) {
    out.push('## Targets (issue 5)');
    out.push('');
    out.push(markdownTable(['cell', 'target', 'measured', 'result'], targets.map((t) => [t.row, t.name, t.measured, t.pass === null ? 'N/A' : verdict(t.pass)])));
    out.push('');
  }
  if (ctx.checks.length) {
    out.push('## Same function? (max abs diff from iaflow on 256 rows, float32)');
    out.push('');
    out.push(markdownTable(['cell', 'ORT', 'simple path', 'TF.js'], ctx.checks.map((ch) => [ch.cell, ch.ort, ch.simple, ch.tfjs])));
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
  log('measuring the fp32 ceiling (1 and 2 threads) and vCPU independence');
  const ceilings = new CeilingTracker(native, CEILING_SIZE, threads);
  ceilings.measure(args.quick ? 1 : 3, args.quick ? 0.25 : 0.5);
  const contention = await measureContention(args.quick ? 0.7 : 1.5, args.quick ? 1 : 2);
  log(`  spin loop alone ${contention.aloneSeconds.toFixed(2)} s, two at once ${contention.pairSeconds.map((s) => s.toFixed(2)).join(' / ')} s`);

  const ctx: Context = {
    args,
    maxCallSeconds: args.quick ? 0.4 : 1.0,
    rounds: args.quick ? 2 : 5,
    sliceSeconds: args.quick ? 0.1 : 0.25,
    ceilings,
    ceiling: ceilings.ceiling,
    threads,
    tileRows: kernel.tileRows,
    ...peers,
    rows: [],
    checks: [],
    targets: [],
    threadRows: [],
    latencyRows: [],
    scaleRows: [],
    notes: [],
  };
  for (const name of ['CFG-A', 'CFG-B', 'CFG-C'] as const) if (wants(name)) await runConfig(ctx, name);
  if (wants('CFG-D')) await runLatency(ctx);
  for (const name of ['CFG-A', 'CFG-B'] as const) if (wants(name)) await runThreads(ctx, name);
  if (wants('SCALE')) await runScale(ctx);
  ceilings.measure(args.quick ? 1 : 2, args.quick ? 0.25 : 0.5);
  ctx.ceiling = ceilings.ceiling;
  for (const row of ctx.rows) addMainTargets(row);

  ctx.notes.push(
    'The simple path is iaflow\'s own reference implementation (flow.referenceRun): dense masked products in scalar loops and D full network passes for the sequential direction; its parallel direction is not a tuned GEMM either.',
  );
  if (args.ort) {
    ctx.notes.push(
      'ORT\'s sequential graphs unroll the D-pass loop (weights stored once as initializers): 80 network passes for CFG-A, 320 for CFG-B, both reasonable to build (about 1,000 and 4,200 nodes); where one call at the full batch would exceed the limit they run on a reduced batch (b=N).',
    );
  }

  const text = report(ctx, { info, contention, startedAt, seconds: (performance.now() - t0) / 1e3, loadStart, neighbours: monitor.summary() });
  console.log(text);
  const write = args.write ?? (!args.quick && !args.only && args.ort && args.tfjs);
  if (write) {
    fs.writeFileSync(path.join(BENCH_DIR, 'RESULTS.md'), `${text}\n`);
    log('wrote bench/RESULTS.md');
  } else log('bench/RESULTS.md not written (partial or quick run; pass --write to write it anyway)');
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
