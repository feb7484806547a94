// The HTTP server under load (`npm run bench:server`): `iaflow serve` in a child process on
// 127.0.0.1, autocannon against it from this process, CFG-A's flow (D=16, hidden [256, 256], 5 IAF
// layers, exp scale, the bench's fixed random weights), bounded in time (about a minute):
//
//   small   POST /sample { n: 32, format: 'json' }      requests/s, rows/s, p50/p99 latency
//   large   POST /sample { n: 100000, format: 'f32' }   the same, and the server's rows/s as a
//           fraction of the bare library's (flow.sample(100000) back to back in this process)
//   memory  a fresh server's RSS after 10^3 requests (small JSON, 1000-row f32, 100-row CSV,
//           200-row /log-prob in turn), after 10^4 and after 3 x 10^4 (a leak keeps its slope)
//
// The large cell's server slice is a fixed number of whole requests (about as many as the library
// slice's rate gives in S seconds), timed from the start to the last byte of the last answer, so no
// request is cut off by the window; requests/s of it are rows/s / 10^5. The machine's CPU share
// moves (bench/timing.ts), so the large cell is interleaved: rounds of a
// library slice then a server slice, and the fraction is the median over rounds of the ratio
// within a round. The library slice runs while the server is idle, so each side has the cores.
//
//   npx tsx bench/server.ts [--seconds S] [--rounds R] [--connections-small C] [--connections-large C] [--write]
//
// --write appends the table, dated, to bench/RESULTS.md. Prints markdown on stdout, progress on stderr.
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createIAF, Flow, getThreads, saveFlow } from '../src/index';
import { cpuInfo, loadAverage } from './machine';
import { randomParameters } from './network';
import { median } from './timing';

interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number; average: number };
  throughput: { average: number; total: number };
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
}
type Autocannon = (options: Record<string, unknown>) => PromiseLike<AutocannonResult> & { on(event: 'response', listener: () => void): void };
// autocannon ships no type declarations; this is the part of its API used here.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const autocannon = require('autocannon') as Autocannon;

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    'connections-small': { type: 'string', default: '16' },
    'connections-large': { type: 'string', default: '1' },
    write: { type: 'boolean', default: false },
  },
});
const SECONDS = Number(args.seconds);
const ROUNDS = Number(args.rounds);
const SMALL_CONNECTIONS = Number(args['connections-small']);
const LARGE_CONNECTIONS = Number(args['connections-large']);
const SEED = 1;
const SMALL_ROWS = 32;
const LARGE_ROWS = 100_000;

const log = (text: string) => process.stderr.write(`${text}\n`);
const fmt = (v: number) => (v >= 1e6 ? `${(v / 1e6).toFixed(2)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v.toFixed(1));

/** CFG-A of bench/run.ts, with the same fixed random weights. */
function cfgA(): Flow {
  const flow = createIAF({ dim: 16, hidden: [256, 256], layers: 5, seed: SEED, scale: 'exp' });
  flow.setParameters(randomParameters(flow, SEED + 1));
  return flow;
}

async function startServer(model: string): Promise<{ base: string; stop: () => Promise<void>; rssMiB: () => number }> {
  const child = spawn(process.execPath, ['--require', 'tsx/cjs', join(__dirname, '..', 'src', 'cli.ts'), 'serve', model, '--port', '0', '--max-queue', '1024'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const base = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (data: Buffer) => {
      stderr += data.toString();
      const match = / on (http:\/\/127\.0\.0\.1:\d+)\n/.exec(stderr);
      if (match) resolve(match[1]);
    });
    void exited.then((code) => reject(new Error(`iaflow serve exited (${code}): ${stderr}`)));
  });
  return {
    base,
    rssMiB: () => Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? NaN) / 1024,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** autocannon's result, and performance.now() at the last complete answer (autocannon itself stops at its next one-second tick). */
type LoadResult = AutocannonResult & { lastAnswer: number };

/** `connections` clients asking for `rows` samples back to back, for `bound.seconds` or until `bound.amount` answers. */
async function load(base: string, rows: number, format: string, connections: number, bound: { seconds: number } | { amount: number }): Promise<LoadResult> {
  const instance = autocannon({
    url: `${base}/sample`,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ n: rows, seed: SEED, format }),
    connections,
    ...('amount' in bound ? { amount: bound.amount } : { duration: bound.seconds }),
  });
  let lastAnswer = performance.now();
  instance.on('response', () => (lastAnswer = performance.now()));
  const result = { ...(await instance), lastAnswer };
  if (result.errors > 0 || result.non2xx > 0 || result.timeouts > 0) {
    throw new Error(`autocannon: ${result.errors} errors, ${result.non2xx} non-2xx answers, ${result.timeouts} timeouts`);
  }
  return result;
}

/** `amount` requests cycling through a mix of sizes and formats (both routes), 8 connections. */
async function mixed(base: string, flow: Flow, amount: number): Promise<void> {
  const rows = Array.from({ length: 200 }, (_, r) => Array.from({ length: flow.dim }, (_, c) => Math.sin(r + c)));
  const json = { 'content-type': 'application/json' };
  const result = await autocannon({
    url: base,
    connections: 8,
    amount,
    requests: [
      { method: 'POST', path: '/sample', headers: json, body: JSON.stringify({ n: SMALL_ROWS, seed: 1, format: 'json' }) },
      { method: 'POST', path: '/sample', headers: json, body: JSON.stringify({ n: 1000, seed: 2, format: 'f32' }) },
      { method: 'POST', path: '/sample', headers: json, body: JSON.stringify({ n: 100, seed: 3, format: 'csv' }) },
      { method: 'POST', path: '/log-prob', headers: json, body: JSON.stringify({ rows }) },
    ],
  });
  if (result.errors > 0 || result.non2xx > 0 || result.timeouts > 0) throw new Error(`autocannon (memory): ${result.errors} errors, ${result.non2xx} non-2xx, ${result.timeouts} timeouts`);
}

/** The bare library: flow.sample(rows) back to back for `seconds`; rows/s. */
async function libraryRate(flow: Flow, rows: number, seconds: number): Promise<number> {
  const start = performance.now();
  let done = 0;
  while (performance.now() - start < seconds * 1000) {
    await flow.sample(rows, { seed: SEED });
    done += rows;
  }
  return done / ((performance.now() - start) / 1000);
}

async function main(): Promise<void> {
  const cpu = cpuInfo();
  const date = new Date().toISOString().slice(0, 10);
  log(`bench/server.ts: ${cpu.procModel ?? cpu.osModel}, ${cpu.logicalCpus} vCPUs, load ${loadAverage()}, ${getThreads()} pool threads`);
  const flow = cfgA();
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-bench-server-'));
  const model = join(dir, 'cfg-a.safetensors');
  await saveFlow(flow, model);
  const server = await startServer(model);
  try {
    // Warm up both sides (the server's first requests load the kernels, the JIT warms).
    await load(server.base, LARGE_ROWS, 'f32', LARGE_CONNECTIONS, { amount: 2 });
    await load(server.base, SMALL_ROWS, 'json', SMALL_CONNECTIONS, { seconds: 1 });
    await libraryRate(flow, LARGE_ROWS, 0.5);

    log(`small: n=${SMALL_ROWS} JSON, ${SMALL_CONNECTIONS} connections, ${SECONDS * ROUNDS} s`);
    const small = await load(server.base, SMALL_ROWS, 'json', SMALL_CONNECTIONS, { seconds: SECONDS * ROUNDS });
    const smallLibrary = await libraryRate(flow, SMALL_ROWS, SECONDS);

    log(`large: n=${LARGE_ROWS} f32, ${LARGE_CONNECTIONS} connections, ${ROUNDS} rounds of ${SECONDS} s library + ${SECONDS} s server`);
    const rounds: { library: number; server: number; result: LoadResult }[] = [];
    /** CPU the client (autocannon, this process) used during each server slice, in cores: taken from the server's 2. */
    const clientCores: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const library = await libraryRate(flow, LARGE_ROWS, SECONDS);
      const cpu0 = process.cpuUsage();
      const wall0 = performance.now();
      // A fixed number of requests (about SECONDS' worth at the library's rate), timed from the first
      // request to the last answer: autocannon counts a response's bytes only once it is complete, so
      // a window of SECONDS would drop the request in flight at its end (about half a request in ten,
      // 5% of the figure) and read the server slower than it is.
      const amount = Math.max(4, Math.round((library * SECONDS) / LARGE_ROWS));
      const result = await load(server.base, LARGE_ROWS, 'f32', LARGE_CONNECTIONS, { amount });
      const cpu = process.cpuUsage(cpu0);
      const wall = result.lastAnswer - wall0;
      clientCores.push((cpu.user + cpu.system) / 1e3 / (performance.now() - wall0));
      if (result['2xx'] !== amount || result.throughput.total < amount * LARGE_ROWS * flow.dim * 4) {
        throw new Error(`large cell: ${result['2xx']} of ${amount} answers, ${result.throughput.total} bytes`);
      }
      const serverRate = (amount * LARGE_ROWS) / (wall / 1000);
      rounds.push({ library, server: serverRate, result });
      log(`  round ${r + 1}: library ${fmt(library)} rows/s, server ${fmt(serverRate)} rows/s (${((100 * serverRate) / library).toFixed(0)}%), p50 ${rounds[r].result.latency.p50} ms`);
    }
    const fraction = median(rounds.map((r) => r.server / r.library));
    const largeLatency = (key: 'p50' | 'p99') => median(rounds.map((r) => r.result.latency[key]));
    const largeRequests = median(rounds.map((r) => r.server / LARGE_ROWS));
    const smallRate = small['2xx'] / small.duration;

    const lines = [
      `## Server (bench/server.ts), ${date}`,
      '',
      `\`iaflow serve\` (one process, ${getThreads()} pool threads) on 127.0.0.1, autocannon in a second process; CFG-A (D=16, hidden [256, 256], 5 IAF layers, exp scale). ` +
        `${cpu.procModel ?? cpu.osModel}, ${cpu.logicalCpus} vCPUs, load average at the end ${loadAverage()}. ` +
        `Library = \`flow.sample(n)\` back to back in the client's process while the server idles; the large cell's fraction is the median over ${ROUNDS} interleaved rounds of ${SECONDS} s.`,
      '',
      '| request | connections | requests/s | rows/s | p50 latency | p99 latency | bare library rows/s | server / library | target |',
      '|---|---|---|---|---|---|---|---|---|',
      `| small: n=${SMALL_ROWS}, JSON | ${SMALL_CONNECTIONS} | ${fmt(smallRate)} | ${fmt(smallRate * SMALL_ROWS)} | ${small.latency.p50} ms | ${small.latency.p99} ms | ${fmt(smallLibrary)} | ${((100 * smallRate * SMALL_ROWS) / smallLibrary).toFixed(0)}% | — |`,
      `| large: n=${LARGE_ROWS}, f32 | ${LARGE_CONNECTIONS} | ${fmt(largeRequests)} | ${fmt(median(rounds.map((r) => r.server)))} | ${largeLatency('p50')} ms | ${largeLatency('p99')} ms | ${fmt(median(rounds.map((r) => r.library)))} | ${(100 * fraction).toFixed(0)}% | ${fraction >= 0.8 ? 'PASS' : 'MISS'} (>= 80%) |`,
      '',
      `Rounds (library rows/s, server rows/s): ${rounds.map((r) => `${fmt(r.library)} / ${fmt(r.server)}`).join('; ')}. ` +
        `The client (autocannon, receiving ${((median(rounds.map((r) => r.server)) * flow.dim * 4) / 1e6).toFixed(1)} MB/s) used ${median(clientCores).toFixed(2)} cores of the same ${cpu.logicalCpus} during the server slices (median).`,
      '',
    ];
    await server.stop();

    // Memory: a fresh server, RSS after the first 10^3 requests and after 10^4.
    log('memory: 10^3 then 9x10^3 more mixed requests to a fresh server');
    const fresh = await startServer(model);
    let rssAfter1k = NaN;
    let rssAfter10k = NaN;
    let rssAfter30k = NaN;
    try {
      // Read after a pause: V8 collects garbage when idle, so the figure is the settled size, not a GC's timing.
      const settled = async () => (await new Promise((resolve) => setTimeout(resolve, 1000)), fresh.rssMiB());
      await mixed(fresh.base, flow, 1000);
      rssAfter1k = await settled();
      await mixed(fresh.base, flow, 9000);
      rssAfter10k = await settled();
      // 2 x 10^4 more: a leak keeps growing at the same rate, a heap still finding its size does not.
      await mixed(fresh.base, flow, 20000);
      rssAfter30k = await settled();
    } finally {
      await fresh.stop();
    }
    const growth = rssAfter10k / rssAfter1k - 1;
    lines.push(
      `Memory: a fresh \`iaflow serve\` answered 10^4 requests (8 connections; n=32 JSON, n=1000 f32, n=100 CSV /sample and 200-row JSON /log-prob in turn): ` +
        `RSS ${rssAfter1k.toFixed(1)} MiB after the first 10^3, ${rssAfter10k.toFixed(1)} MiB after 10^4 (${growth >= 0 ? '+' : ''}${(100 * growth).toFixed(1)}%; ${Math.abs(growth) <= 0.1 ? 'PASS' : 'MISS'} within 10%), ` +
        `${rssAfter30k.toFixed(1)} MiB after 3 x 10^4 (${(((rssAfter30k - rssAfter10k) / 2) * 1024 / 10).toFixed(1)} KiB per 10^3 requests past 10^4).`,
      '',
    );
    const text = lines.join('\n');
    process.stdout.write(text);
    if (args.write) {
      appendFileSync(join(__dirname, 'RESULTS.md'), `\n${text}`);
      log('appended to bench/RESULTS.md');
    }
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  process.stderr.write(`bench/server.ts: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exitCode = 1;
});
