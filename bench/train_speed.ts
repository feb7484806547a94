// Training throughput, measured: not part of `npm test`.
//
//   npx tsx bench/train_speed.ts [--steps 40] [--threads 1,2]
//
// Rows per second of maximum-likelihood training steps (forward, backward, Adam; batch 512)
// on the staircase kernels (zero blocks skipped, register tiles, the best of AVX-512, AVX2 + FMA
// and portable: the instruction set inference uses) against the simple dense path (every weight multiplied, zeros included, plain loops).
// The same flows, data and thread counts, in one run. Last column: the same shape as an IAF,
// whose likelihood gradient runs the sequential direction (one-pass inverse and adjoint sweep).
import * as os from 'node:os';
import { createIAF, createMAF, getThreads, setThreads, standardNormal } from '../src/index';
import { __trainingInternals as internals } from '../src/train';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const steps = Number(arg('steps') ?? 40);
const threadCounts = (arg('threads') ?? `1,${os.cpus().length}`).split(',').map(Number).filter((t, i, all) => all.indexOf(t) === i);

const configs = [
  { dim: 2, hidden: [64, 64], layers: 5 },
  { dim: 8, hidden: [128, 128], layers: 5 },
  { dim: 32, hidden: [256, 256], layers: 3 },
];

const original = getThreads();
console.log(`iaflow training throughput: ${os.cpus()[0].model}, node ${process.version}, batch 512, ${steps} steps per measurement`);
console.log('dim  hidden       layers  threads   staircase rows/s   dense rows/s   speed-up   IAF (sequential) rows/s');
for (const { dim, hidden, layers } of configs) {
  const flow = createMAF({ dim, hidden, layers, seed: 1, softClamp: 0 });
  const iafFlow = createIAF({ dim, hidden, layers, seed: 1, softClamp: 0 });
  const data = standardNormal(20000, dim, { seed: 2 });
  for (const threads of threadCounts) {
    setThreads(threads);
    const fast = internals.likelihoodThroughput(flow, data, 512, steps);
    const dense = internals.likelihoodThroughput(flow, data, 512, Math.max(4, Math.round(steps / 4)), { reference: true });
    const sequential = internals.likelihoodThroughput(iafFlow, data, 512, Math.max(4, Math.round(steps / 2)));
    console.log(
      `${String(dim).padStart(3)}  ${JSON.stringify(hidden).padEnd(11)}  ${String(layers).padStart(6)}  ${String(threads).padStart(7)}  ${Math.round(fast).toLocaleString().padStart(17)}  ${Math.round(dense).toLocaleString().padStart(13)}  ${(fast / dense).toFixed(1).padStart(8)}x  ${Math.round(sequential).toLocaleString().padStart(24)}`,
    );
  }
}
setThreads(original);
