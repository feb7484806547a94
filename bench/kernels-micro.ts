// Kernel micro-benchmark: rows/s of sampleWithLogProb for CFG-A (IAF, parallel direction), CFG-B, and
// the MAF sequential direction of CFG-A's shape, plus standardNormal, on the pool's threads.
//
//   npx tsx bench/kernels-micro.ts [--threads 2] [--rounds 9] [--old path/to/other/iaflow.node] [--isa avx2]
//
// Rates are per CPU second of the process (all threads), which a busy machine disturbs far less than
// wall time; KERNELS_MICRO_WALL=1 times wall seconds instead (for a quiet machine).
//
// With --old, a second build of the addon (e.g. the previous commit's, copied aside; it must speak the
// same binding API, named options, as this one) is loaded into
// the same process and both are timed interleaved, call by call, so a machine shared with other work
// affects both alike; each ratio is the median over rounds of new/old rows/s within the round. It
// also checks that both builds map the same latent rows to bit-identical outputs (expected whenever
// the kernels' per-output summation order is unchanged).
import { createIAF, createMAF, Flow, standardNormal } from '../src/index';
import { native, NativeBinding } from '../src/native';
import { randomParameters } from './network';
import { median } from './timing';

interface Args {
  threads: number;
  rounds: number;
  old?: string;
  isa?: string;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { threads: 2, rounds: 9 };
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === '--threads') args.threads = Number(value);
    else if (argv[i] === '--rounds') args.rounds = Number(value);
    else if (argv[i] === '--old') args.old = value;
    else if (argv[i] === '--isa') args.isa = value;
    else throw new Error(`unknown argument ${argv[i]}; usage: npx tsx bench/kernels-micro.ts [--threads n] [--rounds n] [--old addon.node] [--isa avx512|avx2|portable]`);
    i++;
  }
  return args;
}

interface Cell {
  name: string;
  rows: number;
  make: () => Flow;
}

const CELLS: Cell[] = [
  { name: 'CFG-A IAF sampleWithLogProb', rows: 10_000, make: () => createIAF({ dim: 16, hidden: [256, 256], layers: 5, seed: 1, softClamp: 0 }) },
  { name: 'CFG-B IAF sampleWithLogProb', rows: 4_096, make: () => createIAF({ dim: 64, hidden: [512, 512], layers: 5, seed: 2, softClamp: 0 }) },
  { name: 'CFG-A MAF sampleWithLogProb (sequential)', rows: 10_000, make: () => createMAF({ dim: 16, hidden: [256, 256], layers: 5, seed: 3, softClamp: 0 }) },
  { name: 'CFG-B MAF sampleWithLogProb (sequential)', rows: 4_096, make: () => createMAF({ dim: 64, hidden: [512, 512], layers: 5, seed: 4, softClamp: 0 }) },
];

const now = () => Number(process.hrtime.bigint()) / 1e9;

/** Builds the flow while `binding` stands in for the addon, so the flow's instance lives in that build. */
function withBinding<T>(binding: NativeBinding, build: () => T): T {
  const saved = native.NativeFlow;
  native.NativeFlow = binding.NativeFlow;
  try {
    return build();
  } finally {
    native.NativeFlow = saved;
  }
}

/** Process CPU seconds (all threads): on a machine shared with other work, wall time mostly measures the others. */
const cpuNow = () => {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
};
const clock = process.env.KERNELS_MICRO_WALL ? now : cpuNow;

async function rowsPerSecond(flow: Flow, rows: number): Promise<number> {
  const start = clock();
  await flow.sampleWithLogProb(rows, { seed: 7 });
  return rows / (clock() - start);
}

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ia = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ib = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ia.length; i++) if (ia[i] !== ib[i]) return false;
  return true;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const old = args.old ? (require(require('path').resolve(args.old)) as NativeBinding) : undefined;
  native.setThreads(args.threads);
  old?.setThreads(args.threads);
  if (args.isa && (!native.selectKernels(args.isa) || (old && !old.selectKernels(args.isa)))) {
    throw new Error(`this CPU or build does not run the ${args.isa} kernels`);
  }
  const unit = clock === now ? 'wall' : 'CPU (all threads)';
  console.log(`kernels ${native.kernelInfo().isa} (tile ${native.kernelInfo().tileRows} rows), ${args.threads} threads, ${args.rounds} rounds, rows per ${unit} second`);
  for (const cell of CELLS) {
    const current = cell.make();
    const params = randomParameters(current, 5);
    current.setParameters(params);
    // setParameters builds a new native instance too, so it also runs while the old build stands in.
    const previous = old
      ? withBinding(old, () => {
          const flow = cell.make();
          flow.setParameters(params);
          return flow;
        })
      : undefined;
    for (let warm = 0; warm < 2; warm++) {
      await current.sampleWithLogProb(cell.rows, { seed: 7 });
      await previous?.sampleWithLogProb(cell.rows, { seed: 7 });
    }
    const fresh: number[] = [];
    const ratios: number[] = [];
    for (let round = 0; round < args.rounds; round++) {
      const a = await rowsPerSecond(current, cell.rows);
      fresh.push(a);
      if (previous) ratios.push(a / (await rowsPerSecond(previous, cell.rows)));
    }
    let line = `${cell.name}: ${(median(fresh) / 1e3).toFixed(1)}k rows/s`;
    if (previous) {
      // The same latent rows through both builds (their normals may differ by design); 1024 rows is
      // a multiple of every tile size, so every row takes the tiled path in both.
      const z = standardNormal(1024, current.config.dim, { seed: 11 });
      const x1 = current.forwardSync(z);
      const x0 = previous.forwardSync(z);
      const bits = sameBits(x1.x, x0.x) && sameBits(x1.logDet, x0.logDet);
      line += `, new/old ${median(ratios).toFixed(3)} (min ${Math.min(...ratios).toFixed(3)}, max ${Math.max(...ratios).toFixed(3)}), outputs ${bits ? 'bit-identical' : 'differ'}`;
    }
    console.log(line);
  }
  const normalRows = 200_000;
  const normalDim = 16;
  const fresh: number[] = [];
  const ratios: number[] = [];
  const out = new Float32Array(normalRows * normalDim);
  for (let round = 0; round < args.rounds; round++) {
    let start = clock();
    native.standardNormal({ seed: [3, 0], rows: normalRows, dim: normalDim, out });
    const a = (normalRows * normalDim) / (clock() - start);
    fresh.push(a);
    if (old) {
      start = clock();
      old.standardNormal({ seed: [3, 0], rows: normalRows, dim: normalDim, out });
      ratios.push(a / ((normalRows * normalDim) / (clock() - start)));
    }
  }
  let line = `standardNormal: ${(median(fresh) / 1e6).toFixed(1)}M normals/s`;
  if (old) line += `, new/old ${median(ratios).toFixed(2)}`;
  console.log(line);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
