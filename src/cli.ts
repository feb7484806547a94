#!/usr/bin/env node
// iaflow's command line (package.json "bin": `npx iaflow <command>`; `npm run demo` in a clone):
//
//   iaflow demo                  MAF on a toy data set, distilled into an IAF: table + picture
//   iaflow train DATA            fit a MAF to a CSV or .npy file, save it as .safetensors
//   iaflow sample MODEL          samples to CSV (stdout or a file) or .npy (float32)
//   iaflow logprob MODEL DATA    log-densities of data rows, to a file or as a summary
//   iaflow eval MODEL DATA       log-likelihood per point of data rows, against a Gaussian baseline
//   iaflow plot MODEL            a picture of the model's samples (and density), and of data
//   iaflow info MODEL            what a model file holds
//
// Exit codes: 0 success, 1 a failure while running (a file that cannot be read, data of the
// wrong shape), 2 a usage error (unknown option, bad value, missing argument). Errors are one
// line on stderr, never a stack trace (IAFLOW_DEBUG=1 adds the stack). `main(argv, io)` is the
// whole CLI as a function, for tests; `runDemo(options, io)` is the demo.
import { mkdir, open, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { datasets } from './datasets';
import { GaussianBaseline, LogLikelihoodSummary, evaluate, gaussianBaseline } from './evaluate';
import { Flow, createIAF, createMAF, getThreads, setThreads } from './flow';
import { encodeFlow, loadFlow, saveFlow } from './io';
import { Activation, DEFAULT_SOFT_CLAMP, isMade } from './layers';
import { writeNpy } from './npy';
import { BLUE, INK, MAX_PLOT_COLUMNS, ORANGE, Window, drawDensity, drawScatter, renderPlot } from './plot';
import { Raster } from './png';
import { MAX_HEADER_BYTES, decodeSafetensors, encodeSafetensors, writeFileAtomic } from './safetensors';
import { RowFormatter, Table, inputFormat, isNumberField, outputFormat, peekCsvHeader, decodeTable, rowChunks, writeTable } from './table';
import { defaultActivation, distill, fit, fitSchedule } from './train';

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

/** How the data options of a command read files: --columns and --strict. */
interface DataOptions {
  /** --columns: names or 0-based indices. */
  columns?: string[];
  /** --strict: a row with a bad cell is an error, not skipped. */
  strict: boolean;
}

function dataOptions(p: Parsed): DataOptions {
  const text = str(p, 'columns');
  let columns: string[] | undefined;
  if (text !== undefined) {
    columns = text.split(',').map((c) => c.trim());
    if (columns.some((c) => c === '')) throw new UsageError(`--columns ${text}: expected comma-separated column names or 0-based indices, e.g. mpg,weight or 0,2`);
  }
  return { columns, strict: p.values.strict === true };
}

/**
 * Reads a data file. Columns: `data.columns` when given; else, when `wanted` names columns (a
 * model's, or the training file's) and the file's header has them all, those; else all. Rows
 * with a bad cell are skipped with a note on stderr (refused with --strict).
 */
async function readData(file: string, data: DataOptions = { strict: false }, io?: CliIO, wanted: string[] | null = null, dim?: number): Promise<Table> {
  let table: Table;
  let picked: string[] | undefined;
  try {
    const bytes = await readFile(file);
    let columns: string[] | undefined = data.columns;
    if (columns === undefined && wanted !== null && inputFormat(file) === 'csv') {
      const header = peekCsvHeader(bytes);
      if (header !== null && wanted.every((name) => header.includes(name)) && (header.length !== wanted.length || header.some((h, i) => h !== wanted[i]))) {
        columns = picked = wanted;
      }
    }
    table = decodeTable(bytes, inputFormat(file), file, { columns, invalidRows: data.strict ? 'error' : 'skip' });
  } catch (error) {
    const message = errorMessage(error);
    // A file system error has a code (ENOENT, EISDIR, ...); a problem with the contents names the file itself.
    throw new CliError(typeof (error as { code?: unknown } | null)?.code === 'string' ? `cannot read ${file} (${message})` : message);
  }
  if (dim !== undefined && table.cols !== dim) {
    throw new CliError(
      `${file} has ${table.cols} column${table.cols === 1 ? '' : 's'}, but the model's dim is ${dim}` + (data.columns === undefined && table.cols > dim ? ' (choose columns with --columns)' : ''),
    );
  }
  if (io !== undefined) {
    if (picked !== undefined) io.stderr.write(`note: ${file}: reading its columns ${picked.join(', ')} (the model's, by name)\n`);
    if (table.skipped !== undefined) {
      const { count, first } = table.skipped;
      io.stderr.write(
        `note: ${file}: skipped ${fmtInt(count)} of ${fmtInt(count + table.rows)} rows with an empty, NA or non-numeric cell ` +
          `(the first: line ${first.line}, column ${first.column}, ${JSON.stringify(first.field.length > 30 ? first.field.slice(0, 30) + '...' : first.field)}); --strict refuses them\n`,
      );
    }
  }
  return table;
}

/** The key of the column names in a model file's __metadata__ (written by train). */
const COLUMNS_KEY = 'columns';
/** Column names longer than this in all (as JSON) are not saved: a model's header stays small. */
const MAX_COLUMN_NAMES_BYTES = 65536;

/** A column name that the CSV writer takes as a header name. */
function usableColumnName(name: string): boolean {
  return name.length > 0 && name.length <= 200 && !/[,\r\n]/.test(name) && !isNumberField(name) && name.trim() === name;
}

/**
 * The column names saved in a model file by train, or null (none, or not one per dimension).
 * Reads only the header; call it after loadFlow accepted the file.
 */
async function readModelColumns(file: string, dim: number): Promise<string[] | null> {
  try {
    const handle = await open(file, 'r');
    try {
      const prefix = Buffer.alloc(8);
      await handle.read(prefix, 0, 8, 0);
      const length = Number(prefix.readBigUInt64LE(0));
      if (length > MAX_HEADER_BYTES) return null;
      const header = Buffer.alloc(length);
      await handle.read(header, 0, length, 8);
      const text = (JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, unknown> }).__metadata__?.[COLUMNS_KEY];
      if (typeof text !== 'string') return null;
      const names: unknown = JSON.parse(text);
      return Array.isArray(names) && names.length === dim && names.every((n) => typeof n === 'string' && usableColumnName(n)) ? (names as string[]) : null;
    } finally {
      await handle.close();
    }
  } catch {
    return null;
  }
}

/**
 * Saves a model, with the training file's column names in its __metadata__ when they can be
 * written back as a CSV header. saveFlow takes no metadata, so its bytes are decoded and
 * re-encoded with the names added (loadFlow ignores metadata keys it does not know).
 */
async function saveModel(flow: Flow, file: string, columns: string[] | null): Promise<boolean> {
  const namesFit = columns !== null && columns.length === flow.dim && columns.every(usableColumnName) && JSON.stringify(columns).length <= MAX_COLUMN_NAMES_BYTES;
  try {
    if (!namesFit) {
      await saveFlow(flow, file);
      return false;
    }
    const decoded = decodeSafetensors(encodeFlow(flow), file);
    await writeFileAtomic(file, encodeSafetensors(decoded.tensors, { ...decoded.metadata, [COLUMNS_KEY]: JSON.stringify(columns) }));
    return true;
  } catch (error) {
    throw new CliError(`cannot write ${file} (${errorMessage(error)})`);
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

/** A command's option; `optionalValue`: a string option that may also stand alone (`--baseline` or `--baseline FILE`), giving ''. */
type OptionSpec = { type: 'string' | 'boolean'; short?: string; optionalValue?: boolean };

interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** A negative number, as an option's value: `--seed -1`, `--shift -0.5`, `-n -3`. */
const NEGATIVE_NUMBER = /^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Levenshtein distance: insertions, deletions and substitutions. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length];
}

/**
 * The known word nearest to a misspelt one, if it is near enough to be what was meant: at most
 * 1 edit for words of up to 4 letters, 2 for longer ones (case ignored), or a word it begins.
 */
export function nearestWord(word: string, known: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const distance = editDistance(w, candidate.toLowerCase());
    if (distance < bestDistance) (best = candidate), (bestDistance = distance);
  }
  if (best !== undefined && bestDistance <= (w.length <= 4 ? 1 : 2)) return best;
  const prefixed = known.filter((k) => w.length >= 3 && k.toLowerCase().startsWith(w));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}

/**
 * Parses a command's arguments (node:util parseArgs, strict), after two rewrites parseArgs does
 * not do itself: a negative number after a string option is its value (`--seed -1` reads as
 * `--seed=-1`, where parseArgs would call it ambiguous), and an `optionalValue` option followed
 * by nothing or by another option gets the value ''. An unknown option's error suggests the
 * nearest known one.
 */
export function parseOptions(argv: readonly string[], options: Record<string, OptionSpec>): Parsed {
  const specs: Record<string, OptionSpec> = { ...options, help: { type: 'boolean', short: 'h' } };
  const shorts = new Map(Object.entries(specs).flatMap(([name, spec]) => (spec.short ? [[spec.short, name] as const] : [])));
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      args.push(...argv.slice(i));
      break;
    }
    const name = arg.startsWith('--') && !arg.includes('=') ? arg.slice(2) : /^-[A-Za-z]$/.test(arg) ? shorts.get(arg[1]) : undefined;
    const spec = name !== undefined && Object.hasOwn(specs, name) ? specs[name] : undefined;
    if (spec?.type === 'string') {
      const next = argv[i + 1];
      if (next !== undefined && NEGATIVE_NUMBER.test(next)) {
        args.push(`--${name}=${next}`);
        i++;
        continue;
      }
      if (spec.optionalValue && (next === undefined || next.startsWith('-'))) {
        args.push(`--${name}=`);
        continue;
      }
    }
    args.push(arg);
  }
  try {
    const { values, positionals } = parseArgs({
      args,
      options: Object.fromEntries(Object.entries(specs).map(([n, { type, short }]) => [n, short ? { type, short } : { type }])),
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Parsed['values'], positionals };
  } catch (error) {
    // parseArgs' messages, on one line; "Unknown option '--x'" without its advice on positionals.
    const message = errorMessage(error).replace(/\s*\n\s*/g, ' ').trim();
    const unknown = /^Unknown option '(-{1,2})([^'=]*)/.exec(message);
    if (unknown === null) throw new UsageError(message);
    const guess = unknown[1] === '--' ? nearestWord(unknown[2], Object.keys(specs)) : undefined;
    throw new UsageError(message.split('. ')[0] + (guess !== undefined ? `; did you mean --${guess}?` : ''));
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
  const text = str(p, 'seed');
  if (text === undefined) return fallback;
  // Some tools take seed -1 for "random": here that is leaving --seed out.
  if (NEGATIVE_NUMBER.test(text.trim())) throw new UsageError(`--seed ${text}: expected an integer from 0 to 4,294,967,295 (leave --seed out for a random seed)`);
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

/** A log-likelihood in nats: 4 decimals, or 4 significant digits when huge; n/a for NaN. */
function fmtLogLik(v: number): string {
  if (Number.isNaN(v)) return 'n/a';
  return Math.abs(v) >= 1e6 ? v.toPrecision(4) : v.toFixed(4);
}

/** A log-likelihood summary on one line. */
function formatSummary(s: LogLikelihoodSummary): string {
  return (
    `${fmtInt(s.rows)} rows, mean ${fmtLogLik(s.mean)} ± ${fmtLogLik(s.stderr)} nats/point (± standard error), median ${fmtLogLik(s.median)}` +
    (s.nonFinite > 0 ? `; ${fmtInt(s.nonFinite)} row${s.nonFinite === 1 ? '' : 's'} with log p -Infinity or NaN, left out of these figures` : '')
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
      // The samples are the timing draws (benchRows of them): never more than those.
      const shown = Math.min(trainSize, benchRows, 20000);
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
        `  ${files.slice(1, 3).join(' and ')} (${fmtInt(Math.min(trainSize, benchRows, 20000))} samples each, float32: numpy.load),\n` +
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

/** A square window around the bulk of the data (0.5% to 99.5% quantiles per axis, 10% margin). */
function squareWindow(data: Float32Array): Window {
  const quantiles = (axis: number): [number, number] => {
    const values = new Float64Array(data.length / 2);
    for (let i = 0; i < values.length; i++) values[i] = data[2 * i + axis];
    values.sort();
    return [values[Math.floor(0.005 * (values.length - 1))], values[Math.ceil(0.995 * (values.length - 1))]];
  };
  const [xa, xb] = quantiles(0);
  const [ya, yb] = quantiles(1);
  const size = Math.max(xb - xa, yb - ya, 1e-6) * 1.2;
  const x0 = (xa + xb) / 2 - size / 2;
  const y0 = (ya + yb) / 2 - size / 2;
  return { xMin: x0, xMax: x0 + size, yMin: y0, yMax: y0 + size };
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
  const win = squareWindow(input.data);
  const titles = [`${DATASET_TITLES[input.dataset] ?? input.dataset} data`, 'MAF samples', 'MAF density', 'IAF samples'];
  for (let k = 0; k < 4; k++) {
    const left = k * (side + gap);
    if (k > 0) img.fillRect(left - gap, 0, gap, height, [160, 160, 160]);
    const title = titles[k];
    img.text(left + Math.max(2, Math.floor((side - Raster.textWidth(title, scale)) / 2)), Math.floor((titleHeight - 7 * scale) / 2), title, INK, scale);
  }
  img.fillRect(0, titleHeight - 1, width, 1, [160, 160, 160]);
  const panel = (k: number) => ({ left: k * (side + gap), top: titleHeight, width: side, height: side });
  drawScatter(img, panel(0), win, input.data, INK);
  drawScatter(img, panel(1), win, input.mafSamples, BLUE);
  await drawDensity(img, panel(2), win, input.teacher, input.gridSize);
  drawScatter(img, panel(3), win, input.iafSamples, ORANGE);
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

DATA is a .npy file (float32 or float64, shape (rows, dim)) or a CSV file: numbers separated
by commas, semicolons or tabs (told from the first lines), one row per point, an optional
header row of names (a first row with no number in it); lines starting with # are skipped.
Rows with an empty, NA or non-numeric cell are skipped and counted (--strict refuses them).
The header's names are saved in the model file: sample writes them as its CSV header, and
eval, logprob and plot pick those columns from a file that has more.

The model standardises the data itself (an affine layer at its data end, from the training
rows' means and standard deviations), so sample, logprob and eval work in the data's raw units
and log-likelihoods count the Jacobian. The batch size, epochs and patience follow from the
number of training rows (about 10,000 steps at most, early stopping after about 1,500 without
a better validation loss; the batch is 512 rows from 8192 rows up, else rows / 16 rounded down
to a power of two, at least 16). A fit that ends no better than a full-covariance Gaussian on
the validation rows (or not finite) is saved, with a warning, and the exit code is 1.

Options:
  --columns A,B,...        the columns to fit, by header name or 0-based index (default: all)
  --strict                 a row with a bad cell is an error naming it, not skipped
  --validation FILE        validation rows from a file (instead of --validation-fraction)
  --test FILE              rows to score at the end: their log-likelihood per point
  --out FILE               the model file (default model.safetensors)
  --kind maf|iaf           the layer kind (default maf)
  --layers N               MADE layers (default 5)
  --hidden W,W,...         hidden widths of each MADE (default 64,64)
  --activation NAME        relu, tanh or elu (default: tanh below 1000 training rows, else relu)
  --soft-clamp C           the conditioners read u / sqrt(1 + (u/C)^2), keeping tail samples sane (default 4; 0: off)
  --no-standardize         fit the raw columns (no affine layer at the data end)
  --dequantize W,...       uniform noise of width W added to each value (one W, or one per column; 0: none):
                           for data on a grid (counts, rounded values); off by default
  --epochs N               passes over the data (default: from the rows, see above)
  --batch-size N           rows per step (default: from the rows, see above)
  --lr X                   Adam's learning rate (default 1e-3)
  --validation-fraction X  rows held out for validation and early stopping (default 0.1; 0: none)
  --patience N             stop after N epochs without a better validation loss (default: from the rows; 0: never)
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
      columns: { type: 'string' },
      strict: { type: 'boolean' },
      validation: { type: 'string' },
      test: { type: 'string' },
      'soft-clamp': { type: 'string' },
      'no-standardize': { type: 'boolean' },
      dequantize: { type: 'string' },
    },
    async run(p, io) {
      const [dataFile] = positionals(p, ['data']);
      const data = dataOptions(p);
      const validationFile = str(p, 'validation');
      const testFile = str(p, 'test');
      if (validationFile !== undefined && str(p, 'validation-fraction') !== undefined) {
        throw new UsageError('give --validation FILE or --validation-fraction X, not both');
      }
      const outFile = str(p, 'out') ?? 'model.safetensors';
      const kind = str(p, 'kind') ?? 'maf';
      if (kind !== 'maf' && kind !== 'iaf') throw new UsageError(`--kind ${kind}: expected maf or iaf`);
      const layers = intOption(p, 'layers', 5, 1, 64);
      const hidden = hiddenOption(p, [64, 64]);
      const givenActivation = str(p, 'activation') as Activation | undefined;
      if (givenActivation !== undefined && !['relu', 'tanh', 'elu'].includes(givenActivation)) throw new UsageError(`--activation ${givenActivation}: expected relu, tanh or elu`);
      const givenEpochs = str(p, 'epochs') === undefined ? undefined : intOption(p, 'epochs', 1, 1, 1e6);
      const givenBatch = str(p, 'batch-size') === undefined ? undefined : intOption(p, 'batch-size', 1, 1, 1 << 20);
      const lr = numberOption(p, 'lr', 1e-3, (v) => v > 0 && v < 10, 'a number in (0, 10)');
      const fraction = numberOption(p, 'validation-fraction', 0.1, (v) => v >= 0 && v < 1, 'a number in [0, 1)');
      const givenPatience = str(p, 'patience') === undefined ? undefined : intOption(p, 'patience', 0, 0, 1e6);
      const softClamp = numberOption(p, 'soft-clamp', DEFAULT_SOFT_CLAMP, (v) => v >= 0 && v < 1e30, 'a number >= 0 (0: off)');
      const standardize = p.values['no-standardize'] !== true;
      const dequantizeText = str(p, 'dequantize');
      const ema = numberOption(p, 'ema', 0.99, (v) => v >= 0 && v < 1, 'a number in [0, 1)');
      const seed = seedOption(p, undefined) ?? Math.floor(Math.random() * 2 ** 32);
      threadsOption(p);

      const table = await readData(dataFile, data, io);
      const { rows, cols } = table;
      if (rows < 2) throw new CliError(`${dataFile}: ${rows} row; training needs at least 2`);
      // The validation and test files: the same --columns, or else the training header's names
      // when their header has them all, or else all their columns.
      const readHeldOut = (file: string) => readData(file, data, io, table.header, cols);
      const validation = validationFile !== undefined ? await readHeldOut(validationFile) : null;
      const test = testFile !== undefined ? await readHeldOut(testFile) : null;
      const validRows = validation !== null ? validation.rows : Math.round(rows * fraction);
      const useValidation = validation !== null || (fraction > 0 && validRows >= 1 && validRows < rows);
      const trainRows = validation !== null || !useValidation ? rows : rows - validRows;
      const schedule = fitSchedule(trainRows, givenBatch);
      const epochs = givenEpochs ?? schedule.epochs;
      const patience = givenPatience ?? schedule.patience;
      const columnName = (c: number) => (table.header ? JSON.stringify(table.header[c]) : `${c}`);
      let dequantize: number[] | undefined;
      if (dequantizeText !== undefined) {
        const widths = dequantizeText.split(',').map((w) => Number(w.trim()));
        if (widths.some((w) => !(w >= 0 && Number.isFinite(w))) || (widths.length !== 1 && widths.length !== cols)) {
          throw new UsageError(`--dequantize ${dequantizeText}: expected one width >= 0 or ${cols} of them (one per column), comma-separated`);
        }
        dequantize = widths.length === 1 ? new Array<number>(cols).fill(widths[0]) : widths;
      }
      const scaleNotes: string[] = [];
      const gridNotes: string[] = [];
      for (let c = 0; c < cols; c++) {
        let m = 0;
        let s = 0;
        for (let r = 0; r < rows; r++) m += table.data[r * cols + c] / rows;
        for (let r = 0; r < rows; r++) s += (table.data[r * cols + c] - m) ** 2 / rows;
        const sd = Math.sqrt(s);
        if (Math.abs(m) > 100 || sd > 100 || (sd < 1e-3 && rows > 1)) scaleNotes.push(`column ${columnName(c)}: mean ${m.toPrecision(3)}, std ${sd.toPrecision(3)}`);
        const distinct = new Set<number>();
        for (let r = 0; r < rows && distinct.size <= 50; r++) distinct.add(table.data[r * cols + c]);
        if (distinct.size <= 50 && rows >= 4 * distinct.size && !(dequantize && dequantize[c] > 0)) {
          const values = [...distinct].sort((a, b) => a - b);
          let step = Infinity;
          for (let k = 1; k < values.length; k++) step = Math.min(step, values[k] - values[k - 1]);
          gridNotes.push(`column ${columnName(c)} has ${distinct.size} distinct values${Number.isFinite(step) ? ` (closest ${Math.fround(step)} apart)` : ''}`);
        }
      }
      const activation: Activation = givenActivation ?? defaultActivation(trainRows);
      const flow = (kind === 'iaf' ? createIAF : createMAF)({ dim: cols, layers, hidden, activation, seed, softClamp });
      io.stdout.write(
        `Fitting a${kind === 'iaf' ? 'n IAF' : ' MAF'} (${layers} layers, hidden [${hidden.join(', ')}], ${activation}, ${fmtInt(flow.numParameters)} parameters) to ${fmtInt(rows)} rows of dim ${cols} ` +
          `from ${dataFile}, seed ${seed}` +
          (validation !== null ? `, ${fmtInt(validRows)} validation rows from ${validationFile}` : useValidation ? `, ${fmtInt(validRows)} rows held out` : ', no validation') +
          '\n',
      );
      if (scaleNotes.length > 0 && !standardize) {
        io.stdout.write(`  note: flows train best on data of unit scale; drop --no-standardize (${scaleNotes.slice(0, 3).join('; ')})\n`);
      }
      if (gridNotes.length > 0) {
        io.stdout.write(
          `  note: ${gridNotes.slice(0, 3).join('; ')}: a flow may pile its density onto such a grid; ` +
            `--dequantize W (the grid's step) spreads each value over its cell\n`,
        );
      }
      io.stdout.write(
        `  ${standardize ? 'standardised inside the model' : 'raw columns (--no-standardize)'}; batch ${schedule.batchSize}, up to ${epochs} epochs` +
          (useValidation && patience > 0 ? `, patience ${patience}` : '') +
          (dequantize ? `; dequantised by [${dequantize.join(', ')}]` : '') +
          '\n',
      );
      const bar = new Progress(io.stdout, epochs);
      const report = await fit(flow, table.data, {
        epochs,
        batchSize: givenBatch,
        standardize,
        dequantize,
        learningRate: lr,
        validation: validation !== null ? validation.data : undefined,
        validationFraction: validation === null && useValidation ? fraction : undefined,
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
      for (const note of report.notes) io.stdout.write(`  note: ${note}\n`);
      if (report.gaussianValidLoss !== null && best !== null) {
        io.stdout.write(`  a full-covariance Gaussian's validation NLL: ${report.gaussianValidLoss.toFixed(4)} nats/point (the fit's: ${report.validLoss[best].toFixed(4)})\n`);
      }
      if (test !== null) {
        const result = await evaluate(flow, test.data);
        io.stdout.write(`  test log-likelihood on ${testFile}: ${formatSummary(result)}\n`);
      }
      const named = await saveModel(flow, outFile, table.header);
      io.stdout.write(`Saved ${outFile}${named ? ` (columns ${table.header!.join(', ')})` : ''}\n`);
      if (report.diverged || report.warnings.length > 0) {
        for (const warning of report.warnings) io.stderr.write(`iaflow train: WARNING: ${warning}\n`);
        throw new CliError(`the fit failed (see the warning above); ${outFile} was saved for inspection, but do not use it as it is`);
      }
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
  --out FILE           .npy (float32, shape (n, dim): numpy.load) or .csv (a header of the
                       training file's column names, or x1,x2,...)
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
      const header = (await readModelColumns(modelFile, dim)) ?? Array.from({ length: dim }, (_, i) => `x${i + 1}`);
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
prints a summary (mean, median, min, max); with --out, also writes one value per row. Rows
with an empty, NA or non-numeric cell are skipped (their value in --out is NaN, so the rows
still line up with DATA's) and counted. A CSV file with more columns than the model, with a
header holding the model's column names (saved by train), is read in those columns.

Options:
  --out FILE           .npy (float32, shape (n,)) or .csv (header log_prob)
  --columns A,B,...    the columns of DATA, by header name or 0-based index
  --strict             a row with a bad cell is an error naming it, not skipped
  --threads N          native threads (default: the number of cores)
  -h, --help           this help
`,
    options: {
      out: { type: 'string', short: 'o' },
      columns: { type: 'string' },
      strict: { type: 'boolean' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [modelFile, dataFile] = positionals(p, ['model', 'data']);
      const outFile = str(p, 'out');
      if (outFile !== undefined) outputKind(outFile, '--out');
      const data = dataOptions(p);
      threadsOption(p);
      const flow = await readModel(modelFile);
      const table = await readData(dataFile, data, io, await readModelColumns(modelFile, flow.dim), flow.dim);
      const lp = await flow.logProb(table.data);
      if (outFile !== undefined) {
        // One value per data row of the file: NaN where a row was skipped.
        let values = lp;
        if (table.skipped !== undefined) {
          values = new Float32Array(table.rows + table.skipped.count).fill(NaN);
          const skipped = new Set(table.skipped.rows);
          for (let r = 0, k = 0; r < values.length; r++) if (!skipped.has(r)) values[r] = lp[k++];
        }
        await writeData(outFile, values, 1, ['log_prob'], true);
      }
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

  eval: {
    summary: 'log-likelihood per point of data under a model, with a Gaussian baseline',
    help: `Usage: iaflow eval MODEL DATA [options]

Scores the rows of DATA (CSV or .npy, as for train; usually held-out rows) under the model and
prints their number, the mean log-likelihood per point (nats, in the data's own units) with
its standard error, and the median. Rows whose log p is -Infinity or NaN are counted and left
out of those figures. Rows with an empty, NA or non-numeric cell are skipped and counted.

With --baseline TRAIN, a full-covariance Gaussian fitted to the rows of TRAIN (the model's
training data) is scored on the same rows: a flow that does not beat it has not learnt much.
--baseline alone fits the Gaussian to DATA itself, which flatters it (it has seen the rows).

Options:
  --baseline [TRAIN]   the Gaussian baseline, fitted to TRAIN (or, alone, to DATA)
  --json               print one JSON object on stdout: { rows, mean, median, stderr, ... }
  --columns A,B,...    the columns of DATA (and TRAIN), by header name or 0-based index
  --strict             a row with a bad cell is an error naming it, not skipped
  --threads N          native threads (default: the number of cores)
  -h, --help           this help
`,
    options: {
      baseline: { type: 'string', optionalValue: true },
      json: { type: 'boolean' },
      columns: { type: 'string' },
      strict: { type: 'boolean' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [modelFile, dataFile] = positionals(p, ['model', 'data']);
      const data = dataOptions(p);
      const baselineFile = str(p, 'baseline');
      threadsOption(p);
      const flow = await readModel(modelFile);
      const names = await readModelColumns(modelFile, flow.dim);
      const table = await readData(dataFile, data, io, names, flow.dim);
      const train = baselineFile ? await readData(baselineFile, data, io, names, flow.dim) : null;
      const result = await evaluate(flow, table.data);
      let baseline: GaussianBaseline | null = null;
      if (baselineFile !== undefined) baseline = gaussianBaseline((train ?? table).data, train === null ? null : table.data, { dim: flow.dim });
      const fittedOn = train === null ? 'the evaluated rows themselves (flattering it)' : baselineFile!;
      if (p.values.json) {
        const finite = (v: number) => (Number.isFinite(v) ? v : null);
        const summary = (r: LogLikelihoodSummary) => ({ rows: r.rows, mean: finite(r.mean), median: finite(r.median), stderr: finite(r.stderr), nonFinite: r.nonFinite });
        const object: Record<string, unknown> = {
          ...summary(result),
          units: 'nats per point',
          model: modelFile,
          data: dataFile,
          skippedRows: table.skipped?.count ?? 0,
        };
        if (baseline !== null) {
          object.baseline = { kind: 'gaussian', fittedOn: train === null ? 'data' : baselineFile, trainRows: baseline.trainRows, ...summary(baseline), ridge: baseline.ridge, note: baseline.note };
        }
        io.stdout.write(JSON.stringify(object) + '\n');
        return;
      }
      const lines = [`${dataFile} under ${modelFile}: log-likelihood per point, nats (higher is better)`, `  model      ${formatSummary(result)}`];
      if (baseline !== null) {
        lines.push(`  Gaussian   ${formatSummary(baseline)}`);
        lines.push(`    (full covariance, fitted to ${fmtInt(baseline.trainRows)} rows of ${fittedOn})`);
        if (baseline.note !== null) lines.push(`    note: ${baseline.note}`);
        if (Number.isFinite(result.mean) && Number.isFinite(baseline.mean)) {
          const gap = result.mean - baseline.mean;
          lines.push(`  the model is ${Math.abs(gap) >= 1e6 ? Math.abs(gap).toPrecision(4) : Math.abs(gap).toFixed(4)} nats/point ${gap >= 0 ? 'better' : 'WORSE'} than the Gaussian`);
        }
      }
      io.stdout.write(lines.join('\n') + '\n');
    },
  },

  plot: {
    summary: "a picture (PNG) of a model's samples and density, next to data",
    help: `Usage: iaflow plot MODEL [options]

Draws the model, with the rows of a data file when --data is given, as a PNG:
  - a 2-d model: panels of the data, the model's samples and its density (log p, with a
    colour bar over the top 8 nats);
  - more dimensions: a scatter matrix of the first 6 columns (or --columns): each pair of
    columns with the data in grey and the samples in orange over it, and each column's
    histogram on the diagonal.
Axes are in the data's units and named by the model's column names (saved by train).

Options:
  --out FILE           the picture (default plot.png)
  --data FILE          data rows to draw (CSV or .npy, as for train)
  --columns A,B,...    the model's columns to show, by name or 0-based index (at most ${MAX_PLOT_COLUMNS})
  -n, --count N        samples drawn from the model (default 20000)
  --seed N             seed of the samples (default 0)
  --size N             side of each panel in pixels (default: 300 for 2-d, 150 to 220 for a matrix)
  --strict             a data row with a bad cell is an error naming it, not skipped
  --threads N          native threads (default: the number of cores)
  -h, --help           this help
`,
    options: {
      out: { type: 'string', short: 'o' },
      data: { type: 'string' },
      columns: { type: 'string' },
      count: { type: 'string', short: 'n' },
      seed: { type: 'string' },
      size: { type: 'string' },
      strict: { type: 'boolean' },
      threads: { type: 'string' },
    },
    async run(p, io) {
      const [modelFile] = positionals(p, ['model']);
      const outFile = str(p, 'out') ?? 'plot.png';
      if (!outFile.toLowerCase().endsWith('.png')) throw new UsageError(`--out ${outFile}: the file name must end in .png`);
      const dataFile = str(p, 'data');
      const count = intOption(p, 'count', 20000, 1, 1e7);
      const seed = seedOption(p, 0) ?? 0;
      const size = str(p, 'size') === undefined ? undefined : intOption(p, 'size', 300, 40, 2000);
      const { columns: columnSpec, strict } = dataOptions(p);
      threadsOption(p);
      const flow = await readModel(modelFile);
      const names = (await readModelColumns(modelFile, flow.dim)) ?? Array.from({ length: flow.dim }, (_, i) => `x${i + 1}`);
      // --columns names the model's columns; the data file is read in the model's columns.
      let columns: number[] | undefined;
      if (columnSpec !== undefined) {
        columns = columnSpec.map((c) => {
          const index = /^\d+$/.test(c) ? Number(c) : names.indexOf(c);
          if (index < 0 || index >= flow.dim) {
            throw new UsageError(`--columns: ${JSON.stringify(c)} is not a column of the model (${names.join(', ')}; or 0 to ${flow.dim - 1})`);
          }
          return index;
        });
        if (columns.length > MAX_PLOT_COLUMNS) throw new UsageError(`--columns: at most ${MAX_PLOT_COLUMNS} columns fit in a picture`);
        if (new Set(columns).size !== columns.length) throw new UsageError('--columns: a column is named twice');
      }
      const table = dataFile !== undefined ? await readData(dataFile, { strict }, io, names, flow.dim) : null;
      const png = await renderPlot({ flow, data: table?.data, columns, names, sampleCount: count, seed, panelSize: size, title: path.basename(modelFile) });
      try {
        await writeFileAtomic(outFile, png);
      } catch (error) {
        throw new CliError(`cannot write ${outFile} (${errorMessage(error)})`);
      }
      io.stdout.write(`Wrote ${outFile} (${fmtInt(count)} samples${table !== null ? `, ${fmtInt(table.rows)} data rows from ${dataFile}` : ''})\n`);
    },
  },

  serve: {
    summary: 'serve a model over HTTP: /sample, /log-prob, /model, /health, /metrics',
    help: `Usage: iaflow serve MODEL [options]

Serves a model file over HTTP until SIGTERM or SIGINT, then finishes the requests in flight and
exits. POST /sample { n, seed, firstRow?, format? } answers the bytes flow.sample gives; POST
/log-prob { rows } (or float32 / .npy bytes) answers { logProb }; GET /model, /health, /metrics.
A conditional model takes a context in both: { ..., context } (one row, or one per row), or
?context=c1,c2,... beside a binary /log-prob body.
Formats: json, csv, ndjson, f32, npy (a format field or the Accept header). Runs on fastify,
which npm installs with iaflow. See the README's "Serving" section.

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
      // Loaded here, not at the top: only the server loads fastify (a dependency, ~15 MB); the other commands never do.
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
      const made = config.layers.filter(isMade);
      const affines = config.layers.filter((l) => l.type === 'affine').length;
      const permutations = config.layers.length - made.length - affines;
      const kinds = new Set(made.map((l) => l.type));
      const count = (type: string) => made.filter((l) => l.type === type).length;
      const kindText = [...kinds].map((k) => `${count(k)} ${k.toUpperCase()}`).join(' + ');
      const lines = [
        `${modelFile}`,
        `  dim          ${config.dim}`,
        `  layers       ${config.layers.length} (${kindText || 'no'} MADE layer${made.length === 1 ? '' : 's'}, ${permutations} permutation${permutations === 1 ? '' : 's'}${affines > 0 ? `, ${affines} affine` : ''})`,
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
                : l.type === 'affine'
                  ? [`  ${k}`, 'affine', '', '', '', l.trainable ? 'loc + scale * x, trainable' : 'loc + scale * x, fixed']
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

Run 'iaflow <command> --help' for a command's options. Data files are CSV (separated by
commas, semicolons or tabs; an optional header row; rows with empty or NA cells skipped and
counted) or .npy; samples are written as CSV or .npy (float32, little-endian).
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
    const guess = nearestWord(name, Object.keys(COMMANDS));
    io.stderr.write(
      `iaflow: unknown command ${JSON.stringify(name)}` +
        (guess !== undefined ? `; did you mean ${guess}?` : `; expected one of ${Object.keys(COMMANDS).join(', ')}`) +
        ' (iaflow --help)\n',
    );
    return 2;
  }
  const command = COMMANDS[name];
  try {
    const parsed = parseOptions(rest, command.options);
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
