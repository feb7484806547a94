// Timing on a shared machine.
//
// The development VM's two vCPUs are shared with whatever else runs there: the CPU share the bench
// gets switches between about one core and about two every few seconds (the 2-thread matmul
// ceiling reads ~95 GFLOP/s in one phase and ~180 in the next). Numbers timed a minute apart are
// therefore not comparable. So every comparison is timed *interleaved*: the implementations of
// one cell, and the matmul ceiling itself, take turns in short slices, round after round; a ratio
// is the median over rounds of the ratio within a round (both sides saw the same phase).

export type Call = () => unknown;

const now = () => Number(process.hrtime.bigint()) / 1e9;

async function timeOnce(call: Call): Promise<number> {
  const start = now();
  await call();
  return now() - start;
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : 0.5 * (sorted[mid - 1] + sorted[mid]);
}

export function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

export interface BatchOptions {
  /** Longest a single call may take before the batch is reduced. */
  maxCallSeconds: number;
  /** Never reduce (iaflow's own cells always run the configuration's batch). */
  fixed?: boolean;
  /** Reduced batches are multiples of this (one tile: 32 rows). */
  granule?: number;
  /** A reduced batch keeps at least this many rows (e.g. one tile per thread) while a call fits 3 x maxCallSeconds. */
  minRows?: number;
}

export interface Prepared {
  rows: number;
  call: Call;
  /** True when `rows` is below the configuration's batch (the call would have been too slow). */
  reduced: boolean;
}

/**
 * Picks the batch for `make(rows)()`: the configuration's `nominalRows`, or the largest batch whose
 * call fits `maxCallSeconds` (estimated from probe calls growing from one row; the best of three
 * at the last probe size, so a stray slow call does not shrink the batch). Warms the call up.
 * `make` prepares a batch's inputs (untimed) and returns the call.
 */
export async function prepare(make: (rows: number) => Call | Promise<Call>, nominalRows: number, options: BatchOptions): Promise<Prepared> {
  const granule = options.granule ?? 32;
  if (options.fixed) {
    const call = await make(nominalRows);
    await call();
    await call();
    return { rows: nominalRows, call, reduced: false };
  }
  let rows = Math.min(nominalRows, 1);
  let call = await make(rows);
  await call(); // first use: lazy initialisation, JIT
  let seconds = await timeOnce(call);
  const probeTarget = Math.min(0.05, options.maxCallSeconds / 4);
  while (rows < nominalRows && seconds < probeTarget) {
    const grow = Math.min(64, Math.max(2, Math.floor(probeTarget / Math.max(seconds, 1e-6))));
    rows = Math.min(nominalRows, rows * grow);
    call = await make(rows);
    seconds = await timeOnce(call);
  }
  for (let k = 0; k < 2 && seconds < options.maxCallSeconds; k++) seconds = Math.min(seconds, await timeOnce(call));
  const perRow = seconds / rows;
  let chosen = nominalRows;
  if (nominalRows * perRow > options.maxCallSeconds) {
    const fit = Math.floor(options.maxCallSeconds / perRow);
    chosen = Math.max(1, fit >= granule ? fit - (fit % granule) : fit);
    const floorRows = Math.min(nominalRows, options.minRows ?? 1);
    if (chosen < floorRows && floorRows * perRow <= 3 * options.maxCallSeconds) chosen = floorRows;
  }
  if (chosen !== rows) {
    call = await make(chosen);
    if (chosen * perRow < 0.5) await call(); // warm-up at this size (long calls were warmed by the probe)
  }
  return { rows: chosen, call, reduced: chosen < nominalRows };
}

/** One participant of an interleaved measurement. */
export type Slot =
  /** A timed call over `rows` rows: its rate is rows / (median call time in the slice). */
  | { name: string; rows: number; call: Call; before?: () => unknown }
  /** Something that measures its own rate (a ceiling's GFLOP/s, a training step's rows/s). */
  | { name: string; rate: () => number | Promise<number>; before?: () => unknown };

export interface Interleaved {
  names: string[];
  /** rates[slot][round] */
  rates: number[][];
  calls: number[];
  rounds: number;
}

/**
 * Rounds of short slices: in each round every slot runs for `sliceSeconds` (at least one call),
 * in turn. `before` runs untimed before a slot's slice (e.g. setThreads).
 */
export async function interleave(slots: Slot[], options: { rounds: number; sliceSeconds: number }): Promise<Interleaved> {
  const rates = slots.map(() => [] as number[]);
  const calls = slots.map(() => 0);
  for (let round = 0; round < options.rounds; round++) {
    for (let s = 0; s < slots.length; s++) {
      const slot = slots[s];
      await slot.before?.();
      if ('rate' in slot) {
        rates[s].push(await slot.rate());
        calls[s]++;
        continue;
      }
      const times: number[] = [];
      const start = now();
      do times.push(await timeOnce(slot.call));
      while (now() - start < options.sliceSeconds);
      calls[s] += times.length;
      rates[s].push(slot.rows / median(times));
    }
  }
  return { names: slots.map((s) => s.name), rates, calls, rounds: options.rounds };
}

export function slotIndex(result: Interleaved, name: string): number {
  const i = result.names.indexOf(name);
  if (i < 0) throw new Error(`bench: no slot ${name}`);
  return i;
}

/** Median over rounds of slot `name`'s rate. */
export function rateOf(result: Interleaved, name: string): number {
  return median(result.rates[slotIndex(result, name)]);
}

/** Median over rounds of rate(a) / (the largest of the `others`' rates in that round): a against the best of several. */
export function ratioToBestOf(result: Interleaved, a: string, others: string[], scaleA = 1): number {
  const ra = result.rates[slotIndex(result, a)];
  const ro = others.map((name) => result.rates[slotIndex(result, name)]);
  return median(ra.map((v, r) => (v * scaleA) / Math.max(...ro.map((rates) => rates[r]))));
}

/** Median over rounds of rate(a) / rate(b) within the round. */
export function ratioOf(result: Interleaved, a: string, b: string, scaleA = 1): number {
  const ra = result.rates[slotIndex(result, a)];
  const rb = result.rates[slotIndex(result, b)];
  return median(ra.map((v, r) => (v * scaleA) / rb[r]));
}

export interface Latency {
  medianMicros: number;
  p99Micros: number;
  calls: number;
}

/** Per-call latency over many calls (after `warmup` untimed calls). */
export async function latency(call: Call, options: { seconds: number; maxCalls: number; warmup: number }): Promise<Latency> {
  for (let i = 0; i < options.warmup; i++) await call();
  const times: number[] = [];
  const start = now();
  while (times.length < options.maxCalls && (now() - start < options.seconds || times.length < 100)) {
    const t0 = process.hrtime.bigint();
    await call();
    times.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  times.sort((a, b) => a - b);
  return { medianMicros: quantile(times, 0.5), p99Micros: quantile(times, 0.99), calls: times.length };
}

/** Synchronous latency loop: no await between calls (an await costs a microtask turn). */
export function latencySync(call: () => void, options: { seconds: number; maxCalls: number; warmup: number }): Latency {
  for (let i = 0; i < options.warmup; i++) call();
  const times: number[] = [];
  const start = now();
  while (times.length < options.maxCalls && (now() - start < options.seconds || times.length < 100)) {
    const t0 = process.hrtime.bigint();
    call();
    times.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  times.sort((a, b) => a - b);
  return { medianMicros: quantile(times, 0.5), p99Micros: quantile(times, 0.99), calls: times.length };
}
