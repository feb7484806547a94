// The README's numpy-only reader, run by python3 against a file iaflow wrote: the
// model file really is readable from Python, and the README's code really works.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { affine, createFlow, iaf, maf, permute, reverse, saveFlow } from '../src/index';

function pythonWithNumpy(): boolean {
  const probe = spawnSync('python3', ['-c', 'import numpy'], { encoding: 'utf8' });
  return probe.status === 0;
}

function readmeSnippet(): string {
  const readme = readFileSync(join(__dirname, '..', 'README.md'), 'utf8');
  const match = /<!-- python-reader -->\s*```python\n([\s\S]*?)```/.exec(readme);
  if (!match) throw new Error('README.md has no python block after <!-- python-reader -->');
  return match[1];
}

const available = pythonWithNumpy();
if (!available) {
  console.warn('SKIPPED: python3 with numpy is not available here, so the README reader was not run (apt install python3-numpy).');
}

(available ? test : test.skip)('the README numpy reader computes the same log-densities as iaflow', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-python-'));
  try {
    const flow = createFlow({
      dim: 4,
      seed: 3,
      layers: [
        iaf({ hidden: [16, 16], activation: 'tanh', scale: 'gated' }),
        permute({ seed: 2 }),
        maf({ hidden: [12, 12, 12], residual: true, scale: 'exp', order: [2, 0, 3, 1] }),
        reverse(),
        maf({ hidden: [10], activation: 'elu' }),
        affine({ loc: [10, -20, 0.5, 3], scale: [2, -0.5, 8, 1.5] }),
      ],
    });
    // Far from the initialisation, so every term of the density matters.
    const params = flow.getParameters();
    for (const p of Object.values(params)) for (let i = 0; i < p.length; i++) p[i] += 0.2 * Math.sin(1.3 * i + p.length);
    flow.setParameters(params);
    const file = join(dir, 'model.safetensors');
    await saveFlow(flow, file);
    const x = flow.sampleSync(50, { seed: 4 });
    const rows = Array.from({ length: 50 }, (_, r) => Array.from(x.subarray(r * 4, r * 4 + 4)));
    const script = join(dir, 'reader.py');
    writeFileSync(
      script,
      `${readmeSnippet()}\nimport sys\nconfig, tensors = read_iaflow(sys.argv[1])\nx = np.array(json.load(sys.stdin), dtype=np.float64)\nprint(json.dumps(log_prob(config, tensors, x).tolist()))\n`,
    );
    const output = execFileSync('python3', [script, file], { input: JSON.stringify(rows), encoding: 'utf8' });
    const fromPython = JSON.parse(output) as number[];
    const fromIaflow = await flow.logProb(x);
    fromPython.forEach((v, i) => expect(Math.abs(v - fromIaflow[i])).toBeLessThan(1e-3 + 1e-4 * Math.abs(v)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
