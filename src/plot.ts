/**
 * Pictures of a model and the data it was fitted to, as PNG bytes (the command line's
 * `iaflow plot`, and the demo's picture).
 *
 * - Two columns of a 2-d model: side-by-side panels of the data, the model's samples and its
 *   density (log p on a lattice, viridis over the top 8 nats, with a colour bar).
 * - More columns (or a model of dim > 2): a scatter matrix. Off the diagonal, column c against
 *   column r with the data in dark grey and the samples in orange over it; on the diagonal, each
 *   column's histogram (data filled grey, samples an orange line, both as densities).
 * - One column: its histogram, with the model's density curve for a 1-d model.
 *
 * Every panel has axes with tick labels in the data's units (0.5% to 99.5% quantiles of the data,
 * or of the samples without data, plus a margin), and the column names under and beside them.
 */
import { Flow, Rows } from './flow';
import { Raster, Rgb } from './png';
import { checkInteger, checkOptions, invalidRange, invalidType, isFloat32Array, isFloat64Array, toRowMajor } from './validation';

export const INK: Rgb = [40, 40, 40];
export const BLUE: Rgb = [31, 119, 180];
export const ORANGE: Rgb = [230, 85, 13];
const FRAME: Rgb = [160, 160, 160];
const WHITE: Rgb = [255, 255, 255];
const HISTOGRAM_FILL: Rgb = [200, 200, 200];

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

/** The viridis colour of t in [0, 1] (clamped). */
export function viridis(t: number): Rgb {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [Math.round(a[0] + f * (b[0] - a[0])), Math.round(a[1] + f * (b[1] - a[1])), Math.round(a[2] + f * (b[2] - a[2]))];
}

/** A rectangle of pixels. */
export interface Rect {
  left: number;
  top: number;
  width: number;
  height: number;
}

/** The data coordinates a panel shows: x from xMin (left edge) to xMax, y from yMin (bottom edge) to yMax. */
export interface Window {
  xMin: number;
  xMax: number;
  yMin: number;
  yMax: number;
}

/** The pixel column of x in a panel (may fall outside it). */
function pixelX(rect: Rect, win: Window, x: number): number {
  return rect.left + Math.floor(((x - win.xMin) / (win.xMax - win.xMin)) * rect.width);
}

/** The pixel row of y in a panel (may fall outside it). */
function pixelY(rect: Rect, win: Window, y: number): number {
  return rect.top + rect.height - 1 - Math.floor(((y - win.yMin) / (win.yMax - win.yMin)) * rect.height);
}

// ---------------------------------------------------------------------------------------
// Drawing

/**
 * Per pixel of `rect`, the number of points (columns cx, cy of rows of `stride` values) that
 * cover it, each point a `dot` x `dot` square centred on its pixel.
 */
function scatterCounts(rect: Rect, win: Window, points: Float32Array, stride: number, cx: number, cy: number, dot = 1): Float32Array {
  const counts = new Float32Array(rect.width * rect.height);
  const before = (dot - 1) >> 1;
  for (let i = 0; i + stride <= points.length; i += stride) {
    const px = pixelX(rect, win, points[i + cx]) - rect.left;
    const py = pixelY(rect, win, points[i + cy]) - rect.top;
    if (px < 0 || py < 0 || px >= rect.width || py >= rect.height) continue;
    for (let y = Math.max(0, py - before); y < Math.min(rect.height, py - before + dot); y++) {
      for (let x = Math.max(0, px - before); x < Math.min(rect.width, px - before + dot); x++) counts[y * rect.width + x]++;
    }
  }
  return counts;
}

/** Dots of few points are drawn larger, so that a few hundred rows still show. */
function dotSize(rows: number): number {
  return rows <= 1000 ? 3 : rows <= 5000 ? 2 : 1;
}

/**
 * Density-shaded points: each pixel moves from white toward a layer's colour by 1 - exp(-0.7 count),
 * the layers one over the other in order (so where both have points, the last one shows most).
 */
function paintCounts(img: Raster, rect: Rect, layers: { counts: Float32Array; color: Rgb }[]): void {
  for (let py = 0; py < rect.height; py++) {
    for (let px = 0; px < rect.width; px++) {
      let r = 255;
      let g = 255;
      let b = 255;
      let touched = false;
      for (const { counts, color } of layers) {
        const t = 1 - Math.exp(-0.7 * counts[py * rect.width + px]);
        if (t === 0) continue;
        touched = true;
        r += t * (color[0] - r);
        g += t * (color[1] - g);
        b += t * (color[2] - b);
      }
      if (touched) img.setPixel(rect.left + px, rect.top + py, [Math.round(r), Math.round(g), Math.round(b)]);
    }
  }
}

/** Points (rows of 2 values) as a density-shaded scatter in `color`: the demo's panels. */
export function drawScatter(img: Raster, rect: Rect, win: Window, points: Float32Array, color: Rgb): void {
  paintCounts(img, rect, [{ counts: scatterCounts(rect, win, points, 2, 0, 1), color }]);
}

/** The range of the top of the density colour map: log p from its maximum down this many nats. */
export const DENSITY_RANGE_NATS = 8;

/**
 * log p of a 2-d flow on a grid x grid lattice over the window (columns cx, cy of the flow's
 * input), colour-mapped (viridis over the top 8 nats), bilinear to the panel's pixels. Returns
 * the highest log p found (the top of the colour map), -Infinity if none is finite.
 */
export async function drawDensity(img: Raster, rect: Rect, win: Window, flow: Flow, grid: number, cx = 0, cy = 1): Promise<number> {
  const points = new Float32Array(grid * grid * 2);
  for (let gy = 0; gy < grid; gy++) {
    for (let gx = 0; gx < grid; gx++) {
      points[2 * (gy * grid + gx) + cx] = win.xMin + ((gx + 0.5) / grid) * (win.xMax - win.xMin);
      points[2 * (gy * grid + gx) + cy] = win.yMin + ((gy + 0.5) / grid) * (win.yMax - win.yMin);
    }
  }
  const lp = await flow.logProb(points);
  let top = -Infinity;
  for (const v of lp) if (Number.isFinite(v) && v > top) top = v;
  const floor = top - DENSITY_RANGE_NATS;
  const at = (gx: number, gy: number) => {
    const v = lp[Math.min(grid - 1, Math.max(0, gy)) * grid + Math.min(grid - 1, Math.max(0, gx))];
    return Number.isFinite(v) ? Math.max(v, floor) : floor;
  };
  for (let py = 0; py < rect.height; py++) {
    const gyf = ((rect.height - 1 - py + 0.5) / rect.height) * grid - 0.5;
    const gy = Math.floor(gyf);
    const fy = gyf - gy;
    for (let px = 0; px < rect.width; px++) {
      const gxf = ((px + 0.5) / rect.width) * grid - 0.5;
      const gx = Math.floor(gxf);
      const fx = gxf - gx;
      const v = (1 - fy) * ((1 - fx) * at(gx, gy) + fx * at(gx + 1, gy)) + fy * ((1 - fx) * at(gx, gy + 1) + fx * at(gx + 1, gy + 1));
      img.setPixel(rect.left + px, rect.top + py, Number.isFinite(top) ? viridis((v - floor) / DENSITY_RANGE_NATS) : viridis(0));
    }
  }
  return top;
}

/** Bins of a histogram panel. */
const HISTOGRAM_BINS = 40;

/** Densities (count / (n * bin width)) of `column` of the rows in HISTOGRAM_BINS bins over [lo, hi]. */
function histogram(points: Float32Array, stride: number, column: number, lo: number, hi: number): Float64Array {
  const bins = new Float64Array(HISTOGRAM_BINS);
  const n = points.length / stride;
  const width = (hi - lo) / HISTOGRAM_BINS;
  for (let i = column; i < points.length; i += stride) {
    const b = Math.floor((points[i] - lo) / width);
    if (b >= 0 && b < HISTOGRAM_BINS) bins[b]++;
  }
  for (let b = 0; b < HISTOGRAM_BINS; b++) bins[b] /= n * width;
  return bins;
}

/**
 * A histogram panel over [lo, hi]: the data's bins filled grey, the samples' as an orange step
 * line, and a density curve (x, p(x) pairs) in blue, all on one vertical scale.
 */
function drawHistogram(
  img: Raster,
  rect: Rect,
  lo: number,
  hi: number,
  data: { points: Float32Array; stride: number; column: number } | null,
  samples: { points: Float32Array; stride: number; column: number } | null,
  curve: { x: Float64Array; p: Float64Array } | null,
): void {
  const dataBins = data ? histogram(data.points, data.stride, data.column, lo, hi) : null;
  const sampleBins = samples ? histogram(samples.points, samples.stride, samples.column, lo, hi) : null;
  let top = 0;
  for (const bins of [dataBins, sampleBins, curve?.p ?? null]) if (bins) for (const v of bins) if (Number.isFinite(v)) top = Math.max(top, v);
  if (!(top > 0)) return;
  const scale = (rect.height * 0.9) / top;
  const binLeft = (b: number) => rect.left + Math.round((b / HISTOGRAM_BINS) * rect.width);
  const bottom = rect.top + rect.height;
  if (dataBins) {
    for (let b = 0; b < HISTOGRAM_BINS; b++) {
      const h = Math.round(dataBins[b] * scale);
      img.fillRect(binLeft(b), bottom - h, binLeft(b + 1) - binLeft(b), h, HISTOGRAM_FILL);
    }
  }
  if (sampleBins) {
    let previous = -1;
    for (let b = 0; b < HISTOGRAM_BINS; b++) {
      const y = bottom - 1 - Math.round(sampleBins[b] * scale);
      img.fillRect(binLeft(b), y, binLeft(b + 1) - binLeft(b), 2, ORANGE);
      if (previous >= 0) img.fillRect(binLeft(b), Math.min(previous, y), 2, Math.abs(previous - y) + 2, ORANGE);
      previous = y;
    }
  }
  if (curve) {
    for (let i = 0; i < curve.x.length; i++) {
      if (!Number.isFinite(curve.p[i])) continue;
      const px = rect.left + Math.floor(((curve.x[i] - lo) / (hi - lo)) * rect.width);
      img.fillRect(px, bottom - 1 - Math.round(curve.p[i] * scale), 1, 2, BLUE);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Axes

/**
 * Round tick values inside [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten, the smallest
 * that gives at most `maxCount` ticks.
 */
export function niceTicks(lo: number, hi: number, maxCount: number): { values: number[]; step: number } {
  const span = hi - lo;
  if (!(span > 0) || !Number.isFinite(span)) return { values: [lo], step: 1 };
  const raw = span / Math.max(1, maxCount);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw * (1 - 1e-12)) ?? 10 * magnitude;
  const values: number[] = [];
  for (let i = Math.ceil(lo / step - 1e-9); i * step <= hi + step * 1e-9; i++) values.push(Number((i * step).toPrecision(12)));
  return { values, step };
}

/**
 * Tick labels: as few digits as tell ticks `step` apart, all in fixed form (1017.5) or all in
 * exponent form (1.5e6, 2e-5), whichever makes the longest label shorter.
 */
export function formatTicks(values: readonly number[], step: number): string[] {
  const stepExponent = Math.floor(Math.log10(Math.abs(step)) + 1e-9);
  // A step like 2.5 or 0.25 needs one more digit than its power of ten.
  const extra = Math.abs(Number((step / 10 ** stepExponent).toPrecision(6)) - 2.5) < 1e-9 ? 1 : 0;
  const zero = (v: number) => Math.abs(v) < Math.abs(step) * 1e-9;
  const fixed = values.map((v) => (zero(v) ? '0' : v.toFixed(Math.min(20, Math.max(0, -stepExponent + extra)))));
  const scientific = values.map((v) => {
    if (zero(v)) return '0';
    const digits = Math.max(0, Math.floor(Math.log10(Math.abs(v)) + 1e-9) - stepExponent + extra);
    const [mantissa, exponent] = v.toExponential(Math.min(digits, 20)).split('e');
    return `${mantissa.includes('.') ? mantissa.replace(/0+$/, '').replace(/\.$/, '') : mantissa}e${Number(exponent)}`;
  });
  const longest = (labels: string[]) => Math.max(0, ...labels.map((l) => l.length));
  return longest(scientific) < longest(fixed) ? scientific : fixed;
}

/** One tick of an axis: its value, the pixel it is drawn at (column for x, row for y), and its label. */
export interface Tick {
  value: number;
  pixel: number;
  label: string;
}

const TICK_LENGTH = 4;
const LABEL_GAP = 2;
const CHAR_HEIGHT = 7;

/** Ticks for an axis `length` pixels long, as many as leave room between their labels (at most 6). */
function axisTicks(lo: number, hi: number, length: number, toPixel: (v: number) => number, horizontal: boolean): Tick[] {
  for (let count = 6; count >= 2; count--) {
    const { values, step } = niceTicks(lo, hi, count);
    const labels = formatTicks(values, step);
    const ticks = values.map((value, i) => ({ value, pixel: toPixel(value), label: labels[i] }));
    const room = length / Math.max(1, ticks.length);
    const needed = horizontal ? Math.max(...ticks.map((t) => Raster.textWidth(t.label))) + 6 : CHAR_HEIGHT + 6;
    if (needed <= room || count === 2) return ticks;
  }
  return [];
}

/** The x axis under a panel: tick marks and their labels, centred on them. */
function drawXTicks(img: Raster, rect: Rect, ticks: Tick[]): void {
  const y = rect.top + rect.height;
  for (const t of ticks) {
    if (t.pixel < rect.left || t.pixel >= rect.left + rect.width) continue;
    img.fillRect(t.pixel, y, 1, TICK_LENGTH, INK);
    img.text(t.pixel - Math.floor(Raster.textWidth(t.label) / 2), y + TICK_LENGTH + LABEL_GAP, t.label, INK);
  }
}

/** The y axis left of a panel: tick marks and their labels, right-aligned to them. */
function drawYTicks(img: Raster, rect: Rect, ticks: Tick[], side: 'left' | 'right' = 'left'): void {
  for (const t of ticks) {
    if (t.pixel < rect.top || t.pixel >= rect.top + rect.height) continue;
    const y = t.pixel - Math.floor(CHAR_HEIGHT / 2);
    if (side === 'left') {
      img.fillRect(rect.left - TICK_LENGTH, t.pixel, TICK_LENGTH, 1, INK);
      img.text(rect.left - TICK_LENGTH - LABEL_GAP - Raster.textWidth(t.label), y, t.label, INK);
    } else {
      img.fillRect(rect.left + rect.width, t.pixel, TICK_LENGTH, 1, INK);
      img.text(rect.left + rect.width + TICK_LENGTH + LABEL_GAP, y, t.label, INK);
    }
  }
}

/** A one-pixel frame just outside the panel. */
function drawFrame(img: Raster, rect: Rect): void {
  img.fillRect(rect.left - 1, rect.top - 1, rect.width + 2, 1, FRAME);
  img.fillRect(rect.left - 1, rect.top + rect.height, rect.width + 2, 1, FRAME);
  img.fillRect(rect.left - 1, rect.top - 1, 1, rect.height + 2, FRAME);
  img.fillRect(rect.left + rect.width, rect.top - 1, 1, rect.height + 2, FRAME);
}

// ---------------------------------------------------------------------------------------
// The plot

export interface PlotOptions {
  /** The model: its samples, and for a 2-d (or 1-d) model its density. */
  flow?: Flow;
  /** Data rows in the model's units: a Float32Array/Float64Array of n * dim values (row-major) or an array of rows. */
  data?: Rows;
  /** Samples to show instead of drawing `sampleCount` from the flow. */
  samples?: Rows;
  /** Columns of a row; needed only without a flow and with flat data. */
  dim?: number;
  /** 0-based columns to show, in order (at most 10). Default: the first 6. */
  columns?: readonly number[];
  /** A name per column (all dim of them), for the axes. Default x1, x2, ... */
  names?: readonly string[];
  /** Samples drawn from the flow. Default 20000. */
  sampleCount?: number;
  /** Seed of those samples. Default 0, so the same call draws the same picture. */
  seed?: number;
  /** Side of each panel in pixels: default 300 for the 2-d panels, 220 for matrices of up to 3 columns, 150 above. */
  panelSize?: number;
  /** Side of the density lattice (log p evaluations per axis). Default 150. */
  gridSize?: number;
  /** A title over the picture. */
  title?: string;
}

/** Where a panel of the picture is, what it shows and its axes (for tests, and for anyone annotating the image). */
export interface PlotPanel {
  kind: 'data' | 'samples' | 'density' | 'scatter' | 'histogram';
  rect: Rect;
  /** The column on the x axis and the data range across the panel. */
  x: { column: number; min: number; max: number; ticks: Tick[] };
  /** The column on the y axis (absent for a histogram). */
  y?: { column: number; min: number; max: number; ticks: Tick[] };
  /** Density panels: the colour bar's rectangle and its ticks in log p (nats). */
  colorBar?: { rect: Rect; min: number; max: number; ticks: Tick[] };
}

export interface PlotResult {
  png: Buffer;
  width: number;
  height: number;
  panels: PlotPanel[];
}

const PLOT_OPTION_KEYS = ['flow', 'data', 'samples', 'dim', 'columns', 'names', 'sampleCount', 'seed', 'panelSize', 'gridSize', 'title'] as const;
/** The most columns a scatter matrix shows. */
export const MAX_PLOT_COLUMNS = 10;

/** The data range of a column: its 0.5% to 99.5% quantiles, widened by 10% on each side. */
function columnRange(points: Float32Array, stride: number, column: number): [number, number] {
  const n = points.length / stride;
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = points[i * stride + column];
  values.sort();
  let lo = values[Math.floor(0.005 * (n - 1))];
  let hi = values[Math.ceil(0.995 * (n - 1))];
  if (!(hi > lo)) {
    // A constant column: a window of +-1 around it, or +-1% of its size.
    const half = Math.max(1, Math.abs(lo) * 0.01);
    return [lo - half, lo + half];
  }
  const margin = (hi - lo) * 0.1;
  lo -= margin;
  hi += margin;
  return [lo, hi];
}

/**
 * Draws a model and data (see the module comment) and returns the PNG bytes with the picture's
 * layout: where each panel is and what its axes show.
 * @throws TypeError/RangeError for options of the wrong kind, rows of the wrong width, no data
 * and no flow, a column outside the model.
 */
export async function renderPlotWithLayout(options: PlotOptions): Promise<PlotResult> {
  const opts = checkOptions('renderPlot options', options, PLOT_OPTION_KEYS) as PlotOptions;
  const flow = opts.flow;
  if (flow !== undefined && !(flow instanceof Flow)) throw invalidType('options.flow', 'a Flow', flow);
  let dim: number;
  if (flow !== undefined) dim = flow.dim;
  else if (opts.dim !== undefined) dim = checkInteger('options.dim', opts.dim, 1, 65536);
  else {
    const rows = opts.data ?? opts.samples;
    if (!Array.isArray(rows) || !Array.isArray(rows[0])) {
      throw new TypeError('renderPlot: without options.flow, give options.dim, or data as an array of rows (the number of columns is taken from them)');
    }
    dim = rows[0].length;
  }
  if (opts.dim !== undefined && opts.dim !== dim) throw invalidRange('options.dim', `the flow's dim (${dim})`, opts.dim);
  const data = opts.data === undefined ? null : toRowMajor('options.data', opts.data, dim).data;
  const sampleCount = opts.sampleCount === undefined ? 20000 : checkInteger('options.sampleCount', opts.sampleCount, 1, 10_000_000);
  const seed = opts.seed === undefined ? 0 : checkInteger('options.seed', opts.seed, 0, Number.MAX_SAFE_INTEGER);
  let samples: Float32Array | null = null;
  if (opts.samples !== undefined) samples = toRowMajor('options.samples', opts.samples, dim).data;
  else if (flow !== undefined) samples = await flow.sample(sampleCount, { seed });
  if (data === null && samples === null) throw new TypeError('renderPlot: nothing to draw: give options.flow, options.data or options.samples');

  let names: string[];
  if (opts.names === undefined) names = Array.from({ length: dim }, (_, i) => `x${i + 1}`);
  else {
    if (!Array.isArray(opts.names) || opts.names.some((n) => typeof n !== 'string')) throw invalidType('options.names', 'an array of strings', opts.names);
    if (opts.names.length !== dim) throw invalidRange('options.names.length', `${dim} (one name per column)`, opts.names.length);
    names = [...opts.names];
  }
  let columns: number[];
  if (opts.columns === undefined) columns = Array.from({ length: Math.min(dim, 6) }, (_, i) => i);
  else {
    if (!Array.isArray(opts.columns) && !isFloat32Array(opts.columns) && !isFloat64Array(opts.columns)) {
      throw invalidType('options.columns', 'an array of 0-based column indices', opts.columns);
    }
    columns = Array.from(opts.columns as ArrayLike<number>);
    if (columns.length < 1 || columns.length > MAX_PLOT_COLUMNS) throw invalidRange('options.columns.length', `1 to ${MAX_PLOT_COLUMNS} columns`, columns.length);
    columns.forEach((c, i) => checkInteger(`options.columns[${i}]`, c, 0, dim - 1));
    if (new Set(columns).size !== columns.length) throw invalidRange('options.columns', 'columns without repeats', opts.columns);
  }
  const title = opts.title === undefined ? '' : opts.title;
  if (typeof title !== 'string') throw invalidType('options.title', 'a string', title);
  const gridSize = opts.gridSize === undefined ? 150 : checkInteger('options.gridSize', opts.gridSize, 2, 2000);

  // Each shown column's range, from the data when there is any (the picture is about the data).
  const ranges = new Map<number, [number, number]>();
  for (const c of columns) ranges.set(c, columnRange(data ?? samples!, dim, c));

  const panelMode = columns.length === 2 && dim === 2;
  const k = columns.length;
  const defaultSize = panelMode || k === 1 ? 300 : k <= 3 ? 220 : 150;
  const side = opts.panelSize === undefined ? defaultSize : checkInteger('options.panelSize', opts.panelSize, 40, 2000);

  // Margins: room for the y tick labels and the turned y name on the left, the x tick labels and
  // the x name below, the title and legend on top.
  const labelWidth = (c: number) => {
    const [lo, hi] = ranges.get(c)!;
    const { values, step } = niceTicks(lo, hi, 6);
    return Math.max(...formatTicks(values, step).map((label) => Raster.textWidth(label)));
  };
  const yColumns = panelMode ? [columns[1]] : columns;
  const left = 6 + CHAR_HEIGHT + 6 + Math.max(...yColumns.map(labelWidth)) + LABEL_GAP + TICK_LENGTH;
  const titleHeight = title ? 24 : 0;
  const legendHeight = 16;
  const top = titleHeight + legendHeight + 6;
  const bottom = TICK_LENGTH + LABEL_GAP + CHAR_HEIGHT + 6 + CHAR_HEIGHT + 6;
  const gap = 6;

  const panels: PlotPanel[] = [];
  type Job = (img: Raster) => Promise<void> | void;
  const jobs: Job[] = [];
  let width: number;
  let height: number;

  const xAxis = (rect: Rect, c: number) => {
    const [min, max] = ranges.get(c)!;
    const win = { xMin: min, xMax: max, yMin: 0, yMax: 1 };
    return { column: c, min, max, ticks: axisTicks(min, max, rect.width, (v) => pixelX(rect, win, v), true) };
  };
  const yAxis = (rect: Rect, c: number) => {
    const [min, max] = ranges.get(c)!;
    const win = { xMin: 0, xMax: 1, yMin: min, yMax: max };
    return { column: c, min, max, ticks: axisTicks(min, max, rect.height, (v) => pixelY(rect, win, v), false) };
  };

  if (panelMode) {
    const [cx, cy] = columns;
    const kinds: PlotPanel['kind'][] = [];
    if (data) kinds.push('data');
    if (samples) kinds.push('samples');
    if (flow) kinds.push('density');
    // Every panel carries its own y axis labels, so each is as wide as the first.
    const panelStride = left + side + gap;
    const barWidth = 12;
    let x = 0;
    for (const kind of kinds) {
      const rect = { left: x + left, top, width: side, height: side };
      const panel: PlotPanel = { kind, rect, x: xAxis(rect, cx), y: yAxis(rect, cy) };
      panels.push(panel);
      x += panelStride;
      if (kind === 'density') {
        const barRect = { left: rect.left + side + 10, top, width: barWidth, height: side };
        panel.colorBar = { rect: barRect, min: NaN, max: NaN, ticks: [] };
        x += 10 + barWidth + TICK_LENGTH + LABEL_GAP + Raster.textWidth('-00000.0') + 4;
      }
    }
    width = x - gap + 6;
    height = top + side + bottom;
    for (const panel of panels) {
      const win: Window = { xMin: panel.x.min, xMax: panel.x.max, yMin: panel.y!.min, yMax: panel.y!.max };
      jobs.push(async (img) => {
        if (panel.kind === 'data') paintCounts(img, panel.rect, [{ counts: scatterCounts(panel.rect, win, data!, 2, cx, cy, dotSize(data!.length / 2)), color: INK }]);
        else if (panel.kind === 'samples') {
          paintCounts(img, panel.rect, [{ counts: scatterCounts(panel.rect, win, samples!, 2, cx, cy, dotSize(samples!.length / 2)), color: ORANGE }]);
        }
        else {
          const topLogP = await drawDensity(img, panel.rect, win, flow!, gridSize, cx, cy);
          const bar = panel.colorBar!;
          bar.max = topLogP;
          bar.min = topLogP - DENSITY_RANGE_NATS;
          for (let py = 0; py < bar.rect.height; py++) {
            img.fillRect(bar.rect.left, bar.rect.top + py, bar.rect.width, 1, viridis(1 - (py + 0.5) / bar.rect.height));
          }
          if (Number.isFinite(topLogP)) {
            const barWin = { xMin: 0, xMax: 1, yMin: bar.min, yMax: bar.max };
            bar.ticks = axisTicks(bar.min, bar.max, bar.rect.height, (v) => pixelY(bar.rect, barWin, v), false);
            drawYTicks(img, bar.rect, bar.ticks, 'right');
          }
          img.text(bar.rect.left - 4, bar.rect.top - CHAR_HEIGHT - 4, 'log p', INK);
        }
        const label = panel.kind === 'data' ? 'data' : panel.kind === 'samples' ? 'samples' : 'density';
        img.text(panel.rect.left + Math.floor((side - Raster.textWidth(label)) / 2), titleHeight + 4, label, INK);
      });
    }
  } else {
    width = left + k * side + (k - 1) * gap + 12;
    height = top + k * side + (k - 1) * gap + bottom;
    for (let r = 0; r < k; r++) {
      for (let c = 0; c < k; c++) {
        const rect = { left: left + c * (side + gap), top: top + r * (side + gap), width: side, height: side };
        const panel: PlotPanel = r === c ? { kind: 'histogram', rect, x: xAxis(rect, columns[c]) } : { kind: 'scatter', rect, x: xAxis(rect, columns[c]), y: yAxis(rect, columns[r]) };
        panels.push(panel);
        jobs.push(async (img) => {
          if (panel.kind === 'histogram') {
            let curve: { x: Float64Array; p: Float64Array } | null = null;
            if (flow && dim === 1) {
              const xs = Float64Array.from({ length: side }, (_, i) => panel.x.min + ((i + 0.5) / side) * (panel.x.max - panel.x.min));
              const lp = await flow.logProb(Float32Array.from(xs));
              curve = { x: xs, p: Float64Array.from(lp, (v) => Math.exp(v)) };
            }
            const column = columns[c];
            drawHistogram(
              img,
              rect,
              panel.x.min,
              panel.x.max,
              data ? { points: data, stride: dim, column } : null,
              samples ? { points: samples, stride: dim, column } : null,
              curve,
            );
          } else {
            const win: Window = { xMin: panel.x.min, xMax: panel.x.max, yMin: panel.y!.min, yMax: panel.y!.max };
            const layers: { counts: Float32Array; color: Rgb }[] = [];
            if (samples) layers.push({ counts: scatterCounts(rect, win, samples, dim, columns[c], columns[r], dotSize(samples.length / dim)), color: ORANGE });
            if (data) layers.push({ counts: scatterCounts(rect, win, data, dim, columns[c], columns[r], dotSize(data.length / dim)), color: INK });
            paintCounts(img, rect, layers);
          }
        });
      }
    }
  }

  const img = new Raster(width, height, WHITE);
  for (const job of jobs) await job(img);
  // Frames, ticks and names after the contents, so nothing paints over them. The 2-d panels each
  // have both axes; a matrix labels x under its bottom row and y left of its first column (a
  // diagonal histogram there still labels its row with that column's scale).
  panels.forEach((panel, i) => {
    drawFrame(img, panel.rect);
    if (panel.colorBar) drawFrame(img, panel.colorBar.rect);
    const row = panelMode ? 0 : Math.floor(i / k);
    const col = panelMode ? 0 : i % k;
    if (panelMode || row === k - 1) {
      drawXTicks(img, panel.rect, panel.x.ticks);
      const name = names[panel.x.column];
      const nameTop = panel.rect.top + panel.rect.height + TICK_LENGTH + LABEL_GAP + CHAR_HEIGHT + 6;
      img.text(panel.rect.left + Math.floor((panel.rect.width - Raster.textWidth(name)) / 2), nameTop, name, INK);
    }
    if ((panelMode || col === 0) && k > 1) {
      const yColumn = panelMode ? columns[1] : columns[row];
      drawYTicks(img, panel.rect, panel.y?.ticks ?? yAxis(panel.rect, yColumn).ticks);
      const name = names[yColumn];
      img.textUp(panel.rect.left - left + 6, panel.rect.top + Math.floor((panel.rect.height + Raster.textWidth(name)) / 2), name, INK);
    }
  });
  if (title) img.text(6, 4, title, INK, 2);
  if (!panelMode) {
    // The legend: what each colour is.
    let x = left;
    for (const [label, color, present] of [['data', INK, data !== null], ['samples', ORANGE, samples !== null]] as const) {
      if (!present) continue;
      img.fillRect(x, titleHeight + 4, 10, CHAR_HEIGHT, color);
      img.text(x + 14, titleHeight + 4, label, INK);
      x += 14 + Raster.textWidth(label) + 16;
    }
  }
  return { png: img.encode(), width, height, panels };
}

/** The picture of renderPlotWithLayout, as PNG bytes. */
export async function renderPlot(options: PlotOptions): Promise<Buffer> {
  return (await renderPlotWithLayout(options)).png;
}
