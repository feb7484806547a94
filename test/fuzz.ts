// Mutates valid model files and loads them: every outcome must be a flow that works or a
// ModelFileError, never another exception, a hang or a crash. Next to the random mutations it
// loads targeted hostile files (deep nesting, millions of keys, huge headers and names, devices,
// FIFOs, directories, oversized sparse files), each of which must be refused quickly. `npm run
// fuzz` runs it for longer (`npx tsx test/fuzz.ts [seconds] [seed]`); test/io.test.ts runs a
// short, seeded pass.
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { affine, createFlow, iaf, maf, permute, reverse } from '../src/index';
import { encodeFlow, loadFlow } from '../src/io';

export interface FuzzReport {
  runs: number;
  loaded: number;
  refused: number;
  /** Outcomes other than a working flow or a ModelFileError (a real crash ends the process). */
  failures: string[];
  /** Slowest single load, in milliseconds, and what it loaded. */
  worstMs: number;
  worstCase: string;
  /** The targeted hostile files: each must be refused with a ModelFileError. */
  hostile: HostileOutcome[];
}

export interface HostileOutcome {
  name: string;
  /** Undefined when the platform cannot make this case (no /dev/zero, no mkfifo). */
  ms: number | undefined;
  /** The ModelFileError's message, or why the case failed or was skipped. */
  message: string;
  refused: boolean;
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function seedFiles(): Buffer[] {
  return [
    encodeFlow(createFlow({ dim: 3, seed: 1, layers: [iaf({ hidden: [8, 8] }), reverse(), maf({ hidden: [6], scale: 'gated' })] })),
    encodeFlow(createFlow({ dim: 2, seed: 2, layers: [maf({ hidden: [4, 4, 4], residual: true }), permute([1, 0]), iaf({ hidden: 5, activation: 'elu', scale: 'exp' })] })),
    // A conditional flow with both context forms, soft clamps and an affine layer at the data end.
    encodeFlow(
      createFlow({
        dim: 3,
        context: 2,
        seed: 3,
        layers: [maf({ hidden: [6, 6], softClamp: 2 }), reverse(), iaf({ hidden: [5], contextForm: 'activated' }), affine({ loc: [1, 2, 3], scale: [0.5, -2, 4], trainable: true })],
      }),
    ),
  ];
}

type Mutation = (bytes: Buffer, random: () => number) => Buffer;

const headerLength = (b: Buffer) => Number(b.readBigUInt64LE(0));

// Rewrites the JSON header through `edit`, keeping the byte section as it is.
function editHeader(bytes: Buffer, edit: (header: Record<string, unknown>, random: () => number) => void, random: () => number): Buffer {
  const n = headerLength(bytes);
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  edit(header, random);
  const text = Buffer.from(JSON.stringify(header), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([length, text, bytes.subarray(8 + n)]);
}

function pick<T>(items: T[], random: () => number): T {
  return items[Math.floor(random() * items.length)];
}

const WEIRD_VALUES: unknown[] = [null, -1, 0, 1.5, 2 ** 31, 2 ** 53, 1e308, 'x', [], {}, [1, 1], [-1], true, NaN];

// Replaces one value somewhere in the config JSON (stored as a string in __metadata__).
function mutateConfig(header: Record<string, unknown>, random: () => number): void {
  const meta = header.__metadata__ as Record<string, string>;
  const config = JSON.parse(meta.iaflow) as unknown;
  const paths: { parent: Record<string, unknown> | unknown[]; key: string | number }[] = [];
  const walk = (node: unknown) => {
    if (Array.isArray(node)) node.forEach((child, i) => (paths.push({ parent: node, key: i }), walk(child)));
    else if (node && typeof node === 'object') {
      for (const [key, child] of Object.entries(node)) {
        paths.push({ parent: node as Record<string, unknown>, key });
        walk(child);
      }
    }
  };
  walk(config);
  const target = pick(paths, random);
  const replacement = random() < 0.3 ? undefined : pick(WEIRD_VALUES, random);
  if (Array.isArray(target.parent)) target.parent[target.key as number] = replacement;
  else if (replacement === undefined) delete target.parent[target.key as string];
  else target.parent[target.key as string] = replacement;
  meta.iaflow = JSON.stringify(config);
}

const MUTATIONS: Mutation[] = [
  (b, r) => b.subarray(0, Math.floor(r() * b.length)), // truncation
  (b, r) => {
    const c = Buffer.from(b);
    for (let i = 0, n = 1 + Math.floor(r() * 8); i < n; i++) c[Math.floor(r() * c.length)] ^= 1 << Math.floor(r() * 8);
    return c;
  }, // bit flips anywhere
  (b, r) => {
    const c = Buffer.from(b);
    c.writeBigUInt64LE(BigInt(Math.floor(r() * 2 ** 52)), 0);
    return c;
  }, // huge header length
  (b, r) => editHeader(b, mutateConfig, r),
  (b, r) =>
    editHeader(b, (h, rr) => {
      const names = Object.keys(h).filter((k) => k !== '__metadata__');
      const entry = h[pick(names, rr)] as { dtype: string; shape: number[]; data_offsets: number[] };
      const change = Math.floor(rr() * 4);
      if (change === 0) entry.dtype = pick(['F64', 'I64', 'BOOL', 'F16', 'Q4'], rr);
      if (change === 1) entry.shape = [65536, 65536, 65536];
      if (change === 2) entry.data_offsets = [0, 2 ** 40];
      if (change === 3) entry.shape = [...entry.shape].reverse();
    }, r), // dtypes, shapes that overflow, offsets
  (b, r) =>
    editHeader(b, (h, rr) => {
      const names = Object.keys(h).filter((k) => k !== '__metadata__');
      h[`${pick(names, rr)}x`] = h[pick(names, rr)]; // overlapping duplicate entry
    }, r),
  (b, r) => {
    // Nesting of random depth (up to ~16k) ahead of the first entry.
    const n = headerLength(b);
    const depth = Math.floor(16 ** (1 + 2.5 * r()));
    const text = `{"__x":${'['.repeat(depth)}${']'.repeat(depth)},${b.subarray(9, 8 + n).toString('utf8')}`;
    return Buffer.concat([safetensorsFile(text), b.subarray(8 + n)]);
  },
  (b, r) =>
    editHeader(b, (h, rr) => {
      // Up to ~10k extra metadata keys.
      const meta = h.__metadata__ as Record<string, string>;
      for (let i = 0, n = Math.floor(10 ** (4 * rr())); i < n; i++) meta[`k${i}`] = '';
    }, r),
  (b, r) =>
    editHeader(b, (h, rr) => {
      // A long tensor name (up to ~300k characters).
      const names = Object.keys(h).filter((k) => k !== '__metadata__');
      const name = pick(names, rr);
      h[name + 'x'.repeat(Math.floor(10 ** (5.5 * rr())))] = h[name];
      delete h[name];
    }, r),
  (b, r) =>
    editHeader(b, (h, rr) => {
      // The config JSON nested (or flooded with arrays) to a random extent.
      const meta = h.__metadata__ as Record<string, string>;
      const n = Math.floor(10 ** (5 * rr()));
      meta.iaflow = rr() < 0.5 ? '['.repeat(n) + ']'.repeat(n) : `[${'[],'.repeat(n)}[]]`;
    }, r),
  (b, r) => {
    // NaN or Inf into the tensor bytes
    const c = Buffer.from(b);
    const start = 8 + headerLength(b);
    const at = start + 4 * Math.floor((r() * (c.length - start)) / 4);
    if (at + 4 <= c.length) c.writeFloatLE(r() < 0.5 ? NaN : Infinity, at);
    return c;
  },
];

// ---- Targeted hostile files ----

/** A safetensors file with this header (bytes or text) and data section, length field included. */
export function safetensorsFile(header: Buffer | string, data: Buffer = Buffer.alloc(0)): Buffer {
  const headerBytes = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(headerBytes.length));
  return Buffer.concat([length, headerBytes, data]);
}

/** A header `{"__metadata__":{...}, <entries>}` built as bytes: `prefix`, `count` copies of `unit`, `suffix`. */
function repeatedHeader(prefix: string, unit: string, count: number, suffix: string): Buffer {
  const head = Buffer.from(prefix);
  const tail = Buffer.from(suffix);
  const out = Buffer.alloc(head.length + unit.length * count + tail.length);
  head.copy(out, 0);
  out.fill(unit, head.length, head.length + unit.length * count);
  tail.copy(out, out.length - tail.length);
  return out;
}

const VALID_CONFIG = '{\\"formatVersion\\":1,\\"dim\\":1,\\"contextDim\\":0,\\"layers\\":[]}';

export interface HostileCase {
  name: string;
  /** Writes the case under `dir` and returns the path to load, or a reason it cannot run here. */
  make: (dir: string) => string | { skip: string };
}

/** The files of issue 11 and their relatives: each must be refused with a ModelFileError, fast. */
export const HOSTILE_CASES: HostileCase[] = [
  {
    name: '20 MB of nested arrays in __metadata__',
    make: (dir) => write(dir, 'deep.safetensors', safetensorsFile(repeatedHeader('{"__metadata__":{"a":', '[', 20e6, ''))),
  },
  {
    name: '98 MB header of nested arrays',
    make: (dir) => write(dir, 'deep98.safetensors', safetensorsFile(repeatedHeader('{"__metadata__":{"a":', '[', 98e6, ''))),
  },
  {
    name: '2M keys in __metadata__',
    make: (dir) => {
      const keys = Array.from({ length: 2e6 }, (_, i) => `"k${i}":""`).join(',');
      return write(dir, 'keys.safetensors', safetensorsFile(`{"__metadata__":{${keys}}}`));
    },
  },
  {
    name: '98 MB header: one long __metadata__ string',
    make: (dir) => write(dir, 'long-string.safetensors', safetensorsFile(repeatedHeader(`{"__metadata__":{"iaflow":"${VALID_CONFIG}","pad":"`, 'x', 98e6, '"}}'))),
  },
  {
    name: '50 MB tensor name',
    make: (dir) => write(dir, 'huge-name.safetensors', safetensorsFile(repeatedHeader('{"', 'n', 50e6, '":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'))),
  },
  {
    name: '1 MB tensor name, otherwise valid (unexpected tensor)',
    make: (dir) =>
      write(dir, 'long-name.safetensors', safetensorsFile(repeatedHeader(`{"__metadata__":{"iaflow":"${VALID_CONFIG}"},"`, 'n', 1e6, '":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'))),
  },
  {
    name: 'a shape of 5M dims',
    make: (dir) => write(dir, 'rank.safetensors', safetensorsFile(repeatedHeader('{"t":{"dtype":"F32","shape":[', '1,', 5e6, '1],"data_offsets":[0,4]}}'), Buffer.alloc(4))),
  },
  {
    name: '1M empty arrays side by side',
    make: (dir) => write(dir, 'arrays.safetensors', safetensorsFile(repeatedHeader('{"t":[', '[],', 1e6, '[]]}'))),
  },
  {
    name: '1M tensor entries (more than any flow has)',
    make: (dir) => write(dir, 'entries.safetensors', safetensorsFile(`{${Array.from({ length: 1e6 }, (_, i) => `"${i}":{}`).join(',')}}`)),
  },
  {
    name: 'config JSON nested 1M deep',
    make: (dir) => write(dir, 'config-deep.safetensors', safetensorsFile(repeatedHeader('{"__metadata__":{"iaflow":"', '[', 1e6, '"}}'))),
  },
  {
    name: 'config JSON of 1M empty arrays',
    make: (dir) => write(dir, 'config-arrays.safetensors', safetensorsFile(repeatedHeader('{"__metadata__":{"iaflow":"[', '[],', 1e6, '[]]"}}'))),
  },
  {
    name: 'a sparse 2 GiB file (past the size limit)',
    make: (dir) => {
      const path = join(dir, 'sparse.safetensors');
      const fd = openSync(path, 'w');
      try {
        // A hole: no disk space is used on file systems with sparse files.
        ftruncateSync(fd, 2 ** 31);
      } finally {
        closeSync(fd);
      }
      return path;
    },
  },
  { name: '/dev/zero', make: () => (existsSync('/dev/zero') ? '/dev/zero' : { skip: 'no /dev/zero on this platform' }) },
  { name: '/dev/urandom', make: () => (existsSync('/dev/urandom') ? '/dev/urandom' : { skip: 'no /dev/urandom on this platform' }) },
  {
    name: 'a FIFO with no writer',
    make: (dir) => {
      const path = join(dir, 'model.fifo');
      try {
        execFileSync('mkfifo', [path], { stdio: 'ignore' });
      } catch {
        return { skip: 'mkfifo is not available on this platform' };
      }
      return path;
    },
  },
  {
    name: 'a directory',
    make: (dir) => {
      const path = join(dir, 'folder.safetensors');
      mkdirSync(path, { recursive: true });
      return path;
    },
  },
];

function write(dir: string, name: string, bytes: Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

/** Loads every hostile case once: each must end in a ModelFileError. */
export async function loadHostileCases(dir: string, cases: HostileCase[] = HOSTILE_CASES): Promise<HostileOutcome[]> {
  const outcomes: HostileOutcome[] = [];
  for (const { name, make } of cases) {
    const made = make(dir);
    if (typeof made !== 'string') {
      outcomes.push({ name, ms: undefined, message: made.skip, refused: false });
      continue;
    }
    const start = performance.now();
    try {
      await loadFlow(made);
      outcomes.push({ name, ms: performance.now() - start, message: 'loaded: it should have been refused', refused: false });
    } catch (error) {
      const ms = performance.now() - start;
      const refused = error instanceof Error && error.name === 'ModelFileError';
      outcomes.push({ name, ms, message: error instanceof Error ? `${error.name}: ${error.message}` : String(error), refused });
    }
    if (made.startsWith(dir)) rmSync(made, { recursive: true, force: true });
  }
  return outcomes;
}

export async function fuzzModelFiles(seed: number, budgetMs: number, maxRuns = Infinity, hostileCases: HostileCase[] = []): Promise<FuzzReport> {
  const random = mulberry32(seed);
  const seeds = seedFiles();
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-fuzz-'));
  const report: FuzzReport = { runs: 0, loaded: 0, refused: 0, failures: [], worstMs: 0, worstCase: '', hostile: [] };
  const file = join(dir, 'mutant.safetensors');
  try {
    report.hostile = await loadHostileCases(dir, hostileCases);
    for (const outcome of report.hostile) {
      if (outcome.ms === undefined) continue;
      report.runs++;
      if (outcome.refused) report.refused++;
      else report.failures.push(`hostile case "${outcome.name}": ${outcome.message}`);
      if (outcome.ms > report.worstMs) [report.worstMs, report.worstCase] = [outcome.ms, outcome.name];
    }
    const deadline = Date.now() + budgetMs;
    let mutants = 0;
    while (Date.now() < deadline && mutants < maxRuns) {
      let bytes = pick(seeds, random);
      for (let i = 0, n = 1 + Math.floor(random() * 2); i < n; i++) {
        try {
          bytes = pick(MUTATIONS, random)(bytes, random);
        } catch {
          // A mutation that needs a readable header cannot apply to an already-broken file.
        }
      }
      writeFileSync(file, bytes);
      report.runs++;
      mutants++;
      const start = performance.now();
      try {
        const flow = await loadFlow(file);
        // A conditional flow (the mutant may have any context width) runs at a zero context.
        const context = flow.contextDim > 0 ? { context: new Float32Array(flow.contextDim) } : {};
        flow.logProbSync(flow.sampleSync(4, { seed: 1, ...context }).map((v) => (Number.isFinite(v) ? v : 0)), context);
        report.loaded++;
      } catch (error) {
        if (error instanceof Error && error.name === 'ModelFileError') report.refused++;
        else report.failures.push(`run ${report.runs}: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
      }
      const ms = performance.now() - start;
      if (ms > report.worstMs) [report.worstMs, report.worstCase] = [ms, `mutant ${mutants} (${bytes.length} bytes)`];
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return report;
}

if (require.main === module) {
  const seconds = Number(process.argv[2] ?? 60);
  const seed = Number(process.argv[3] ?? Date.now() % 1e9);
  fuzzModelFiles(seed, seconds * 1000, Infinity, HOSTILE_CASES).then((report) => {
    console.log(`seed ${seed}: ${report.runs - report.hostile.length} mutated files, ${report.loaded} loaded and ran, ${report.refused} refused cleanly`);
    console.log('targeted hostile files:');
    for (const { name, ms, message } of report.hostile) {
      console.log(`  ${ms === undefined ? 'skipped' : `${ms.toFixed(0).padStart(5)} ms`}  ${name}: ${message.slice(0, 160)}`);
    }
    for (const failure of report.failures.slice(0, 20)) console.log(`  FAIL ${failure.slice(0, 300)}`);
    console.log(`mutations tried: ${report.runs} (${report.hostile.filter((h) => h.ms !== undefined).length} targeted hostile files + random mutations)`);
    console.log(`crashes or unexpected errors: ${report.failures.length}`);
    console.log(`worst load time: ${report.worstMs.toFixed(0)} ms (${report.worstCase})`);
    process.exit(report.failures.length === 0 ? 0 : 1);
  });
}
