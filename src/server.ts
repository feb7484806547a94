/**
 * iaflow over HTTP (`import { iaflowPlugin } from 'iaflow/server'`, `npx iaflow serve MODEL`).
 *
 *   POST /sample     { n, seed?, firstRow?, format?, context? }  the bytes of flow.sample(n, { seed, firstRow, context })
 *   POST /log-prob   { rows: number[][], context? } (JSON), or float32 bytes (application/octet-stream), .npy
 *                    (application/x-npy) or CSV, a conditional model's one context row then in ?context=c1,c2,...
 *   GET  /model      config, dim, contextDim, parameter count, backends, limits
 *
 * A conditional model (contextDim C > 0) needs a context in every /sample and /log-prob request:
 * one row of C numbers, given to every row, or one row per row (n for /sample, one per scored row).
 * A missing or wrongly sized one is a 400 naming C; an unconditional model refuses any context.
 *   GET  /health     200 while serving, 503 while draining (readiness); ?probe=live answers 200 while the process runs
 *   GET  /metrics    Prometheus text
 *
 * Formats (the `format` field or query parameter, else the Accept header): json, csv, ndjson, f32
 * (raw little-endian float32) and npy. A response streams chunk by chunk (SampleStream below the
 * text formatters), pulled by the socket: memory per request is two chunks whatever n is.
 *
 * Every request is a job in a bounded queue: at most maxConcurrentJobs run, at most maxQueuedJobs
 * wait, and one more is refused with 503 and Retry-After. A job's AbortSignal fires when the
 * client goes away or the per-request timeout passes, and the native work stops within one tile.
 *
 * Nothing here imports fastify at run time: the plugin uses the instance it is registered on, and
 * only serveModel (the CLI's server) loads it. fastify is a dependency of iaflow (so `iaflow serve`
 * works right after `npm install iaflow`), but `require('iaflow')`, `require('iaflow/server')` and
 * `sampleSharded` never load it.
 */
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { cpus } from 'node:os';
import { Readable } from 'node:stream';
import { Flow, backends, getThreads, setThreads } from './flow';
import { loadFlow } from './io';
import { encodeNpy, encodeNpyHeaderFloat32 } from './npy';
import { littleEndianBytes } from './stream';
import { RowFormatter, decodeTable, formatFloat32 } from './table';
import { checkContext, checkEnum, checkInteger, checkSeed, describeValue, invalidType, isPlainObject, toRowMajor } from './validation';

// ---------------------------------------------------------------------------------------
// Options

export const FORMATS = ['json', 'csv', 'ndjson', 'f32', 'npy'] as const;
export type Format = (typeof FORMATS)[number];

const CONTENT_TYPES: Record<Format, string> = {
  json: 'application/json; charset=utf-8',
  csv: 'text/csv; charset=utf-8',
  ndjson: 'application/x-ndjson; charset=utf-8',
  f32: 'application/octet-stream',
  npy: 'application/x-npy',
};

/** Media types of the Accept header, and the format each one asks for. */
const ACCEPTED: Record<string, Format> = {
  'application/json': 'json',
  'text/csv': 'csv',
  'application/x-ndjson': 'ndjson',
  'application/ndjson': 'ndjson',
  'application/jsonl': 'ndjson',
  'application/octet-stream': 'f32',
  'application/x-npy': 'npy',
  'application/npy': 'npy',
  'application/*': 'json',
  'text/*': 'csv',
  '*/*': 'json',
};

export interface ServerLimits {
  /** Most rows one /sample or /log-prob request may ask for (default 100,000,000: responses stream, so memory does not grow with it). */
  maxRows?: number;
  /** Largest request body in bytes (default 64 MiB). Larger bodies get 413. */
  maxBodyBytes?: number;
  /** Jobs (sample and log-prob requests) answered at once (default: the number of CPU cores, at least 2). */
  maxConcurrentJobs?: number;
  /** Jobs that may wait for a free slot (default 64); one more gets 503 with Retry-After. */
  maxQueuedJobs?: number;
  /** Per-request deadline in ms, queueing included (default 300,000). Before the first byte: 504; after it, the connection is cut. */
  timeoutMs?: number;
  /** Seconds in the Retry-After header of a 503 (default 1). */
  retryAfterSeconds?: number;
  /** Rows per chunk of the binary formats (f32, npy) (default: 16384, or fewer so a chunk is at most 1 MiB). Text formats use chunks of about 2048 values. */
  chunkRows?: number;
}

export interface IaflowPluginOptions extends ServerLimits {
  /** The flow to serve. The plugin does not dispose it. */
  flow: Flow;
  /** A name for GET /model (the model file, say). */
  modelName?: string;
  /**
   * Whether the host is shutting down: /health then answers 503 (readiness), so a load balancer
   * stops sending before the listener closes. The plugin also counts as draining once the
   * instance's close() has begun.
   */
  isDraining?: () => boolean;
}

type ResolvedLimits = Required<ServerLimits>;

const LIMIT_RANGES: Record<keyof ServerLimits, [number, number]> = {
  maxRows: [1, 2 ** 53 - 1],
  maxBodyBytes: [1, 2 ** 31 - 1],
  maxConcurrentJobs: [1, 4096],
  maxQueuedJobs: [0, 1e6],
  timeoutMs: [1, 2 ** 31 - 1],
  retryAfterSeconds: [0, 86400],
  chunkRows: [1, 2 ** 24],
};

function resolveLimits(options: ServerLimits, dim: number): ResolvedLimits {
  const limits: ResolvedLimits = {
    maxRows: 100_000_000,
    maxBodyBytes: 64 * 1024 * 1024,
    maxConcurrentJobs: Math.max(2, cpus().length),
    maxQueuedJobs: 64,
    timeoutMs: 300_000,
    retryAfterSeconds: 1,
    chunkRows: Math.max(1, Math.min(16384, Math.floor(262144 / dim))),
  };
  for (const key of Object.keys(LIMIT_RANGES) as (keyof ServerLimits)[]) {
    const value = options[key];
    if (value !== undefined) limits[key] = checkInteger(`options.${key}`, value, ...LIMIT_RANGES[key]);
  }
  return limits;
}

// ---------------------------------------------------------------------------------------
// Errors

/** An answer other than 200: its status, message and headers (Retry-After). */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly statusCode: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  406: 'Not Acceptable',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** Runs a check from validation.ts; its TypeError or RangeError becomes a 400 with the same message. */
function badRequest<T>(check: () => T): T {
  try {
    return check();
  } catch (error) {
    const name = (error as { name?: unknown })?.name;
    const message = (error as { message?: unknown })?.message;
    if ((name === 'TypeError' || name === 'RangeError' || name === 'TableError' || name === 'NpyFileError') && typeof message === 'string') {
      throw new HttpError(400, message);
    }
    throw error;
  }
}

/** Rejects fields outside `allowed`, as checkOptions does for options objects. */
function checkFields(body: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) throw new HttpError(400, `Unknown field ${JSON.stringify(key)} in the request body; expected one of: ${allowed.join(', ')}`);
  }
}

// ---------------------------------------------------------------------------------------
// Formats

/**
 * The response format: the body's or the query's `format`, else the first media type of the
 * Accept header (by q-value) that one of the formats serves, else JSON.
 */
export function chooseFormat(explicit: unknown, accept: string | undefined): Format {
  if (explicit !== undefined) return badRequest(() => checkEnum('format', explicit, FORMATS));
  if (accept === undefined || accept.trim() === '') return 'json';
  const offers = accept
    .split(',')
    .map((part, order) => {
      const [type, ...params] = part.split(';').map((s) => s.trim().toLowerCase());
      const q = params.find((p) => p.startsWith('q='));
      const weight = q === undefined ? 1 : Number(q.slice(2));
      return { type, weight: Number.isFinite(weight) ? weight : 0, order };
    })
    .filter((offer) => offer.weight > 0)
    .sort((a, b) => b.weight - a.weight || a.order - b.order);
  for (const offer of offers) if (Object.hasOwn(ACCEPTED, offer.type)) return ACCEPTED[offer.type];
  throw new HttpError(
    406,
    `Expected an Accept header naming one of ${Object.keys(ACCEPTED).filter((t) => !t.includes('*')).join(', ')} (or a format field: ${FORMATS.join(', ')}) but received ${describeValue(accept)}`,
  );
}

/** Turns float32 rows into the bytes of one format, chunk by chunk; concatenated, the bytes of the whole table. */
interface Encoder {
  /** Bytes before the first row (the .npy header, JSON's '['...). */
  start(): Buffer | string;
  chunk(rows: Float32Array): Buffer | string;
  end(): Buffer | string;
  /** The body's length in bytes when known in advance (binary formats). */
  length: number | undefined;
}

function rowEncoder(format: Format, rows: number, cols: number, header: readonly string[]): Encoder {
  if (format === 'f32' || format === 'npy') {
    const npyHeader = format === 'npy' ? encodeNpyHeaderFloat32([rows, cols]) : Buffer.alloc(0);
    return {
      start: () => npyHeader,
      chunk: littleEndianBytes,
      end: () => '',
      length: npyHeader.length + rows * cols * 4,
    };
  }
  const formatter = new RowFormatter(format, cols, format === 'csv' ? { header } : {});
  return { start: () => '', chunk: (values) => formatter.formatChunk(values), end: () => formatter.end(), length: undefined };
}

/**
 * Rows per chunk of a text format: ~2048 values, formatted in 1 to 5 ms (0.5 to 2.5 us a value
 * on the 2-core Zen 5), so the event loop turns often enough for the other requests.
 */
function textChunkRows(dim: number): number {
  return Math.max(1, Math.floor(2048 / dim));
}

// ---------------------------------------------------------------------------------------
// The job queue

class QueueFullError extends HttpError {}

/** At most `running` jobs at once, at most `waiting` more in line (first come, first served). */
class JobQueue {
  running = 0;
  private readonly line: { start: () => void; fail: (error: unknown) => void }[] = [];

  constructor(
    private readonly maxRunning: number,
    private readonly maxWaiting: number,
    private readonly retryAfter: number,
  ) {}

  get waiting(): number {
    return this.line.length;
  }

  /** Resolves when the job may run (then call release() exactly once); rejects when the line is full or `signal` fires. */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.running < this.maxRunning) {
      this.running++;
      return Promise.resolve();
    }
    if (this.line.length >= this.maxWaiting) {
      return Promise.reject(
        new QueueFullError(503, `The server is busy (${this.running} jobs running, ${this.line.length} waiting, the most it queues); retry after ${this.retryAfter} s`, {
          'retry-after': String(this.retryAfter),
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const entry = {
        start: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
        fail: reject,
      };
      const onAbort = () => {
        const at = this.line.indexOf(entry);
        if (at >= 0) this.line.splice(at, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.line.push(entry);
    });
  }

  release(): void {
    const next = this.line.shift();
    if (next) next.start(); // the slot passes on: `running` stays
    else this.running--;
  }
}

// ---------------------------------------------------------------------------------------
// Metrics

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

class Metrics {
  readonly requests = new Map<string, number>(); // `${route} ${status}`
  readonly rows = new Map<string, number>(); // route
  readonly rejected = new Map<string, number>(); // reason
  readonly latency = new Map<string, { buckets: number[]; sum: number; count: number }>(); // route

  add(map: Map<string, number>, key: string, by = 1): void {
    map.set(key, (map.get(key) ?? 0) + by);
  }

  observe(route: string, status: number, seconds: number): void {
    this.add(this.requests, `${route} ${status}`);
    let h = this.latency.get(route);
    if (!h) this.latency.set(route, (h = { buckets: LATENCY_BUCKETS.map(() => 0), sum: 0, count: 0 }));
    LATENCY_BUCKETS.forEach((bound, i) => {
      if (seconds <= bound) h!.buckets[i]++;
    });
    h.sum += seconds;
    h.count++;
  }

  text(queue: JobQueue): string {
    const lines: string[] = [];
    const family = (name: string, type: string, help: string) => lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    family('iaflow_requests_total', 'counter', 'Requests answered, by route and status code.');
    for (const [key, count] of this.requests) {
      const [route, status] = key.split(' ');
      lines.push(`iaflow_requests_total{route="${route}",status="${status}"} ${count}`);
    }
    family('iaflow_rows_total', 'counter', 'Rows sampled (/sample) or scored (/log-prob) in completed responses.');
    for (const [route, count] of this.rows) lines.push(`iaflow_rows_total{route="${route}"} ${count}`);
    family('iaflow_request_duration_seconds', 'histogram', 'Time from the request to the last byte of the response (or the disconnect).');
    for (const [route, h] of this.latency) {
      LATENCY_BUCKETS.forEach((bound, i) => lines.push(`iaflow_request_duration_seconds_bucket{route="${route}",le="${bound}"} ${h.buckets[i]}`));
      lines.push(`iaflow_request_duration_seconds_bucket{route="${route}",le="+Inf"} ${h.count}`);
      lines.push(`iaflow_request_duration_seconds_sum{route="${route}"} ${h.sum}`);
      lines.push(`iaflow_request_duration_seconds_count{route="${route}"} ${h.count}`);
    }
    family('iaflow_rejected_total', 'counter', 'Jobs not done: queue_full (503), timeout, disconnected (the client went away), invalid (4xx).');
    for (const [reason, count] of this.rejected) lines.push(`iaflow_rejected_total{reason="${reason}"} ${count}`);
    family('iaflow_queue_depth', 'gauge', 'Jobs waiting for a slot.');
    lines.push(`iaflow_queue_depth ${queue.waiting}`);
    family('iaflow_jobs_running', 'gauge', 'Jobs holding a slot.');
    lines.push(`iaflow_jobs_running ${queue.running}`);
    return lines.join('\n') + '\n';
  }
}

// ---------------------------------------------------------------------------------------
// The plugin

const finishedResponses = new WeakSet<object>();

/** Whether the whole response was handed to the socket ('finish'), as opposed to a connection closed before. */
function responseFinished(reply: FastifyReply): boolean {
  return finishedResponses.has(reply.raw) || reply.raw.writableFinished === true;
}

/** A request's job: its signal (the client went away, or the deadline passed) and why it fired. */
interface Job {
  signal: AbortSignal;
  reason(): 'timeout' | 'disconnected' | null;
  /** Clears the deadline timer. */
  done(): void;
}

function startJob(reply: FastifyReply, timeoutMs: number): Job {
  const controller = new AbortController();
  let why: 'timeout' | 'disconnected' | null = null;
  const timer = setTimeout(() => {
    why ??= 'timeout';
    controller.abort(new HttpError(504, `The request took longer than the server's limit of ${timeoutMs} ms (timeoutMs)`));
  }, timeoutMs);
  const onClose = () => {
    clearTimeout(timer);
    if (!responseFinished(reply)) {
      why ??= 'disconnected';
      controller.abort(new Error('the client disconnected'));
    }
  };
  reply.raw.once('close', onClose);
  return {
    signal: controller.signal,
    reason: () => why,
    done: () => clearTimeout(timer),
  };
}

/**
 * The Fastify plugin: registers the routes on the instance it is given (with its prefix), their
 * content-type parsers, error handler and hooks, all encapsulated.
 *
 *   const app = Fastify();
 *   await app.register(iaflowPlugin, { flow: await loadFlow('model.safetensors'), prefix: '/v1' });
 */
export const iaflowPlugin: FastifyPluginAsync<IaflowPluginOptions> = async (app: FastifyInstance, options: IaflowPluginOptions) => {
  if (typeof options !== 'object' || options === null) throw invalidType('options', 'an options object', options);
  const flow = options.flow as unknown;
  if (!(flow instanceof Flow)) throw invalidType('options.flow', 'a Flow (from loadFlow or createFlow)', flow);
  const dim = flow.dim;
  const contextDim = flow.contextDim;
  const limits = resolveLimits(options, dim);
  const queue = new JobQueue(limits.maxConcurrentJobs, limits.maxQueuedJobs, limits.retryAfterSeconds);
  const metrics = new Metrics();
  const header = Array.from({ length: dim }, (_, i) => `x${i + 1}`);
  let draining = false;
  app.addHook('preClose', (done) => {
    draining = true;
    done();
  });

  // Binary bodies for /log-prob, kept as Buffers; JSON stays Fastify's own parser.
  app.addContentTypeParser(['application/octet-stream', 'application/x-npy', 'application/npy', 'text/csv'], { parseAs: 'buffer', bodyLimit: limits.maxBodyBytes }, (_request, body, done) =>
    done(null, body),
  );

  app.addHook('onRequest', (request, reply, done) => {
    // The route's label in /metrics (the routes' own config; no module augmentation leaks into the host app's types).
    const route = (request.routeOptions.config as { iaflowRoute?: string }).iaflowRoute;
    if (route !== undefined) {
      const started = process.hrtime.bigint();
      // 'finish' is tracked here, not read from writableFinished: fastify.inject's fake response lacks it.
      reply.raw.once('finish', () => finishedResponses.add(reply.raw));
      reply.raw.once('close', () => metrics.observe(route, responseFinished(reply) ? reply.statusCode : 499, Number(process.hrtime.bigint() - started) / 1e9));
    }
    done();
  });

  app.setErrorHandler((error: unknown, request, reply) => {
    const e = error as { statusCode?: unknown; code?: unknown; message?: unknown; headers?: Record<string, string> };
    let status = typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 600 ? e.statusCode : 500;
    let message = typeof e.message === 'string' ? e.message : String(error);
    if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      message = `Expected a request body of at most ${limits.maxBodyBytes} bytes (maxBodyBytes) but received more`;
    } else if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      status = 415;
      message = unsupportedType(request);
    } else if (status === 500) {
      request.log.error(error);
      message = 'Internal error (see the server log)';
    }
    // Queue-full, timeout and disconnect are counted by the job (asJob); 499 is a disconnect.
    if (status >= 400 && status < 499) metrics.add(metrics.rejected, 'invalid');
    if (reply.sent || reply.raw.headersSent) return; // a broken stream: nothing more can be said
    for (const [name, value] of Object.entries(e.headers ?? {})) reply.header(name, value);
    reply.code(status).type('application/json; charset=utf-8').send({ statusCode: status, error: STATUS_TEXT[status] ?? 'Error', message });
  });

  /** Runs `work` as a queued job; the job's slot is held until the response is closed. */
  async function asJob(request: FastifyRequest, reply: FastifyReply, work: (job: Job) => Promise<unknown>): Promise<unknown> {
    const job = startJob(reply, limits.timeoutMs);
    try {
      await queue.acquire(job.signal);
    } catch (error) {
      job.done();
      const why = error instanceof QueueFullError ? 'queue_full' : job.reason();
      if (why !== null) metrics.add(metrics.rejected, why);
      throw why === 'disconnected' ? new HttpError(499, 'the client disconnected') : error;
    }
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      job.done();
      queue.release();
      const why = job.reason();
      if (why !== null) metrics.add(metrics.rejected, why);
    };
    reply.raw.once('close', release);
    try {
      return await work(job);
    } catch (error) {
      release();
      if (job.signal.aborted) throw job.reason() === 'timeout' ? job.signal.reason : new HttpError(499, 'the client disconnected');
      throw error;
    }
  }

  /**
   * A request's context for `rows` rows: required (one row, or one per row) by a conditional
   * model, refused by any other; a 400 names the width either way. `name` says where it goes,
   * `perRow` how to send one row per row.
   */
  function requestContext(value: unknown, rows: number, name: string, perRow: string): Float32Array | undefined {
    const given = value !== undefined && value !== null;
    if (contextDim === 0) {
      const what = name === 'context' ? 'context' : `context (${name})`;
      if (given) throw new HttpError(400, `Expected no ${what} for this model (it is not conditional: contextDim 0) but received ${describeValue(value)}`);
      return undefined;
    }
    if (!given) {
      throw new HttpError(400, `Expected ${name} for this conditional model (contextDim ${contextDim}): one row of ${contextDim} numbers, given to every row, or ${perRow}`);
    }
    return badRequest(() => checkContext(name, value, rows, contextDim).context);
  }

  app.post('/sample', { config: { iaflowRoute: 'sample' } }, async (request, reply) => {
    const body = request.body;
    if (!isPlainObject(body)) {
      throw new HttpError(400, `Expected a JSON object { n, seed?, firstRow?, format?${contextDim > 0 ? ', context' : ''} } for the request body but received ${describeValue(body)}`);
    }
    checkFields(body, ['n', 'seed', 'firstRow', 'format', 'context']);
    const query = request.query as Record<string, unknown>;
    const format = chooseFormat(body.format ?? query.format, request.headers.accept);
    const n = badRequest(() => checkInteger('n', body.n, 1, limits.maxRows));
    if (body.firstRow !== undefined && body.seed === undefined) throw new HttpError(400, 'firstRow needs seed: rows of a random stream cannot be continued');
    const seed = body.seed === undefined ? undefined : badRequest(() => checkSeed('seed', body.seed));
    const firstRow = body.firstRow === undefined ? 0 : badRequest(() => checkInteger('firstRow', body.firstRow, 0, 2 ** 53 - 1 - n));
    const context = requestContext(body.context, n, 'context', `${n} rows of them (one per sample, as number[][])`);
    return asJob(request, reply, async (job) => {
      const chunkRows = format === 'f32' || format === 'npy' ? limits.chunkRows : textChunkRows(dim);
      const stream = flow.sampleStream(n, {
        ...(seed === undefined ? {} : { seed, firstRow }),
        chunkRows,
        signal: job.signal,
        ...(context === undefined ? {} : { context }),
      });
      const iterator = stream[Symbol.asyncIterator]();
      // The first chunk before the headers: an error there is still a proper status code.
      const first = await iterator.next();
      const encoder = rowEncoder(format, n, dim, header);
      async function* bytes(): AsyncGenerator<Buffer | string> {
        try {
          const start = encoder.start();
          if (start.length > 0) yield start;
          if (!first.done) yield encoder.chunk(first.value);
          for (let step = await iterator.next(); !step.done; step = await iterator.next()) yield encoder.chunk(step.value);
          const end = encoder.end();
          if (end.length > 0) yield end;
          metrics.add(metrics.rows, 'sample', n);
        } finally {
          await iterator.return?.();
        }
      }
      reply.header('content-type', CONTENT_TYPES[format]);
      reply.header('x-iaflow-seed', String(stream.seed));
      reply.header('x-iaflow-rows', String(n));
      reply.header('x-iaflow-dim', String(dim));
      if (encoder.length !== undefined) reply.header('content-length', String(encoder.length));
      return reply.send(Readable.from(bytes(), { objectMode: false }));
    });
  });

  app.post('/log-prob', { config: { iaflowRoute: 'log-prob' }, bodyLimit: limits.maxBodyBytes }, async (request, reply) => {
    const query = request.query as Record<string, unknown>;
    const body = request.body;
    let x: Float32Array;
    let explicitFormat: unknown = query.format;
    // Binary bodies carry a context in the query (one row); JSON bodies in the body (one row or one per row).
    let contextValue: unknown;
    let contextName = 'context';
    let perRow = 'one row per row of rows (number[][])';
    if (Buffer.isBuffer(body)) {
      contextName = 'the context query parameter';
      perRow = 'send JSON { rows, context } for one context row per row';
      contextValue = parseContextQuery(query.context);
      const type = String(request.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
      if (type === 'application/octet-stream') {
        if (body.length === 0 || body.length % (4 * dim) !== 0) {
          throw new HttpError(400, `Expected float32 rows, a positive multiple of ${4 * dim} bytes (dim ${dim} x 4), for the request body but received ${body.length} bytes`);
        }
        x = new Float32Array(body.length / 4);
        Buffer.from(x.buffer).set(body);
        if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) Buffer.from(x.buffer).swap32();
      } else {
        const csv = type === 'text/csv';
        const table = badRequest(() => decodeTable(body, csv ? 'csv' : 'npy', csv ? 'the request body (CSV)' : 'the request body (.npy)'));
        if (table.cols !== dim) {
          throw new HttpError(400, `Expected ${csv ? 'CSV rows' : 'a .npy array of shape (rows, ' + dim + ')'} of ${dim} values for the request body but received ${table.rows} rows of ${table.cols} values`);
        }
        x = table.data;
      }
    } else if (typeof body === 'string') {
      throw new HttpError(415, unsupportedType(request)); // fastify's own text/plain parser took it
    } else {
      if (!isPlainObject(body)) {
        throw new HttpError(400, `Expected a JSON object { rows: number[][]${contextDim > 0 ? ', context' : ''} } for the request body but received ${describeValue(body)}`);
      }
      checkFields(body, ['rows', 'format', 'context']);
      explicitFormat = body.format ?? explicitFormat;
      contextValue = body.context;
      if (query.context !== undefined) throw new HttpError(400, 'Expected the context in the JSON body (its context field), not in the query, for a JSON request');
      if (Array.isArray(body.rows) && body.rows.length > limits.maxRows) {
        throw new HttpError(400, `Expected at most ${limits.maxRows} rows (maxRows) for rows but received an array of length ${body.rows.length}`);
      }
      x = badRequest(() => toRowMajor('rows', body.rows, dim).data);
    }
    const rows = x.length / dim;
    if (rows > limits.maxRows) throw new HttpError(400, `Expected at most ${limits.maxRows} rows (maxRows) for the request body but received ${rows} rows`);
    const context = requestContext(contextValue, rows, contextName, perRow);
    const format = chooseFormat(explicitFormat, request.headers.accept);
    return asJob(request, reply, async (job) => {
      // Non-finite binary input is found by the native side: a RangeError naming the row, a 400 here.
      const logProb = await flow.logProb(x, { signal: job.signal, ...(context === undefined ? {} : { context }) }).catch((error: unknown) => badRequest(() => {
        throw error;
      }));
      metrics.add(metrics.rows, 'log-prob', rows);
      reply.header('x-iaflow-rows', String(rows));
      reply.header('content-type', CONTENT_TYPES[format]);
      return reply.send(encodeLogProb(logProb, format));
    });
  });

  app.get('/model', { config: { iaflowRoute: 'model' } }, async () => ({
    name: options.modelName ?? null,
    dim,
    contextDim,
    numParameters: flow.numParameters,
    backend: flow.backend,
    backends: backends(),
    threads: getThreads(),
    config: flow.config,
    limits,
    formats: FORMATS,
  }));

  app.get('/health', { config: { iaflowRoute: 'health' } }, async (request, reply) => {
    const probe = (request.query as Record<string, unknown>).probe;
    if (probe !== undefined && probe !== 'live' && probe !== 'ready') {
      throw new HttpError(400, `Expected 'live' or 'ready' for probe but received ${describeValue(probe)}`);
    }
    const isDraining = draining || options.isDraining?.() === true;
    const status = isDraining ? 'draining' : 'ok';
    if (isDraining && probe !== 'live') reply.code(503);
    return { status, running: queue.running, queued: queue.waiting };
  });

  app.get('/metrics', { config: { iaflowRoute: 'metrics' } }, async (_request, reply) => {
    reply.type('text/plain; version=0.0.4; charset=utf-8');
    return metrics.text(queue);
  });
};

/**
 * ?context=c1,c2,... : one context row for a binary /log-prob body, as numbers (checked for width
 * and finiteness with the rest). Anything else is passed on as it is, to be refused with its value.
 */
function parseContextQuery(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  const parts = value.split(',');
  return parts.every((p) => p.trim() !== '' && !Number.isNaN(Number(p))) ? parts.map(Number) : value;
}

function unsupportedType(request: FastifyRequest): string {
  return `Expected a request body of type application/json, application/octet-stream (float32), application/x-npy or text/csv but received ${describeValue(request.headers['content-type'])}`;
}

function encodeLogProb(logProb: Float32Array, format: Format): Buffer | string {
  if (format === 'f32') return littleEndianBytes(logProb);
  if (format === 'npy') return encodeNpy(logProb, [logProb.length]);
  if (format === 'json') {
    const parts = new Array<string>(logProb.length);
    for (let i = 0; i < logProb.length; i++) parts[i] = Number.isFinite(logProb[i]) ? formatFloat32(logProb[i]) : 'null';
    return `{"logProb":[${parts.join(',')}]}\n`;
  }
  const formatter = new RowFormatter(format, 1, format === 'csv' ? { header: ['log_prob'] } : {});
  return formatter.formatChunk(logProb) + formatter.end();
}

// ---------------------------------------------------------------------------------------
// The standalone server (`iaflow serve`)

export interface ServeOptions extends ServerLimits {
  /** The model file (.safetensors). */
  model: string;
  port?: number;
  host?: string;
  /** Native threads (default: the number of cores). */
  threads?: number;
  /** After SIGTERM, how long in-flight requests may take before the process gives up on them (default 30,000 ms). */
  shutdownTimeoutMs?: number;
  /** Stops the server as SIGTERM does (for embedding and tests); SIGTERM and SIGINT always do. */
  signal?: AbortSignal;
  /** Called once the server listens, with its address (http://host:port). */
  onListening?: (address: string) => void;
}

export interface ServeOutput {
  write(text: string): unknown;
}

/**
 * Loads the model, serves it with the plugin until SIGTERM or SIGINT (or options.signal), then
 * shuts down gracefully: /health turns 503, new connections are refused, requests in flight
 * (streams included) are finished, and the promise resolves.
 */
export async function serveModel(options: ServeOptions, log: ServeOutput = process.stderr): Promise<void> {
  const fastify = loadFastify();
  if (options.threads !== undefined) setThreads(options.threads);
  const port = checkInteger('port', options.port ?? 8080, 0, 65535);
  const host = options.host ?? '127.0.0.1';
  const shutdownTimeoutMs = checkInteger('shutdownTimeoutMs', options.shutdownTimeoutMs ?? 30_000, 0, 2 ** 31 - 1);
  const flow = await loadFlow(options.model);
  const { model, signal, onListening } = options;
  const limits: ServerLimits = {};
  for (const key of Object.keys(LIMIT_RANGES) as (keyof ServerLimits)[]) if (options[key] !== undefined) limits[key] = options[key];
  const app = fastify({ logger: false, forceCloseConnections: 'idle', return503OnClosing: true, bodyLimit: limits.maxBodyBytes ?? 64 * 1024 * 1024 });
  let draining = false;
  await app.register(iaflowPlugin, { ...limits, flow, modelName: model, isDraining: () => draining });
  const address = await app.listen({ port, host });
  log.write(`iaflow: serving ${model} (dim ${flow.dim}, ${flow.numParameters} parameters, ${getThreads()} threads) on ${address}\n`);
  onListening?.(address);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      signal?.removeEventListener('abort', stop);
      resolve();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    if (signal?.aborted) stop();
    signal?.addEventListener('abort', stop, { once: true });
  });
  draining = true;
  log.write('iaflow: shutting down: finishing the requests in flight\n');
  const deadline = setTimeout(() => {
    log.write(`iaflow: requests still running after ${shutdownTimeoutMs} ms; closing their connections\n`);
    app.server.closeAllConnections();
  }, shutdownTimeoutMs);
  // A keep-alive connection whose last response ends during the shutdown would hold close() for
  // the keep-alive timeout: close such connections as they turn idle.
  const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
  try {
    await app.close();
  } finally {
    clearInterval(sweep);
    clearTimeout(deadline);
    flow.dispose();
  }
  log.write('iaflow: stopped\n');
}

type FastifyFactory = typeof import('fastify').default;

/** fastify, a dependency of iaflow: loaded only here, with a clear message if an install left it out. */
function loadFastify(): FastifyFactory {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const mod = require('fastify') as FastifyFactory & { default?: FastifyFactory };
    return mod.default ?? mod;
  } catch (error) {
    const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
    if (code === 'MODULE_NOT_FOUND' && typeof message === 'string' && message.includes("'fastify'")) {
      throw new Error('iaflow serve cannot find the fastify package, a dependency of iaflow: reinstall iaflow (npm install iaflow)');
    }
    throw error;
  }
}

// ---------------------------------------------------------------------------------------
// The client: one huge sample, split across replicas

export interface ShardedOptions {
  /** The stream's seed (required: every replica must draw from the same stream). */
  seed: number;
  /** The first row of the stream (default 0). */
  firstRow?: number;
  /** Rows per request (default: n split evenly over the URLs); each URL answers its slices one at a time, in parallel with the others. */
  rowsPerRequest?: number;
  /** Times a slice is retried after a 503 (the replica's queue was full), waiting Retry-After (at most 10 s) between (default 3). */
  retries?: number;
  signal?: AbortSignal;
  /**
   * A conditional model's context: one row (number[], sent with every slice) or n rows (number[][],
   * each slice sent its own rows). The servers check its width.
   */
  context?: number[] | number[][];
}

/**
 * n samples of one stream (seed), split into slices of consecutive rows that the servers at
 * `urls` answer in parallel (POST {url}/sample, format f32), reassembled in order: the bytes of
 * `flow.sample(n, { seed, firstRow, context })` on one machine. `urls` are base URLs (http://host:8080, or
 * with the prefix the plugin was registered under). Uses the global fetch.
 */
export async function sampleSharded(urls: readonly string[], n: number, options: ShardedOptions): Promise<Float32Array> {
  if (!Array.isArray(urls) || urls.length === 0 || urls.some((u) => typeof u !== 'string' || !/^https?:\/\//.test(u))) {
    throw invalidType('urls', 'a non-empty array of http(s) base URLs', urls);
  }
  if (!isPlainObject(options)) throw invalidType('options', 'an options object with a seed', options);
  for (const key of Object.keys(options)) {
    if (!['seed', 'firstRow', 'rowsPerRequest', 'retries', 'signal', 'context'].includes(key)) {
      throw new TypeError(`Unknown option ${JSON.stringify(key)} in sampleSharded options; expected one of: seed, firstRow, rowsPerRequest, retries, signal, context`);
    }
  }
  const seed = checkSeed('options.seed', options.seed);
  const firstRow = checkInteger('options.firstRow', options.firstRow ?? 0, 0, 2 ** 53 - 2);
  const rows = checkInteger('n', n, 1, 2 ** 53 - 1 - firstRow);
  const perRequest = checkInteger('options.rowsPerRequest', options.rowsPerRequest ?? Math.ceil(rows / urls.length), 1, 2 ** 53 - 1);
  const retries = checkInteger('options.retries', options.retries ?? 3, 0, 100);
  const context = options.context;
  const perRowContext = Array.isArray(context) && context.length > 0 && context.every((row) => Array.isArray(row));
  if (context !== undefined) {
    const oneRow = Array.isArray(context) && context.length > 0 && context.every((v) => typeof v === 'number');
    if (!oneRow && !(perRowContext && context.length === rows)) {
      throw invalidType('options.context', `one context row (number[]) or ${rows} rows of them (number[][], one per sample)`, context);
    }
  }
  const sliceContext = (start: number, count: number) =>
    context === undefined ? {} : { context: perRowContext ? (context as number[][]).slice(start, start + count) : context };
  const controller = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;

  const slices: { start: number; rows: number; bytes?: Uint8Array }[] = [];
  for (let start = 0; start < rows; start += perRequest) slices.push({ start, rows: Math.min(perRequest, rows - start) });
  const bases = urls.map((u) => u.replace(/\/+$/, ''));

  async function fetchSlice(base: string, slice: (typeof slices)[number]): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(`${base}/sample`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/octet-stream' },
        body: JSON.stringify({ n: slice.rows, seed, firstRow: firstRow + slice.start, format: 'f32', ...sliceContext(slice.start, slice.rows) }),
        signal,
      });
      if (response.status === 503 && attempt < retries) {
        await response.arrayBuffer().catch(() => undefined);
        const wait = Math.min(10, Number(response.headers.get('retry-after')) || 1);
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        continue;
      }
      if (!response.ok) {
        const text = await response.text().catch(() => '');
        let message = text;
        try {
          message = (JSON.parse(text) as { message?: string }).message ?? text;
        } catch {
          // not JSON: keep the text
        }
        throw new Error(`${base}/sample answered ${response.status} for rows ${firstRow + slice.start}..${firstRow + slice.start + slice.rows - 1}: ${message}`);
      }
      slice.bytes = new Uint8Array(await response.arrayBuffer());
      return;
    }
  }

  try {
    await Promise.all(
      bases.map(async (base, u) => {
        for (let s = u; s < slices.length; s += bases.length) await fetchSlice(base, slices[s]);
      }),
    );
  } catch (error) {
    controller.abort(error);
    throw error;
  }
  const first = slices[0].bytes!;
  const dim = first.length / 4 / slices[0].rows;
  if (!Number.isInteger(dim) || dim < 1) throw new Error(`${bases[0]}/sample: ${first.length} bytes for ${slices[0].rows} rows is not whole float32 rows`);
  const out = new Float32Array(rows * dim);
  const outBytes = new Uint8Array(out.buffer);
  for (const [i, slice] of slices.entries()) {
    const expected = slice.rows * dim * 4;
    if (slice.bytes!.length !== expected) {
      throw new Error(`${bases[i % bases.length]}/sample: ${slice.bytes!.length} bytes for ${slice.rows} rows of dim ${dim} (expected ${expected}; do all the URLs serve the same model?)`);
    }
    outBytes.set(slice.bytes!, slice.start * dim * 4);
  }
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) Buffer.from(out.buffer).swap32();
  return out;
}
