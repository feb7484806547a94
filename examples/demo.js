#!/usr/bin/env node
// A short tour of iaflow's API: fit a MAF to two moons, distil it into an IAF, compare them,
// sample, save and reload. Run it with `node examples/demo.js` after `npm install` (about 10 s
// on 2 cores). `npm run demo` runs the fuller demo of the command line (src/cli.ts): progress
// bars, a timing table and a picture.
const os = require('node:os');
const path = require('node:path');
const { createMAF, createIAF, fit, distill, datasets, saveFlow, loadFlow, writeNpy } = require('..');

const mean = (values) => values.reduce((sum, v) => sum + v, 0) / values.length;

async function main() {
  // Data: 2-d points, row-major Float32Arrays (point i is data[2i], data[2i + 1]).
  const train = datasets.twoMoons(20_000, { seed: 0 });
  const test = datasets.twoMoons(5_000, { seed: 1 });

  // A MAF's density is one pass, so it is trained by maximum likelihood on the data.
  const maf = createMAF({ dim: 2, layers: 5, hidden: [64, 64], seed: 0 });
  const fitted = await fit(maf, train, { epochs: 50, batchSize: 512, validationFraction: 0.1, patience: 10, seed: 0 });
  console.log(`MAF: ${fitted.epochs} epochs in ${fitted.seconds.toFixed(1)} s`);

  // An IAF's sampling is one pass; it learns the MAF by distillation (reverse KL, plus forward KL
  // on the MAF's samples).
  const iaf = createIAF({ dim: 2, layers: 5, hidden: [64, 64], seed: 0 });
  const distilled = await distill(iaf, maf, { steps: 4000, batchSize: 512, seed: 0, clipGradNorm: 5 });
  console.log(`IAF: ${distilled.steps} distillation steps in ${distilled.seconds.toFixed(1)} s, KL(IAF || MAF) ${distilled.kl.toFixed(3)} nats`);

  // Test log-likelihood (nats per point; higher is better), against the true density's.
  console.log(
    `test log-likelihood: true density ${mean(datasets.twoMoonsLogDensity(test)).toFixed(3)}, ` +
      `MAF ${mean(await maf.logProb(test)).toFixed(3)}, IAF ${mean(await iaf.logProb(test)).toFixed(3)}`,
  );

  // Samples from the IAF (one pass), with their log-density from the same pass, as .npy for numpy.
  const n = 10_000;
  const { x, logProb } = await iaf.sampleWithLogProb(n, { seed: 42 });
  const samplesFile = path.join(os.tmpdir(), 'iaflow-example-samples.npy');
  await writeNpy(samplesFile, x, [n, 2]); // numpy: np.load(samplesFile) -> float32 (10000, 2)
  console.log(`${n} IAF samples, mean log q ${mean(logProb).toFixed(3)}, written to ${samplesFile}`);

  // Save and reload: the same model, the same samples for the same seed.
  const file = path.join(os.tmpdir(), 'iaflow-example.safetensors');
  await saveFlow(iaf, file);
  const again = await loadFlow(file);
  const first = await again.sample(1, { seed: 42 });
  console.log(`reloaded ${file}: first sample (${first[0].toFixed(4)}, ${first[1].toFixed(4)}) = (${x[0].toFixed(4)}, ${x[1].toFixed(4)})`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
