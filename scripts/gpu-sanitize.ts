// A short workload for compute-sanitizer (memcheck, racecheck): a few small flows on the 'cuda'
// backend, every direction, batches that end in a partial tile, each result checked against the
// 'cpu' backend. scripts/gpu-check.sh runs it as
//
//   compute-sanitizer --tool memcheck node --import tsx scripts/gpu-sanitize.ts
//
// Exit 0: every call ran and matched; 1: a mismatch or a failed call; 2: no usable cuda backend
// (it says why). Batches stay small: under racecheck a launch runs hundreds of times slower.
import { backends, createFlow, createIAF, createMAF, iaf, maf, reverse } from '../src/index';
import type { Flow } from '../src/index';

const BACKEND = process.env.IAFLOW_SANITIZE_BACKEND || 'cuda';
const ROWS = Number(process.env.IAFLOW_SANITIZE_ROWS || 300); // not a multiple of a tile
const TOLERANCE = 1e-3; // loose: this run looks for memory errors and races, the tests check accuracy

function worst(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let w = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i]));
    if (!(d <= w)) w = Number.isNaN(d) ? Infinity : d;
  }
  return w;
}

async function check(name: string, make: (backend: string) => Flow): Promise<boolean> {
  const gpu = make(BACKEND);
  const cpu = make('cpu');
  cpu.setParameters(gpu.getParameters());
  let ok = true;
  const report = (what: string, diff: number) => {
    const pass = diff <= TOLERANCE;
    ok &&= pass;
    console.log(`${pass ? 'ok  ' : 'FAIL'} ${name} ${what}: max relative diff ${diff.toExponential(1)}`);
  };
  for (const rows of [1, ROWS]) {
    const a = await gpu.sampleWithLogProb(rows, { seed: 7 });
    const b = await cpu.sampleWithLogProb(rows, { seed: 7 });
    report(`sampleWithLogProb(${rows}) x`, worst(a.x, b.x));
    report(`sampleWithLogProb(${rows}) log q`, worst(a.logProb, b.logProb));
    report(`logProb(${rows} rows)`, worst(await gpu.logProb(b.x), await cpu.logProb(b.x)));
  }
  gpu.dispose();
  cpu.dispose();
  return ok;
}

async function main(): Promise<number> {
  const info = backends().find((b) => b.name === BACKEND);
  if (!info || !info.usable) {
    console.log(`no usable '${BACKEND}' backend: ${info ? info.whyNot : `backends() lists ${backends().map((b) => b.name).join(', ')}`}`);
    return 2;
  }
  console.log(`backend '${BACKEND}': ${info.detail}; ${ROWS} rows`);
  const flows: [string, (backend: string) => Flow][] = [
    ['IAF D=8 [64, 64] x3', (backend) => createIAF({ dim: 8, hidden: [64, 64], layers: 3, seed: 1, backend })],
    ['MAF D=8 [64, 64] x3', (backend) => createMAF({ dim: 8, hidden: [64, 64], layers: 3, seed: 2, backend })],
    ['IAF D=33 [96] x2 softplus', (backend) => createIAF({ dim: 33, hidden: [96], layers: 2, seed: 3, scale: 'softplus', backend })],
    ['MAF D=64 [256, 256] x2 exp', (backend) => createMAF({ dim: 64, hidden: [256, 256], layers: 2, seed: 4, scale: 'exp', backend })],
    [
      'mixed IAF/MAF D=5 residual',
      (backend) => createFlow({ dim: 5, layers: [iaf({ hidden: [32, 32, 32], residual: true }), reverse(), maf({ hidden: [16] })], seed: 5, backend }),
    ],
  ];
  let ok = true;
  for (const [name, make] of flows) {
    try {
      ok = (await check(name, make)) && ok;
    } catch (error) {
      ok = false;
      console.log(`FAIL ${name}: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  console.log(ok ? 'sanitizer workload: every call matched the cpu backend' : 'sanitizer workload: FAILED');
  return ok ? 0 : 1;
}

main().then(
  (code) => (process.exitCode = code),
  (error) => {
    console.error(error);
    process.exitCode = 1;
  },
);
