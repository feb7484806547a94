// The command line (src/cli.ts): train, sample, logprob, info and demo run in-process through
// main(argv, io) with a fake stdout/stderr; a few runs go through a real child process for the
// exit codes and the absence of stack traces.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { CliIO, main } from '../src/cli';
import { datasets, loadFlow, readNpy, writeNpy } from '../src';
import { crc32, PNG_SIGNATURE } from '../src/png';
import { formatCsv, parseCsv } from '../src/table';

const ROOT = join(__dirname, '..');

interface FakeIO extends CliIO {
  out: () => string;
  err: () => string;
}

function fakeIO(tty = false): FakeIO {
  let out = '';
  let err = '';
  return {
    stdout: { write: (text: string) => ((out += text), true), isTTY: tty, columns: 120 },
    stderr: { write: (text: string) => ((err += text), true) },
    out: () => out,
    err: () => err,
  };
}

async function run(argv: string[], tty = false): Promise<{ code: number; out: string; err: string }> {
  const io = fakeIO(tty);
  const code = await main(argv, io);
  return { code, out: io.out(), err: io.err() };
}

let dir: string;
let csv: string;
let model: string;
const points = datasets.twoMoons(500, { seed: 3 });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'iaflow-cli-'));
  csv = join(dir, 'moons.csv');
  model = join(dir, 'model.safetensors');
  writeFileSync(csv, formatCsv(points, 2, ['x', 'y']));
  const trained = await run(['train', csv, '--epochs', '2', '--layers', '2', '--hidden', '16,16', '--seed', '1', '--out', model]);
  expect(trained.err).toBe('');
  expect(trained.code).toBe(0);
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('iaflow train', () => {
  test('--kind iaf fits an IAF by maximum likelihood: its log-likelihood of the data rises', async () => {
    const iafModel = join(dir, 'iaf.safetensors');
    const untrained = join(dir, 'iaf0.safetensors');
    const args = ['--kind', 'iaf', '--layers', '2', '--hidden', '16,16', '--seed', '2', '--validation-fraction', '0'];
    expect((await run(['train', csv, ...args, '--epochs', '1', '--lr', '1e-9', '--ema', '0', '--out', untrained])).code).toBe(0);
    const trained = await run(['train', csv, ...args, '--epochs', '60', '--batch-size', '100', '--out', iafModel]);
    expect(trained.code).toBe(0);
    expect(trained.out).toContain('Fitting an IAF (2 layers');
    const mean = (v: Float32Array) => v.reduce((a, b) => a + b, 0) / v.length;
    const after = await loadFlow(iafModel);
    const before = await loadFlow(untrained);
    expect(after.config.layers.filter((l) => l.type === 'iaf')).toHaveLength(2);
    expect(mean(await after.logProb(points))).toBeGreaterThan(mean(await before.logProb(points)) + 0.3);
  });
});

describe('iaflow info', () => {
  test('prints dim, layers, parameter count and directions; --json gives the config', async () => {
    const flow = await loadFlow(model);
    const { code, out, err } = await run(['info', model]);
    expect([code, err]).toEqual([0, '']);
    expect(out).toContain('dim          2');
    expect(out).toContain('2 MAF MADE layers, 1 permutation');
    expect(out).toContain(`parameters   ${flow.numParameters.toLocaleString('en-US')}`);
    expect(out).toContain('sample       sequential (dimension by dimension through the MAF layers)');
    expect(out).toContain('logProb      one pass');
    expect(out).toMatch(/MAF\s+\[16, 16\]\s+relu\s+softplus/);
    const json = await run(['info', model, '--json']);
    expect(JSON.parse(json.out)).toEqual({ file: model, numParameters: flow.numParameters, config: JSON.parse(JSON.stringify(flow.config)) });
  });
});

describe('iaflow sample', () => {
  test('.npy: float32 (n, dim), the flow\'s own samples for the seed, reproducible', async () => {
    const file = join(dir, 's.npy');
    const { code, err } = await run(['sample', model, '-n', '300', '--seed', '7', '--out', file]);
    expect(code).toBe(0);
    expect(err).toContain(`Wrote 300 samples of dim 2 to ${file}`);
    const { data, shape } = await readNpy(file);
    expect(shape).toEqual([300, 2]);
    expect(data).toBeInstanceOf(Float32Array);
    const flow = await loadFlow(model);
    expect(Array.from(data)).toEqual(Array.from(await flow.sample(300, { seed: 7 })));
    await run(['sample', model, '-n', '300', '--seed', '7', '--out', join(dir, 's2.npy')]);
    expect(readFileSync(join(dir, 's2.npy'))).toEqual(readFileSync(file));
    await run(['sample', model, '-n', '300', '--seed', '8', '--out', join(dir, 's3.npy')]);
    expect(readFileSync(join(dir, 's3.npy'))).not.toEqual(readFileSync(file));
  });

  test('.csv and stdout: a header, then the same values as the .npy file', async () => {
    const file = join(dir, 's.csv');
    expect((await run(['sample', model, '--count', '300', '--seed', '7', '--out', file])).code).toBe(0);
    const text = readFileSync(file, 'utf8');
    expect(text.split('\n')[0]).toBe('x1,x2');
    const table = parseCsv(text, file);
    expect([table.rows, table.cols]).toEqual([300, 2]);
    const npy = (await readNpy(join(dir, 's.npy'))).data;
    expect(Float32Array.from(table.data)).toEqual(npy);
    const printed = await run(['sample', model, '-n', '300', '--seed', '7']);
    expect(printed.out).toBe(text);
    const withLp = await run(['sample', model, '-n', '5', '--seed', '7', '--with-log-prob']);
    const rows = parseCsv(withLp.out, 'stdout');
    expect(withLp.out.split('\n')[0]).toBe('x1,x2,log_prob');
    expect(rows.cols).toBe(3);
    const flow = await loadFlow(model);
    const { logProb } = await flow.sampleWithLogProb(5, { seed: 7 });
    expect(Float32Array.from({ length: 5 }, (_, r) => rows.data[3 * r + 2])).toEqual(logProb);
  });
});

describe('iaflow logprob', () => {
  test('writes flow.logProb of each row (.npy and .csv) and prints a summary', async () => {
    const flow = await loadFlow(model);
    const expected = await flow.logProb(parseCsv(readFileSync(csv, 'utf8'), csv).data);
    const npyFile = join(dir, 'lp.npy');
    const viaNpy = await run(['logprob', model, csv, '--out', npyFile]);
    expect(viaNpy.code).toBe(0);
    const { data, shape } = await readNpy(npyFile);
    expect(shape).toEqual([500]);
    expect(data).toEqual(expected);
    let sum = 0;
    for (const v of expected) sum += v;
    expect(viaNpy.out).toContain(`500 rows: mean log p ${(sum / 500).toFixed(4)}`);
    const csvFile = join(dir, 'lp.csv');
    expect((await run(['logprob', model, csv, '--out', csvFile])).code).toBe(0);
    expect(readFileSync(csvFile, 'utf8').split('\n')[0]).toBe('log_prob');
    expect(Float32Array.from(parseCsv(readFileSync(csvFile, 'utf8'), csvFile).data)).toEqual(expected);
    // .npy input (float32, as numpy would save it) gives the same values.
    await writeNpy(join(dir, 'points.npy'), points, [500, 2]);
    const summary = await run(['logprob', model, join(dir, 'points.npy')]);
    expect(summary.out).toBe(viaNpy.out.replace(`; wrote ${npyFile}`, ''));
  });
});

describe('errors', () => {
  test.each([
    [[], 'Usage: iaflow <command>'],
    [['frobnicate'], 'unknown command "frobnicate"'],
    [['train'], 'iaflow train: missing DATA'],
    [['train', 'x.csv', '--epochs', 'ten'], '--epochs ten: expected an integer'],
    [['train', 'x.csv', '--hiden', '64'], "Unknown option '--hiden'"],
    [['train', 'x.csv', '--lr', '0'], '--lr 0: expected a number in (0, 10)'],
    [['train', 'x.csv', '--ema', '1'], '--ema 1: expected a number in [0, 1)'],
    [['train', 'x.csv', '--activation', 'sigmoid'], 'expected relu, tanh or elu'],
    [['train', 'x.csv', '--kind', 'realnvp'], '--kind realnvp: expected maf or iaf'],
    [['sample', 'm.safetensors', '-n', '0'], '--count 0: expected an integer from 1'],
    [['sample', 'm.safetensors', '--out', 'samples.txt'], 'must end in .csv or .npy'],
    [['sample', 'm.safetensors', '--seed'], "Option '--seed <value>' argument missing"],
    [['logprob', 'm.safetensors'], 'missing DATA'],
    [['info', 'a', 'b'], 'unexpected argument "b"'],
    [['demo', '--dataset', 'moons3'], '--dataset moons3: expected one of twoMoons'],
    [['demo', '--hidden', '64,,64'], '--hidden 64,,64: expected comma-separated layer widths'],
  ])('usage error %j: exit code 2 and a message', async (argv, message) => {
    const { code, out, err } = await run(argv);
    expect(code).toBe(2);
    expect(out).toBe('');
    expect(err).toContain(message);
    expect(err).not.toMatch(/\n\s+at /);
  });

  test('files that cannot be used: exit code 1 and a message', async () => {
    const missing = await run(['info', join(dir, 'nope.safetensors')]);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain('nope.safetensors: cannot read the file');
    const notModel = await run(['info', csv]);
    expect(notModel.code).toBe(1);
    const wrongDim = join(dir, 'three.csv');
    writeFileSync(wrongDim, '1,2,3\n4,5,6\n');
    const mismatch = await run(['logprob', model, wrongDim]);
    expect(mismatch.code).toBe(1);
    expect(mismatch.err).toContain(`${wrongDim} has 3 columns, but the model's dim is 2`);
    const bad = join(dir, 'bad.csv');
    writeFileSync(bad, 'x,y\n1,2\n3,oops\n');
    expect((await run(['train', bad])).err).toContain('bad.csv, line 3, column 2: "oops" is not a finite number');
    for (const r of [missing, notModel, mismatch]) expect(r.err).not.toMatch(/\n\s+at /);
  });

  test('a malformed first data row is an error naming its line and field, not a header dropped in silence', async () => {
    // A header holds no number; a first row with numbers and non-numbers is data gone wrong.
    const cases: [string, string][] = [
      ['0x10,2\n1,2\n', 'line 1, column 1: "0x10" is not a number'],
      ['\u22121,2\n1,2\n', 'line 1, column 1: "\u22121" is not a number'],
      ['# saved by hand\n\n1,two\n3,4\n', 'line 3, column 2: "two" is not a number'],
    ];
    for (const [i, [text, message]] of cases.entries()) {
      const file = join(dir, `first-row-${i}.csv`);
      writeFileSync(file, text);
      for (const argv of [['logprob', model, file], ['train', file, '--epochs', '1', '--out', join(dir, 'never.safetensors')]]) {
        const { code, out, err } = await run(argv);
        expect(code).toBe(1);
        expect(err).toContain(`${file}, ${message}`);
        expect(out).not.toContain('rows:');
      }
    }
    expect(existsSync(join(dir, 'never.safetensors'))).toBe(false);
    // A header of names is still skipped: the data rows alone are scored.
    const named = join(dir, 'named.csv');
    writeFileSync(named, 'x1,x2\n0.5,0.25\n-1,2\n');
    const scored = await run(['logprob', model, named]);
    expect([scored.code, scored.err]).toEqual([0, '']);
    expect(scored.out).toMatch(/^2 rows: /);
  });

  test('--help for each command, exit code 0', async () => {
    for (const command of ['demo', 'train', 'sample', 'logprob', 'info']) {
      const { code, out } = await run([command, '--help']);
      expect(code).toBe(0);
      expect(out).toContain(`Usage: iaflow ${command}`);
    }
    expect((await run(['--help'])).out).toContain('Commands:');
  });
});

describe('iaflow demo', () => {
  test('a tiny run prints the table and writes a valid PNG, the samples and both models', async () => {
    const out = join(dir, 'demo');
    const argv = ['demo', '--epochs', '1', '--steps', '50', '--layers', '2', '--hidden', '8', '--train-size', '400', '--test-size', '200', '--bench-rows', '500', '--out', out];
    const { code, out: text, err } = await run(argv);
    expect(err).toBe('');
    expect(code).toBe(0);
    for (const expected of ['1/3 Fitting a MAF', '2/3 Distilling it into an IAF', 'test LL mean', 'true density', 'MAF (teacher)', 'IAF (student)', 'one pass', 'sequential', 'Done in']) {
      expect(text).toContain(expected);
    }
    expect(text).toMatch(/IAF \(student\)\s+-?\d+\.\d{3}\s+-?\d+\.\d{3}\s+-?\d+\.\d{3} ± \d+\.\d{3}\s+[\d,]+\s+one pass\s+[\d,]+\s+sequential/);
    expect(text).not.toContain('\r'); // not a terminal: plain progress lines

    const png = readFileSync(join(out, 'demo.png'));
    expect(png.subarray(0, 8)).toEqual(PNG_SIGNATURE);
    expect(png.toString('ascii', 12, 16)).toBe('IHDR');
    const width = png.readUInt32BE(16);
    const height = png.readUInt32BE(20);
    expect([width, height, png[24], png[25]]).toEqual([4 * 300 + 3 * 2, 300 + 26, 8, 2]);
    expect(png.readUInt32BE(29)).toBe(crc32(png.subarray(12, 29)));
    const idatLength = png.readUInt32BE(33);
    expect(png.toString('ascii', 37, 41)).toBe('IDAT');
    expect(inflateSync(png.subarray(41, 41 + idatLength)).length).toBe((width * 3 + 1) * height);

    for (const name of ['maf-samples.npy', 'iaf-samples.npy']) expect((await readNpy(join(out, name))).shape).toEqual([400, 2]);
    expect((await loadFlow(join(out, 'iaf.safetensors'))).config.layers[0].type).toBe('iaf');
    expect((await loadFlow(join(out, 'maf.safetensors'))).config.layers[0].type).toBe('maf');
  });

  test('in a terminal the progress is one line redrawn in place; --no-files writes nothing', async () => {
    const before = existsSync(join(process.cwd(), 'iaflow-demo'));
    const { code, out } = await run(['demo', '--epochs', '2', '--steps', '30', '--layers', '1', '--hidden', '4', '--train-size', '200', '--test-size', '50', '--bench-rows', '100', '--dataset', 'rings', '--no-files'], true);
    expect(code).toBe(0);
    expect(out).toMatch(/\r {2}\[[#.]{24}\] epoch/);
    expect(out).toMatch(/\r {2}\[#{24}\] step 30\/30/);
    expect(out).not.toContain('true density'); // only two moons has a known density
    expect(out).not.toContain('Wrote');
    expect(existsSync(join(process.cwd(), 'iaflow-demo'))).toBe(before);
  });
});

describe('the iaflow executable', () => {
  const command = (args: string[]) => [process.execPath, ['--require', 'tsx/cjs', join(ROOT, 'src', 'cli.ts'), ...args]] as const;
  const cli = (args: string[], stdout: 'pipe' | number = 'pipe') =>
    spawnSync(...command(args), { cwd: ROOT, encoding: 'utf8', timeout: 60000, stdio: ['ignore', stdout, 'pipe'] });

  test('package.json names dist/cli.js as the iaflow command, which starts with a shebang', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.bin).toEqual({ iaflow: 'dist/cli.js' });
    expect(pkg.scripts.demo).toBe('node dist/cli.js demo');
    expect(readFileSync(join(ROOT, 'src', 'cli.ts'), 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  });

  test('exit codes of a real process: 0 with output, 2 and a one-line message without a stack trace', () => {
    const ok = cli(['sample', model, '-n', '3', '--seed', '1']);
    expect(ok.stderr).toBe('');
    expect(ok.status).toBe(0);
    expect(ok.stdout.split('\n')).toHaveLength(5); // header, 3 rows, final newline
    const bad = cli(['sample', model, '-n', 'many']);
    expect(bad.status).toBe(2);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toBe("iaflow sample: --count many: expected an integer from 1 to 100,000,000\nRun 'iaflow sample --help' for the options.\n");
    const failed = cli(['info', join(dir, 'nope.safetensors')]);
    expect(failed.status).toBe(1);
    expect(failed.stderr.trim().split('\n')).toHaveLength(1);
  });

  // /dev/full accepts the open and fails every write with ENOSPC: a write error that is not EPIPE.
  const hasDevFull = existsSync('/dev/full');
  (hasDevFull ? test : test.skip)(
    `a write error on stdout (> /dev/full) is one line on stderr and exit code 1${hasDevFull ? '' : ' (skipped: this system has no /dev/full)'}`,
    () => {
      for (const args of [['sample', model, '-n', '10', '--seed', '1'], ['sample', model, '-n', '100000', '--seed', '1'], ['info', model, '--json']]) {
        const full = openSync('/dev/full', 'w');
        try {
          const result = cli(args, full);
          expect(result.stderr).toMatch(/^iaflow: cannot write to stdout \(ENOSPC[^\n]*\)\n$/);
          expect(result.status).toBe(1);
        } finally {
          closeSync(full);
        }
      }
    },
  );

  // A character device that never ends: the loader must refuse it, not read it forever.
  const hasDevZero = existsSync('/dev/zero');
  (hasDevZero ? test : test.skip)(`info /dev/zero is refused at once with exit code 1${hasDevZero ? '' : ' (skipped: this system has no /dev/zero)'}`, () => {
    const started = Date.now();
    const result = cli(['info', '/dev/zero'], 'pipe');
    expect(result.stderr).toMatch(/^iaflow info: \/dev\/zero: is a character device; a model file must be a regular file\n$/);
    expect(result.status).toBe(1);
    expect(Date.now() - started).toBeLessThan(20000);
  });

  test('a reader that goes away (EPIPE: `| head`) ends the run quietly with exit code 0', async () => {
    const child = spawn(...command(['sample', model, '-n', '2000000', '--seed', '1']), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.stdout.once('data', () => child.stdout.destroy());
    const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.on('close', (c, s) => resolve([c, s])));
    expect(stderr).toBe('');
    expect([code, signal]).toEqual([0, null]);
  }, 60000);
});
