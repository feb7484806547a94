// Mutates valid model files and loads them: every outcome must be a flow that works or a
// ModelFileError, never another exception, a hang or a crash. `npm run fuzz` runs it for
// longer (`npx tsx test/fuzz.ts [seconds] [seed]`); test/io.test.ts runs a short, seeded pass.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createFlow, iaf, maf, permute, reverse } from '../src/index';
import { encodeFlow, loadFlow } from '../src/io';

export interface FuzzReport {
  runs: number;
  loaded: number;
  refused: number;
  failures: string[];
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
    // NaN or Inf into the tensor bytes
    const c = Buffer.from(b);
    const start = 8 + headerLength(b);
    const at = start + 4 * Math.floor((r() * (c.length - start)) / 4);
    if (at + 4 <= c.length) c.writeFloatLE(r() < 0.5 ? NaN : Infinity, at);
    return c;
  },
];

export async function fuzzModelFiles(seed: number, budgetMs: number, maxRuns = Infinity): Promise<FuzzReport> {
  const random = mulberry32(seed);
  const seeds = seedFiles();
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-fuzz-'));
  const report: FuzzReport = { runs: 0, loaded: 0, refused: 0, failures: [] };
  const file = join(dir, 'mutant.safetensors');
  const deadline = Date.now() + budgetMs;
  try {
    while (Date.now() < deadline && report.runs < maxRuns) {
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
      try {
        const flow = await loadFlow(file);
        flow.logProbSync(flow.sampleSync(4, { seed: 1 }).map((v) => (Number.isFinite(v) ? v : 0)));
        report.loaded++;
      } catch (error) {
        if (error instanceof Error && error.name === 'ModelFileError') report.refused++;
        else report.failures.push(`run ${report.runs}: ${error instanceof Error ? `${error.name}: ${error.message}` : String(error)}`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return report;
}

if (require.main === module) {
  const seconds = Number(process.argv[2] ?? 60);
  const seed = Number(process.argv[3] ?? Date.now() % 1e9);
  fuzzModelFiles(seed, seconds * 1000).then((report) => {
    console.log(`seed ${seed}: ${report.runs} mutated files, ${report.loaded} loaded and ran, ${report.refused} refused cleanly`);
    for (const failure of report.failures.slice(0, 20)) console.log(`  FAIL ${failure}`);
    process.exit(report.failures.length === 0 ? 0 : 1);
  });
}
