// Every TypeScript block of the README, run as written (imports pointed at this checkout, each
// block in its own file, in a fresh folder): what a new user copies must work. Each block also
// gets checks on what it computed, so a snippet that runs but gives nonsense (a distillation
// with KL 1e10, say) fails too.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createIAF } from '../src/index';
import { encodeFlow } from '../src/io';
import { decodeSafetensors, encodeSafetensors, Tensor } from '../src/safetensors';

const ROOT = join(__dirname, '..');

interface Block {
  /** The heading the block sits under. */
  section: string;
  code: string;
}

function tsBlocks(): Block[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const blocks: Block[] = [];
  let section = '';
  const lines = readme.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (/^#{2,3} /.test(lines[i])) section = lines[i].replace(/^#+ /, '');
    if (lines[i] !== '```ts') continue;
    const start = ++i;
    while (i < lines.length && lines[i] !== '```') i++;
    blocks.push({ section, code: lines.slice(start, i).join('\n') });
  }
  return blocks;
}

/** What each block must have computed, by section; a block under any other heading fails the test until it gets checks here. */
const CHECKS: Record<string, { setup?: (dir: string) => void; check: string }> = {
  '.npy files': { check: `if (lp.length !== 10000 || !Array.from(lp).every(Number.isFinite)) throw new Error('bad logProb');` },
  Example: {
    check:
      `if (x.length !== 80000 || lp.length !== 10000 || logProb.length !== 10000) throw new Error('wrong result sizes');\n` +
      `if (Math.max(...Array.from(lp, (v, i) => Math.abs(v - logProb[i]))) > 1e-3) throw new Error('logProb disagrees');\n` +
      `if (g.config.layers.length !== 5 || xs.length !== x2.length || z2.length !== 80000 || ld2.length !== logDet.length) throw new Error('bad flow');`,
  },
  Training: {
    // Two moons' true density scores about -0.29 nats per point; the fitted MAF comes near it,
    // the IAF matches the banana (KL near 0) and the student its teacher.
    check:
      `if (report.warnings.length > 0 || !(report.validLoss[report.bestEpoch!] < 0.5) || !(report.gaussianValidLoss! > 1.5)) throw new Error('fit: ' + JSON.stringify(report.warnings) + ' ' + report.validLoss[report.bestEpoch!]);\n` +
      `if (!(vi.kl! < 0.1)) throw new Error('fitReverseKL: KL ' + vi.kl);\n` +
      `if (!(distilled.kl! < 0.5) || distilled.diverged) throw new Error('distill: KL ' + distilled.kl);`,
  },
  'Conditional flows: posteriors p(theta | y)': {
    check:
      `if (draws.length !== 300 || given.x.length !== 3000) throw new Error('wrong sizes');\n` +
      `if (Math.max(...Array.from(scores, (v, i) => Math.abs(v - given.logProb[i]))) > 1e-3) throw new Error('logProb disagrees with sampleWithLogProb');\n` +
      `if (vi.warnings.length > 0 || !Number.isFinite(vi.finalLoss)) throw new Error('fitReverseKL: ' + vi.warnings);`,
  },
  Serving: {
    // The plugin on an ephemeral port (PORT=0), serving a model saved here; then closed.
    setup: (dir) => {
      const script = `const { createFlow, maf, saveFlow } = require(${JSON.stringify(join(ROOT, 'src', 'index'))});\n` +
        `saveFlow(createFlow({ dim: 2, seed: 1, layers: [maf({ hidden: [8] })] }), ${JSON.stringify(join(dir, 'model.safetensors'))}).catch((e) => { console.error(e); process.exit(1); });`;
      const made = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), '-e', script], { encoding: 'utf8' });
      if (made.status !== 0) throw new Error(made.stderr);
    },
    check:
      `const res = await app.inject({ method: 'POST', url: '/v1/sample', payload: { n: 3, seed: 1 } });\n` +
      `if (res.statusCode !== 200) throw new Error('sample: ' + res.statusCode + ' ' + res.body);\n` +
      `await app.close();`,
  },
  'Conditional models and sbi posteriors': {
    // An sbi estimator's state dict as the test of importTorch builds it: the nflows-cmaf fixture
    // (D 3, C 4) under net., with z-scoring of theta and of x.
    setup: (dir) => writeFileSync(join(dir, 'posterior.safetensors'), sbiStyleFile()),
    check:
      `if (posterior.contextDim !== 4 || theta.length !== 3000 || lp.length !== 1000) throw new Error('wrong sizes');\n` +
      `if (!Array.from(theta).every(Number.isFinite) || !Array.from(lp).every(Number.isFinite)) throw new Error('non-finite results');`,
  },
  'Weights trained in PyTorch': {
    setup: (dir) => copyFileSync(join(ROOT, 'test', 'fixtures', 'torch', 'zuko-maf-d3.safetensors'), join(dir, 'maf.safetensors')),
    check: `if (lp.length !== 2 || !Array.from(lp).every(Number.isFinite)) throw new Error('bad logProb');`,
  },
};

/** The nflows-cmaf fixture as sbi saves an estimator: names under net., a z-scoring transform first, a context standardisation. */
function sbiStyleFile(): Buffer {
  const { tensors } = decodeSafetensors(readFileSync(join(ROOT, 'test', 'fixtures', 'torch', 'nflows-cmaf-d3-c4.safetensors')));
  const out = new Map<string, Tensor>();
  for (const [key, tensor] of tensors) out.set('net.' + key.replace(/^_transform\._transforms\.(\d+)\./, (_, i: string) => `_transform._transforms.${Number(i) + 1}.`), tensor);
  const buffer = (values: number[]): Tensor => ({ dtype: 'F32', shape: [values.length], data: Float32Array.from(values) });
  out.set('net._transform._transforms.0._shift', buffer([0.2, -0.5, 1]));
  out.set('net._transform._transforms.0._scale', buffer([0.8, 1.5, 0.6]));
  out.set('net._embedding_net.0._mean', buffer([0.1, -0.3, 0.4, 1.2]));
  out.set('net._embedding_net.0._std', buffer([1.3, 0.7, 2.2, 1.1]));
  return encodeSafetensors(out);
}

const blocks = tsBlocks();

test('the README has its TypeScript blocks, each with checks here', () => {
  expect(blocks.length).toBeGreaterThanOrEqual(4);
  for (const block of blocks) expect(Object.keys(CHECKS)).toContain(block.section);
});

test.each(blocks.map((b) => [b.section, b] as const))('the README block under "%s" runs as written', (_section, block) => {
  const entry = CHECKS[block.section];
  const lines = block.code.split('\n');
  // 'iaflow' and 'iaflow/server' are this checkout's sources; other packages resolve from it too (the snippet runs in a temp folder).
  const resolveImport = (name: string) =>
    name === 'iaflow' ? join(ROOT, 'src', 'index') : name === 'iaflow/server' ? join(ROOT, 'src', 'server') : require.resolve(name, { paths: [ROOT] });
  const imports = lines.filter((l) => l.startsWith('import ')).map((l) => l.replace(/from '([^']+)'/, (_, name: string) => `from ${JSON.stringify(resolveImport(name))}`));
  const body = lines.filter((l) => !l.startsWith('import '));
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-readme-'));
  try {
    entry.setup?.(dir);
    const file = join(dir, 'snippet.ts');
    // Top-level await in the README: wrapped in an async function here; the checks read its variables.
    writeFileSync(file, `${imports.join('\n')}\n(async () => {\n${body.join('\n')}\n${entry.check}\nconsole.log('ok');\n})().catch((e) => { console.error(e); process.exit(1); });\n`);
    const run = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), file], { cwd: dir, encoding: 'utf8', timeout: 120_000, env: { ...process.env, PORT: '0' } });
    expect(run.stderr).toBe('');
    expect(run.stdout.trim().split('\n').pop()).toBe('ok');
    expect(run.status).toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 150_000);
