/**
 * Samples in chunks: `flow.sampleStream(n, { seed, firstRow, chunkRows, signal })`.
 *
 * The library's random stream is addressed by (seed, row), so chunk k is exactly
 * `flow.sample(rows_k, { seed, firstRow: firstRow + k * chunkRows })` and the chunks, concatenated,
 * are the bytes of one `flow.sample(n, { seed, firstRow })` call. Memory stays at two chunks
 * whatever n is: the one handed out and the next, computed while the consumer uses the first
 * (so a consumer that writes to a socket overlaps with the native work instead of waiting for it).
 */
import { Readable } from 'node:stream';
import type { Flow } from './flow';
import { checkInteger, checkOptions, checkRowCount, checkSeed, checkSignal, randomSeed } from './validation';

export interface SampleStreamOptions {
  /** Seed of the Philox stream. Default: random (read it back from `stream.seed`). */
  seed?: number;
  /** The first row of the seed's stream (default 0); needs a seed. */
  firstRow?: number;
  /** Rows per chunk (default 65536, or fewer so that a chunk holds at most 2^22 values); the last chunk may be shorter. */
  chunkRows?: number;
  /** Aborts the stream: the native work stops within one tile and iteration throws an AbortError. */
  signal?: AbortSignal;
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

  /** @internal Use flow.sampleStream(). */
  constructor(flow: Flow, n: number, options?: SampleStreamOptions) {
    const opts = checkOptions('sampleStream options', options, ['seed', 'firstRow', 'chunkRows', 'signal']);
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

  /** The chunks, one computed ahead; aborting `own` (or the caller's signal) cancels the work in flight. */
  private async *iterate(own: AbortController): AsyncGenerator<Float32Array, void, undefined> {
    const signal = this.signal ? AbortSignal.any([this.signal, own.signal]) : own.signal;
    const count = this.chunks;
    const start = (k: number): Promise<Float32Array> => {
      const rows = Math.min(this.chunkRows, this.rows - k * this.chunkRows);
      const job = this.flow.sample(rows, { seed: this.seed, firstRow: this.firstRow + k * this.chunkRows, signal });
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

/** The bytes of float32 values in little-endian order: a view on little-endian hosts, a swapped copy otherwise. */
export function littleEndianBytes(values: Float32Array): Buffer {
  const view = Buffer.from(values.buffer, values.byteOffset, values.byteLength);
  return HOST_IS_LITTLE_ENDIAN ? view : Buffer.from(view).swap32();
}
