#!/usr/bin/env node
// iaflow's command line (package.json "bin": `npx iaflow <command>`; `npm run demo` in a clone):
//
//   iaflow demo                  MAF on a toy data set, distilled into an IAF: table + picture
//   iaflow train DATA            fit a MAF to a CSV or .npy file, save it as .safetensors
//   iaflow sample MODEL          samples to CSV (stdout or a file) or .npy (float32)
//   iaflow logprob MODEL DATA    log-densities of data rows, to a file or as a summary
//   iaflow info MODEL            what a model file holds
//
// Exit codes: 0 success, 1 a failure while running (a file that cannot be read, data of the
// wrong shape), 2 a usage error (unknown option, bad value, missing argument). Errors are one
// line on stderr, never a stack trace (IAFLOW_DEBUG=1 adds the stack). `main(argv, io)` is the
// whole CLI as a function, for tests; `runDemo(options, io)` is the demo.
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { datasets } from './datasets';
import { Flow, createIAF, createMAF, getThreads, setThreads } from './flow';
import { loadFlow, saveFlow } from './io';
import { Activation, MadeLayerConfig } from './layers';
import { writeNpy } from './npy';
import { Raster, Rgb } from './png';
import { writeFileAtomic } from './safetensors';
import { RowFormatter, Table, isNumberField, outputFormat, readTable, rowChunks, writeTable } from './table';
import { distill, fit } from './train';

// ---------------------------------------------------------------------------------------
// Input and output

/** Where the CLI writes: process.stdout / process.stderr, or fakes in tests. */
export interface CliOutput {
  write(text: string): unknown;
  /** True for a terminal: progress is then one line redrawn in place. */
  isTTY?: boolean;
  /** Terminal width, for the progress line. */
  columns?: number;
}

export interface CliIO {
  stdout: CliOutput;
  stderr: CliOutput;
}

/** The command line itself is wrong: exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** A failure while running (unreadable file, data of the wrong shape): exit code 1. */
export class CliError extends Error {
  override readonly name = 'CliError';
}

const processIO: CliIO = { stdout: process.stdout, stderr: process.stderr };

function errorMessage(error: unknown): string {
  // Duck-typed, not instanceof: errors may come from another realm (a test runner's vm context).
  const message = (error as { message?: unknown } | null)?.message;
  return typeof message === 'string' ? message : String(error);
}

function errorName(error: unknown): string {
  const name = (error as { name?: unknown } | null)?.name;
  return typeof name === 'string' ? name : '';
}

function version(): string {
  try {
    return JSON.parse(require('node:fs').readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')).version as string;
  } catch {
    return 'unknown';
  }
}

// ---------------------------------------------------------------------------------------
// Data files: CSV and .npy (the formats themselves live in table.ts, shared with the server)

function outputKind(file: string, option: string): 'npy' | 'csv' {
  const format = outputFormat(file);
  if (format === null) throw new UsageError(`${option} ${file}: the file name must end in .csv or .npy (the format is taken from it)`);
  return format;
}

async function readData(file: string): Promise<Table> {
  try {
    return await readTable(file);
  } catch (error) {
    throw new CliError(errorMessage(error));
  }
}

/** Writes rows * cols float32 values as .npy (shape (rows, cols), or (rows,) when oneD) or CSV. */
async function writeData(file: string, data: Float32Array, cols: number, header: string[], oneD = false): Promise<void> {
  outputKind(file, '--out');
  try {
    await writeTable(file, data, cols, { header, oneD });
  } catch (error) {
    throw new CliError(`cannot write ${file} (${errorMessage(error)})`);
  }
}

/**
 * CSV to an output stream piece by piece: no single string grows with n (a string is limited to
 * about 2^29 characters), and a stream that asks for a pause ('drain') gets it.
 */
async function writeCsv(out: CliOutput, data: Float32Array, cols: number, header: string[]): Promise<void> {
  const formatter = new RowFormatter('csv', cols, { header });
  const stream = out as CliOutput & { once?: (event: string, listener: () => void) => unknown };
  for (const chunk of rowChunks(data, cols)) {
    if (out.write(formatter.formatChunk(chunk)) === false && typeof stream.once === 'function') {
      await new Promise<void>((resolve) => stream.once!('drain', resolve));
    }
  }
  out.write(formatter.end());
}

async function readModel(file: string): Promise<Flow> {
  try {
    return await loadFlow(file);
  } catch (error) {
    throw new CliError(errorMessage(error));
  }
}

// ---------------------------------------------------------------------------------------
// Options

type OptionSpec = { type: 'string' | 'boolean'; short?: string };

interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

function parse(argv: readonly string[], options: Record<string, OptionSpec>): Parsed {
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Parsed['values'], positionals };
  } catch (error) {
    // parseArgs' messages, on one line; "Unknown option '--x'" without its advice on positionals.
    const message = errorMessage(error).replace(/\s*\n\s*/g, ' ').trim();
    throw new UsageError(message.startsWith('Unknown option') ? message.split('. ')[0] : message);
  }
}

function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

function intOption(p: Parsed, name: string, fallback: number, min: number, max: number): number {
  const text = str(p, name);
  if (text === undefined) return fallback;
  const clean = text.trim().replace(/_/g, '');
  const value = Number(clean);
  if (!isNumberField(clean) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`--${name} ${text}: expected an integer from ${min.toLocaleString('en-US')} to ${max.toLocaleString('en-US')}`);
  }
  return value;
}

function numberOption(p: Parsed, name: string, fallback: number, ok: (v: number) => boolean, expected: string): number {
  const text = str(p, name);
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!isNumberField(text) || !ok(value)) throw new UsageError(`--${name} ${text}: expected ${expected}`);
  return value;
}

function hiddenOption(p: Parsed, fallback: number[]): number[] {
  const text = str(p, 'hidden');
  if (text === undefined) return fallback;
  const parts = text.split(',').map((s) => s.trim());
  if (parts.length === 0 || parts.length > 16 || parts.some((s) => !/^\d+$/.test(s) || Number(s) < 1 || Number(s) > 4096)) {
    throw new UsageError(`--hidden ${text}: expected comma-separated layer widths from 1 to 4096, e.g. 64,64`);
  }
  return parts.map(Number);
}

function seedOption(p: Parsed, fallback: number | undefined): number | undefined {
  if (str(p, 'seed') === undefined) return fallback;
  return intOption(p, 'seed', 0, 0, 2 ** 32 - 1);
}

function threadsOption(p: Parsed): void {
  if (str(p, 'threads') !== undefined) setThreads(intOption(p, 'threads', 1, 1, 1024));
}

function positionals(p: Parsed, names: string[]): string[] {
  if (p.positionals.length < names.length) {
    throw new UsageError(`missing ${names.slice(p.positionals.length).map((n) => n.toUpperCase()).join(' and ')}`);
  }
  if (p.positionals.length > names.length) throw new UsageError(`unexpected argument ${JSON.stringify(p.positionals[names.length])}`);
  return p.positionals;
}

// ---------------------------------------------------------------------------------------
// Formatting

const fmtInt = (v: number) => Math.round(v).toLocaleString('en-US');
const fmtRate = (v: number) => (v >= 1e6 ? `${(v / 1e6).toFixed(2)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(0)}k` : v.toFixed(0));
const fmtSeconds = (s: number) => (s < 10 ? `${s.toFixed(1)} s` : s < 120 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);

/** Columns padded to their widest cell; `align` per column, 'l' or 'r'. */
export function formatTable(rows: string[][], align: ('l' | 'r')[]): string[] {
  const widths = align.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) =>
    r
      .map((cell, c) => (align[c] === 'r' ? cell.padStart(widths[c]) : cell.padEnd(widths[c])))
      .join('   ')
      .trimEnd(),
  );
}

function mean(values: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i];
  return sum / values.length;
}

function median(values: ArrayLike<number>): number {
  const sorted = Float64Array.from(values).sort();
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function standardError(values: ArrayLike<number>): number {
  const m = mean(values);
  let sq = 0;
  for (let i = 0; i < values.length; i++) sq += (values[i] - m) ** 2;
  return Math.sqrt(sq / Math.max(1, values.length - 1) / values.length);
}

/**
 * Training progress: in a terminal one line redrawn in place (at most 10 times a second); elsewhere
 * (a pipe, a log file, CI) a plain line about every 10% of the way.
 */
class Progress {
  private readonly tty: boolean;
  private lastDraw = 0;
  private nextMark: number;
  private readonly started = performance.now();

  constructor(
    private readonly out: CliOutput,
    private readonly total: number,
  ) {
    this.tty = out.isTTY === true;
    this.nextMark = Math.max(1, Math.ceil(total / 10));
  }

  update(done: number, text: string): void {
    const elapsed = (performance.now() - this.started) / 1000;
    if (this.tty) {
      const now = performance.now();
      if (now - this.lastDraw < 100 && done < this.total) return;
      this.lastDraw = now;
      const width = 24;
      const filled = Math.round((width * Math.min(done, this.total)) / this.total);
      const line = `  [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}  ${fmtSeconds(elapsed)}`;
      const columns = this.out.columns && this.out.columns > 20 ? this.out.columns - 1 : 100;
      this.out.write(`\r${line.slice(0, columns).padEnd(Math.min(columns, 100))}`);
    } else if (done >= this.nextMark) {
      while (this.nextMark <= done) this.nextMark += Math.max(1, Math.ceil(this.total / 10));
      this.out.write(`  ${text}  ${fmtSeconds(elapsed)}\n`);
    }
  }

  /** Ends the in-place line; the caller prints its summary next. */
  end(): void {
    if (this.tty && this.lastDraw > 0) this.out.write('\n');
  }
}

// ---------------------------------------------------------------------------------------
// The demo

export const DATASETS = ['twoMoons', 'eightGaussians', 'checkerboard', 'pinwheel', 'twoSpirals', 'rings'] as const;
export type DatasetName = (typeof DATASETS)[number];

export interface DemoOptions {
  dataset?: DatasetName;
  /** MADE layers of each flow (reversals between them). Default 5. */
  layers?: number;
  /** Hidden widths of every MADE. Default [64, 64]. */
  hidden?: number[];
  /** Maximum-likelihood epochs of the MAF (early stopping with patience 10 on 10% held out). Default 100. */
  epochs?: number;
  /** Distillation steps. Default 20000. */
  steps?: number;
  /** Rows per step, for both. Default 512. */
  batchSize?: number;
  /** Seed of the data, the initialisation and the training. Default 0. */
  seed?: number;
  /** Folder for demo.png, the samples (.npy) and the two models (.safetensors); null writes nothing. Default ./iaflow-demo. */
  out?: string | null;
  /** Training points. Default 20000. */
  trainSize?: number;
  /** Test points (another seed). Default 5000. */
  testSize?: number;
  /** Rows per throughput measurement and for the KL estimate. Default 100000. */
  benchRows?: number;
  /** Side of each of the picture's four panels, in pixels. Default 300. */
  panelSize?: number;
  /** Side of the density grid. Default 150. */
  gridSize?: number;
}

export interface DemoModelResult {
  /** Mean and median test log-likelihood, nats per point. */
  testLogLikMean: number;
  testLogLikMedian: number;
  sampleRowsPerSec: number;
  logProbRowsPerSec: number;
}

export interface DemoResult {
  dataset: DatasetName;
  teacher: DemoModelResult & { epochs: number; bestEpoch: number | null; trainSeconds: number };
  student: DemoModelResult & {
    /** KL(student || teacher) estimated by distill (its last 100 steps). */
    klReport: number | null;
    /** KL(student || teacher) on benchRows fresh student samples, and its standard error. */
    kl: number;
    klStandardError: number;
    trainSeconds: number;
  };
  /** The true density's test log-likelihood (two moons only). */
  trueTestLogLik: { mean: number; median: number } | null;
  /** Files written. */
  files: string[];
  seconds: number;
}

const DATASET_TITLES: Record<string, string> = {
  twoMoons: 'two moons',
  eightGaussians: '8 gaussians',
  checkerboard: 'checkerboard',
  pinwheel: 'pinwheel',
  twoSpirals: 'two spirals',
  rings: 'rings',
};

const DATASET_ALIASES: Record<string, DatasetName> = Object.fromEntries(
  [
    ...DATASETS.map((d) => [d.toLowerCase(), d]),
    ['moons', 'twoMoons'],
    ['8gaussians', 'eightGaussians'],
    ['2spirals', 'twoSpirals'],
    ['spirals', 'twoSpirals'],
  ] as [string, DatasetName][],
);

function datasetOption(p: Parsed): DatasetName {
  const text = str(p, 'dataset');
  if (text === undefined) return 'twoMoons';
  const found = DATASET_ALIASES[text.toLowerCase().replace(/[-_ ]/g, '')];
  if (!found) throw new UsageError(`--dataset ${text}: expected one of ${DATASETS.join(', ')}`);
  return found;
}

/** Rows per second of `run(rows)`: the best of three calls, after a small warm-up call. */
async function rowsPerSecond(rows: number, run: (rows: number) => Promise<unknown>): Promise<number> {
  await run(Math.min(rows, 1000));
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    await run(rows);
    best = Math.min(best, performance.now() - t0);
  }
  return rows / (Math.max(best, 1e-3) / 1000);
}

/**
 * Trains a MAF on a toy data set by maximum likelihood, distils it into an IAF (reverse KL and forward KL),
 * prints a table (test log-likelihood, KL, throughput of each direction), and writes a picture
 * of data, MAF samples, MAF density and IAF samples, the samples (.npy) and both models.
 */
export async function runDemo(options: DemoOptions = {}, io: CliIO = processIO): Promise<DemoResult> {
  const started = performance.now();
  const out = io.stdout;
  const dataset = options.dataset ?? 'twoMoons';
  const layers = options.layers ?? 5;
  const hidden = options.hidden ?? [64, 64];
  const epochs = options.epochs ?? 100;
  const steps = options.steps ?? 20000;
  const batchSize = options.batchSize ?? 512;
  const seed = options.seed ?? 0;
  const dir = options.out === undefined ? 'iaflow-demo' : options.out;
  const trainSize = options.trainSize ?? 20000;
  const testSize = options.testSize ?? 5000;
  const benchRows = options.benchRows ?? 100000;
  const dim = 2;

  const generate = datasets[dataset];
  const train = generate(trainSize, { seed });
  const test = generate(testSize, { seed: seed + 1 });
  const cpu = os.cpus()[0]?.model?.trim() ?? 'unknown CPU';
  out.write(
    `iaflow ${version()} demo: ${dataset}, ${fmtInt(trainSize)} training and ${fmtInt(testSize)} test points, seed ${seed}, ` +
      `${getThreads()} thread${getThreads() === 1 ? '' : 's'} (${cpu})\n\n`,
  );

  // 1. The teacher: a MAF, by maximum likelihood (its density is the one-pass direction).
  const teacher = createMAF({ dim, layers, hidden, seed });
  out.write(`1/3 Fitting a MAF (${layers} layers, hidden [${hidden.join(', ')}], ${fmtInt(teacher.numParameters)} parameters) by maximum likelihood\n`);
  const fitBar = new Progress(out, epochs);
  const validationFraction = trainSize >= 20 ? 0.1 : undefined;
  const fitReport = await fit(teacher, train, {
    epochs,
    batchSize,
    learningRate: 1e-3,
    validationFraction,
    patience: validationFraction ? 10 : undefined,
    seed,
    onProgress: ({ epoch, trainLoss, validLoss, samplesPerSec }) => {
      const valid = Number.isNaN(validLoss) ? '' : `  valid NLL ${validLoss.toFixed(3)}`;
      fitBar.update(epoch + 1, `epoch ${epoch + 1}/${epochs}  train NLL ${trainLoss.toFixed(3)}${valid}  ${fmtRate(samplesPerSec)} rows/s`);
    },
  });
  fitBar.end();
  const best = fitReport.bestEpoch;
  out.write(
    `    ${fitReport.epochs} epoch${fitReport.epochs === 1 ? '' : 's'} in ${fmtSeconds(fitReport.seconds)}` +
      (fitReport.stoppedEarly ? ', stopped early (no better validation NLL in 10 epochs)' : '') +
      (best !== null ? `; kept epoch ${best + 1}: validation NLL ${fitReport.validLoss[best].toFixed(3)} nats/point` : '') +
      '\n',
  );

  // 2. The student: an IAF (its sampling is one pass), distilled from the teacher.
  const student = createIAF({ dim, layers, hidden, seed });
  const match = steps >= 1000 ? 0.2 : 0; // the library's default; plain reverse KL for short runs
  out.write(
    `2/3 Distilling it into an IAF (${layers} layers, hidden [${hidden.join(', ')}]) (reverse KL and forward KL): ${fmtInt(steps)} steps of ${fmtInt(batchSize)} samples` +
      (match > 0 ? `, the first fifth matching the teacher's sampling map\n` : '\n'),
  );
  const distillBar = new Progress(out, steps);
  const distillReport = await distill(student, teacher, {
    steps,
    batchSize,
    learningRate: 1e-3,
    seed,
    match,
    clipGradNorm: 5,
    onProgress: ({ step, loss, samplesPerSec }) => {
      const phase = step <= steps * match ? 'matching' : 'reverse + forward KL';
      distillBar.update(step, `step ${fmtInt(step)}/${fmtInt(steps)}  ${phase}  loss ${loss.toFixed(3)}  ${fmtRate(samplesPerSec)} samples/s`);
    },
  });
  distillBar.end();
  // The mean over steps can be dominated by a rare student sample far outside the teacher's
  // support, where a MAF's log-density is astronomically negative; the median says what is typical.
  // report.loss holds every step up to 65536 steps, then means of lossStride steps: take the
  // entries that cover the last 100 steps.
  const tail = Math.max(1, Math.ceil(100 / distillReport.lossStride));
  const lastLosses = Array.from(distillReport.loss.subarray(Math.max(0, distillReport.loss.length - tail))).filter(Number.isFinite).sort((a, b) => a - b);
  const medianKl = lastLosses.length > 0 ? lastLosses[lastLosses.length >> 1] : NaN;
  const meanKl = distillReport.kl ?? NaN;
  const klText =
    meanKl > 2 * Math.abs(medianKl) + 0.1
      ? `${medianKl.toFixed(3)} nats (median of the last 100 steps; their mean, ${meanKl.toPrecision(3)}, is pulled up by rare samples far outside the teacher's support)`
      : `${meanKl.toFixed(3)} nats (mean over the last 100 steps)`;
  out.write(
    `    ${fmtInt(steps)} steps in ${fmtSeconds(distillReport.seconds)}; KL(student || teacher) ${klText}` +
      (distillReport.skippedSteps > 0 ? `; ${distillReport.skippedSteps} non-finite steps skipped` : '') +
      '\n',
  );
  for (const warning of distillReport.warnings) out.write(`    warning: ${warning}\n`);

  // 3. Measurements.
  out.write(`3/3 Scoring the ${fmtInt(testSize)} test points and timing ${fmtInt(benchRows)}-row calls of each direction\n\n`);
  const teacherLL = await teacher.logProb(test);
  const studentLL = await student.logProb(test);
  const trueLL = dataset === 'twoMoons' ? datasets.twoMoonsLogDensity(test) : null;
  const klDraw = await student.sampleWithLogProb(benchRows, { seed: seed + 2 });
  const teacherAtDraw = await teacher.logProb(klDraw.x);
  const gap = new Float64Array(benchRows);
  for (let i = 0; i < benchRows; i++) gap[i] = klDraw.logProb[i] - teacherAtDraw[i];
  const kl = mean(gap);
  const klStandardError = standardError(gap);

  const probe = test.subarray(0, Math.min(test.length, 2000));
  const benchInput = await teacher.sample(benchRows, { seed: seed + 3 });
  const timing = async (flow: Flow) => ({
    sample: await rowsPerSecond(benchRows, (n) => flow.sample(n, { seed: seed + 4 })),
    logProb: await rowsPerSecond(benchRows, (n) => flow.logProb(n === benchRows ? benchInput : probe.subarray(0, n * dim))),
  });
  const teacherSpeed = await timing(teacher);
  const studentSpeed = await timing(student);

  const seq = 'sequential';
  const rows: string[][] = [['model', 'test LL mean', 'median', 'KL to teacher', 'sample rows/s', '', 'logProb rows/s', '']];
  if (trueLL) rows.push(['true density', mean(trueLL).toFixed(3), median(trueLL).toFixed(3), '', '', '', '', '']);
  rows.push([
    'MAF (teacher)',
    mean(teacherLL).toFixed(3),
    median(teacherLL).toFixed(3),
    '',
    fmtInt(teacherSpeed.sample),
    seq,
    fmtInt(teacherSpeed.logProb),
    'one pass',
  ]);
  rows.push([
    'IAF (student)',
    mean(studentLL).toFixed(3),
    median(studentLL).toFixed(3),
    `${kl.toFixed(3)} ± ${klStandardError.toFixed(3)}`,
    fmtInt(studentSpeed.sample),
    'one pass',
    fmtInt(studentSpeed.logProb),
    seq,
  ]);
  for (const line of formatTable(rows, ['l', 'r', 'r', 'r', 'r', 'l', 'r', 'l'])) out.write(`  ${line}\n`);
  out.write(
    `\n  Log-likelihoods in nats per test point (higher is better); the median is shown as well because a few\n` +
      `  far-out test points can dominate the mean of a student, which never sees the data, only the teacher.\n` +
      `  KL(student || teacher) = E_student[log q - log p] over ${fmtInt(benchRows)} student samples (± standard error).\n` +
      `  Throughput: the best of three ${fmtInt(benchRows)}-row async calls per direction on ${getThreads()} thread${getThreads() === 1 ? '' : 's'}. One pass: all\n` +
      `  dimensions at once; sequential: dimension by dimension (iaflow's kernels still use each weight once per row).\n`,
  );

  // The picture and the files.
  const files: string[] = [];
  if (dir !== null) {
    try {
      await mkdir(dir, { recursive: true });
      const shown = Math.min(trainSize, 20000);
      const mafSamples = benchInput.subarray(0, shown * dim);
      const iafSamples = klDraw.x.subarray(0, shown * dim);
      const png = await renderDemoPicture({
        data: train.subarray(0, shown * dim),
        mafSamples,
        iafSamples,
        teacher,
        panelSize: options.panelSize ?? 300,
        gridSize: options.gridSize ?? 150,
        dataset,
      });
      const writes: [string, (file: string) => Promise<void>][] = [
        ['demo.png', (file) => writeFileAtomic(file, png)],
        ['maf-samples.npy', (file) => writeNpy(file, mafSamples.slice(), [shown, dim])],
        ['iaf-samples.npy', (file) => writeNpy(file, iafSamples.slice(), [shown, dim])],
        ['maf.safetensors', (file) => saveFlow(teacher, file)],
        ['iaf.safetensors', (file) => saveFlow(student, file)],
      ];
      for (const [name, write] of writes) {
        const file = path.join(dir, name);
        await write(file);
        files.push(file);
      }
    } catch (error) {
      throw new CliError(`cannot write to ${dir} (${errorMessage(error)})`);
    }
    out.write(
      `\nWrote ${files[0]} (panels: training data | MAF samples | MAF density | IAF samples),\n` +
        `  ${files.slice(1, 3).join(' and ')} (${fmtInt(Math.min(trainSize, 20000))} samples each, float32: numpy.load),\n` +
        `  ${files.slice(3).join(' and ')} (try: npx iaflow info ${files[4]})\n`,
    );
  }
  const seconds = (performance.now() - started) / 1000;
  out.write(`\nDone in ${fmtSeconds(seconds)}.\n`);
  const model = (ll: Float32Array, speed: { sample: number; logProb: number }): DemoModelResult => ({
    testLogLikMean: mean(ll),
    testLogLikMedian: median(ll),
    sampleRowsPerSec: speed.sample,
    logProbRowsPerSec: speed.logProb,
  });
  return {
    dataset,
    teacher: { ...model(teacherLL, teacherSpeed), epochs: fitReport.epochs, bestEpoch: fitReport.bestEpoch, trainSeconds: fitReport.seconds },
    student: { ...model(studentLL, studentSpeed), klReport: distillReport.kl, kl, klStandardError, trainSeconds: distillReport.seconds },
    trueTestLogLik: trueLL ? { mean: mean(trueLL), median: median(trueLL) } : null,
    files,
    seconds,
  };
}

// ---------------------------------------------------------------------------------------
// The demo's picture

const INK: Rgb = [40, 40, 40];
const BLUE: Rgb = [31, 119, 180];
const ORANGE: Rgb = [230, 85, 13];

/** Viridis, sampled at 9 points and interpolated linearly. */
const VIRIDIS: Rgb[] = [
  [68, 1, 84],
  [71, 44, 122],
  [59, 81, 139],
  [44, 113, 142],
  [33, 144, 141],
  [39, 173, 129],
  [92, 200, 99],
  [170, 220, 50],
  [253, 231, 37],
];

function viridis(t: number): Rgb {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [Math.round(a[0] + f * (b[0] - a[0])), Math.round(a[1] + f * (b[1] - a[1])), Math.round(a[2] + f * (b[2] - a[2]))];
}

interface Extent {
  x0: number;
  y0: number;
  size: number;
}

/** A square window around the bulk of the data (0.5% to 99.5% quantiles per axis, 10% margin). */
function extentOf(data: Float32Array): Extent {
  const quantiles = (axis: number): [number, number] => {
    const values = new Float64Array(data.length / 2);
    for (let i = 0; i < values.length; i++) values[i] = data[2 * i + axis];
    values.sort();
    return [values[Math.floor(0.005 * (values.length - 1))], values[Math.ceil(0.995 * (values.length - 1))]];
  };
  const [xa, xb] = quantiles(0);
  const [ya, yb] = quantiles(1);
  const size = Math.max(xb - xa, yb - ya, 1e-6) * 1.2;
  return { x0: (xa + xb) / 2 - size / 2, y0: (ya + yb) / 2 - size / 2, size };
}

/** Points as a density-shaded scatter: each pixel darkens toward `color` with its count of points. */
function drawScatter(img: Raster, left: number, top: number, side: number, extent: Extent, points: Float32Array, color: Rgb): void {
  const counts = new Float32Array(side * side);
  for (let i = 0; i < points.length / 2; i++) {
    const px = Math.floor(((points[2 * i] - extent.x0) / extent.size) * side);
    const py = side - 1 - Math.floor(((points[2 * i + 1] - extent.y0) / extent.size) * side);
    if (px >= 0 && py >= 0 && px < side && py < side) counts[py * side + px]++;
  }
  for (let py = 0; py < side; py++) {
    for (let px = 0; px < side; px++) {
      const t = 1 - Math.exp(-0.7 * counts[py * side + px]);
      if (t === 0) continue;
      img.setPixel(left + px, top + py, [0, 1, 2].map((c) => Math.round(255 + t * (color[c] - 255))) as unknown as Rgb);
    }
  }
}

/** log p on a grid x grid lattice over the extent, colour-mapped (viridis over the top 8 nats), bilinear to side x side. */
async function drawDensity(img: Raster, left: number, top: number, side: number, extent: Extent, flow: Flow, grid: number): Promise<void> {
  const points = new Float32Array(grid * grid * 2);
  for (let gy = 0; gy < grid; gy++) {
    for (let gx = 0; gx < grid; gx++) {
      points[2 * (gy * grid + gx)] = extent.x0 + ((gx + 0.5) / grid) * extent.size;
      points[2 * (gy * grid + gx) + 1] = extent.y0 + ((gy + 0.5) / grid) * extent.size;
    }
  }
  const lp = await flow.logProb(points);
  let top1 = -Infinity;
  for (const v of lp) if (Number.isFinite(v) && v > top1) top1 = v;
  const range = 8;
  const at = (gx: number, gy: number) => {
    const v = lp[Math.min(grid - 1, Math.max(0, gy)) * grid + Math.min(grid - 1, Math.max(0, gx))];
    return Number.isFinite(v) ? Math.max(v, top1 - range) : top1 - range;
  };
  for (let py = 0; py < side; py++) {
    const gyf = ((side - 1 - py + 0.5) / side) * grid - 0.5;
    const gy = Math.floor(gyf);
    const fy = gyf - gy;
    for (let px = 0; px < side; px++) {
      const gxf = ((px + 0.5) / side) * grid - 0.5;
      const gx = Math.floor(gxf);
      const fx = gxf - gx;
      const v = (1 - fy) * ((1 - fx) * at(gx, gy) + fx * at(gx + 1, gy)) + fy * ((1 - fx) * at(gx, gy + 1) + fx * at(gx + 1, gy + 1));
      img.setPixel(left + px, top + py, viridis((v - (top1 - range)) / range));
    }
  }
}

export async function renderDemoPicture(input: {
  data: Float32Array;
  mafSamples: Float32Array;
  iafSamples: Float32Array;
  teacher: Flow;
  panelSize: number;
  gridSize: number;
  dataset: string;
}): Promise<Buffer> {
  const side = input.panelSize;
  const gap = 2;
  const titleHeight = side >= 200 ? 26 : 12;
  const scale = side >= 200 ? 2 : 1;
  const width = 4 * side + 3 * gap;
  const height = titleHeight + side;
  const img = new Raster(width, height);
  const extent = extentOf(input.data);
  const titles = [`${DATASET_TITLES[input.dataset] ?? input.dataset} data`, 'MAF samples', 'MAF density', 'IAF samples'];
  for (let k = 0; k < 4; k++) {
    const left = k * (side + gap);
    if (k > 0) img.fillRect(left - gap, 0, gap, height, [160, 160, 160]);
    const title = titles[k];
    img.text(left + Math.max(2, Math.floor((side - Raster.textWidth(title, scale)) / 2)), Math.floor((titleHeight - 7 * scale) / 2), title, INK, scale);
  }
  img.fillRect(0, titleHeight - 1, width, 1, [160, 160, 160]);
  drawScatter(img, 0, titleHeight, side, extent, input.data, INK);
  drawScatter(img, side + gap, titleHeight, side, extent, input.mafSamples, BLUE);
  await drawDensity(img, 2 * (side + gap), titleHeight, side, extent, input.teacher, input.gridSize);
  drawScatter(img, 3 * (side + gap), titleHeight, side, extent, input.iafSamples, ORANGE);
  return img.encode();
}

// ---------------------------------------------------------------------------------------
// The commands

interface Command {
  summary: string;
  help: string;
  options: Record<string, OptionSpec>;
  run(p: Parsed, io: CliIO): Promise<void>;
}

const COMMANDS: Record<string, Command> = {
  demo: {
    summary: 'train a MAF on a toy data set, distil it into an IAF, compare them and draw them',
    help: `Usage: iaflow demo [options]

Fits a MAF to a 2-d toy data set by maximum likelihood, distils it into an IAF (reverse KL and forward KL),
prints a table (test log-likelihood, KL from student to teacher, rows/s of each direction of
each model) and writes DIR/demo.png (data | MAF samples | MAF density | IAF samples), the samples
as .npy and both models as .safetensors. About a minute on 2 cores with the defaults.

Options:
  --dataset NAME         twoMoons (default), eightGaussians, checkerboard, pinwheel, twoSpirals, rings
  --layers N             MADE layers per flow (default 5)
  --hidden W,W,...       hidden widths of each MADE (default 64,64)
  --epochs N             maximum-likelihood epochs, early stopping on 10% held out (default 100)
  --steps N              distillation steps (default 20000)
  --batch-size N         rows per step of both trainings (default 512)
  --seed N               data, initialisation and training (default 0)
  --out DIR              where the picture, samples and models go (default ./iaflow-demo)
  --no-files             write nothing
  --train-size N         training points (default 20000)
  --test-size N          test points, drawn with another seed (default 5000)
  --bench-rows N         rows per timed call and for the KL estimate (default 100000)
  --threads N            native threads (default: the number of cores)
  -h, --help             this help
`,
    options: {
      dataset: { type: 'string' },
      layers: { type: 'string' },
      hidden: { type: 'string' },
      epochs: { type: 'string' },
      steps: { type: 'string' },
      'batch-size': { type: 'string' },
      seed: { type: 'string' },
      out: { type: 'string', short: 'o' },
      'no-files': { type: 'boolean' },
      'train-size': { type: 'string' },
      'test-size': { type: 'string' },
      'bench-rows': { type: 'string' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      positionals(p, []);
      if (p.values['no-files'] && str(p, 'out') !== undefined) throw new UsageError('give --out DIR or --no-files, not both');
      const options: DemoOptions = {
        dataset: datasetOption(p),
        layers: intOption(p, 'layers', 5, 1, 64),
        hidden: hiddenOption(p, [64, 64]),
        epochs: intOption(p, 'epochs', 100, 1, 1e6),
        steps: intOption(p, 'steps', 20000, 1, 1e8),
        batchSize: intOption(p, 'batch-size', 512, 1, 1 << 20),
        seed: seedOption(p, 0),
        out: p.values['no-files'] ? null : (str(p, 'out') ?? 'iaflow-demo'),
        trainSize: intOption(p, 'train-size', 20000, 10, 1e7),
        testSize: intOption(p, 'test-size', 5000, 1, 1e7),
        benchRows: intOption(p, 'bench-rows', 100000, 2, 1e7),
      };
      threadsOption(p);
      await runDemo(options, io);
    },
  },

  train: {
    summary: 'fit a MAF (or an IAF) to data (CSV or .npy) by maximum likelihood and save it',
    help: `Usage: iaflow train DATA [options]

Fits a MAF (MADE layers with reversals between them) to the rows of DATA by maximum likelihood
(Adam, minibatches), with early stopping on a held-out fraction, and saves it as .safetensors.
With --kind iaf it fits an IAF instead: sampling is then the one-pass direction and scoring the
sequential one (training runs it too, at about half a MAF's speed).

DATA is a .npy file (float32 or float64, shape (rows, dim)) or a CSV file: comma-separated
numbers, one row per point, an optional header row of names (a first row with no number in
it; skipped); lines starting with # are skipped. Flows train best on data of roughly unit
scale: standardise columns first.

Options:
  --out FILE               the model file (default model.safetensors)
  --kind maf|iaf           the layer kind (default maf)
  --layers N               MADE layers (default 5)
  --hidden W,W,...         hidden widths of each MADE (default 64,64)
  --activation NAME        relu (default), tanh or elu
  --epochs N               passes over the data (default 100)
  --batch-size N           rows per step (default 512)
  --lr X                   Adam's learning rate (default 1e-3)
  --validation-fraction X  rows held out for validation and early stopping (default 0.1; 0: none)
  --patience N             stop after N epochs without a better validation loss (default 10; 0: never)
  --ema D                  decay per step of the weight average that is validated and saved (default 0.99; 0: off)
  --seed N                 initialisation, split and minibatch order (default: random, printed)
  --threads N              native threads (default: the number of cores)
  -h, --help               this help
`,
    options: {
      out: { type: 'string', short: 'o' },
      kind: { type: 'string' },
      layers: { type: 'string' },
      hidden: { type: 'string' },
      activation: { type: 'string' },
      epochs: { type: 'string' },
      'batch-size': { type: 'string' },
      lr: { type: 'string' },
      'validation-fraction': { type: 'string' },
      patience: { type: 'string' },
      ema: { type: 'string' },
      seed: { type: 'string' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [dataFile] = positionals(p, ['data']);
      const outFile = str(p, 'out') ?? 'model.safetensors';
      const kind = str(p, 'kind') ?? 'maf';
      if (kind !== 'maf' && kind !== 'iaf') throw new UsageError(`--kind ${kind}: expected maf or iaf`);
      const layers = intOption(p, 'layers', 5, 1, 64);
      const hidden = hiddenOption(p, [64, 64]);
      const activation = (str(p, 'activation') ?? 'relu') as Activation;
      if (!['relu', 'tanh', 'elu'].includes(activation)) throw new UsageError(`--activation ${activation}: expected relu, tanh or elu`);
      const epochs = intOption(p, 'epochs', 100, 1, 1e6);
      const batchSize = intOption(p, 'batch-size', 512, 1, 1 << 20);
      const lr = numberOption(p, 'lr', 1e-3, (v) => v > 0 && v < 10, 'a number in (0, 10)');
      const fraction = numberOption(p, 'validation-fraction', 0.1, (v) => v >= 0 && v < 1, 'a number in [0, 1)');
      const patience = intOption(p, 'patience', 10, 0, 1e6);
      const ema = numberOption(p, 'ema', 0.99, (v) => v >= 0 && v < 1, 'a number in [0, 1)');
      const seed = seedOption(p, undefined) ?? Math.floor(Math.random() * 2 ** 32);
      threadsOption(p);

      const table = await readData(dataFile);
      const { rows, cols } = table;
      if (rows < 2) throw new CliError(`${dataFile}: ${rows} row; training needs at least 2`);
      const validRows = Math.round(rows * fraction);
      const useValidation = fraction > 0 && validRows >= 1 && validRows < rows;
      const scaleNotes: string[] = [];
      for (let c = 0; c < cols; c++) {
        let m = 0;
        let s = 0;
        for (let r = 0; r < rows; r++) m += table.data[r * cols + c] / rows;
        for (let r = 0; r < rows; r++) s += (table.data[r * cols + c] - m) ** 2 / rows;
        const sd = Math.sqrt(s);
        if (Math.abs(m) > 100 || sd > 100 || (sd < 1e-3 && rows > 1)) scaleNotes.push(`column ${c + 1}: mean ${m.toPrecision(3)}, std ${sd.toPrecision(3)}`);
      }
      const flow = (kind === 'iaf' ? createIAF : createMAF)({ dim: cols, layers, hidden, activation, seed });
      io.stdout.write(
        `Fitting a${kind === 'iaf' ? 'n IAF' : ' MAF'} (${layers} layers, hidden [${hidden.join(', ')}], ${fmtInt(flow.numParameters)} parameters) to ${fmtInt(rows)} rows of dim ${cols} ` +
          `from ${dataFile}, seed ${seed}` +
          (useValidation ? `, ${fmtInt(validRows)} rows held out` : ', no validation') +
          '\n',
      );
      if (scaleNotes.length > 0) {
        io.stdout.write(`  note: flows train best on data of unit scale; consider standardising (${scaleNotes.slice(0, 3).join('; ')})\n`);
      }
      const bar = new Progress(io.stdout, epochs);
      const report = await fit(flow, table.data, {
        epochs,
        batchSize,
        learningRate: lr,
        validationFraction: useValidation ? fraction : undefined,
        patience: useValidation && patience > 0 ? patience : undefined,
        ema,
        seed,
        onProgress: ({ epoch, trainLoss, validLoss, samplesPerSec }) => {
          const valid = Number.isNaN(validLoss) ? '' : `  valid NLL ${validLoss.toFixed(4)}`;
          bar.update(epoch + 1, `epoch ${epoch + 1}/${epochs}  train NLL ${trainLoss.toFixed(4)}${valid}  ${fmtRate(samplesPerSec)} rows/s`);
        },
      });
      bar.end();
      const best = report.bestEpoch;
      io.stdout.write(
        `  ${report.epochs} epoch${report.epochs === 1 ? '' : 's'} in ${fmtSeconds(report.seconds)}${report.stoppedEarly ? ' (stopped early)' : ''}; ` +
          `final train NLL ${report.trainLoss[report.trainLoss.length - 1].toFixed(4)}` +
          (best !== null ? `; kept epoch ${best + 1}, validation NLL ${report.validLoss[best].toFixed(4)} nats/point` : '') +
          (report.skippedSteps > 0 ? `; ${report.skippedSteps} non-finite steps skipped` : '') +
          '\n',
      );
      try {
        await saveFlow(flow, outFile);
      } catch (error) {
        throw new CliError(`cannot write ${outFile} (${errorMessage(error)})`);
      }
      io.stdout.write(`Saved ${outFile}\n`);
    },
  },

  sample: {
    summary: 'draw samples from a model, as CSV or .npy',
    help: `Usage: iaflow sample MODEL [options]

Draws samples from a model file (.safetensors, from iaflow train, the demo or saveFlow). Without
--out, CSV goes to stdout.

Options:
  -n, --count N        number of samples (default 1000)
  --seed N             the same seed gives the same samples (default: random)
  --out FILE           .npy (float32, shape (n, dim): numpy.load) or .csv (header x1,x2,...)
  --with-log-prob      add log p(x) as a last column
  --threads N          native threads (default: the number of cores)
  -h, --help           this help
`,
    options: {
      count: { type: 'string', short: 'n' },
      seed: { type: 'string' },
      out: { type: 'string', short: 'o' },
      'with-log-prob': { type: 'boolean' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [modelFile] = positionals(p, ['model']);
      const n = intOption(p, 'count', 1000, 1, 1e8);
      const seed = seedOption(p, undefined);
      const outFile = str(p, 'out');
      if (outFile !== undefined) outputKind(outFile, '--out');
      threadsOption(p);
      const flow = await readModel(modelFile);
      const dim = flow.dim;
      const header = Array.from({ length: dim }, (_, i) => `x${i + 1}`);
      let data: Float32Array;
      let cols = dim;
      if (p.values['with-log-prob']) {
        const { x, logProb } = await flow.sampleWithLogProb(n, seed === undefined ? undefined : { seed });
        cols = dim + 1;
        data = new Float32Array(n * cols);
        for (let r = 0; r < n; r++) {
          data.set(x.subarray(r * dim, (r + 1) * dim), r * cols);
          data[r * cols + dim] = logProb[r];
        }
        header.push('log_prob');
      } else {
        data = await flow.sample(n, seed === undefined ? undefined : { seed });
      }
      if (outFile === undefined) {
        await writeCsv(io.stdout, data, cols, header);
      } else {
        await writeData(outFile, data, cols, header);
        io.stderr.write(`Wrote ${fmtInt(n)} samples of dim ${dim} to ${outFile}\n`);
      }
    },
  },

  logprob: {
    summary: 'log-density of each row of a data file under a model',
    help: `Usage: iaflow logprob MODEL DATA [options]

Computes log p(x) (nats) for every row of DATA (CSV or .npy, as for train) under the model and
prints a summary (mean, median, min, max); with --out, also writes one value per row.

Options:
  --out FILE           .npy (float32, shape (n,)) or .csv (header log_prob)
  --threads N          native threads (default: the number of cores)
  -h, --help           this help
`,
    options: {
      out: { type: 'string', short: 'o' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [modelFile, dataFile] = positionals(p, ['model', 'data']);
      const outFile = str(p, 'out');
      if (outFile !== undefined) outputKind(outFile, '--out');
      threadsOption(p);
      const flow = await readModel(modelFile);
      const table = await readData(dataFile);
      if (table.cols !== flow.dim) {
        throw new CliError(`${dataFile} has ${table.cols} column${table.cols === 1 ? '' : 's'}, but the model's dim is ${flow.dim}`);
      }
      const lp = await flow.logProb(table.data);
      if (outFile !== undefined) await writeData(outFile, lp, 1, ['log_prob'], true);
      let lo = Infinity;
      let hi = -Infinity;
      for (const v of lp) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
      io.stdout.write(
        `${fmtInt(table.rows)} rows: mean log p ${mean(lp).toFixed(4)}, median ${median(lp).toFixed(4)}, min ${lo.toFixed(4)}, max ${hi.toFixed(4)} (nats)` +
          (outFile !== undefined ? `; wrote ${outFile}` : '') +
          '\n',
      );
    },
  },

  serve: {
    summary: 'serve a model over HTTP: /sample, /log-prob, /model, /health, /metrics',
    help: `Usage: iaflow serve MODEL [options]

Serves a model file over HTTP until SIGTERM or SIGINT, then finishes the requests in flight and
exits. POST /sample { n, seed, firstRow?, format? } answers the bytes flow.sample gives; POST
/log-prob { rows } (or float32 / .npy bytes) answers { logProb }; GET /model, /health, /metrics.
Formats: json, csv, ndjson, f32, npy (a format field or the Accept header). Needs the fastify
package (npm install fastify@5). See the README's "Serving" section.

Options:
  --port N               port (default 8080; 0: any free port)
  --host ADDR            address to listen on (default 127.0.0.1; 0.0.0.0 in a container)
  --max-rows N           most rows per request (default 100,000,000)
  --max-body-bytes N     largest request body (default 67,108,864)
  --max-jobs N           requests answered at once (default: the number of cores, at least 2)
  --max-queue N          requests waiting for a slot before 503 (default 64)
  --timeout-ms N         per-request deadline (default 300,000)
  --shutdown-timeout-ms N  after SIGTERM, how long requests in flight may run (default 30,000)
  --threads N            native threads (default: the number of cores)
  -h, --help             this help
`,
    options: {
      port: { type: 'string', short: 'p' },
      host: { type: 'string' },
      'max-rows': { type: 'string' },
      'max-body-bytes': { type: 'string' },
      'max-jobs': { type: 'string' },
      'max-queue': { type: 'string' },
      'timeout-ms': { type: 'string' },
      'shutdown-timeout-ms': { type: 'string' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [model] = positionals(p, ['model']);
      const optional = (name: string, min: number, max: number) => (str(p, name) === undefined ? undefined : intOption(p, name, 0, min, max));
      const options = {
        model,
        port: intOption(p, 'port', 8080, 0, 65535),
        host: str(p, 'host') ?? '127.0.0.1',
        maxRows: optional('max-rows', 1, Number.MAX_SAFE_INTEGER),
        maxBodyBytes: optional('max-body-bytes', 1, 2 ** 31 - 1),
        maxConcurrentJobs: optional('max-jobs', 1, 4096),
        maxQueuedJobs: optional('max-queue', 0, 1e6),
        timeoutMs: optional('timeout-ms', 1, 2 ** 31 - 1),
        shutdownTimeoutMs: optional('shutdown-timeout-ms', 0, 2 ** 31 - 1),
      };
      threadsOption(p);
      // Loaded here, not at the top: the server needs fastify (an optional peer dependency), the other commands do not.
      const server = require('./server') as typeof import('./server');
      await server.serveModel(options, io.stderr);
    },
  },

  info: {
    summary: "what a model file holds: dim, layers, parameter count",
    help: `Usage: iaflow info MODEL [options]

Prints what a model file holds: dim, the layers (kind, hidden widths, activation, scale),
the parameter count, and which direction of the flow is one pass.

Options:
  --json               print the config and the parameter count as JSON
  -h, --help           this help
`,
    options: { json: { type: 'boolean' } },
    async run(p, io) {
      const [modelFile] = positionals(p, ['model']);
      const flow = await readModel(modelFile);
      const config = flow.config;
      if (p.values.json) {
        io.stdout.write(JSON.stringify({ file: modelFile, numParameters: flow.numParameters, config }, null, 2) + '\n');
        return;
      }
      const made = config.layers.filter((l): l is MadeLayerConfig => l.type !== 'permutation');
      const kinds = new Set(made.map((l) => l.type));
      const count = (type: string) => made.filter((l) => l.type === type).length;
      const kindText = [...kinds].map((k) => `${count(k)} ${k.toUpperCase()}`).join(' + ');
      const lines = [
        `${modelFile}`,
        `  dim          ${config.dim}`,
        `  layers       ${config.layers.length} (${kindText || 'no'} MADE layer${made.length === 1 ? '' : 's'}, ${config.layers.length - made.length} permutation${config.layers.length - made.length === 1 ? '' : 's'})`,
        `  parameters   ${fmtInt(flow.numParameters)}`,
        `  sample       ${kinds.has('maf') ? 'sequential (dimension by dimension through the MAF layers)' : 'one pass'}`,
        `  logProb      ${kinds.has('iaf') ? 'sequential (dimension by dimension through the IAF layers)' : 'one pass'}`,
        '',
        ...formatTable(
          [
            ['  #', 'kind', 'hidden', 'activation', 'scale', ''],
            ...config.layers.map((l, k) =>
              l.type === 'permutation'
                ? [`  ${k}`, 'permutation', '', '', '', isReversal(l.permutation) ? 'reverse' : `[${l.permutation.slice(0, 8).join(', ')}${l.permutation.length > 8 ? ', ...' : ''}]`]
                : [`  ${k}`, l.type.toUpperCase(), `[${l.hidden.join(', ')}]`, l.activation, l.scale, l.residual ? 'residual' : ''],
            ),
          ],
          ['r', 'l', 'l', 'l', 'l', 'l'],
        ),
      ];
      io.stdout.write(lines.join('\n') + '\n');
    },
  },
};

function isReversal(permutation: readonly number[]): boolean {
  return permutation.every((v, i) => v === permutation.length - 1 - i);
}

const MAIN_HELP = `Usage: iaflow <command> [options]

Masked and inverse autoregressive normalizing flows (MAF, IAF) on a native core.

Commands:
${Object.entries(COMMANDS)
  .map(([name, c]) => `  ${name.padEnd(9)}${c.summary}`)
  .join('\n')}

Run 'iaflow <command> --help' for a command's options. Data files are CSV (comma-separated,
an optional header row) or .npy; samples are written as CSV or .npy (float32, little-endian).
Exit codes: 0 done, 1 failed while running, 2 bad command line.
`;

/**
 * The whole CLI: runs `argv` (the arguments after `iaflow`) and resolves to the exit code.
 * Output goes to `io`; nothing here calls process.exit.
 */
export async function main(argv: readonly string[], io: CliIO = processIO): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.stderr.write(MAIN_HELP);
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    const topic = rest[0] !== undefined && Object.hasOwn(COMMANDS, rest[0]) ? COMMANDS[rest[0]].help : MAIN_HELP;
    io.stdout.write(topic);
    return 0;
  }
  if (name === '--version' || name === '-v') {
    io.stdout.write(`${version()}\n`);
    return 0;
  }
  if (!Object.hasOwn(COMMANDS, name)) {
    io.stderr.write(`iaflow: unknown command ${JSON.stringify(name)}; expected one of ${Object.keys(COMMANDS).join(', ')} (iaflow --help)\n`);
    return 2;
  }
  const command = COMMANDS[name];
  try {
    const parsed = parse(rest, command.options);
    if (parsed.values.help) {
      io.stdout.write(command.help);
      return 0;
    }
    await command.run(parsed, io);
    return 0;
  } catch (error) {
    const usage = errorName(error) === 'UsageError';
    io.stderr.write(`iaflow ${name}: ${errorMessage(error)}\n`);
    if (usage) io.stderr.write(`Run 'iaflow ${name} --help' for the options.\n`);
    if (process.env.IAFLOW_DEBUG && (error as { stack?: unknown })?.stack) io.stderr.write(`${(error as { stack: string }).stack}\n`);
    return usage ? 2 : 1;
  }
}

if (require.main === module) {
  // A reader that went away (`iaflow sample model | head`) is a normal end; any other write error
  // on stdout (a full disk: `> /dev/full`) is a failure, said in one line like every other.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
    process.stderr.write(`iaflow: cannot write to stdout (${errorMessage(error)})\n`);
    process.exit(1);
  });
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (error) => {
      process.stderr.write(`iaflow: ${errorMessage(error)}\n`);
      process.exitCode = 1;
    },
  );
}
