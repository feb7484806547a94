/**
 * Samples in chunks: `flow.sampleStream(n, { seed, firstRow, chunkRows, signal, context })`.
 *
 * The library's random stream is addressed by (seed, row), so chunk k is exactly
 * `flow.sample(rows_k, { seed, firstRow: firstRow + k * chunkRows })` and the chunks, concatenated,
 * are the bytes of one `flow.sample(n, { seed, firstRow })` call. Memory stays at two chunks
 * whatever n is: the one handed out and the next, computed while the consumer uses the first
 * (so a consumer that writes to a socket overlaps with the native work instead of waiting for it).
 * A conditional flow's context is one row (every chunk gets it) or n rows (chunk k gets its own
 * rows), so the concatenation is still `flow.sample(n, { seed, firstRow, context })`.
 */
import { Readable } from 'node:stream';
import type { Flow } from './flow';
import { checkContext, checkInteger, checkOptions, checkRowCount, checkSeed, checkSignal, randomSeed } from './validation';

export interface SampleStreamOptions {
  /** Seed of the Philox stream. Default: random (read it back from `stream.seed`). */
  seed?: number;
  /** The first row of the seed's stream (default 0); needs a seed. */
  firstRow?: number;
  /** Rows per chunk (default 65536, or fewer so that a chunk holds at most 2^22 values); the last chunk may be shorter. */
  chunkRows?: number;
  /** Aborts the stream: the native work stops within one tile and iteration throws an AbortError. */
  signal?: AbortSignal;
  /**
   * A conditional flow's context (required by one, refused by any other): one row of C values
   * (Float32Array, Float64Array, number[] or [[...]]), given to every sample, or n rows (n*C
   * row-major, or number[][]), row i's sample drawn given row i. Read (copied) when the stream is made.
   */
  context?: Float32Array | Float64Array | number[] | number[][];
}

/** The largest row index a stream may reach (rows are addressed by doubles). */
const MAX_ROW = 2 ** 53 - 1;
const DEFAULT_CHUNK_ROWS = 65536;
const DEFAULT_CHUNK_VALUES = 1 << 22;
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * n samples of a flow, chunk by chunk: an async iterable of Float32Array chunks (row-major,
 * chunkRows * dim values each, the last one shorter) and, through toReadable(), a byte stream.
 * Each iteration (and each Readable) draws the same rows again: the stream is a description, not a cursor.
 */
export class SampleStream implements AsyncIterable<Float32Array> {
  /** The seed (the given one, or the random one drawn when none was given). */
  readonly seed: number;
  readonly firstRow: number;
  /** The number of rows in all. */
  readonly rows: number;
  readonly chunkRows: number;
  readonly dim: number;
  private readonly flow: Flow;
  private readonly signal: AbortSignal | undefined;
  /** The context, row-major, and how many rows it has (1: broadcast; rows: one per sample); none for an unconditional flow. */
  private readonly context: { data: Float32Array; rows: number } | undefined;

  /** @internal Use flow.sampleStream(). */
  constructor(flow: Flow, n: number, options?: SampleStreamOptions) {
    const opts = checkOptions('sampleStream options', options, ['seed', 'firstRow', 'chunkRows', 'signal', 'context']);
    if (opts.firstRow !== undefined && opts.seed === undefined) {
      throw new TypeError('options.firstRow needs options.seed: rows of a random stream cannot be continued');
    }
    this.flow = flow;
    this.dim = flow.dim;
    this.seed = opts.seed === undefined ? randomSeed() : checkSeed('options.seed', opts.seed);
    this.firstRow = opts.firstRow === undefined ? 0 : checkInteger('options.firstRow', opts.firstRow, 0, MAX_ROW - 1);
    this.rows = checkInteger('n', n, 1, MAX_ROW - this.firstRow);
    const defaultChunk = Math.max(1, Math.min(DEFAULT_CHUNK_ROWS, Math.floor(DEFAULT_CHUNK_VALUES / this.dim)));
    this.chunkRows = opts.chunkRows === undefined ? defaultChunk : checkRowCount('options.chunkRows', opts.chunkRows, this.dim);
    this.signal = checkSignal('options.signal', opts.signal);
    this.context = streamContext(flow.contextDim, opts.context, this.rows);
  }

  /** The number of chunks the stream yields. */
  get chunks(): number {
    return Math.ceil(this.rows / this.chunkRows);
  }

  [Symbol.asyncIterator](): AsyncIterator<Float32Array> {
    return this.iterate(new AbortController());
  }

  /**
   * The samples as a byte stream: the float32 values, little-endian, row-major (the bytes of
   * `Buffer.from(x.buffer)` on a little-endian machine), with backpressure: the next chunk is
   * drawn only when the reader wants more. Destroying the stream cancels the native work.
   */
  toReadable(options: { highWaterMark?: number } = {}): Readable {
    const controller = new AbortController();
    const iterator = this.iterate(controller);
    return new Readable({
      highWaterMark: options.highWaterMark,
      read() {
        iterator.next().then(
          (step) => this.push(step.done ? null : littleEndianBytes(step.value)),
          (error) => this.destroy(error),
        );
      },
      destroy(error, callback) {
        controller.abort(error ?? new Error('the stream was destroyed'));
        iterator.return!().then(
          () => callback(error),
          () => callback(error),
        );
      },
    });
  }

  /** Chunk k's context: the one row, or its own rows (a view: sample reads it before it returns). */
  private chunkContext(k: number, rows: number): { context?: Float32Array } {
    if (!this.context) return {};
    if (this.context.rows === 1) return { context: this.context.data };
    const C = this.flow.contextDim;
    const first = k * this.chunkRows;
    return { context: this.context.data.subarray(first * C, (first + rows) * C) };
  }

  /** The chunks, one computed ahead; aborting `own` (or the caller's signal) cancels the work in flight. */
  private async *iterate(own: AbortController): AsyncGenerator<Float32Array, void, undefined> {
    const signal = this.signal ? AbortSignal.any([this.signal, own.signal]) : own.signal;
    const count = this.chunks;
    const start = (k: number): Promise<Float32Array> => {
      const rows = Math.min(this.chunkRows, this.rows - k * this.chunkRows);
      const job = this.flow.sample(rows, { seed: this.seed, firstRow: this.firstRow + k * this.chunkRows, signal, ...this.chunkContext(k, rows) });
      job.catch(() => {}); // a chunk computed ahead and then abandoned must not be an unhandled rejection
      return job;
    };
    let next: Promise<Float32Array> | null = start(0);
    try {
      for (let k = 0; k < count; k++) {
        const current: Float32Array = await next!;
        next = k + 1 < count ? start(k + 1) : null;
        yield current;
      }
    } finally {
      // Stopped early (break, return(), an error, a destroyed Readable): stop the chunk in flight.
      if (next !== null) own.abort(new Error('the sample stream was closed'));
    }
  }
}

/**
 * The stream's context, checked and copied (the stream may be iterated again later): required by
 * a conditional flow, refused by any other, one row or one per row as flow.sample takes it.
 */
function streamContext(contextDim: number, value: unknown, rows: number): { data: Float32Array; rows: number } | undefined {
  if (contextDim === 0) {
    if (value !== undefined) throw new TypeError('options.context: this flow is not conditional (it was created without a context), so it takes no context');
    return undefined;
  }
  if (value === undefined) {
    throw new TypeError(`This flow is conditional: options.context is required, one row of ${contextDim} context values (for every sample) or ${rows} rows of them (one per sample)`);
  }
  const { context, contextRows } = checkContext('options.context', value, rows, contextDim);
  return { data: context === value ? context.slice() : context, rows: contextRows };
}

/** The bytes of float32 values in little-endian order: a view on little-endian hosts, a swapped copy otherwise. */
export function littleEndianBytes(values: Float32Array): Buffer {
  const view = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  return HOST_IS_LITTLE_ENDIAN ? view : Buffer.from(view).swap32();
}
