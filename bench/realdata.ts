// Real data (issue 12): how iaflow's training defaults do on public tables nobody here made.
//
//   npm run bench:realdata [-- options]          (= npx tsx bench/realdata.ts)
//     --only airports,cars        some data sets only (airports, seattle-hourly, cars, penguins)
//     --configs tanh,h128         the configurations to run besides the defaults (names in CONFIGS
//                                 below; default: RUN_BY_DEFAULT; all: every one, about 40 minutes)
//     --seeds 0,1,2               training seeds of every configuration (default 0,1,2)
//     --samples 1000000           samples per model for the runaway count (default 10^6)
//     --no-demo                   skip the demo teacher's runaway count
//     --threads N                 native threads (default: the number of cores)
//     --write                     add the report to bench/RESULTS.md (replacing an earlier one)
//
// The data (bench/data/README.md: source, licence, how made) is split once per data set, 80% train
// and 20% test, by a seeded shuffle. Every configuration trains on the 80% (it holds out 10% of them
// for validation and early stopping, as the CLI does) once per seed; test log-likelihoods are mean
// nats per test point in the data's raw units (the standardising affine layer's Jacobian counted).
//
// - defaults: what the CLI's `train` does (cliTrainOptions below: createMAF 5 layers [64, 64] relu,
//   softClamp 4; fit with standardize, validationFraction 0.1, lr 1e-3, ema 0.99 and fitSchedule's
//   batch, epochs and patience); for each data set the first seed's model is also trained by the
//   CLI itself (`iaflow train`, through cli.ts's main) and must score the same, so the two cannot
//   drift apart. The other configurations change one or two things. "best" is the
//   configuration with the highest mean test log-likelihood over the seeds: chosen on the test
//   rows, so an optimistic ceiling for the defaults to be measured against.
// - Gaussian: gaussianBaseline (the CLI's `eval --baseline`): a full-covariance Gaussian fitted to
//   the training rows, float64, maximum likelihood (a ridge only where the covariance is singular).
// - runaway samples: of `--samples` samples of a model, the fraction whose largest
//   |x - mean| / sd over the columns (training rows' mean and sd) exceeds 20, the largest such
//   value, and how many exceed 50. Per configuration, the first model with samples beyond 50 sd
//   has them traced layer by layer to where they leave the data (whereTheyRunAway).
// - grid: where a data set's values sit on a grid (readings to 0.1, whole units), a model can raise
//   its test log-likelihood by piling density on grid points. "jittered" scores the test rows moved
//   uniformly within their grid cell (8 draws): a smooth model scores about the same, a spiky one
//   much lower. On such data the jittered figure is the one the target is judged on: the mean over
//   a cell of log p is a lower bound of log P(cell) - log(cell volume) (Jensen), the model's
//   probability of the value that was actually recorded, while log p at the grid points themselves
//   grows without bound as a model spikes there (uniform dequantisation, as image flows are scored).
//   The raw rows' figure is printed beside it.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  Activation,
  Flow,
  FlowConfig,
  LayerDescriptor,
  affine,
  createFlow,
  createMAF,
  fit,
  defaultActivation,
  fitSchedule,
  gaussianBaseline,
  getThreads,
  loadFlow,
  maf,
  reverse,
  setThreads,
  standardNormal,
} from '../src/index';
import type { FitOptions, FitReport } from '../src/index';
import { main as cli, runDemo } from '../src/cli';
import { datasets } from '../src/datasets';
import { DEFAULT_SOFT_CLAMP } from '../src/layers';
import { __trainingInternals } from '../src/train';
import { cpuInfo, microarchitecture } from './machine';
import { native } from '../src/native';
import { rng as uniform } from './network'; // mulberry32, independent of the library's generators

const BENCH_DIR = __dirname;
const DATA_DIR = path.join(BENCH_DIR, 'data');

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const flag = (name: string) => process.argv.includes(`--${name}`);
if (arg('threads')) setThreads(Number(arg('threads')));
const SEEDS = (arg('seeds') ?? '0,1,2').split(',').map(Number);
const RUNAWAY_SAMPLES = Number(arg('samples') ?? 1e6);
const log = (text: string) => process.stderr.write(`${text}\n`);

// ---------------------------------------------------------------------------------------
// Data

interface DataSet {
  name: string;
  file: string;
  what: string;
}

const DATA_SETS: DataSet[] = [
  { name: 'airports', file: 'airports.csv', what: 'US airports, longitude and latitude (degrees)' },
  { name: 'seattle-hourly', file: 'seattle-hourly.csv', what: 'Seattle hourly climate normals: pressure (hPa, ~1017), temperature (C), wind (m/s)' },
  { name: 'cars', file: 'cars.csv', what: 'mpg, displacement, horsepower, weight (lbs), acceleration' },
  { name: 'penguins', file: 'penguins.csv', what: 'Palmer penguins, beak length, beak depth, flipper length (mm), body mass (g)' },
];

interface Loaded {
  header: string[];
  rows: number;
  dim: number;
  /** Row-major float64, as the file writes them. */
  values: Float64Array;
  /** Per column: the grid step the values sit on (0 when they do not: more than 6 decimals). */
  grid: number[];
}

/** The bench's CSVs: a header, then numbers only (bench/data/extract.ts writes them). */
function loadCsv(file: string): Loaded {
  const lines = fs.readFileSync(path.join(DATA_DIR, file), 'utf8').split('\n').filter((l) => l.trim() !== '');
  const header = lines[0].split(',');
  const dim = header.length;
  const cells = lines.slice(1).map((l) => l.split(','));
  const values = new Float64Array(cells.length * dim);
  cells.forEach((row, r) => {
    if (row.length !== dim) throw new Error(`${file}: line ${r + 2} has ${row.length} cells, expected ${dim}`);
    row.forEach((cell, c) => {
      const v = Number(cell);
      if (!Number.isFinite(v)) throw new Error(`${file}: line ${r + 2}: not a number: ${cell}`);
      values[r * dim + c] = v;
    });
  });
  const grid = header.map((_, c) => gridStep(cells.map((row) => row[c])));
  return { header, rows: cells.length, dim, values, grid };
}

/** The step of the grid the written values sit on: 10^-decimals times the gcd of the scaled values. */
function gridStep(texts: string[]): number {
  const decimals = Math.max(...texts.map((t) => (t.includes('.') ? t.length - t.indexOf('.') - 1 : 0)));
  if (decimals > 6) return 0;
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  let g = 0;
  for (const t of texts) g = gcd(g, Math.abs(Math.round(Number(t) * 10 ** decimals)));
  return g / 10 ** decimals;
}

/** A seeded 80/20 split (Fisher-Yates on mulberry32(seed)): the source files are sorted (by code, by date). */
function split(data: Loaded, seed: number): { train: Float64Array; test: Float64Array; trainRows: number; testRows: number } {
  const order = Array.from({ length: data.rows }, (_, i) => i);
  const u = uniform(seed);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(u() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const trainRows = Math.round(data.rows * 0.8);
  const take = (idx: number[]) => {
    const out = new Float64Array(idx.length * data.dim);
    idx.forEach((r, k) => out.set(data.values.subarray(r * data.dim, (r + 1) * data.dim), k * data.dim));
    return out;
  };
  return { train: take(order.slice(0, trainRows)), test: take(order.slice(trainRows)), trainRows, testRows: data.rows - trainRows };
}

// ---------------------------------------------------------------------------------------
// Baseline and statistics

function columnStats(x: Float64Array, dim: number): { mean: number[]; sd: number[] } {
  const rows = x.length / dim;
  const mean = new Array<number>(dim).fill(0);
  const sd = new Array<number>(dim).fill(0);
  for (let r = 0; r < rows; r++) for (let c = 0; c < dim; c++) mean[c] += x[r * dim + c] / rows;
  for (let r = 0; r < rows; r++) for (let c = 0; c < dim; c++) sd[c] += (x[r * dim + c] - mean[c]) ** 2 / rows;
  return { mean, sd: sd.map(Math.sqrt) };
}

/** Mean log-density of `test` under the full-covariance Gaussian of `train` (the library's gaussianBaseline, float64). */
function gaussianTestLL(train: Float64Array, test: Float64Array, dim: number): number {
  return gaussianBaseline(train, test, { dim }).mean;
}

const meanOf = (v: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i];
  return s / v.length;
};
const medianOf = (v: ArrayLike<number>) => {
  const s = Float64Array.from(v).sort();
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
};
const sdOf = (v: number[]) => {
  const m = meanOf(v);
  return Math.sqrt(v.reduce((a, x) => a + (x - m) ** 2, 0) / Math.max(1, v.length - 1));
};

interface Runaway {
  samples: number;
  /** Samples whose largest |x - mean| / sd over the columns exceeds 20 (non-finite ones included). */
  beyond20: number;
  beyond50: number;
  nonFinite: number;
  /** The largest |x - mean| / sd of any finite sample value. */
  maxSd: number;
  /** Indices (in the sample) of the samples beyond 50 sd, the first 64. */
  far: number[];
}

function countRunaways(x: Float32Array, dim: number, stats: { mean: number[]; sd: number[] }): Runaway {
  const n = x.length / dim;
  const out: Runaway = { samples: n, beyond20: 0, beyond50: 0, nonFinite: 0, maxSd: 0, far: [] };
  for (let r = 0; r < n; r++) {
    let worst = 0;
    let finite = true;
    for (let c = 0; c < dim; c++) {
      const v = x[r * dim + c];
      if (!Number.isFinite(v)) finite = false;
      else worst = Math.max(worst, Math.abs(v - stats.mean[c]) / stats.sd[c]);
    }
    out.maxSd = Math.max(out.maxSd, worst);
    if (!finite) out.nonFinite++;
    if (!finite || worst > 20) out.beyond20++;
    if (!finite || worst > 50) {
      out.beyond50++;
      if (out.far.length < 64) out.far.push(r);
    }
  }
  return out;
}

/**
 * Where runaway samples leave the data: the same latent rows through ever longer prefixes of the
 * flow (sampling order, latent first). Per layer: the median over the far samples of their largest
 * |value| (inner layers work in standardised units; the last is the data) and of the layer's
 * log|det| (a large positive value is a MAF layer dividing by a small scale), and the median
 * largest |z| of those rows against that of all rows.
 */
async function whereTheyRunAway(flow: Flow, z: Float32Array, far: number[]): Promise<string> {
  const dim = flow.dim;
  const pick = new Float32Array(far.length * dim);
  far.forEach((r, k) => pick.set(z.subarray(r * dim, (r + 1) * dim), k * dim));
  const config = flow.config as FlowConfig;
  const params = flow.currentParameters();
  const descriptors: LayerDescriptor[] = config.layers.map((layer) => {
    if (layer.type === 'permutation') return reverse();
    if (layer.type === 'affine') return affine({ loc: 0, scale: 1 });
    if (layer.type !== 'maf') throw new Error('whereTheyRunAway traces MAF flows only');
    return maf({
      hidden: [...layer.hidden],
      activation: layer.activation,
      scale: layer.scale,
      order: layer.inputDegrees.map((d) => d - 1),
      hiddenDegrees: layer.hiddenDegrees.map((h) => [...h]),
      residual: layer.residual ?? false,
      softClamp: layer.softClamp ?? 0,
    });
  });
  const magnitudes: string[] = [];
  const logDets: string[] = [];
  let previousLogDet: Float32Array = new Float32Array(far.length);
  for (let k = 0; k < config.layers.length; k++) {
    const layer = config.layers[k];
    if (layer.type === 'permutation') continue;
    const prefix = createFlow({ dim, layers: descriptors.slice(0, k + 1), seed: 0 });
    const tensors: Record<string, Float32Array> = {};
    for (const name of prefix.currentParameters().keys()) tensors[name] = params.get(name)!;
    prefix.setParameters(tensors);
    const { x, logDet } = await prefix.forward(pick);
    const largest = far.map((_, i) => Math.max(...Array.from(x.subarray(i * dim, (i + 1) * dim), Math.abs)));
    const layerLogDet = Array.from(logDet, (v, i) => v - previousLogDet[i]);
    previousLogDet = logDet;
    magnitudes.push(`${k} ${layer.type === 'affine' ? '(affine) ' : ''}${medianOf(largest).toPrecision(3)}`);
    logDets.push(medianOf(layerLogDet).toFixed(1));
  }
  const zMax = (rows: number[]) => medianOf(rows.map((r) => Math.max(...Array.from(z.subarray(r * dim, (r + 1) * dim), Math.abs))));
  const all = Array.from({ length: Math.min(z.length / dim, 100000) }, (_, i) => i);
  return (
    `${far.length} traced; after layer: ${magnitudes.join(', ')}; log|det| per layer ${logDets.join(', ')}; ` +
    `largest |z| ${zMax(far).toFixed(2)} (all rows ${zMax(all).toFixed(2)})`
  );
}

// ---------------------------------------------------------------------------------------
// Configurations

interface Config {
  name: string;
  /** What it changes from the defaults. */
  what: string;
  activation?: Activation;
  layers?: number;
  hidden?: number[];
  learningRate?: number;
  /** Multiplies fitSchedule's epochs and patience. */
  stepsFactor?: number;
  /** Multiplies fitSchedule's patience only. */
  patienceFactor?: number;
  /** Multiplies fitSchedule's batch (epochs and patience then from fitSchedule for that batch). */
  batchFactor?: number;
  ema?: number;
  weightDecay?: number;
  /** The MADE layers' softClamp (default: the library's, DEFAULT_SOFT_CLAMP; 0: none). */
  softClamp?: number;
}

/**
 * What the CLI's `train` passes to createMAF and fit when given only a data file and a seed
 * (cli.ts, COMMANDS.train); main() checks it against the CLI itself (checkAgainstCli).
 */
export function cliTrainOptions(
  trainRows: number,
  seed: number,
): { layers: number; hidden: number[]; activation: Activation; softClamp: number; fit: FitOptions } {
  const validationFraction = 0.1;
  const fitRows = trainRows - Math.round(trainRows * validationFraction);
  const schedule = fitSchedule(fitRows);
  return {
    layers: 5,
    hidden: [64, 64],
    activation: defaultActivation(fitRows),
    softClamp: DEFAULT_SOFT_CLAMP,
    fit: { standardize: true, validationFraction, epochs: schedule.epochs, patience: schedule.patience, learningRate: 1e-3, ema: 0.99, seed },
  };
}

const CONFIGS: Config[] = [
  { name: 'defaults', what: "the CLI's train" },
  { name: 'no clamp', what: 'softClamp 0 (the MADEs read their inputs as they are)', softClamp: 0 },
  { name: 'relu', what: 'relu activation (the default from 1000 rows to fit)', activation: 'relu' },
  { name: 'relu no clamp', what: 'relu, softClamp 0 (the CLI before the soft clamp and the size rule)', activation: 'relu', softClamp: 0 },
  { name: 'tanh', what: 'tanh activation (the default below 1000 rows to fit)', activation: 'tanh' },
  { name: 'tanh no clamp', what: 'tanh activation, softClamp 0', activation: 'tanh', softClamp: 0 },
  { name: 'elu', what: 'elu activation', activation: 'elu' },
  { name: 'steps x3', what: 'epochs and patience x3', stepsFactor: 3 },
  { name: 'patience x3', what: 'patience x3', patienceFactor: 3 },
  { name: 'lr 3e-3', what: 'learning rate 3e-3', learningRate: 3e-3 },
  { name: 'lr 3e-4', what: 'learning rate 3e-4', learningRate: 3e-4 },
  { name: 'lr 3e-4 steps x3', what: 'learning rate 3e-4, epochs and patience x3', learningRate: 3e-4, stepsFactor: 3 },
  { name: 'batch x4', what: 'batch x4 (fitSchedule epochs for it)', batchFactor: 4 },
  { name: 'batch /4', what: 'batch /4 (fitSchedule epochs for it)', batchFactor: 0.25 },
  { name: 'h128', what: 'hidden [128, 128]', hidden: [128, 128] },
  { name: 'h32', what: 'hidden [32, 32]', hidden: [32, 32] },
  { name: '10 layers', what: '10 MADE layers', layers: 10 },
  { name: '3 layers', what: '3 MADE layers', layers: 3 },
  { name: 'ema 0.999', what: 'ema 0.999', ema: 0.999 },
  { name: 'wd 1e-4', what: 'weight decay 1e-4', weightDecay: 1e-4 },
  { name: 'tanh steps x3', what: 'tanh, epochs and patience x3', activation: 'tanh', stepsFactor: 3 },
  { name: 'tanh lr 3e-3', what: 'tanh, learning rate 3e-3', activation: 'tanh', learningRate: 3e-3 },
  { name: 'tanh 10 layers', what: 'tanh, 10 MADE layers', activation: 'tanh', layers: 10 },
  { name: 'lr 3e-3 10 layers', what: 'learning rate 3e-3, 10 MADE layers', learningRate: 3e-3, layers: 10 },
];

/** The configurations a plain run compares with the defaults (10 to 15 minutes in all on the 2-vCPU machine). */
const RUN_BY_DEFAULT = ['relu', 'tanh', 'no clamp', 'relu no clamp', 'tanh no clamp', 'lr 3e-3', 'tanh lr 3e-3', '10 layers', 'steps x3', 'batch x4'];

interface Run {
  config: Config;
  seed: number;
  testLL: number;
  testMedian: number;
  jitteredLL: number | null;
  seconds: number;
  report: FitReport;
  epochs: number;
  flow: Flow;
  /** The configuration whose runs these are, when this one trains the same thing on this table. */
  sameAs?: string;
}

/** What a configuration trains on a table: createMAF's options, fit's options and the epochs allowed. */
function resolveConfig(config: Config, trainRows: number, dim: number, seed: number) {
  const base = cliTrainOptions(trainRows, seed);
  const fitRows = trainRows - Math.round(trainRows * 0.1);
  const schedule = fitSchedule(fitRows);
  const options: FitOptions = { ...base.fit };
  let epochs = schedule.epochs;
  if (config.stepsFactor) {
    epochs = Math.round(schedule.epochs * config.stepsFactor);
    options.epochs = epochs;
    options.patience = Math.round(schedule.patience * config.stepsFactor);
  }
  if (config.patienceFactor) options.patience = Math.round(schedule.patience * config.patienceFactor);
  if (config.batchFactor) {
    const batch = Math.max(4, Math.round(schedule.batchSize * config.batchFactor));
    const s = fitSchedule(fitRows, batch);
    options.batchSize = s.batchSize;
    options.epochs = epochs = s.epochs;
    options.patience = s.patience;
  }
  if (config.learningRate) options.learningRate = config.learningRate;
  if (config.ema !== undefined) options.ema = config.ema;
  if (config.weightDecay) options.weightDecay = config.weightDecay;
  const make = {
    dim,
    layers: config.layers ?? base.layers,
    hidden: config.hidden ?? base.hidden,
    activation: config.activation ?? base.activation,
    softClamp: config.softClamp ?? base.softClamp,
    seed,
  };
  return { make, options, epochs };
}

async function trainConfig(config: Config, train: Float32Array, trainRows: number, dim: number, seed: number): Promise<{ flow: Flow; report: FitReport; epochs: number }> {
  const { make, options, epochs } = resolveConfig(config, trainRows, dim, seed);
  const flow = createMAF(make);
  const report = await fit(flow, train, options);
  return { flow, report, epochs };
}

/** Test rows moved uniformly within their grid cells, `draws` times (null where no column is on a grid). */
function jitteredCopies(test: Float64Array, dim: number, grid: number[], draws: number): Float32Array | null {
  if (grid.every((g) => g === 0)) return null;
  const u = uniform(12345);
  const out = new Float32Array(test.length * draws);
  for (let k = 0; k < draws; k++) {
    for (let i = 0; i < test.length; i++) out[k * test.length + i] = test[i] + grid[i % dim] * (u() - 0.5);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The report

const f3 = (v: number) => (Number.isFinite(v) ? v.toFixed(3) : String(v));
const f2 = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : String(v));
const fracText = (r: Runaway) => (r.beyond20 === 0 ? '0' : `${(r.beyond20 / r.samples).toExponential(1)}`);

interface DataResult {
  set: DataSet;
  rows: number;
  trainRows: number;
  testRows: number;
  dim: number;
  grid: number[];
  header: string[];
  gaussian: number;
  gaussianJittered: number | null;
  runs: Run[];
  runaway: Map<string, Runaway[]>;
  /** Per configuration, its first seed's model with samples beyond 50 sd, traced layer by layer. */
  where: { config: string; seed: number; text: string }[];
  /** The first seed's defaults trained by the CLI itself: its test LL, the library path's, and the CLI's exit code. */
  cliCheck: { seed: number; cliLL: number; libraryLL: number; exitCode: number } | null;
}

function summary(runs: Run[], name: string) {
  const mine = runs.filter((r) => r.config.name === name);
  const ll = mine.map((r) => r.testLL);
  return {
    mean: meanOf(ll),
    sd: sdOf(ll),
    median: meanOf(mine.map((r) => r.testMedian)),
    jittered: mine[0]?.jitteredLL === null ? null : meanOf(mine.map((r) => r.jitteredLL!)),
    seconds: meanOf(mine.map((r) => r.seconds)),
    steps: meanOf(mine.map((r) => r.report.steps)),
    epochs: meanOf(mine.map((r) => r.report.epochs)),
    batch: mine[0]?.report.batchSize ?? 0,
    best: mine.map((r) => (r.report.bestEpoch ?? -1) + 1),
  };
}

function runawayCell(list: Runaway[] | undefined): { frac: string; max: string; far: string } {
  if (!list || list.length === 0) return { frac: '—', max: '—', far: '—' };
  const total = list.reduce((a, r) => a + r.samples, 0);
  const b20 = list.reduce((a, r) => a + r.beyond20, 0);
  return {
    frac: b20 === 0 ? '0' : (b20 / total).toExponential(1),
    max: Math.max(...list.map((r) => r.maxSd)).toPrecision(3),
    far: list.map((r) => String(r.beyond50)).join(' / '),
  };
}

function reportText(results: DataResult[], demo: { runaway: Runaway; stats: string } | null, cost: string[], seconds: number, started: Date): string {
  const info = cpuInfo();
  const arch = microarchitecture(info);
  const cpu = `${info.procModel ?? info.osModel} (${info.logicalCpus} vCPUs${arch ? `, ${arch}` : ''}, ${native.kernelInfo().isa} kernels)`;
  const lines: string[] = [];
  lines.push(`## Real data (bench/realdata.ts), ${started.toISOString().slice(0, 10)}`);
  lines.push('');
  lines.push(
    `Machine: ${cpu}, ${getThreads()} threads, node ${process.version}; the run took ${Math.round(seconds)} s. ` +
      `Two vCPUs shared with other work: times are noisy (another process running at the same time can double them).`,
  );
  lines.push(
    `Seeds ${SEEDS.join(', ')} for every configuration (initialisation, validation split, batch order); one seeded 80/20 train/test split per data set. ` +
      `Test log-likelihood: mean nats per test point in raw units, the mean over seeds (± their sd). Runaway: ${RUNAWAY_SAMPLES.toExponential(0)} samples per trained model (one model per seed), ` +
      `the fraction with any column beyond 20 training sd, the largest distance in sd over the seeds' models, and per seed how many beyond 50 sd.`,
  );
  lines.push('');
  lines.push('| data set | rows (train/test) | dim | defaults test LL | best test LL (config) | Gaussian | defaults − best | defaults train s | runaway > 20 sd | max sd | > 50 sd per seed |');
  lines.push('|---|---|---|---|---|---|---|---|---|---|---|');
  for (const res of results) {
    const d = summary(res.runs, 'defaults');
    const names = [...new Set(res.runs.map((r) => r.config.name))];
    const best = names.map((n) => ({ n, s: summary(res.runs, n) })).sort((a, b) => b.s.mean - a.s.mean)[0];
    const ra = runawayCell(res.runaway.get('defaults'));
    lines.push(
      `| ${res.set.name} | ${res.rows} (${res.trainRows}/${res.testRows}) | ${res.dim} | ${f3(d.mean)} ± ${f3(d.sd)} | ${f3(best.s.mean)} (${best.n}) | ${f3(res.gaussian)} | ${f3(d.mean - best.s.mean)} | ${f2(d.seconds)} | ${ra.frac} | ${ra.max} | ${ra.far} |`,
    );
  }
  if (demo) {
    lines.push('');
    lines.push(`The demo's teacher (runDemo's MAF on two moons, seed 0): ${fracText(demo.runaway)} of ${demo.runaway.samples.toExponential(0)} samples beyond 20 sd, max ${demo.runaway.maxSd.toPrecision(3)} sd, ${demo.runaway.beyond50} beyond 50 sd (${demo.stats}).`);
  }
  lines.push('');
  lines.push("What an activation costs (seattle-hourly's flow: dim 3, 5 layers [64, 64], batch 256; medians of 5 interleaved rounds):");
  lines.push('');
  for (const c of cost) lines.push(`- ${c}`);
  lines.push('');
  lines.push(
    'Targets (issue 12): defaults within 0.05 nats/point of the best configuration found (on the jittered test rows where the data ' +
      'sit on a grid: see the top of bench/realdata.ts; the raw rows\' figure beside it); every data set above its Gaussian.',
  );
  lines.push('');
  const bestOf = (res: DataResult) => {
    const names = [...new Set(res.runs.map((r) => r.config.name))];
    return names.map((n) => ({ n, s: summary(res.runs, n) })).sort((a, b) => b.s.mean - a.s.mean)[0];
  };
  for (const res of results) {
    const d = summary(res.runs, 'defaults');
    const best = bestOf(res);
    const gap = d.mean - best.s.mean;
    const seeds = res.runs.filter((r) => r.config.name === 'defaults');
    const above = seeds.filter((r) => r.testLL > res.gaussian).length;
    const gaussianText =
      `above the Gaussian ${d.mean > res.gaussian ? 'PASS' : 'MISS'} on the mean (${f3(d.mean - res.gaussian)} nats/point), ` +
      `${above === seeds.length ? 'PASS' : 'MISS'} per seed (${above} of ${seeds.length} seeds' models above it; the worst ${f3(Math.min(...seeds.map((r) => r.testLL)) - res.gaussian)})`;
    if (res.gaussianJittered === null) {
      lines.push(`- ${res.set.name}: defaults ${gap >= -0.05 ? 'PASS' : 'MISS'} within 0.05 of the best (${f3(gap)}, best: ${best.n}); ${gaussianText}`);
    } else {
      const names = [...new Set(res.runs.map((r) => r.config.name))];
      const bestJ = names.map((n) => ({ n, v: summary(res.runs, n).jittered! })).sort((a, b) => b.v - a.v)[0];
      const gapJ = d.jittered! - bestJ.v;
      lines.push(
        `- ${res.set.name} (on a grid): defaults ${gapJ >= -0.05 ? 'PASS' : 'MISS'} within 0.05 of the best on the jittered test rows ` +
          `(${f3(gapJ)}, best: ${bestJ.n}); on the raw rows ${f3(gap)} (best: ${best.n}); ${gaussianText}`,
      );
    }
  }
  lines.push('');
  for (const res of results) {
    const c = res.cliCheck;
    if (!c) continue;
    const same = Math.abs(c.cliLL - c.libraryLL) < 1e-6;
    lines.push(
      `- ${res.set.name}: \`iaflow train --seed ${c.seed}\` itself: test LL ${f3(c.cliLL)}, exit code ${c.exitCode}; ` +
        `${same ? 'the same model as the bench\'s defaults (same test LL)' : `DIFFERS from the bench's defaults (${f3(c.libraryLL)}): cliTrainOptions no longer matches the CLI`}`,
    );
  }
  // Each configuration as if it were the defaults: its distance from the best on every data set, in
  // raw test LL and, for data on a grid, in jittered test LL (where piling density on the grid
  // cannot help).
  const configNames = [...new Set(results.flatMap((res) => res.runs.map((r) => r.config.name)))];
  const scoreOf = (res: DataResult, n: string, jittered: boolean) => {
    const s = summary(res.runs, n);
    return jittered ? s.jittered! : s.mean;
  };
  const bestScore = (res: DataResult, jittered: boolean) => Math.max(...configNames.map((n) => scoreOf(res, n, jittered)));
  const columns = results.flatMap((res) => [
    { res, jittered: false, title: res.set.name },
    ...(res.gaussianJittered !== null ? [{ res, jittered: true, title: `${res.set.name} (jittered)` }] : []),
  ]);
  lines.push('');
  lines.push(
    "Every configuration measured against the targets, as if it were the defaults: mean test LL minus the best configuration's " +
      '(raw, and jittered for data on a grid: there the raw figure also rewards density piled on grid points, and the target is judged ' +
      'on the jittered one); seeds whose model is ' +
      'below the Gaussian; samples beyond 50 sd over all seeds.',
  );
  lines.push('');
  lines.push(`| config | ${columns.map((c) => c.title).join(' | ')} | target: within 0.05 of the best (jittered where on a grid) | within 0.05 on raw rows | seeds below the Gaussian | beyond 50 sd |`);
  lines.push(`|---|${columns.map(() => '---|').join('')}---|---|---|---|`);
  for (const n of configNames) {
    const gaps = columns.map((c) => scoreOf(c.res, n, c.jittered) - bestScore(c.res, c.jittered));
    const raw = results.map((res) => scoreOf(res, n, false) - bestScore(res, false));
    const target = results.map((res) => scoreOf(res, n, res.gaussianJittered !== null) - bestScore(res, res.gaussianJittered !== null));
    const below = results.reduce((a, res) => a + res.runs.filter((r) => r.config.name === n && r.testLL <= res.gaussian).length, 0);
    const far = results.reduce((a, res) => a + (res.runaway.get(n) ?? []).reduce((b, r) => b + r.beyond50, 0), 0);
    lines.push(
      `| ${n} | ${gaps.map(f3).join(' | ')} | ${target.filter((g) => g >= -0.05).length} of ${results.length} | ` +
        `${raw.filter((g) => g >= -0.05).length} of ${results.length} | ${below} | ${far} |`,
    );
  }
  for (const res of results) {
    lines.push('');
    lines.push(`### ${res.set.name}: ${res.set.what}`);
    lines.push('');
    const gridText = res.grid.some((g) => g > 0) ? `grid steps ${res.header.map((h, i) => `${h} ${res.grid[i] || 'none'}`).join(', ')}` : 'no grid';
    lines.push(`${res.rows} rows, ${res.trainRows} train (${res.trainRows - Math.round(res.trainRows * 0.1)} fitted, ${Math.round(res.trainRows * 0.1)} validation), ${res.testRows} test; ${gridText}. Gaussian: ${f3(res.gaussian)}${res.gaussianJittered === null ? '' : ` (jittered ${f3(res.gaussianJittered)})`}.`);
    lines.push('');
    const jitter = res.gaussianJittered !== null;
    lines.push(`| config | test LL | sd over seeds | median LL |${jitter ? ' jittered LL |' : ''} batch | epochs run (of) | best epochs | steps | train s | runaway > 20 sd | max sd | > 50 sd per seed |`);
    lines.push(`|---|---|---|---|${jitter ? '---|' : ''}---|---|---|---|---|---|---|---|`);
    const names = [...new Set(res.runs.map((r) => r.config.name))];
    for (const n of names) {
      const same = res.runs.find((r) => r.config.name === n)?.sameAs;
      if (same) {
        lines.push(`| ${n} | = ${same} | | |${jitter ? ' |' : ''} | | | | | | | |`);
        continue;
      }
      const s = summary(res.runs, n);
      const of = res.runs.find((r) => r.config.name === n)!.epochs;
      const ra = runawayCell(res.runaway.get(n));
      lines.push(
        `| ${n} | ${f3(s.mean)} | ${f3(s.sd)} | ${f3(s.median)} |${jitter ? ` ${f3(s.jittered!)} |` : ''} ${s.batch} | ${Math.round(s.epochs)} (${of}) | ${s.best.join(', ')} | ${Math.round(s.steps)} | ${f2(s.seconds)} | ${ra.frac} | ${ra.max} | ${ra.far} |`,
      );
    }
    if (res.where.length > 0) {
      lines.push('');
      lines.push(
        'Where the samples beyond 50 sd leave the data (per configuration, its first model with any): the same latent rows through ' +
          'ever longer prefixes of the flow (latent first), the median over those rows of their largest |value| after each layer ' +
          '(standardised units inside, raw after the affine layer) and of each MADE layer\'s log|det| (sampling direction: a large ' +
          'positive one divides by small scales), and their largest |z|:',
      );
      lines.push('');
      for (const w of res.where) lines.push(`- ${w.config}, seed ${w.seed}: ${w.text}`);
    }
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------

/**
 * `iaflow train TRAIN.csv --seed S --out MODEL` through cli.ts's main (the command itself, given
 * only the data and a seed), then the test rows' mean log-likelihood under the model it saved.
 */
async function checkAgainstCli(header: string[], train: Float64Array, test: Float32Array, dim: number, seed: number): Promise<{ ll: number; exitCode: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-realdata-cli-'));
  try {
    const trainFile = path.join(dir, 'train.csv');
    const rows: string[] = [header.join(',')];
    for (let r = 0; r < train.length / dim; r++) rows.push(Array.from(train.subarray(r * dim, (r + 1) * dim), String).join(','));
    fs.writeFileSync(trainFile, rows.join('\n') + '\n');
    const modelFile = path.join(dir, 'model.safetensors');
    let output = '';
    const sink = { write: (text: string) => ((output += text), true) };
    const exitCode = await cli(['train', trainFile, '--seed', String(seed), '--out', modelFile], { stdout: sink, stderr: sink });
    if (!fs.existsSync(modelFile)) throw new Error(`iaflow train saved no model (exit code ${exitCode}):\n${output}`);
    const flow = await loadFlow(modelFile);
    return { ll: meanOf(await flow.logProb(test)), exitCode };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function demoTeacher(): Promise<{ runaway: Runaway; stats: string }> {
  // runDemo itself (its teacher is what `npm run demo` writes as maf.safetensors), with one
  // distillation step and small measurements: only the teacher is used here.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-realdata-demo-'));
  const quiet = { write: () => true };
  try {
    await runDemo({ steps: 1, benchRows: 20000, out: dir, panelSize: 32, gridSize: 16 }, { stdout: quiet, stderr: quiet });
    const teacher = await loadFlow(path.join(dir, 'maf.safetensors'));
    const train = datasets.twoMoons(20000, { seed: 0 });
    const stats = columnStats(Float64Array.from(train), 2);
    const x = await teacher.sample(RUNAWAY_SAMPLES, { seed: 7 });
    return { runaway: countRunaways(x, 2, stats), stats: `training sd ${stats.sd.map((v) => v.toFixed(3)).join(', ')}` };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * What an activation costs: training steps (forward, backward, Adam; __trainingInternals.
 * likelihoodThroughput) and one-pass logProb, rows/s, of seattle-hourly's default flow (dim 3, 5
 * layers [64, 64], batch 256), the three activations interleaved over 5 rounds, medians.
 */
function activationCost(): string[] {
  const dim = 3;
  const batch = 256;
  const data = standardNormal(batch * 16, dim, { seed: 3 });
  const scoreRows = standardNormal(100000, dim, { seed: 4 });
  const activations: Activation[] = ['relu', 'tanh', 'elu'];
  const train: Record<string, number[]> = { relu: [], tanh: [], elu: [] };
  const score: Record<string, number[]> = { relu: [], tanh: [], elu: [] };
  for (let round = 0; round < 5; round++) {
    for (const activation of activations) {
      const flow = createMAF({ dim, layers: 5, hidden: [64, 64], activation, seed: 0 });
      train[activation].push(__trainingInternals.likelihoodThroughput(flow, data, batch, 150));
      const t = performance.now();
      flow.logProbSync(scoreRows);
      score[activation].push(100000 / ((performance.now() - t) / 1e3));
    }
  }
  const k = (v: number) => `${(v / 1e3).toFixed(0)}k`;
  return activations.map(
    (a) =>
      `${a}: training ${k(medianOf(train[a]))} rows/s (${(medianOf(train.relu) / medianOf(train[a])).toFixed(1)}x relu's time per step), ` +
      `logProb ${k(medianOf(score[a]))} rows/s (${(medianOf(score.relu) / medianOf(score[a])).toFixed(1)}x relu's time)`,
  );
}

async function main(): Promise<void> {
  const started = new Date();
  const t0 = performance.now();
  const only = arg('only')?.split(',');
  const wanted = arg('configs')?.split(',');
  const names = wanted?.includes('all') ? CONFIGS.map((c) => c.name) : wanted?.includes('none') ? [] : (wanted ?? RUN_BY_DEFAULT);
  for (const n of names) if (!CONFIGS.some((c) => c.name === n)) throw new Error(`--configs: no configuration named ${JSON.stringify(n)}`);
  const configs = CONFIGS.filter((c) => c.name === 'defaults' || names.includes(c.name));
  const results: DataResult[] = [];
  for (const set of DATA_SETS.filter((s) => !only || only.includes(s.name))) {
    const data = loadCsv(set.file);
    const { train, test, trainRows, testRows } = split(data, 12);
    const dim = data.dim;
    const train32 = Float32Array.from(train);
    const test32 = Float32Array.from(test);
    const stats = columnStats(train, dim);
    const jittered = jitteredCopies(test, dim, data.grid, 8);
    const gaussian = gaussianTestLL(train, test, dim);
    const gaussianJittered = jittered ? gaussianTestLL(train, Float64Array.from(jittered), dim) : null;
    log(`${set.name}: ${data.rows} rows, dim ${dim}, Gaussian test LL ${f3(gaussian)}`);
    const res: DataResult = {
      set,
      rows: data.rows,
      trainRows,
      testRows,
      dim,
      grid: data.grid,
      header: data.header,
      gaussian,
      gaussianJittered,
      runs: [],
      runaway: new Map(),
      where: [],
      cliCheck: null,
    };
    // A configuration that trains exactly what one already run did on this table (relu where the
    // defaults are relu, ...) reuses its runs instead of training again.
    const trainedAs = new Map<string, Config>();
    for (const config of configs) {
      const key = JSON.stringify(resolveConfig(config, trainRows, dim, 0));
      const same = trainedAs.get(key);
      if (same) {
        for (const r of res.runs.filter((r) => r.config === same)) res.runs.push({ ...r, config, sameAs: same.name });
        res.runaway.set(config.name, res.runaway.get(same.name)!);
        log(`  ${config.name.padEnd(18)} the same training as ${same.name} on this table`);
        continue;
      }
      trainedAs.set(key, config);
      const runaways: Runaway[] = [];
      for (const seed of SEEDS) {
        const t = performance.now();
        const { flow, report, epochs } = await trainConfig(config, train32, trainRows, dim, seed);
        const seconds = (performance.now() - t) / 1e3;
        const lp = await flow.logProb(test32);
        const jl = jittered ? meanOf(await flow.logProb(jittered)) : null;
        for (const w of report.warnings) log(`  warning (${config.name}, seed ${seed}): ${w}`);
        res.runs.push({ config, seed, testLL: meanOf(lp), testMedian: medianOf(lp), jitteredLL: jl, seconds, report, epochs, flow });
        // Runaways: z drawn here (standardNormal) and pushed through forward, so the far rows can be traced.
        const z = standardNormal(RUNAWAY_SAMPLES, dim, { seed: 1000 + seed });
        const { x } = await flow.forward(z);
        const ra = countRunaways(x, dim, stats);
        runaways.push(ra);
        if (ra.far.length > 0 && !res.where.some((w) => w.config === config.name)) {
          res.where.push({ config: config.name, seed, text: await whereTheyRunAway(flow, z, ra.far) });
        }
        log(
          `  ${config.name.padEnd(18)} seed ${seed}: test LL ${f3(meanOf(lp))}${jl === null ? '' : ` (jittered ${f3(jl)})`}, ${report.epochs} epochs, best ${report.bestEpoch}, ` +
            `${report.steps} steps of ${report.batchSize}, ${seconds.toFixed(1)} s; runaway ${ra.beyond20} > 20 sd, ${ra.beyond50} > 50 sd, max ${ra.maxSd.toPrecision(3)} sd`,
        );
      }
      res.runaway.set(config.name, runaways);
      // Only the numbers are kept: the flows' memory goes.
      for (const r of res.runs) if (r.config === config) (r as { flow: Flow | null }).flow = null;
    }
    const first = res.runs.find((r) => r.config.name === 'defaults' && r.seed === SEEDS[0])!;
    const check = await checkAgainstCli(data.header, train, test32, dim, SEEDS[0]);
    res.cliCheck = { seed: SEEDS[0], cliLL: check.ll, libraryLL: first.testLL, exitCode: check.exitCode };
    log(`  iaflow train --seed ${SEEDS[0]}: test LL ${f3(check.ll)} (exit code ${check.exitCode}); the library path: ${f3(first.testLL)}`);
    results.push(res);
  }
  const demo = flag('no-demo') ? null : await demoTeacher();
  log('timing the activations');
  const cost = activationCost();
  const text = reportText(results, demo, cost, (performance.now() - t0) / 1e3, started);
  console.log(text);
  if (flag('write')) writeResults(text);
}

const BEGIN = '<!-- bench/realdata.ts: begin (npm run bench keeps this section) -->';
const END = '<!-- bench/realdata.ts: end -->';

/** Puts the report into bench/RESULTS.md between its markers (replacing an earlier one), or at the end. */
function writeResults(text: string): void {
  const file = path.join(BENCH_DIR, 'RESULTS.md');
  const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
  const block = `${BEGIN}\n${text}\n${END}\n`;
  const a = old.indexOf(BEGIN);
  const b = old.indexOf(END);
  const next = a >= 0 && b > a ? old.slice(0, a) + block + old.slice(b + END.length + 1) : `${old.trimEnd()}\n\n${block}`;
  fs.writeFileSync(file, next);
  log('wrote the real-data section of bench/RESULTS.md');
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
