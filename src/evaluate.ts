/**
 * How well a model fits data, in the numbers a user compares: the log-likelihood per point
 * (nats, in the data's own units) of held-out rows, its median and its standard error, and the
 * same figure for a full-covariance Gaussian fitted to the training rows: the baseline any flow
 * should beat.
 *
 * A row whose log-density is not finite (-Infinity: the model gives it zero density in float32;
 * NaN) cannot enter a mean without making it meaningless, and leaving it out silently would
 * flatter the model: such rows are left out of mean, median and standard error and counted in
 * `nonFinite`, which a caller must look at.
 */
import { Flow, Rows, RunOptions } from './flow';
import { checkInteger, checkOptions, invalidRange, invalidType, isFloat32Array, isFloat64Array } from './validation';

/** Log-likelihoods per point (nats), summarised. */
export interface LogLikelihoodSummary {
  /** Rows scored. */
  rows: number;
  /** Mean log-likelihood of the rows with a finite one, nats per point (NaN when none has). */
  mean: number;
  /** Their median. */
  median: number;
  /** Standard error of the mean: sample standard deviation / sqrt(count) (NaN below 2 finite rows). */
  stderr: number;
  /** Rows whose log-likelihood is -Infinity or NaN, left out of mean, median and stderr. */
  nonFinite: number;
}

/** Summarises per-row log-likelihoods (float64 sums, so a million rows lose nothing). */
export function summarizeLogLikelihoods(values: ArrayLike<number>): LogLikelihoodSummary {
  if (!isFloat32Array(values) && !isFloat64Array(values) && !Array.isArray(values)) {
    throw invalidType('values', 'a Float32Array, Float64Array or array of numbers', values);
  }
  const finite = new Float64Array(values.length);
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (typeof v === 'number' && Number.isFinite(v)) finite[count++] = v;
  }
  const kept = finite.subarray(0, count);
  let sum = 0;
  for (let i = 0; i < count; i++) sum += kept[i];
  const mean = count > 0 ? sum / count : NaN;
  let squares = 0;
  for (let i = 0; i < count; i++) squares += (kept[i] - mean) ** 2;
  const stderr = count > 1 ? Math.sqrt(squares / (count - 1) / count) : NaN;
  kept.sort();
  const mid = count >> 1;
  const median = count === 0 ? NaN : count % 2 ? kept[mid] : (kept[mid - 1] + kept[mid]) / 2;
  return { rows: values.length, mean, median, stderr, nonFinite: values.length - count };
}

/**
 * The log-likelihood per point of `rows` under `flow` (flow.logProb: nats, in the units the flow
 * models), summarised: rows, mean, median, standard error, and the count of non-finite values.
 * `rows`: a Float32Array/Float64Array of n * flow.dim values (row-major) or an array of rows.
 */
export async function evaluate(flow: Flow, rows: Rows, options?: RunOptions): Promise<LogLikelihoodSummary> {
  if (!(flow instanceof Flow)) throw invalidType('flow', 'a Flow', flow);
  return summarizeLogLikelihoods(await flow.logProb(rows, options));
}

/** A full-covariance Gaussian fitted to training rows, and its log-likelihood on evaluation rows. */
export interface GaussianBaseline extends LogLikelihoodSummary {
  dim: number;
  /** Rows it was fitted to. */
  trainRows: number;
  /** Whether the summary is of the test rows given, or (none given) of the training rows themselves. */
  evaluatedOn: 'test' | 'train';
  /** The fitted mean, per column. */
  loc: Float64Array;
  /** The fitted (maximum-likelihood: divided by n) covariance, dim * dim row-major, before any ridge. */
  covariance: Float64Array;
  /**
   * 0 when the covariance is positive definite; otherwise the fraction of each column's variance
   * (of the mean positive variance, for a constant column) added to its diagonal entry so that
   * the Gaussian exists. Its log-likelihood is then dominated by the degenerate columns.
   */
  ridge: number;
  /** Says which columns needed the ridge and why (constant, or a linear function of others); null when none did. */
  note: string | null;
}

export interface GaussianBaselineOptions {
  /** Columns per row; needed for flat Float32Array/Float64Array rows, taken from the rows of an array of rows. */
  dim?: number;
}

/** Rows as float64, row-major, every value finite: typed arrays as they are, arrays of rows checked. */
function rowsAsFloat64(name: string, value: unknown, dim: number | undefined): { data: Float64Array; rows: number; dim: number } {
  if (isFloat32Array(value) || isFloat64Array(value)) {
    if (dim === undefined) throw new TypeError(`${name} is a flat ${value.constructor.name}: give options.dim (the number of columns)`);
    if (value.length === 0 || value.length % dim !== 0) throw invalidRange(`${name}.length`, `a positive multiple of ${dim}`, value.length);
    const data = Float64Array.from(value);
    for (let i = 0; i < data.length; i++) {
      if (!Number.isFinite(data[i])) throw invalidRange(`${name}[${Math.floor(i / dim)}][${i % dim}]`, 'a finite number', data[i]);
    }
    return { data, rows: data.length / dim, dim };
  }
  if (!Array.isArray(value) || value.length === 0) {
    throw invalidType(name, 'a Float32Array/Float64Array (row-major) or a non-empty array of rows of numbers', value);
  }
  const first: unknown = value[0];
  const cols = dim ?? (Array.isArray(first) ? first.length : 0);
  if (cols < 1) throw invalidType(`${name}[0]`, 'an array of at least one number', first);
  const data = new Float64Array(value.length * cols);
  for (let r = 0; r < value.length; r++) {
    const row: unknown = value[r];
    if (!Array.isArray(row) && !isFloat32Array(row) && !isFloat64Array(row)) throw invalidType(`${name}[${r}]`, `an array of ${cols} numbers`, row);
    const cells = row as ArrayLike<unknown>;
    if (cells.length !== cols) throw invalidRange(`${name}[${r}].length`, `${cols}`, cells.length);
    for (let c = 0; c < cols; c++) {
      const v = cells[c];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidType(`${name}[${r}][${c}]`, 'a finite number', v);
      data[r * cols + c] = v;
    }
  }
  return { data, rows: value.length, dim: cols };
}

/** A pivot below this fraction of its column's variance means that column is (numerically) a linear function of the earlier ones. */
const SINGULAR = 1e-12;
/** The first ridge tried, as a fraction of each variance; multiplied by 10 until the Cholesky factor exists. */
const FIRST_RIDGE = 1e-9;

/**
 * Lower Cholesky factor of `a` (dim * dim, symmetric), with `ridge * scale[j]` added to each
 * diagonal entry; null, and the first failing column in `failed`, if a pivot is not positive
 * beyond SINGULAR of its scale.
 */
function cholesky(a: Float64Array, dim: number, ridge: number, scale: Float64Array, failed: number[]): Float64Array | null {
  const l = new Float64Array(dim * dim);
  for (let j = 0; j < dim; j++) {
    let pivot = a[j * dim + j] + ridge * scale[j];
    for (let k = 0; k < j; k++) pivot -= l[j * dim + k] ** 2;
    if (!(pivot > SINGULAR * scale[j])) {
      failed.push(j);
      return null;
    }
    const d = Math.sqrt(pivot);
    l[j * dim + j] = d;
    for (let i = j + 1; i < dim; i++) {
      let s = a[i * dim + j];
      for (let k = 0; k < j; k++) s -= l[i * dim + k] * l[j * dim + k];
      l[i * dim + j] = s / d;
    }
  }
  return l;
}

/**
 * Fits a full-covariance Gaussian to `train` (maximum likelihood, in float64) and summarises its
 * log-likelihood per point (nats) of `test`, or of `train` itself when no test rows are given
 * (which flatters it: a model scored on its own training rows). A constant column, or one that
 * is a linear function of others, has no Gaussian density: then a tiny ridge is added to the
 * covariance's diagonal and the result says so (`ridge`, `note`) instead of failing.
 * Cost: O(rows * dim^2) time, O(dim^2) memory.
 */
export function gaussianBaseline(train: Rows, test?: Rows | null, options: GaussianBaselineOptions = {}): GaussianBaseline {
  const opts = checkOptions('options', options, ['dim']);
  const givenDim = opts.dim === undefined ? undefined : checkInteger('options.dim', opts.dim, 1, 65536);
  const fitted = rowsAsFloat64('train', train, givenDim);
  const dim = fitted.dim;
  const n = fitted.rows;
  const x = fitted.data;

  const loc = new Float64Array(dim);
  for (let r = 0; r < n; r++) for (let c = 0; c < dim; c++) loc[c] += x[r * dim + c];
  for (let c = 0; c < dim; c++) loc[c] /= n;
  // Two passes (centre, then sum products): no cancellation for data far from the origin.
  const cov = new Float64Array(dim * dim);
  const centred = new Float64Array(dim);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < dim; c++) centred[c] = x[r * dim + c] - loc[c];
    for (let i = 0; i < dim; i++) {
      const ci = centred[i];
      for (let j = 0; j <= i; j++) cov[i * dim + j] += ci * centred[j];
    }
  }
  for (let i = 0; i < dim; i++) {
    for (let j = 0; j <= i; j++) {
      cov[i * dim + j] /= n;
      cov[j * dim + i] = cov[i * dim + j];
    }
  }

  if (cov.some((v) => !Number.isFinite(v))) {
    throw new RangeError('gaussianBaseline: the training rows are too large for a float64 covariance (a product of two values overflows)');
  }
  // Each column's own variance sets its scale; a constant column borrows the mean positive one.
  let positive = 0;
  let positiveCount = 0;
  for (let c = 0; c < dim; c++) if (cov[c * dim + c] > 0) (positive += cov[c * dim + c]), positiveCount++;
  const fallback = positiveCount > 0 ? positive / positiveCount : 1;
  const scale = Float64Array.from({ length: dim }, (_, c) => (cov[c * dim + c] > 0 ? cov[c * dim + c] : fallback));
  const failed: number[] = [];
  let ridge = 0;
  let factor: Float64Array | null = cholesky(cov, dim, 0, scale, failed);
  for (let next = FIRST_RIDGE; factor === null; next *= 10) {
    // A ridge as large as the variances themselves always gives a positive definite matrix;
    // the bound only guards against arithmetic this function did not foresee.
    if (next > 1) throw new RangeError('gaussianBaseline: no ridge up to the variances themselves makes the covariance positive definite');
    ridge = next;
    factor = cholesky(cov, dim, ridge, scale, []);
  }
  let note: string | null = null;
  if (ridge > 0) {
    const constant = Array.from({ length: dim }, (_, c) => c).filter((c) => cov[c * dim + c] === 0);
    const what =
      constant.length > 0
        ? `column${constant.length === 1 ? '' : 's'} ${constant.map((c) => c + 1).join(', ')} ${constant.length === 1 ? 'is' : 'are'} constant in the ${n} training row${n === 1 ? '' : 's'}`
        : `column ${failed[0] + 1} is a linear function of the columns before it in the training rows`;
    note =
      `${what}, so the covariance is singular: ${ridge.toExponential(0)} of each variance was added to its diagonal. ` +
      'The Gaussian is then a near-spike along that direction and its log-likelihood is not a fair baseline.';
  }
  let logDet = 0;
  for (let j = 0; j < dim; j++) logDet += 2 * Math.log(factor[j * dim + j]);

  const scored = test === undefined || test === null ? fitted : rowsAsFloat64('test', test, dim);
  const constantTerm = -0.5 * (dim * Math.log(2 * Math.PI) + logDet);
  const logLik = new Float64Array(scored.rows);
  const z = new Float64Array(dim);
  for (let r = 0; r < scored.rows; r++) {
    // Solve L z = x - loc by forward substitution; the quadratic form is |z|^2.
    let quad = 0;
    for (let i = 0; i < dim; i++) {
      let s = scored.data[r * dim + i] - loc[i];
      for (let k = 0; k < i; k++) s -= factor[i * dim + k] * z[k];
      z[i] = s / factor[i * dim + i];
      quad += z[i] * z[i];
    }
    logLik[r] = constantTerm - 0.5 * quad;
  }
  return {
    ...summarizeLogLikelihoods(logLik),
    dim,
    trainRows: n,
    evaluatedOn: scored === fitted ? 'train' : 'test',
    loc,
    covariance: cov,
    ridge,
    note,
  };
}
