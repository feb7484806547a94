// The cost of the context (issue 13): CFG-A (dim 16, 5 IAF or MAF layers of [256, 256] with
// reversals) unconditional against the same flow with a context of 16, both directions, the
// context broadcast (one row for the batch) and one row per row (a batch of n observations).
// Rounds are interleaved; rows/s are medians over rounds and each ratio is the median of the
// per-round ratios, so load drifting over the run hits every variant alike. Prints rows/s and the
// conditional/unconditional ratios (target: the context costs under 10%, ratio >= 0.90) beside the
// arithmetic bound: a context row adds its C x hidden multiply-adds to every MADE layer, so one
// context per row can reach at best (unconditional multiply-adds) / (conditional ones) even if the
// context product ran as fast as the masked products do.
//
//   npm run bench:conditional            (about a minute)
import { Flow, createFlow, getThreads, iaf, maf, reverse, standardNormal } from '../src/index';
import { cpuInfo, loadAverage } from './machine';

const DIM = 16;
const CONTEXT = 16;
const ROUNDS = 15;

function make(kind: 'iaf' | 'maf', context: number): Flow {
  const layer = () => (kind === 'iaf' ? iaf : maf)({ hidden: [256, 256], softClamp: 0 });
  return createFlow({ dim: DIM, context, seed: 1, layers: [layer(), reverse(), layer(), reverse(), layer(), reverse(), layer(), reverse(), layer()] });
}

// Multiply-adds per row: the weights the MADE masks keep (masked entries are stored as zeros).
function multiplyAdds(flow: Flow): number {
  let count = 0;
  for (const [name, tensor] of Object.entries(flow.getParameters())) {
    if (!name.endsWith('weight')) continue;
    for (const w of tensor) if (w !== 0) count++;
  }
  return count;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main() {
  const rows = { parallel: 50_000, sequential: 10_000 };
  const contexts = standardNormal(rows.parallel, CONTEXT, { seed: 3 });
  const one = contexts.slice(0, CONTEXT);
  const lines: string[] = [];
  for (const kind of ['iaf', 'maf'] as const) {
    const plain = make(kind, 0);
    const conditional = make(kind, CONTEXT);
    const bound = multiplyAdds(plain) / multiplyAdds(conditional);
    // Sampling runs an IAF's parallel direction and a MAF's sequential one; scoring the reverse.
    for (const what of ['sampleWithLogProb', 'logProb'] as const) {
      const parallel = (what === 'sampleWithLogProb') === (kind === 'iaf');
      const n = parallel ? rows.parallel : rows.sequential;
      const x = what === 'logProb' ? plain.sampleSync(n, { seed: 2 }) : null;
      const run = (flow: Flow, context?: Float32Array) =>
        what === 'sampleWithLogProb' ? flow.sampleWithLogProb(n, { seed: 1, ...(context ? { context } : {}) }) : flow.logProb(x!, context ? { context } : undefined);
      const variants: [string, () => Promise<unknown>][] = [
        ['unconditional', () => run(plain)],
        ['context broadcast', () => run(conditional, one)],
        ['context per row', () => run(conditional, contexts.subarray(0, n * CONTEXT))],
      ];
      const times = variants.map(() => [] as number[]);
      for (const [, f] of variants) await f(); // warm-up
      for (let round = 0; round < ROUNDS; round++) {
        for (let v = 0; v < variants.length; v++) {
          const t0 = performance.now();
          await variants[v][1]();
          times[v].push(performance.now() - t0);
        }
      }
      const rate = times.map((t) => n / (median(t) / 1000));
      const ratio = (v: number) => median(times[0].map((t, round) => t / times[v][round]));
      const perRow = ratio(2);
      lines.push(
        `| ${kind.toUpperCase()} ${what} (${parallel ? 'parallel' : 'sequential'}) | ${Math.round(rate[0]).toLocaleString('en-US')} | ` +
          `${Math.round(rate[1]).toLocaleString('en-US')} (${ratio(1).toFixed(2)}) | ${Math.round(rate[2]).toLocaleString('en-US')} (${perRow.toFixed(2)}) | ` +
          `${bound.toFixed(3)} | ${perRow >= 0.9 ? 'PASS' : 'MISS'} |`,
      );
    }
  }
  console.log(`Conditional CFG-A (dim ${DIM}, context ${CONTEXT}, 5 layers [256, 256]), ${getThreads()} threads, median of ${ROUNDS} interleaved rounds`);
  const cpu = cpuInfo();
  console.log(`${cpu.procModel ?? cpu.osModel}, ${cpu.logicalCpus} logical CPUs, load average ${loadAverage()} (${new Date().toISOString()})`);
  console.log('| flow, call | unconditional rows/s | context broadcast rows/s (ratio) | context per row rows/s (ratio) | arithmetic bound of the per-row ratio | per row >= 0.90 |');
  console.log('|---|---|---|---|---|---|');
  for (const line of lines) console.log(line);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
