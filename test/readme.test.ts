// The README's Example block, run as written (imports pointed at this checkout): what a new
// user copies first must work.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(__dirname, '..');

test('the README example runs', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const match = /## Example\s*```ts\n([\s\S]*?)```/.exec(readme);
  if (!match) throw new Error('README.md has no ts block under "## Example"');
  const lines = match[1].split('\n');
  const imports = lines.filter((l) => l.startsWith('import ')).map((l) => l.replace("'iaflow'", JSON.stringify(join(ROOT, 'src', 'index'))));
  const body = lines.filter((l) => !l.startsWith('import '));
  const dir = mkdtempSync(join(tmpdir(), 'iaflow-readme-'));
  try {
    const file = join(dir, 'example.ts');
    // Top-level await in the README: wrapped in an async function here; the checks read its variables.
    writeFileSync(
      file,
      `${imports.join('\n')}\n(async () => {\n${body.join('\n')}\n` +
        `if (x.length !== 80000 || lp.length !== 10000 || logProb.length !== 10000) throw new Error('wrong result sizes');\n` +
        `if (Math.max(...Array.from(lp, (v, i) => Math.abs(v - logProb[i]))) > 1e-3) throw new Error('logProb disagrees');\n` +
        `if (g.config.layers.length !== 5 || xs.length !== x2.length || z2.length !== 80000 || ld2.length !== logDet.length) throw new Error('bad flow');\n` +
        `console.log('ok');\n})().catch((e) => { console.error(e); process.exit(1); });\n`,
    );
    const run = spawnSync(process.execPath, ['--require', require.resolve('tsx/cjs'), file], { cwd: dir, encoding: 'utf8', timeout: 60000 });
    expect(run.stderr).toBe('');
    expect(run.stdout.trim()).toBe('ok');
    expect(run.status).toBe(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
