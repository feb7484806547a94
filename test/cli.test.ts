// The command line (src/cli.ts): train, sample, logprob, info and demo run in-process through
// main(argv, io) with a fake stdout/stderr; a few runs go through a real child process for the
// exit codes and the absence of stack traces.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { CliIO, editDistance, main, nearestWord, parseOptions } from '../src/cli';
import { datasets, evaluate, gaussianBaseline, loadFlow, readNpy, writeNpy } from '../src';
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
    // Raw columns, so "untrained" is the flow's own initialisation (standardised, it would be a fitted diagonal Gaussian already).
    const args = ['--kind', 'iaf', '--layers', '2', '--hidden', '16,16', '--seed', '2', '--validation-fraction', '0', '--no-standardize'];
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
    expect(text.split('\n')[0]).toBe('x,y'); // the training file's column names, saved in the model
    const table = parseCsv(text, file);
    expect([table.rows, table.cols]).toEqual([300, 2]);
    const npy = (await readNpy(join(dir, 's.npy'))).data;
    expect(Float32Array.from(table.data)).toEqual(npy);
    const printed = await run(['sample', model, '-n', '300', '--seed', '7']);
    expect(printed.out).toBe(text);
    const withLp = await run(['sample', model, '-n', '5', '--seed', '7', '--with-log-prob']);
    const rows = parseCsv(withLp.out, 'stdout');
    expect(withLp.out.split('\n')[0]).toBe('x,y,log_prob');
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

describe('option parsing', () => {
  test('a negative number after a string option is its value, long or short; elsewhere nothing changes', () => {
    const options = { shift: { type: 'string' as const }, count: { type: 'string' as const, short: 'n' }, json: { type: 'boolean' as const } };
    expect(parseOptions(['--shift', '-0.5', '-n', '-3', 'file.csv', '--json'], options)).toEqual({
      values: { shift: '-0.5', count: '-3', json: true },
      positionals: ['file.csv'],
    });
    expect(parseOptions(['--shift', '-1e-3'], options).values.shift).toBe('-1e-3');
    expect(parseOptions(['--shift=-2'], options).values.shift).toBe('-2');
    // Not a number: still parseArgs' error, which says how to pass a value that starts with a dash.
    expect(() => parseOptions(['--shift', '-x'], options)).toThrow(/argument is ambiguous/);
    // After --, everything is positional.
    expect(parseOptions(['--', '--shift', '-1'], options).positionals).toEqual(['--shift', '-1']);
  });

  test('an optional-value option stands alone before another option or at the end, and takes a file otherwise', () => {
    const options = { baseline: { type: 'string' as const, optionalValue: true }, json: { type: 'boolean' as const } };
    expect(parseOptions(['m', 'd', '--baseline'], options).values.baseline).toBe('');
    expect(parseOptions(['m', 'd', '--baseline', '--json'], options).values).toEqual({ baseline: '', json: true });
    expect(parseOptions(['m', 'd', '--baseline', 'train.csv'], options)).toEqual({ values: { baseline: 'train.csv' }, positionals: ['m', 'd'] });
  });

  test('"did you mean": the nearest known word within 1 edit (short words) or 2, or the one it begins', () => {
    expect(editDistance('kitten', 'sitting')).toBe(3);
    expect(editDistance('', 'abc')).toBe(3);
    expect(editDistance('seed', 'seed')).toBe(0);
    const known = ['epochs', 'seed', 'batch-size', 'validation', 'validation-fraction', 'out'];
    expect(nearestWord('epoch', known)).toBe('epochs');
    expect(nearestWord('Seed', known)).toBe('seed');
    expect(nearestWord('batch_size', known)).toBe('batch-size');
    expect(nearestWord('validatoin', known)).toBe('validation');
    expect(nearestWord('validation-frac', known)).toBe('validation-fraction');
    expect(nearestWord('ot', known)).toBe('out');
    expect(nearestWord('xyzzy', known)).toBeUndefined();
    expect(nearestWord('valid', known)).toBeUndefined(); // begins two of them: no guess
  });
});

describe('real data: columns, bad cells, delimiters, test files, eval and plot', () => {
  // Three numeric columns around raw-unit values, a text column, a few NA cells; semicolons.
  const rowsOf = (n: number, seed: number) => {
    let state = seed;
    const uniform = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
    const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
    return Array.from({ length: n }, () => {
      const a = normal();
      const b = normal();
      return [15 + 2 * a, 10 + 0.5 * (0.6 * a + 0.8 * b), 3 + Math.tanh(b)];
    });
  };
  const writeWeather = (file: string, rows: number[][], naEvery: number) => {
    const lines = ['station;temp;pressure;humidity'];
    rows.forEach((r, i) => lines.push(`"st ${i % 3}";${r[0].toFixed(3)};${r[1].toFixed(3)};${i % naEvery === 4 ? 'NA' : r[2].toFixed(3)}`));
    writeFileSync(file, lines.join('\n') + '\n');
  };
  let train: string;
  let testFile: string;
  let weatherModel: string;
  const columns = ['temp', 'pressure', 'humidity'];
  const numeric = (file: string) => parseCsv(readFileSync(file, 'utf8'), file, { columns, invalidRows: 'skip' });

  beforeAll(async () => {
    train = join(dir, 'weather-train.csv');
    testFile = join(dir, 'weather-test.csv');
    weatherModel = join(dir, 'weather.safetensors');
    writeWeather(train, rowsOf(400, 1), 50);
    writeWeather(testFile, rowsOf(150, 2), 40);
  });

  test('train --columns by name on a semicolon file with NA cells: skipped rows said, names saved, --test scored with evaluate()', async () => {
    const { code, out, err } = await run(['train', train, '--columns', 'temp,pressure,humidity', '--test', testFile, '--epochs', '30', '--layers', '2', '--hidden', '16', '--seed', '4', '--out', weatherModel]);
    expect(err).toContain(`note: ${train}: skipped 8 of 400 rows with an empty, NA or non-numeric cell (the first: line 6, column 4, "NA")`);
    expect(err).toContain(`note: ${testFile}: skipped 4 of 150 rows`);
    expect(code).toBe(0);
    expect(out).toContain('to 392 rows of dim 3');
    expect(out).toContain(`Saved ${weatherModel} (columns temp, pressure, humidity)`);
    const flow = await loadFlow(weatherModel);
    const expected = await evaluate(flow, numeric(testFile).data);
    expect(expected.rows).toBe(146);
    expect(out).toContain(`test log-likelihood on ${testFile}: 146 rows, mean ${expected.mean.toFixed(4)} ± ${expected.stderr.toFixed(4)} nats/point (± standard error), median ${expected.median.toFixed(4)}`);
    // The names come back as sample's CSV header.
    const sampled = await run(['sample', weatherModel, '-n', '2', '--seed', '1']);
    expect(sampled.out.split('\n')[0]).toBe('temp,pressure,humidity');
    // --strict refuses the first NA, naming its line and column.
    const strict = await run(['train', train, '--columns', 'temp,pressure,humidity', '--strict', '--out', join(dir, 'never.safetensors')]);
    expect(strict.code).toBe(1);
    expect(strict.err).toContain(`${train}, line 6, column 4: "NA" is not a finite number`);
    // A column that is not there.
    const missing = await run(['train', train, '--columns', 'temp,wind']);
    expect(missing.code).toBe(1);
    expect(missing.err).toContain(`${train}: no column named "wind"; the header has "station", "temp", "pressure", "humidity"`);
  });

  test('--validation FILE: its rows are the validation split; the file is read in the training columns', async () => {
    const { code, out } = await run(['train', train, '--columns', '1,2,3', '--validation', testFile, '--layers', '1', '--hidden', '8', '--seed', '1', '--out', join(dir, 'v.safetensors')]);
    expect(code).toBe(0);
    expect(out).toContain(`392 rows of dim 3 from ${train}, seed 1, 146 validation rows from ${testFile}`);
    expect(out).toMatch(/kept epoch \d+, validation NLL -?\d+\.\d{4}/);
  });

  test('eval: rows, mean, median and standard error as evaluate() gives them; the Gaussian baseline; --json is one object', async () => {
    const flow = await loadFlow(weatherModel);
    const rows = numeric(testFile).data;
    const expected = await evaluate(flow, rows);
    const gaussian = gaussianBaseline(numeric(train).data, rows, { dim: 3 });
    const text = await run(['eval', weatherModel, testFile, '--baseline', train]);
    expect(text.code).toBe(0);
    // The model's columns are picked from the file's header by name.
    expect(text.err).toContain(`note: ${testFile}: reading its columns temp, pressure, humidity (the model's, by name)`);
    expect(text.out).toContain(`  model      146 rows, mean ${expected.mean.toFixed(4)} ± ${expected.stderr.toFixed(4)} nats/point`);
    expect(text.out).toContain(`  Gaussian   146 rows, mean ${gaussian.mean.toFixed(4)} ± ${gaussian.stderr.toFixed(4)} nats/point`);
    expect(text.out).toContain(`(full covariance, fitted to 392 rows of ${train})`);

    const json = await run(['eval', weatherModel, testFile, '--json', '--baseline', train]);
    expect(json.code).toBe(0);
    const object = JSON.parse(json.out);
    expect(json.out.trim().split('\n')).toHaveLength(1);
    expect(object).toMatchObject({ rows: 146, nonFinite: 0, skippedRows: 4, units: 'nats per point', model: weatherModel, data: testFile });
    expect(object.mean).toBeCloseTo(expected.mean, 10);
    expect(object.median).toBeCloseTo(expected.median, 10);
    expect(object.stderr).toBeCloseTo(expected.stderr, 10);
    expect(object.baseline).toMatchObject({ kind: 'gaussian', fittedOn: train, trainRows: 392, rows: 146, ridge: 0, note: null });
    expect(object.baseline.mean).toBeCloseTo(gaussian.mean, 10);

    // --baseline alone: fitted to the evaluated rows, and said to flatter the Gaussian.
    const self = await run(['eval', weatherModel, testFile, '--baseline']);
    expect(self.out).toContain('(full covariance, fitted to 146 rows of the evaluated rows themselves (flattering it))');
    const selfJson = JSON.parse((await run(['eval', weatherModel, testFile, '--baseline', '--json'])).out);
    expect(selfJson.baseline.fittedOn).toBe('data');
    expect(selfJson.baseline.mean).toBeCloseTo(gaussianBaseline(rows, null, { dim: 3 }).mean, 10);
  });

  test('logprob --out keeps one value per row of the file: NaN where a row was skipped', async () => {
    const out = join(dir, 'weather-lp.npy');
    const { code } = await run(['logprob', weatherModel, testFile, '--out', out]);
    expect(code).toBe(0);
    const { data, shape } = await readNpy(out);
    expect(shape).toEqual([150]);
    const flow = await loadFlow(weatherModel);
    const kept = await flow.logProb(numeric(testFile).data);
    const nan = Array.from(data, (v, i) => (Number.isNaN(v) ? i : -1)).filter((i) => i >= 0);
    expect(nan).toEqual([4, 44, 84, 124]); // the rows with NA (i % 40 === 4)
    expect(Float32Array.from(Array.from(data).filter((v) => !Number.isNaN(v)))).toEqual(kept);
  });

  test('tab- and comma-separated files with quoted names read the same', async () => {
    const text = readFileSync(testFile, 'utf8');
    for (const [name, d] of [['tabs.tsv', '\t'], ['commas.csv', ',']]) {
      const file = join(dir, name);
      writeFileSync(file, text.replace(/;/g, d));
      const json = JSON.parse((await run(['eval', weatherModel, file, '--json'])).out);
      const base = JSON.parse((await run(['eval', weatherModel, testFile, '--json'])).out);
      expect({ ...json, data: testFile }).toEqual(base);
    }
  });

  test('plot: a 2-d model gives the panels, a 3-d one a scatter matrix; PNGs of the sizes renderPlot lays out', async () => {
    const png2 = join(dir, 'moons.png');
    const two = await run(['plot', model, '--data', csv, '--out', png2, '-n', '2000']);
    expect([two.code, two.err]).toEqual([0, '']);
    expect(two.out).toContain(`Wrote ${png2} (2,000 samples, 500 data rows from ${csv})`);
    const png3 = join(dir, 'weather.png');
    const three = await run(['plot', weatherModel, '--data', testFile, '--out', png3, '-n', '2000', '--size', '100']);
    expect(three.code).toBe(0);
    const size = (file: string) => {
      const png = readFileSync(file);
      expect(png.subarray(0, 8)).toEqual(PNG_SIGNATURE);
      const idatLength = png.readUInt32BE(33);
      const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)];
      expect(inflateSync(png.subarray(41, 41 + idatLength)).length).toBe((width * 3 + 1) * height);
      return [width, height];
    };
    const [w2, h2] = size(png2);
    const [w3, h3] = size(png3);
    expect(w2).toBeGreaterThan(3 * 300); // three 300-pixel panels side by side
    expect(h2).toBeGreaterThan(300);
    expect(h2).toBeLessThan(2 * 300);
    expect(w3).toBeGreaterThan(3 * 100);
    expect(h3).toBeGreaterThan(3 * 100); // a 3 x 3 matrix of 100-pixel panels
    const two2 = await run(['plot', weatherModel, '--columns', 'humidity,temp', '--out', join(dir, 'two.png'), '-n', '500', '--size', '100']);
    expect(two2.code).toBe(0);
    expect(size(join(dir, 'two.png'))[1]).toBeLessThan(h3);
    const bad = await run(['plot', weatherModel, '--columns', 'wind', '--out', join(dir, 'never.png')]);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain('--columns: "wind" is not a column of the model (temp, pressure, humidity; or 0 to 2)');
  });
});

describe('errors', () => {
  test.each([
    [[], 'Usage: iaflow <command>'],
    [['frobnicate'], 'unknown command "frobnicate"'],
    [['train'], 'iaflow train: missing DATA'],
    [['train', 'x.csv', '--epochs', 'ten'], '--epochs ten: expected an integer'],
    [['train', 'x.csv', '--hiden', '64'], "Unknown option '--hiden'; did you mean --hidden?"],
    [['train', 'x.csv', '--batchsize', '64'], "Unknown option '--batchsize'; did you mean --batch-size?"],
    [['eval', 'm.safetensors', 'x.csv', '--basline'], "Unknown option '--basline'; did you mean --baseline?"],
    [['trian', 'x.csv'], 'unknown command "trian"; did you mean train?'],
    [['sample', 'm.safetensors', '--seed', '-1'], '--seed -1: expected an integer from 0 to 4,294,967,295 (leave --seed out for a random seed)'],
    [['train', 'x.csv', '--lr', '-0.5'], '--lr -0.5: expected a number in (0, 10)'],
    [['train', 'x.csv', '--validation', 'v.csv', '--validation-fraction', '0.2'], 'give --validation FILE or --validation-fraction X, not both'],
    [['train', 'x.csv', '--columns', 'a,,b'], '--columns a,,b: expected comma-separated column names'],
    [['plot', 'm.safetensors', '--out', 'p.jpg'], '--out p.jpg: the file name must end in .png'],
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
    expect((await run(['train', bad, '--strict'])).err).toContain('bad.csv, line 3, column 2: "oops" is not a finite number');
    // Without --strict the row is skipped, and one row is too few to train on.
    const few = await run(['train', bad, '--out', join(dir, 'never.safetensors')]);
    expect(few.code).toBe(1);
    expect(few.err).toContain('skipped 1 of 2 rows with an empty, NA or non-numeric cell (the first: line 3, column 2, "oops")');
    expect(few.err).toContain('bad.csv: 1 row; training needs at least 2');
    for (const r of [missing, notModel, mismatch]) expect(r.err).not.toMatch(/\n\s+at /);
  });

  test('a malformed first data row is an error naming its line and field with --strict, else a skipped row said so, never a header dropped in silence', async () => {
    // A header holds no number; a first row with numbers and non-numbers is data gone wrong.
    const cases: [string, string, string][] = [
      ['0x10,2\n1,2\n', 'line 1, column 1: "0x10" is not a number', 'line 1, column 1, "0x10"'],
      ['\u22121,2\n1,2\n', 'line 1, column 1: "\u22121" is not a number', 'line 1, column 1, "\u22121"'],
      ['# saved by hand\n\n1,two\n3,4\n', 'line 3, column 2: "two" is not a number', 'line 3, column 2, "two"'],
    ];
    for (const [i, [text, message, skipped]] of cases.entries()) {
      const file = join(dir, `first-row-${i}.csv`);
      writeFileSync(file, text);
      for (const argv of [['logprob', model, file], ['train', file, '--epochs', '1', '--out', join(dir, 'never.safetensors')]]) {
        const { code, out, err } = await run([...argv, '--strict']);
        expect(code).toBe(1);
        expect(err).toContain(`${file}, ${message}`);
        expect(out).not.toContain('rows:');
      }
      const lenient = await run(['logprob', model, file]);
      expect(lenient.code).toBe(0);
      expect(lenient.err).toContain(`note: ${file}: skipped 1 of 2 rows with an empty, NA or non-numeric cell (the first: ${skipped})`);
      expect(lenient.out).toMatch(/^1 rows: /);
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
    for (const command of ['demo', 'train', 'sample', 'logprob', 'eval', 'plot', 'info']) {
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
