// The CUDA backend as the API shows it (issue 15). Two parts:
//  - loading, which runs everywhere: the library is loaded only when asked for, backends() always
//    lists 'cuda' (with why it is unusable), backend 'cuda' refuses with that reason, 'auto' falls
//    back to the CPU, and a missing, non-library or foreign IAFLOW_CUDA_LIBRARY gives a reason, never
//    a crash (in child processes, since the environment is read once per process);
//  - backendProperties(name), the same property tests for the device ('cuda', when backends()
//    says it is usable: a GPU, its driver and the built library) and for 'cuda-emulator' (the
//    kernels' code run on the CPU with emulated thread blocks): samples for a seed, densities of
//    given rows and both directions against 'cpu-reference', round trips, and training (which
//    runs on the CPU for now). Each part without its backend is skipped, saying why once.
//
// `npm test` runs the emulator's part (IAFLOW_CUDA_EMULATOR defaults to 1 here); `npm run
// test:gpu` (scripts/test-gpu.js, IAFLOW_TEST_GPU=1) runs the device's part alone unless
// IAFLOW_CUDA_EMULATOR=1 is set. The emulator is registered through a test hook rather than by
// the variable at the addon's load, because another suite in the same jest worker may have
// loaded the addon (one per process) first.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Flow, LayerDescriptor, affine, backends, createFlow, fit, iaf, maf, permute, reverse, standardNormal } from '../src/index';
import { native } from '../src/native';
import { expectClose, randomizeWeights } from './helpers';

const emulatorWanted = (process.env.IAFLOW_CUDA_EMULATOR ?? (process.env.IAFLOW_TEST_GPU === '1' ? '' : '1')) === '1';
if (emulatorWanted) native.__registerCudaEmulator();

const ROOT = path.join(__dirname, '..');



// ---- loading ----

/** Runs `script` (TypeScript, through tsx) in a fresh node with `env` added; its stdout parsed as JSON. */
function runChild(script: string, env: Record<string, string | undefined>): { result: unknown; status: number | null; stderr: string } {
  const child = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: ROOT,
    env: { ...process.env, IAFLOW_CUDA_LIBRARY: undefined, IAFLOW_CUDA: undefined, ...env },
    encoding: 'utf8',
    timeout: 60_000,
  });
  const lines = child.stdout.trim().split('\n');
  let result: unknown = null;
  try {
    result = JSON.parse(lines[lines.length - 1]);
  } catch {
    // left null: the status and stderr say what happened
  }
  return { result, status: child.status, stderr: child.stderr };
}

// In the child: the cuda entry of backends(), and what createFlow with 'cuda' and 'auto' did.
const CUDA_REPORT = `
  const { backends, createFlow, iaf } = require('./src/index');
  const cuda = backends().find((b) => b.name === 'cuda');
  let refused = '';
  try { createFlow({ dim: 2, layers: [iaf()], seed: 1, backend: 'cuda' }); } catch (e) { refused = e.message; }
  const auto = createFlow({ dim: 2, layers: [iaf()], seed: 1 }).backend;
  console.log(JSON.stringify({ cuda, refused, auto }));
`;

interface CudaReport {
  cuda: { name: string; usable: boolean; whyNot: string };
  refused: string;
  auto: string;
}

describe('loading the CUDA backend', () => {
  const cuda = backends().find((b) => b.name === 'cuda');

  it('backends() always lists cuda, and says why when it is not usable', () => {
    expect(cuda).toBeDefined();
    if (!cuda!.usable) expect(cuda!.whyNot.length).toBeGreaterThan(0);
    // Listed once, whether registered or not; the CPU backends are still there.
    expect(backends().filter((b) => b.name === 'cuda')).toHaveLength(1);
    expect(backends().find((b) => b.name === 'cpu')?.usable).toBe(true);
  });

  it("refuses backend 'cuda' with the reason when it is unusable, and 'auto' falls back to the CPU", () => {
    if (cuda!.usable) return; // the device's part below runs instead
    const expected = `The cuda backend is not usable here: ${cuda!.whyNot}`;
    expect(() => createFlow({ dim: 2, layers: [iaf()], seed: 1, backend: 'cuda' })).toThrow(expected);
    const flow = createFlow({ dim: 2, layers: [iaf()], seed: 1, backend: 'cpu' });
    expect(() => flow.to('cuda')).toThrow(expected);
    expect(flow.backend).toBe('cpu');
    expect(createFlow({ dim: 2, layers: [iaf()], seed: 1 }).backend).not.toBe('cuda');
    expect(createFlow({ dim: 2, layers: [iaf()], seed: 1, backend: 'auto' }).backend).not.toBe('cuda');
  });

  it('IAFLOW_CUDA_LIBRARY naming a missing file or a file that is not a library gives the loader reason', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'iaflow-cuda-'));
    try {
      const missing = path.join(dir, 'missing.so');
      const text = path.join(dir, 'text.so');
      copyFileSync(path.join(ROOT, 'package.json'), text);
      for (const [file, reason] of [
        [missing, /cannot open shared object file|No such file|not found/i],
        [text, /invalid ELF header|file too short|not a dynamic|invalid/i],
      ] as const) {
        const { result, status, stderr } = runChild(CUDA_REPORT, { IAFLOW_CUDA_LIBRARY: file });
        expect({ status, stderr: status === 0 ? '' : stderr }).toEqual({ status: 0, stderr: '' });
        const report = result as CudaReport;
        expect(report.cuda.usable).toBe(false);
        expect(report.cuda.whyNot).toContain('IAFLOW_CUDA_LIBRARY could not be loaded');
        expect(report.cuda.whyNot).toContain(file);
        expect(report.cuda.whyNot).toMatch(reason);
        expect(report.refused).toBe(`The cuda backend is not usable here: ${report.cuda.whyNot}`);
        expect(report.auto).toBe('cpu');
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it('IAFLOW_CUDA=0 turns it off', () => {
    const { result, status, stderr } = runChild(CUDA_REPORT, { IAFLOW_CUDA: '0' });
    expect({ status, stderr: status === 0 ? '' : stderr }).toEqual({ status: 0, stderr: '' });
    const report = result as CudaReport;
    expect(report.cuda).toEqual({ name: 'cuda', usable: false, whyNot: 'turned off by IAFLOW_CUDA=0', detail: '' });
    expect(report.auto).toBe('cpu');
  }, 60_000);

  // A real shared library without the entry points (a copy of the C math library, or libdl, that
  // the process already maps): the loader names what is missing, and /proc/self/maps shows when it was loaded.
  const linuxOnly = process.platform === 'linux' ? it : it.skip;
  linuxOnly('is loaded only when asked for: not at require time, not for a cpu flow; a foreign library is refused by name', () => {
    const libm = readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .map((line) => line.split(/\s+/)[5])
      .find((file) => file && /\/lib(m|dl)\.so[.\d]*$/.test(file));
    if (!libm) {
      console.log('cuda.test.ts: no libm or libdl mapped to copy; the foreign-library check did not run');
      return;
    }
    const dir = mkdtempSync(path.join(tmpdir(), 'iaflow-cuda-'));
    try {
      const foreign = path.join(dir, 'foreign-library.so');
      copyFileSync(libm, foreign);
      const script = `
        const fs = require('node:fs');
        const mapped = () => fs.readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(foreign)});
        const { backends, createFlow, iaf } = require('./src/index');
        const atRequire = mapped();
        createFlow({ dim: 2, layers: [iaf()], seed: 1, backend: 'cpu' }).sampleSync(3, { seed: 1 });
        const afterCpuFlow = mapped();
        let badName = '';
        try { createFlow({ dim: 2, layers: [iaf()], backend: 'tpu' }); } catch (e) { badName = e.message; }
        const afterBadName = mapped();
        const cuda = backends().find((b) => b.name === 'cuda');
        console.log(JSON.stringify({ atRequire, afterCpuFlow, badName, afterBadName, afterBackends: mapped(), cuda }));
      `;
      const { result, status, stderr } = runChild(script, { IAFLOW_CUDA_LIBRARY: foreign });
      expect({ status, stderr: status === 0 ? '' : stderr }).toEqual({ status: 0, stderr: '' });
      const report = result as { atRequire: boolean; afterCpuFlow: boolean; badName: string; afterBadName: boolean; afterBackends: boolean; cuda: CudaReport['cuda'] };
      expect([report.atRequire, report.afterCpuFlow, report.afterBadName, report.afterBackends]).toEqual([false, false, false, true]);
      expect(report.badName).toMatch(/'cpu', 'cpu-reference', 'cuda'/);
      expect(report.cuda.usable).toBe(false);
      expect(report.cuda.whyNot).toBe(`IAFLOW_CUDA_LIBRARY could not be loaded: ${foreign} is not an iaflow backend library (it lacks iaflow_cuda_abi_version or iaflow_cuda_make_backend)`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

// ---- the properties every CUDA-style backend must have ----

const DIM = 5;

interface FlowCase {
  name: string;
  dim: number;
  context?: number;
  layers: () => LayerDescriptor[];
}

const CASES: FlowCase[] = [
  { name: 'IAF relu softplus', dim: DIM, layers: () => [iaf({ hidden: [24, 24] }), reverse(), iaf({ hidden: [24, 24] })] },
  { name: 'MAF tanh exp', dim: DIM, layers: () => [maf({ hidden: [24, 24], activation: 'tanh', scale: 'exp' }), reverse(), maf({ hidden: [24], activation: 'tanh', scale: 'exp' })] },
  {
    name: 'elu gated with a random permutation, soft clamp',
    dim: DIM,
    layers: () => [iaf({ hidden: [16, 16], activation: 'elu', scale: 'gated' }), permute({ seed: 3 }), maf({ hidden: [16, 16], activation: 'elu', scale: 'gated', softClamp: 2 })],
  },
  { name: 'residual MAF and IAF', dim: DIM, layers: () => [maf({ hidden: [16, 16, 16], residual: true }), reverse(), iaf({ hidden: [16, 16, 16], residual: true })] },
  {
    name: 'affine layers around IAF and MAF',
    dim: DIM,
    layers: () => [affine({ loc: 0.5, scale: -1.5, trainable: true }), iaf({ hidden: [16] }), reverse(), maf({ hidden: [16] }), affine({ loc: 3, scale: 0.25 })],
  },
  { name: 'wide: several column blocks d20', dim: 20, layers: () => [iaf({ hidden: [72, 40] }), permute({ seed: 1 }), maf({ hidden: [64], activation: 'tanh' })] },
  {
    name: 'conditional d3 c2 (linear and activated context)',
    dim: 3,
    context: 2,
    layers: () => [maf({ hidden: [16, 16] }), reverse(), iaf({ hidden: [16], activation: 'elu', contextForm: 'activated' })],
  },
];

/** Rows enough for several thread blocks of rows, and not a multiple of any block size. */
const ROWS = 301;

function pair(c: FlowCase, backend: string): { flow: Flow; reference: Flow } {
  const make = (name: string) => {
    const flow = createFlow({ dim: c.dim, context: c.context, layers: c.layers(), seed: 11, backend: name });
    randomizeWeights(flow, 5);
    return flow;
  };
  return { flow: make(backend), reference: make('cpu-reference') };
}

/** The context options for a case: none, one row per row, or one row for every row. */
function contextsFor(c: FlowCase, rows: number): { label: string; options: { context?: Float32Array } }[] {
  if (!c.context) return [{ label: '', options: {} }];
  const perRow = standardNormal(rows, c.context, { seed: 6 });
  return [
    { label: ' (a context per row)', options: { context: perRow } },
    { label: ' (one broadcast context row)', options: { context: perRow.slice(0, c.context) } },
  ];
}

/**
 * The tests of a backend that runs the CUDA kernels (the device's 'cuda', or 'cuda-emulator'),
 * against 'cpu-reference' (the dense oracle): same samples for a seed (points within 1e-4
 * relative, log-densities within 1e-3), densities and both directions of given rows, round trips,
 * addressable sample streams, and training (on the CPU for now) with the weights coming back.
 */
function backendProperties(name: string): void {
  describe.each(CASES)(`${name}: $name`, (c) => {
    it('samples what cpu-reference samples for the same seed', async () => {
      const { flow, reference } = pair(c, name);
      expect(flow.backend).toBe(name);
      for (const { label, options } of contextsFor(c, ROWS)) {
        const got = await flow.sampleWithLogProb(ROWS, { seed: 9, ...options });
        const expected = reference.sampleWithLogProbSync(ROWS, { seed: 9, ...options });
        expectClose(got.x, expected.x, 1e-4, 1e-4, `sample${label}`);
        expectClose(got.logProb, expected.logProb, 1e-3, 1e-4, `sample logProb${label}`);
        expectClose(flow.sampleSync(ROWS, { seed: 9, ...options }), got.x, 0, 0, `sampleSync against sample${label}`);
      }
    });

    it('gives the log-density and both directions of given rows as cpu-reference does', async () => {
      const { flow, reference } = pair(c, name);
      const z = standardNormal(ROWS, c.dim, { seed: 4 });
      for (const { label, options } of contextsFor(c, ROWS)) {
        const x = reference.forwardSync(z, options).x;
        expectClose(await flow.logProb(x, options), reference.logProbSync(x, options), 1e-3, 1e-4, `logProb${label}`);
        const forward = flow.forwardSync(z, options);
        const expectedForward = reference.forwardSync(z, options);
        expectClose(forward.x, expectedForward.x, 1e-4, 1e-4, `forward x${label}`);
        expectClose(forward.logDet, expectedForward.logDet, 1e-3, 1e-4, `forward logDet${label}`);
        const inverse = await flow.inverse(x, options);
        const expectedInverse = reference.inverseSync(x, options);
        expectClose(inverse.z, expectedInverse.z, 1e-4, 1e-4, `inverse z${label}`);
        expectClose(inverse.logDet, expectedInverse.logDet, 1e-3, 1e-4, `inverse logDet${label}`);
        // One row at a time gives the rows of the whole batch.
        const first = flow.forwardSync(z.subarray(0, c.dim), c.context ? { context: options.context!.subarray(0, c.context) } : {});
        expectClose(first.x, forward.x.subarray(0, c.dim), 1e-5, 1e-5, `one row${label}`);
      }
    });

    it('inverts its own forward direction (round trip), log-determinants opposite', () => {
      const { flow } = pair(c, name);
      const z = standardNormal(ROWS, c.dim, { seed: 8 });
      for (const { label, options } of contextsFor(c, ROWS)) {
        const forward = flow.forwardSync(z, options);
        const back = flow.inverseSync(forward.x, options);
        expectClose(back.z, z, 1e-3, 1e-3, `round trip${label}`);
        expectClose(back.logDet, Array.from(forward.logDet, (v) => -v), 1e-3, 1e-3, `logDet round trip${label}`);
      }
    });

    it('cuts a sample stream anywhere (firstRow) and gets the same rows', () => {
      const { flow } = pair(c, name);
      const options = c.context ? { context: standardNormal(1, c.context, { seed: 2 }) } : {};
      const whole = flow.sampleSync(ROWS, { seed: 21, ...options });
      const cut = 117;
      const tail = flow.sampleSync(ROWS - cut, { seed: 21, firstRow: cut, ...options });
      expectClose(tail, whole.subarray(cut * c.dim), 0, 0, 'firstRow');
    });
  });

  it('trains (on the CPU for now): the flow stays on its backend and runs the trained weights', async () => {
    const flow = createFlow({ dim: 2, layers: [maf({ hidden: [16, 16] }), reverse(), maf({ hidden: [16, 16] })], seed: 3, backend: name });
    const data = standardNormal(400, 2, { seed: 5 }).map((v, i) => (i % 2 ? v * 0.5 + 1 : v * 2));
    const report = await fit(flow, data, { epochs: 3, batchSize: 50, seed: 1 });
    expect(report.steps).toBeGreaterThan(0);
    expect(flow.backend).toBe(name);
    const reference = createFlow({ dim: 2, layers: [maf({ hidden: [16, 16] }), reverse(), maf({ hidden: [16, 16] })], seed: 3, backend: 'cpu-reference' });
    reference.setParameters(flow.getParameters());
    expectClose(flow.logProbSync(data), reference.logProbSync(data), 1e-3, 1e-4, 'logProb after training');
  }, 120_000);
}

/** Runs backendProperties(name) when `whyNot` is empty; else one skipped test that says why (printed once). */
function describeBackend(name: string, whyNot: string): void {
  if (!whyNot) {
    describe(`backend ${name}`, () => backendProperties(name));
    return;
  }
  if (process.env.IAFLOW_REQUIRE_GPU === '1' && name === 'cuda') {
    it(`backend ${name} is usable (IAFLOW_REQUIRE_GPU=1)`, () => {
      throw new Error(`the ${name} backend must be usable with --require: ${whyNot}`);
    });
    return;
  }
  console.log(`cuda.test.ts: the ${name} properties are skipped: ${whyNot}`);
  test.skip(`backend ${name} (skipped: ${whyNot})`, () => {});
}

const listed = backends();
const cudaInfo = listed.find((b) => b.name === 'cuda')!;
describeBackend('cuda', cudaInfo.usable ? '' : `no usable CUDA device: ${cudaInfo.whyNot}`);

// The device alone: a batch larger than one chunk (2^20 rows) streams through the chunk buffers,
// and the rows on both sides of the chunk boundary are the CPU's rows of the same stream.
(cudaInfo.usable ? describe : describe.skip)('backend cuda, batches larger than one chunk', () => {
  it('samples 2^20 + 4099 rows in chunks; rows at the boundary match cpu-reference', async () => {
    const rows = 2 ** 20 + 4099;
    const layers = () => [iaf({ hidden: [16, 16] }), reverse(), maf({ hidden: [16] })];
    const flow = createFlow({ dim: 3, layers: layers(), seed: 2, backend: 'cuda' });
    randomizeWeights(flow, 8);
    const reference = createFlow({ dim: 3, layers: layers(), seed: 2, backend: 'cpu-reference' });
    reference.setParameters(flow.getParameters());
    const { x, logProb } = await flow.sampleWithLogProb(rows, { seed: 4 });
    for (const first of [0, 2 ** 20 - 3, rows - 5]) {
      const expected = reference.sampleWithLogProbSync(5, { seed: 4, firstRow: first });
      expectClose(x.subarray(first * 3, first * 3 + 15), expected.x, 1e-4, 1e-4, `rows ${first}..${first + 4}`);
      expectClose(logProb.subarray(first, first + 5), expected.logProb, 1e-3, 1e-4, `logProb ${first}..${first + 4}`);
    }
    const again = await flow.logProb(x.subarray(0, 3 * (2 ** 20 + 10)));
    expectClose(again, logProb.subarray(0, 2 ** 20 + 10), 1e-3, 1e-4, 'logProb of its own samples across the boundary');
  }, 120_000);
});

// The emulators: 'cuda-emulator' (5 threads a block) and 'cuda-emulator-wide' (67).
const EMULATORS = ['cuda-emulator', 'cuda-emulator-wide'];
for (const name of EMULATORS) {
  const info = listed.find((b) => b.name === name);
  describeBackend(name, info?.usable ? '' : info ? info.whyNot : `${name} not registered (set IAFLOW_CUDA_EMULATOR=1)`);
}

describe('the emulators, when registered', () => {
  it("are never what 'auto' picks", () => {
    const names = backends().map((b) => b.name);
    for (const name of EMULATORS.filter((e) => names.includes(e))) expect(names.indexOf(name)).toBeGreaterThan(names.indexOf('cpu-reference'));
    expect(EMULATORS).not.toContain(createFlow({ dim: 2, layers: [iaf()], seed: 1 }).backend);
  });
});
