// Compile-time checks of the public types: a TypeScript user who misspells an option or passes
// the wrong kind of value gets an error from tsc, and correct use compiles cleanly. Runs tsc on
// test/types/ (good-usage.ts and bad-options.ts, where each bad line is marked with the error
// it must produce). The installed package's declarations (both the `import` and the `require`
// entry) are checked the same way by test/pack.test.ts.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = join(__dirname, '..');
const typesDir = join(__dirname, 'types');

interface Diagnostic {
  file: string;
  line: number;
  code: string;
}

function typeCheck(): { diagnostics: Diagnostic[]; output: string } {
  const tsc = require.resolve('typescript/bin/tsc');
  const run = spawnSync(process.execPath, [tsc, '-p', join(typesDir, 'tsconfig.json'), '--pretty', 'false'], { cwd: root, encoding: 'utf8' });
  if (run.error) throw run.error;
  const output = `${run.stdout}${run.stderr}`;
  const diagnostics: Diagnostic[] = [];
  for (const line of output.split('\n')) {
    const match = /^(.+?)\((\d+),\d+\): error (TS\d+):/.exec(line);
    if (match) diagnostics.push({ file: relative(root, join(root, match[1])).replace(/\\/g, '/'), line: Number(match[2]), code: match[3] });
  }
  return { diagnostics, output };
}

function expectedErrors(file: string): Diagnostic[] {
  const name = `test/types/${file}`;
  return readFileSync(join(typesDir, file), 'utf8')
    .split('\n')
    .flatMap((text, index) => {
      const match = /\/\/ error (TS\d+)\s*$/.exec(text);
      return match ? [{ file: name, line: index + 1, code: match[1] }] : [];
    });
}

const result = typeCheck();

test('tsc ran and reported only diagnostics this test understands', () => {
  const unparsed = result.output.split('\n').filter((line) => /error TS\d+/.test(line) && !/^.+?\(\d+,\d+\): error TS\d+:/.test(line));
  expect(unparsed).toEqual([]);
});

test('correct usage (test/types/good-usage.ts) type-checks without errors', () => {
  expect(result.diagnostics.filter((d) => d.file === 'test/types/good-usage.ts')).toEqual([]);
});

test('misspelt option names and wrong option values are compile-time errors (test/types/bad-options.ts)', () => {
  const expected = expectedErrors('bad-options.ts');
  expect(expected.length).toBeGreaterThanOrEqual(10);
  // Misspellings with a close match are TS2561 ("Did you mean ...?"), others TS2353.
  expect(expected.filter((d) => d.code === 'TS2561').length).toBeGreaterThanOrEqual(5);
  const actual = result.diagnostics.filter((d) => d.file === 'test/types/bad-options.ts');
  expect(actual).toEqual(expected);
});

test('no errors anywhere else (e.g. in src/ as seen from a strict consumer)', () => {
  expect(result.diagnostics.filter((d) => !d.file.startsWith('test/types/'))).toEqual([]);
});
