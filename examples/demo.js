#!/usr/bin/env node
// A first run of iaflow: build an IAF and a MAF, sample, score, save, load,
// and print how fast each direction runs on this machine.
const { performance } = require('node:perf_hooks');
const os = require('node:os');
const path = require('node:path');
const fs = require('node:fs');
const { createFlow, iaf, maf, reverse, saveFlow, loadFlow, getThreads } = require('..');

async function timed(fn) {
  const start = performance.now();
  const result = await fn();
  return { result, seconds: (performance.now() - start) / 1000 };
}

async function main() {
  const dim = 8;
  const n = 100_000;
  const flows = {
    'IAF (3 layers)': createFlow({ dim, seed: 1, layers: [iaf({ hidden: [128, 128] }), reverse(), iaf({ hidden: [128, 128] }), reverse(), iaf({ hidden: [128, 128] })] }),
    'MAF (3 layers)': createFlow({ dim, seed: 1, layers: [maf({ hidden: [128, 128] }), reverse(), maf({ hidden: [128, 128] }), reverse(), maf({ hidden: [128, 128] })] }),
  };
  console.log(`iaflow demo: dim ${dim}, hidden [128, 128], ${n.toLocaleString()} rows, ${getThreads()} threads, ${os.cpus()[0].model}`);
  console.log('');
  console.log('model            sample rows/s   logProb rows/s   mean log p(sample)');
  for (const [name, flow] of Object.entries(flows)) {
    const sampled = await timed(() => flow.sampleWithLogProb(n, { seed: 42 }));
    const scored = await timed(() => flow.logProb(sampled.result.x));
    let mean = 0;
    for (const v of scored.result) mean += v / n;
    console.log(
      `${name.padEnd(16)} ${Math.round(n / sampled.seconds).toLocaleString().padStart(13)}   ${Math.round(n / scored.seconds).toLocaleString().padStart(14)}   ${mean.toFixed(3).padStart(18)}`,
    );
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iaflow-demo-'));
  const file = path.join(dir, 'iaf.safetensors');
  await saveFlow(flows['IAF (3 layers)'], file);
  const loaded = await loadFlow(file);
  const again = await loaded.sample(3, { seed: 42 });
  console.log('');
  console.log(`saved and reloaded ${file} (${fs.statSync(file).size.toLocaleString()} bytes); first sample: [${Array.from(again.subarray(0, dim), (v) => v.toFixed(3)).join(', ')}]`);
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
